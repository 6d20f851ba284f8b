"""A report's work outside the search, against corpus size, for a fixed evaluation set.

Synthetic indexes written through the index format (``write_shard`` then ``finish_index``, as
``index_from_vector_blocks`` does, but with every column a real index has: keys like
``laion/00123/001234567.jpg``, sources and ids, captions, content boxes and fingerprints), 64-bit hashes, shards
of 100,000 items. The evaluation set is fixed: ``--examples`` examples with ``--k`` neighbours each, drawn as
seeded random corpus rows (the search is not run: what follows it is measured). Per report, as
``api.run_report`` calls them:

- ``boxes``: ``index.content_boxes`` of each example's matched item (trimmed views, the report's pairs);
- ``matches``: ``matched.corpus_metadata`` of every neighbour (corpus_matches.parquet; the synthetic source is
  bare vectors, so no source file is opened: the index's own lookups only);
- ``items``: ``index.corpus_items`` of each example's matched item (verification, the gallery, ``pairs``;
  again the index's lookups and fingerprints, not the images: a bare-vector source has none to read back);
- ``keys``: the keys of ``--key-rows`` index rows (the search's answers: a report of 10^4 examples × k = 5
  asks 50,000 rows at once), ``CorpusIndex.keys[rows]`` on an index already opened; the first such call in
  the process is reported apart (``keys first``: what a report pays), the parts then as below;
- ``open``: ``load_index(load_faiss=False)``, what a report pays to open an index besides the FAISS index
  itself (the manifest, the file checks, whatever its row keys need read up front).

Each size is measured in fresh processes: once cold, each part with the index's files evicted from the page
cache just before it (``posix_fadvise(DONTNEED)`` on each file; dropping the whole cache needs root), then warm
(every file read once first; the parts interleaved, each the best of ``--repeats``); each process first makes
each call with no keys, so imports are not counted as lookups. The disk's sequential read rate and random 4 KiB read rate are measured on the same
machine in the same run, on the shards evicted the same way. ``--baseline PATH`` also measures the code at PATH
(another checkout of overlap-audit) on the same shards, finished by that code (up to ``--baseline-max`` items).
Each finish runs in its own process, whose peak resident memory is reported beside its seconds. Files larger than
``CACHE_FILES_UNDER`` are not read ahead of the warm process (at 10^8 the item table outgrows the page cache):
there "warm" is the best of the repeats, whose pages the first repeat brought in. ``--keep`` keeps each size's
shards and reuses those a previous run kept (a 10^8 corpus takes about 7 minutes to write with
``--write-workers 2`` on 2 idle cores, and 30 GB of disk).

    python benchmarks/bench_report_scale.py --sizes 1e5 1e6 1e7 1e8 [--baseline /path/to/main] [--work-dir DIR]
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
SHARD_DIR = "shards"  # overlap_audit.index.manifest.SHARD_DIR, not imported here: the parent runs any code
PARTS = ("open", "keys", "boxes", "matches", "items")  # a report's time outside the search, in its order
CACHE_FILES_UNDER = 4 << 30  # larger files are not read ahead of the warm run (at 10^8 they outgrow the cache)
DONE = "shards.done"  # beside the shards of a size written whole: ``--keep`` leaves them for the next run


def key_of(i: int) -> str:
    return f"laion/{i // 10_000:05d}/{i:09d}.jpg"


def write_shards(root: Path, n: int, only: range | None = None) -> float:
    """Shards of n items with every column a trimming detector's index has (only the shards numbered in ``only``,
    if given: each shard is seeded by its number, so two processes can write one corpus); returns the seconds
    spent."""
    from overlap_audit.content import ContentBox
    from overlap_audit.index.manifest import SHARD_DIR
    from overlap_audit.index.shards import ItemBytes, shard_path, write_shard
    from overlap_audit.values import DetectorInfo

    info = DetectorInfo(spec="vectors", name="vectors", version="1", dim=64, metric="hamming",
                        default_threshold=0.85)
    (root / SHARD_DIR).mkdir(parents=True, exist_ok=only is not None)
    t = time.perf_counter()
    for s, start in enumerate(range(0, n, SHARD)):
        if only is not None and s not in only:
            continue
        stop = min(start + SHARD, n)
        rng = np.random.default_rng(s)
        m = stop - start
        codes = rng.integers(0, 256, (m, 8), dtype=np.uint8)
        size = rng.integers(20_000, 400_000, m)
        wh = rng.integers(64, 1024, (m, 2))
        cut = rng.integers(0, 32, (m, 4))
        keys = [key_of(i) for i in range(start, stop)]
        boxes = [ContentBox(int(c[0]), int(c[1]), int(w - c[2]), int(h - c[3]), int(w), int(h), bool(c[0] % 2))
                 for c, (w, h) in zip(cut, wh)]
        prints = [ItemBytes(int(z), f"{int(h):016x}", 1_700_000_000_000_000_000 + i)
                  for i, (z, h) in enumerate(zip(size, rng.integers(0, 2**63, m)))]
        write_shard(shard_path(root, s), info, keys=keys, sources=["laion"] * m, ids=keys,
                    captions=[f"a picture number {i}" for i in range(start, stop)], labels=[None] * m,
                    vectors=list(codes), low_information=[False] * m, reasons=[None] * m, copies=[None] * m,
                    boxes=boxes, fingerprints=prints)
    return time.perf_counter() - t


def write_in_processes(root: Path, n: int, workers: int) -> float:
    """``write_shards`` of n items by ``workers`` processes, shard s written by process s mod ``workers`` (the same
    shards as one process writes); returns the wall seconds."""
    if workers <= 1:
        return write_shards(root, n)
    from concurrent.futures import ProcessPoolExecutor

    (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    shards = -(-n // SHARD)
    t = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(write_shards, [root] * workers, [n] * workers,
                      [range(k, shards, workers) for k in range(workers)]))
    return time.perf_counter() - t


def finish(root: Path) -> float:
    """The index over the shards (flat), finished by the code this process imports; returns the seconds."""
    from overlap_audit.index.finish import finish_index
    from overlap_audit.index.manifest import MANIFEST, SHARD_DIR
    from overlap_audit.values import DetectorInfo

    for p in root.iterdir():  # another code's finished files: this code writes its own
        if p.name not in (SHARD_DIR, DONE) and not p.name.startswith("finished."):
            p.unlink()
    info = DetectorInfo(spec="vectors", name="vectors", version="1", dim=64, metric="hamming",
                        default_threshold=0.85)
    t = time.perf_counter()
    finish_index(root, info, [{"kind": "vectors", "name": "laion"}], SHARD, "cpu", 0.0, index_type="flat")
    assert (root / MANIFEST).exists()
    return time.perf_counter() - t


def peak_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss, KiB on Linux) in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evict(root: Path) -> None:
    """Drop the index's files from the page cache (written and synced already)."""
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def disk_rates(root: Path, limit: int = 2 << 30) -> dict:
    """Sequential MB/s over the shards (up to ``limit`` bytes) and random 4 KiB reads/s, both evicted first."""
    files = sorted((root / "shards").glob("*.parquet"))
    evict(root)
    t, total = time.perf_counter(), 0
    for p in files:
        with open(p, "rb", buffering=0) as fh:
            while block := fh.read(8 << 20):
                total += len(block)
        if total >= limit:
            break
    seq = total / (time.perf_counter() - t) / 1e6
    evict(root)
    rng = np.random.default_rng(0)
    sizes = [p.stat().st_size for p in files]
    picks = rng.integers(0, len(files), 2000)
    t = time.perf_counter()
    fds = {}
    try:
        for f in picks:
            fd = fds.get(f) or fds.setdefault(f, os.open(files[f], os.O_RDONLY))
            os.pread(fd, 4096, int(rng.integers(0, max(1, sizes[f] - 4096))) & ~4095)
    finally:
        for fd in fds.values():
            os.close(fd)
    return {"seq_mb_s": seq, "random_4k_per_s": len(picks) / (time.perf_counter() - t)}


