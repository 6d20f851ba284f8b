"""The index of n precomputed 64-bit hashes built through the project's path: ``index_from_vector_blocks`` (one
shard per block: keys, ids, the codes) and then ``finish_index`` with index type ``mih`` (the flat FAISS index,
the multi-index hash tables, ids.parquet, the item table and its key index, the manifest and its checksums).

Codes: uniform random 64-bit codes (seeded; the build does not depend on their distribution); keys like
``laion/00123/001234567.jpg``. Runs in one process and reports its wall and CPU seconds, split into writing the
shards and finishing (the manifest's ``index_build_seconds``), the peak resident memory (VmHWM) and the bytes
written per item.

    python benchmarks/scale_index_build.py --n 1e8 [--block 1000000] [--work-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

# run as a script from this folder: the sibling that measures peak memory the same way (VmHWM)
from bench_hash_scale import peak_rss_mb


def blocks(n: int, block: int, timing: dict):
    """(keys, codes, None) blocks of seeded uniform 64-bit codes; the seconds spent making them go to timing."""
    for b, start in enumerate(range(0, n, block)):
        t = time.perf_counter()
        stop = min(start + block, n)
        codes = np.random.default_rng(b).integers(0, 256, (stop - start, 8), dtype=np.uint8)
        keys = [f"laion/{i // 10_000:05d}/{i:09d}.jpg" for i in range(start, stop)]
        timing["generate_s"] += time.perf_counter() - t
        yield keys, codes, None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=float, default=1e6)
    ap.add_argument("--block", type=int, default=1_000_000, help="items per shard")
    ap.add_argument("--work-dir", default=None, help="where the index goes (removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the index")
    ap.add_argument("--json", default=None, help="append the result to this JSON-lines file")
    args = ap.parse_args()
    from overlap_audit.index import index_from_vector_blocks

    n = int(args.n)
    work = Path(args.work_dir or "/tmp") / f"index-build-{n}"
    shutil.rmtree(work, ignore_errors=True)
    timing = {"generate_s": 0.0}
    wall, cpu = time.perf_counter(), time.process_time()
    manifest = index_from_vector_blocks(work, blocks(n, args.block, timing), dim=64, metric="hamming",
                                        shard_size=args.block, index_type="mih")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    size = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
    finish_s = manifest.extra["index_build_seconds"]
    result = {"n": n, "block": args.block, "wall_s": wall, "cpu_s": cpu, "finish_s": finish_s,
              "shards_s": wall - finish_s, "generate_s": timing["generate_s"], "peak_rss_mb": peak_rss_mb(),
              "bytes_per_item": size / n, "index_type": manifest.index_type,
              "params": manifest.extra["index_params"], "load_average": os.getloadavg()}
    print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(result) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
