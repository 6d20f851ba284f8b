"""A report's work outside the search, against corpus size: reading the matched corpus items' columns back
(content boxes for the trimmed views, source ids and captions for corpus_matches.parquet, fingerprints for
verification and the gallery) by key, from the item table (``overlap_audit.index.items``, what a report
does) and by scanning every shard (what it did before, ``rows_by_key(..., items_file=None)``).

Synthetic indexes of 64-bit hashes (index_from_vector_blocks, shards of 100,000; keys like real file names),
at each size; the looked-up keys are a seeded random sample of the corpus (the nearest items of a report's
examples). Each size runs in a fresh process after its index is written, so the shards are in the page
cache for both paths (a cold cache makes the scan dearer still). Each figure is the best of ``--repeats``.

    python benchmarks/bench_scale_report.py --sizes 1e5 1e6 1e7 [--keys 1000 10000] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARD = 100_000
COLUMN_SETS = {  # what a report reads back per matched corpus item, by the function that reads it
    "content_boxes": ["content_box"],
    "corpus_metadata": ["source", "id", "caption", "item_xxh3"],
    "corpus_items": ["source", "id", "caption", "label", "item_size", "item_mtime_ns", "item_xxh3"],
}


def key_of(i: int) -> str:
    return f"laion/{i // 10_000:05d}/{i:09d}.jpg"


def generate(root: Path, n: int) -> dict:
    """A flat index of n random 64-bit hashes with its item table; returns the seconds spent."""
    from overlap_audit.index import index_from_vector_blocks
    from overlap_audit.index.items import write_items
    from overlap_audit.index.shards import shard_paths

    def blocks():
        for s, start in enumerate(range(0, n, SHARD)):
            stop = min(start + SHARD, n)
            codes = np.random.default_rng(s).integers(0, 256, (stop - start, 8), dtype=np.uint8)
            yield [key_of(i) for i in range(start, stop)], codes, None

    t = time.perf_counter()
    index_from_vector_blocks(root, blocks(), dim=64, metric="hamming", shard_size=SHARD, index_type="flat")
    total = time.perf_counter() - t
    t = time.perf_counter()
    write_items(root, "items.bench.arrow", shard_paths(root))  # the item table's own cost, written aside
    items = time.perf_counter() - t
    for name in ("items.bench.arrow", "items.bench.keys.npy"):
        (root / name).unlink()
    return {"build_s": total, "items_write_s": items}


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def child(root: Path, n_keys: list[int], repeats: int) -> dict:
    """Both paths for each number of keys, in this fresh process."""
    from overlap_audit.index import load_manifest
    from overlap_audit.index.shards import rows_by_key

    manifest = load_manifest(root)
    n = manifest.n_given
    out: dict = {"n": n, "manifest_s": best(lambda: load_manifest(root), repeats)}
    for m in n_keys:
        keys = [key_of(int(i)) for i in np.random.default_rng(m).choice(n, size=min(m, n), replace=False)]
        for name, cols in COLUMN_SETS.items():
            table = rows_by_key(root, keys, cols)
            scan = rows_by_key(root, keys, cols, items_file=None)
            assert table == scan and len(table) == len(keys), name  # the same answers, every key found
            out[f"{m}:{name}:table_s"] = best(lambda: rows_by_key(root, keys, cols), repeats)
            out[f"{m}:{name}:scan_s"] = best(lambda: rows_by_key(root, keys, cols, items_file=None), repeats)
    out["items_bytes"] = sum((root / f).stat().st_size for f in (manifest.items_file,
                                                                   manifest.items_file.replace(".arrow", ".keys.npy")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6, 1e7])
    ap.add_argument("--keys", nargs="+", type=int, default=[1000, 10000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work-dir", default=None, help="where the synthetic indexes go (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="append results to this JSON-lines file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child), args.keys, args.repeats)))
        return
    with tempfile.TemporaryDirectory(prefix="overlap-audit-report-scale-") as tmp:
        run(args, Path(args.work_dir) if args.work_dir else Path(tmp))


def run(args: argparse.Namespace, work_dir: Path) -> None:
    print(f"# {os.cpu_count()} CPUs; keys looked up: {args.keys}; best of {args.repeats}")
    print("| corpus | keys | lookup | item table s | shard scan s | scan / table |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        n = int(size)
        root = work_dir / f"n{n}"
        shutil.rmtree(root, ignore_errors=True)
        built = generate(root, n)
        r = subprocess.run([sys.executable, __file__, "--child", str(root), "--keys", *map(str, args.keys),
                            "--repeats", str(args.repeats)], capture_output=True, text=True)
        if r.returncode:
            print(f"| {n:,} | failed: {r.stderr.strip().splitlines()[-1][:100]} |")
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1]) | built
        for m in args.keys:
            for name in COLUMN_SETS:
                t, s = res[f"{m}:{name}:table_s"], res[f"{m}:{name}:scan_s"]
                print(f"| {n:,} | {m:,} | {name} | {t:.3f} | {s:.3f} | {s / t:.0f}x |", flush=True)
        print(f"| {n:,} | | manifest read {res['manifest_s']:.3f} s; index build {res['build_s']:.1f} s, of which "
              f"the item table {res['items_write_s']:.1f} s, {res['items_bytes'] / n:.0f} bytes/item | | | |",
              flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(res) + "\n")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
