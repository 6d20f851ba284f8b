"""What corpus views cost at search time and on disk: random 64-bit codes indexed with and without views.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_views --n 1000000 --queries 1000

Prints, per layout, the index directory's bytes per item and the seconds of ``search`` (through the FAISS
indexes, and the exact stream over the shards) for the queries, k = 5. The quality side (what views find)
is bench_photo_report's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> list[dict]:
    from overlap_audit.index import index_from_vectors, load_index, search

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=100_000)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.n, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (args.queries, 8), dtype=np.uint8)
    ids = [str(i) for i in range(args.queries)]
    out = []
    print("| views | bytes per item | search s (index) | search s (exact stream) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for views in ((), (0.7,), (0.7, 0.5)):
            d = Path(tmp) / f"v{len(views)}"
            extra = rng.integers(0, 256, (args.n, len(views), 8), dtype=np.uint8) if views else None
            index_from_vectors(d, codes, metric="hamming", shard_size=args.shard_size, index_type="flat",
                               views=views, view_vectors=extra)
            row = {"views": list(views), "bytes_per_item": _bytes(d) / args.n}
            for name, stream in (("index", False), ("stream", True)):
                corpus = load_index(d, load_faiss=not stream)
                t = time.perf_counter()
                search(corpus, ids, queries, k=5)
                row[name] = time.perf_counter() - t
            out.append(row)
            print(f"| {', '.join(map(str, views)) or 'none'} | {row['bytes_per_item']:.1f} | {row['index']:.2f} | "
                  f"{row['stream']:.2f} |", flush=True)
    return out


if __name__ == "__main__":
    main()