def evaluation_set(n: int, examples: int, k: int) -> tuple[list[str], list[str]]:
    """(each example's matched key, every neighbour's key) of a fixed seeded evaluation set."""
    rows = np.random.default_rng(12345).integers(0, n, (examples, k))
    return [key_of(int(r)) for r in rows[:, 0]], [key_of(int(r)) for r in rows.ravel()]


def child(root: Path, examples: int, k: int, key_rows: int, repeats: int, cold: bool) -> dict:
    """One report's lookups in this fresh process: cold (once) or warm (best of ``repeats``)."""
    import hashlib

    from overlap_audit.index import content_boxes, load_index, load_manifest
    from overlap_audit.index.load import corpus_items
    from overlap_audit.matched import corpus_metadata

    manifest = load_manifest(root)
    n = manifest.n_given
    matched, neighbours = evaluation_set(n, examples, k)
    rows = np.random.default_rng(54321).integers(0, manifest.n_indexed, key_rows)
    import pyarrow.parquet  # noqa: F401 - imports are not the lookups' cost
    import xxhash  # noqa: F401

    content_boxes(root, []), corpus_metadata(root, []), corpus_items(root, [])
    load_index(root, load_faiss=False).keys[rows[:1]]
    opened = load_index(root, load_faiss=False)
    if cold:
        evict(root)
    t = time.perf_counter()
    opened.keys[rows]  # the first call in a process (a report's), before any repeat
    first_keys = time.perf_counter() - t
    work = {"open": lambda: load_index(root, load_faiss=False), "keys": lambda: opened.keys[rows],
            "boxes": lambda: content_boxes(root, matched), "matches": lambda: corpus_metadata(root, neighbours),
            "items": lambda: corpus_items(root, matched)}
    out: dict = {name: float("inf") for name in work}
    out.update({f"{name}_cpu": float("inf") for name in work})
    out["keys_first"] = first_keys
    for _ in range(1 if cold else repeats):  # the parts interleaved, so a burst of load spreads over them all
        for name, fn in work.items():
            if cold:
                evict(root)
            if name == "keys":  # keys are asked of an opened index (its opening is ``open``)
                opened = load_index(root, load_faiss=False)
                if cold:
                    evict(root)
            t, cpu = time.perf_counter(), time.process_time()
            got = fn()
            out[name] = min(out[name], time.perf_counter() - t)
            out[f"{name}_cpu"] = min(out[f"{name}_cpu"], time.process_time() - cpu)
            if name == "keys":
                assert len(got) == len(rows) and all(isinstance(key, str) for key in got)
                out["answer_keys"] = [got[:20].tolist(), hashlib.sha256("\n".join(got).encode()).hexdigest()]
            if name == "boxes":
                assert len(got) == len(set(matched)), "every matched item has a content box"
                out["answer"] = sorted((key, box.to_dict()) for key, box in got.items())[:50]
            if name == "matches":
                assert len(got) == len(set(neighbours))
                out["answer_matches"] = sorted((key, sorted(row.items())) for key, row in got.items())[:50]
    return out


