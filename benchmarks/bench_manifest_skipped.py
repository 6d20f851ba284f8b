"""``load_manifest`` against the number of skipped corpus items, this code against another checkout; and what
opening an index of many shards costs.

For each ``--skipped N``: shards of 100,000 rows written with ``write_shard`` (the shard format both codes read),
N items that failed to decode (with the reason a folder source gives an unreadable file, its path included)
among ``--indexed`` indexed 64-bit hashes spread over them, keys like ``laion/00123/001234567.jpg``. Each code
finishes the same shards (hard links) in its own directory with ``finish_index`` (flat), in its own process. Then
``--runs`` fresh processes per code (the codes interleaved) each call ``load_manifest`` ``--repeats`` times: the
CPU seconds of a call (``time.process_time``), best of the repeats, median over the processes, and the manifest's
bytes. Where the code has ``index.skipped_items`` (every skipped item read back from the item table: what a
manifest of the earlier format listed), it is timed once per process, and its list is checked equal to the
other code's (``IndexManifest.skipped``, where that code has it).

``--shards S`` also writes an index of S shards of 10 items (this code only) and times, warm, ``load_manifest``
(its ``files`` record each shard) and the ``stat`` of its shard files (one each when an index is opened:
``integrity.check_files``).

    OMP_NUM_THREADS=1 python benchmarks/bench_manifest_skipped.py --skipped 1e5 1e6 --baseline /path/to/main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARD = 100_000


def key_of(i: int) -> str:
    return f"laion/{i // 10_000:05d}/{i:09d}.jpg"


def _info():
    from overlap_audit.values import DetectorInfo

    return DetectorInfo(spec="vectors", name="vectors", version="1", dim=64, metric="hamming",
                        default_threshold=0.85)


def write_shards(root: Path, n_skipped: int, n_indexed: int, shard: int = SHARD) -> None:
    """Shards of ``n_skipped + n_indexed`` items, the indexed ones spread evenly among the skipped."""
    from overlap_audit.index.shards import shard_path, write_shard

    n = n_skipped + n_indexed
    indexed = np.zeros(n, bool)
    indexed[np.linspace(0, n - 1, n_indexed).round().astype(np.int64)] = True
    (root / "shards").mkdir(parents=True)
    for s, start in enumerate(range(0, n, shard)):
        stop = min(start + shard, n)
        rng = np.random.default_rng(s)
        keys = [key_of(i) for i in range(start, stop)]
        ok = indexed[start:stop]
        vectors = [rng.integers(0, 256, 8, dtype=np.uint8) if good else None for good in ok]
        reasons = [None if good else f"decoding failed: UnidentifiedImageError: cannot identify image file "
                                     f"'/data/{key}'" for key, good in zip(keys, ok)]
        m = stop - start
        write_shard(shard_path(root, s), _info(), keys=keys, sources=["laion"] * m, ids=keys, captions=[None] * m,
                    labels=[None] * m, vectors=vectors, low_information=[False] * m, reasons=reasons,
                    copies=[None] * m)


def finish(root: Path) -> float:
    """The flat index over the shards, finished by the code this process imports; returns the seconds."""
    from overlap_audit.index.finish import finish_index

    t = time.perf_counter()
    finish_index(root, _info(), [{"kind": "vectors", "name": "laion"}], SHARD, "cpu", 0.0, index_type="flat")
    return time.perf_counter() - t


def child(root: Path, repeats: int) -> dict:
    """``load_manifest``'s CPU and wall seconds (best of ``repeats``) in this fresh process, the manifest's bytes,
    and the skipped items as this code gives them in full (a digest, and the seconds it took)."""
    import hashlib

    from overlap_audit import index
    from overlap_audit.index import load_manifest

    cpu = wall = float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        m = load_manifest(root)
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    out = {"load_cpu": cpu, "load_wall": wall, "manifest_bytes": (root / "manifest.json").stat().st_size,
           "n_skipped": m.n_skipped}
    if hasattr(index, "skipped_items"):
        t, c = time.perf_counter(), time.process_time()
        listed = index.skipped_items(root)
        out.update(list_wall=time.perf_counter() - t, list_cpu=time.process_time() - c)
    else:
        listed = m.skipped
    text = "\n".join(f"{s.source}\t{s.id}\t{s.reason}" for s in listed)
    out["list_sha256"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    out["list_n"] = len(listed)
    return out


def shard_open(root: Path, n_shards: int, repeats: int) -> dict:
    """Warm seconds (best of ``repeats``) of ``load_manifest`` on an index of ``n_shards`` shards of 10 items, and
    of the ``stat`` of its shard files (what opening adds per shard: ``integrity.check_files``)."""
    from overlap_audit.index import load_manifest

    write_shards(root, 0, 10 * n_shards, shard=10)
    finish(root)
    shards = sorted((root / "shards").iterdir())
    best = {"manifest_cpu": float("inf"), "stat_wall": float("inf"),
            "manifest_bytes": (root / "manifest.json").stat().st_size}
    for _ in range(repeats):
        c = time.process_time()
        load_manifest(root)
        best["manifest_cpu"] = min(best["manifest_cpu"], time.process_time() - c)
        t = time.perf_counter()
        for p in shards:
            p.stat()
        best["stat_wall"] = min(best["stat_wall"], time.perf_counter() - t)
    return best


def call(code: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=code, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(r.stderr.strip()[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skipped", nargs="*", type=float, default=[1e5, 1e6])
    ap.add_argument("--indexed", type=int, default=10_000)
    ap.add_argument("--baseline", default=None, help="another overlap-audit checkout, measured on the same shards")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shards", type=int, default=0, help="also time opening an index of this many shards")
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--finish", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--open-shards", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        root = Path(args.child)
        print(json.dumps({"finish_s": finish(root)} if args.finish
                         else shard_open(root, args.open_shards, args.repeats) if args.open_shards
                         else child(root, args.repeats)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the shards are written by this checkout
    with tempfile.TemporaryDirectory(prefix="overlap-audit-manifest-", dir=args.work_dir) as tmp:
        run(args, Path(tmp))


def run(args, work: Path) -> None:
    here = str(Path(__file__).resolve().parent.parent)
    codes = {"this": here, **({"baseline": str(Path(args.baseline).resolve())} if args.baseline else {})}
    print(f"# load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.indexed} indexed items; "
          f"load_manifest: best of {args.repeats} calls per process, median of {args.runs} processes per code")
    print("| skipped | code | manifest MB | load_manifest CPU ms | wall ms | CPU ratio baseline/this "
          "| every skipped item read back: CPU s | finish s |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.skipped:
        n = int(size)
        shards = work / f"s{n}" / "shards-only"
        write_shards(shards, n, args.indexed)
        roots = {}
        for name, code in codes.items():
            root = work / f"s{n}" / name
            (root / "shards").mkdir(parents=True)
            for p in (shards / "shards").iterdir():
                os.link(p, root / "shards" / p.name)
            roots[name] = (root, call(code, "--child", str(root), "--finish")["finish_s"])
        runs: dict = {name: [] for name in codes}
        for _ in range(args.runs):
            for name, code in codes.items():
                runs[name].append(call(code, "--child", str(roots[name][0]), "--repeats", str(args.repeats)))
        med = {name: {k: (float(np.median([r[k] for r in rs])) if isinstance(rs[0][k], float) else rs[0][k])
                      for k in rs[0]} for name, rs in runs.items()}
        for name, r in med.items():
            assert r["n_skipped"] == r["list_n"] == n, (name, r)
            ratio = med["baseline"]["load_cpu"] / r["load_cpu"] if "baseline" in med and name == "this" else None
            head = (f"| {n:,} | {name} | {r['manifest_bytes'] / 1e6:.2f} | {r['load_cpu'] * 1e3:.2f} "
                    f"| {r['load_wall'] * 1e3:.2f} | {'' if ratio is None else f'{ratio:,.0f}'} ")
            listed = f"{r['list_cpu']:.2f}" if "list_cpu" in r else "(in the manifest)"
            print(head + f"| {listed} | {roots[name][1]:.1f} |", flush=True)
        if len(med) == 2:
            print(f"| {n:,} | | same skipped items, same order, same reasons: "
                  f"{med['this']['list_sha256'] == med['baseline']['list_sha256']} | | | | | |", flush=True)
    if args.shards:
        r = call(here, "--child", str(work / "many-shards"), "--open-shards", str(args.shards),
                 "--repeats", str(max(args.repeats, 5)))
        print(f"\nan index of {args.shards:,} shards of 10 items (this code, warm, best of {max(args.repeats, 5)}): "
              f"load_manifest {r['manifest_cpu'] * 1e3:.1f} ms CPU ({r['manifest_bytes'] / 1e6:.2f} MB); "
              f"the stat of its {args.shards:,} shard files: {r['stat_wall'] * 1e3:.1f} ms")
    print(f"# load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