def code_root(root: Path, name: str) -> Path:
    """The index directory a code finishes: its own, beside the shared shards (hard links), so each code's
    finished files stay while the other's are measured."""
    if name == "this":
        return root
    own = root.with_name(f"{root.name}-{name}")
    (own / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    for p in (root / SHARD_DIR).iterdir():
        if not (own / SHARD_DIR / p.name).exists():
            os.link(p, own / SHARD_DIR / p.name)
    return own


def measure(root: Path, name: str, code: str, args) -> dict:
    """Finish ``root``'s shards with ``code`` (unless ``--keep`` finds them finished by it already); returns the
    finish's seconds and peak memory and a function that measures one cold and one warm process."""
    env = dict(os.environ, PYTHONPATH=code, OMP_NUM_THREADS="1")

    def call(*extra: str) -> dict:
        r = subprocess.run([sys.executable, __file__, "--child", str(root), "--examples", str(args.examples),
                            "--k", str(args.k), "--key-rows", str(args.key_rows), "--repeats", str(args.repeats),
                            *extra], capture_output=True,
                           text=True, env=env)
        if r.returncode:
            raise RuntimeError(r.stderr.strip()[-2000:])
        return json.loads(r.stdout.strip().splitlines()[-1])

    marker = root / f"finished.{name}"
    if args.keep and marker.exists():
        finished = json.loads(marker.read_text())
    else:
        finished = call("--finish")
        marker.write_text(json.dumps(finished))

    def once() -> dict:
        evict(root)
        cold = call("--cold")
        for p in root.rglob("*"):  # back into the page cache, as the warm process expects (without mapping them)
            if p.is_file() and p.stat().st_size < CACHE_FILES_UNDER:
                with open(p, "rb", buffering=0) as fh:
                    while fh.read(8 << 20):
                        pass
        return {"cold": cold, "warm": call()}

    size = sum(p.stat().st_size for p in root.iterdir() if p.is_file() and not p.name.startswith(("finished.",
                                                                                                     DONE)))
    return {"finish_s": finished["finish_s"], "finish_peak_mb": finished["peak_mb"], "bytes_beside_shards": size,
            "once": once}


def median_runs(runs: list[dict]) -> dict:
    """Each part's median over the runs (the answers of the first)."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            out[key] = float(np.median([r[key] for r in runs]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6, 1e7])
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--key-rows", type=int, default=50_000, help="index rows whose keys are asked at once")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", default=None, help="another overlap-audit checkout, measured on the same shards")
    ap.add_argument("--work-dir", default=None, help="where the synthetic indexes go (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="append results to this JSON-lines file")
    ap.add_argument("--baseline-max", type=float, default=1e7,
                    help="measure the baseline up to this size only (the previous code's finish held every key)")
    ap.add_argument("--keep", action="store_true",
                    help="keep each size's shards in --work-dir, and reuse shards a previous run kept")
    ap.add_argument("--write-workers", type=int, default=1,
                    help="processes that write a size's shards (each shard is seeded by its number: the same shards)")
    ap.add_argument("--finish-only", action="store_true", help="time the finish (and its peak memory) only")
    ap.add_argument("--runs", type=int, default=3,
                    help="cold and warm processes per code, the codes interleaved; each part's median is reported")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--finish", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        root = Path(args.child)
        result = ({"finish_s": finish(root), "peak_mb": peak_rss_mb()} if args.finish
                  else child(root, args.examples, args.k, args.key_rows, args.repeats, args.cold))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="overlap-audit-report-scale-") as tmp:
        run(args, Path(args.work_dir) if args.work_dir else Path(tmp))


def run(args: argparse.Namespace, work_dir: Path) -> None:
    here = str(Path(__file__).resolve().parent.parent)
    codes = {"this": here, **({"baseline": str(Path(args.baseline).resolve())} if args.baseline else {})}
    print(f"# {os.cpu_count()} CPUs; {args.examples} examples x k={args.k}; keys of {args.key_rows} rows; "
          f"warm: best of {args.repeats}; cold: files evicted with posix_fadvise; "
          f"each part the median of {args.runs} processes per code, the codes interleaved")
    print("| corpus | code | cache | open s | keys s | boxes s | matches s | items s | outside the search s | "
          "ratio to first size | CPU s | CPU ratio | µs per key | keys, first call s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    first: dict = {}
    for size in args.sizes:
        n = int(size)
        root = work_dir / f"n{n}"
        if args.keep and (root / DONE).exists():
            wrote = float((root / DONE).read_text())
        else:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            wrote = write_in_processes(root, n, args.write_workers)
            (root / DONE).write_text(str(wrote))
        rates = disk_rates(root)
        results = {name: measure(code_root(root, name), name, code, args) for name, code in codes.items()
                   if name == "this" or n <= args.baseline_max}
        if not args.finish_only:  # the codes interleaved, run after run; each part's median over the runs
            runs: dict = {name: [] for name in results}
            for _ in range(args.runs):
                for name, res in results.items():
                    runs[name].append(res["once"]())
            for name, res in results.items():
                del res["once"]
                res.update({cache: median_runs([r[cache] for r in runs[name]]) for cache in ("cold", "warm")})
        if args.finish_only:
            for name, res in results.items():
                print(f"| {n:,} | {name} | finish {res['finish_s']:.0f} s, peak RSS {res['finish_peak_mb']:.0f} MB |",
                      flush=True)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
                shutil.rmtree(code_root(root, "baseline"), ignore_errors=True)
            continue
        for name, res in results.items():
            for cache in ("cold", "warm"):
                r = res[cache]
                total = sum(r[p] for p in PARTS)
                cpu = sum(r[f"{p}_cpu"] for p in PARTS)
                base = first.setdefault((name, cache), total)
                cpu_base = first.setdefault((name, cache, "cpu"), cpu)
                print(f"| {n:,} | {name} | {cache} | " + " | ".join(f"{r[p]:.3f}" for p in PARTS)
                      + f" | {total:.3f} | {total / base:.2f} | {cpu:.3f} | {cpu / cpu_base:.2f} "
                      f"| {r['keys'] / args.key_rows * 1e6:.2f} "
                      f"| {r['keys_first']:.3f} |", flush=True)
        if len(results) == 2:
            same = all(results["this"][c][a] == results["baseline"][c][a] for c in ("warm", "cold")
                       for a in ("answer", "answer_matches", "answer_keys"))
            print(f"| {n:,} | | | same answers as the baseline: {same} | | | | | | | | | | |")
        print(f"| {n:,} | | | disk: {rates['seq_mb_s']:.0f} MB/s sequential, {rates['random_4k_per_s']:.0f} "
              f"random 4 KiB reads/s; shards written in {wrote:.0f} s; finish "
              + ", ".join(f"{k} {v['finish_s']:.0f} s, peak RSS {v['finish_peak_mb']:.0f} MB "
                          f"({v['bytes_beside_shards'] / n:.0f} B/item beside the shards)"
                          for k, v in results.items()) + " | | | | | | | | | | |", flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                kept = {name: {k: v for k, v in res.items() if k != "once"} for name, res in results.items()}
                fh.write(json.dumps({"n": n, "disk": rates, "shards_s": wrote, **kept}) + "\n")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(root.with_name(f"{root.name}-baseline"), ignore_errors=True)


if __name__ == "__main__":
    main()
