"""Hash search at corpus scale: multi-index hash tables (``overlap_audit.index.mih``) against FAISS's exact
IndexBinaryFlat scan, 10^4 queries against 10^6 … 10^8 64-bit codes, at the phash threshold's radius
(9 bits) and at the first stage's (18 bits: ``verify.first_stage_threshold`` with RELAX = 2).

Corpus: uniform random 64-bit codes (seeded). Queries: half planted copies of random corpus rows with bits
flipped, the number drawn from the phash distances between the development set's corpus tiles and their
planted copies (``bench_planted.planted_set`` on the bundled photos, trimmed views); half unrelated uniform
codes. Real phash codes are not uniform: ``--real`` measures how clustered they are (bit balance, pairwise
distances, pairs within each radius) on the first ``--real-n`` Open Clip Art PNGs, against uniform codes.

Each measurement runs in a fresh subprocess, so its peak RSS (VmHWM, memory-mapped table pages included)
is its own. The flat baseline runs on a subset of the queries (``--flat-queries``, fewer at 10^8) and is reported as a
rate; it runs on one thread, as the tables' numpy search does (on a shared 2-core machine FAISS's two OpenMP
threads ran 4x slower than one).
The machine's own limits, in the same run: FAISS's popcount scan rate (codes/s, all threads) and numpy's
bitwise_count rate (one thread).

    python benchmarks/bench_hash_scale.py --sizes 1e6 1e7 1e8 [--queries 10000] [--real] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

K = 5
RADII = (9, 18)  # phash's threshold 1 - 9/64, and its first stage 1 - 2 * 9/64
BLOCK = 10_000_000


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def flip(words: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each word with counts[i] distinct random bits flipped."""
    out = words.copy()
    for i, c in enumerate(counts):
        mask = 0
        for b in rng.choice(64, int(c), replace=False):
            mask |= 1 << int(b)
        out[i] ^= np.uint64(mask)
    return out


# --- real phash codes ------------------------------------------------------------------------------------

def planted_distances(seed: int = 0) -> np.ndarray:
    """phash distances (bits) between the development set's corpus tiles and their planted copies."""
    from benchmarks.bench_planted import _views, planted_set
    from overlap_audit.demos.synthetic import bundled_photos
    from overlap_audit.detectors import get_detector

    det = get_detector("phash")
    data = planted_set(bundled_photos(), seed=seed)
    a, alow, _, _ = _views(det, data.corpus)
    b, blow, _, _ = _views(det, data.planted)
    d = np.bitwise_count(a.view("<u8").ravel() ^ b.view("<u8").ravel())
    return d[~alow & ~blow]


def real_clustering(n: int) -> dict:
    """How far real phash codes are from uniform: on the first n Open Clip Art PNGs (sorted paths)."""
    from PIL import Image

    from benchmarks.common import cache_dir, fetch_openclipart
    from overlap_audit.detectors import get_detector
    from overlap_audit.detectors.base import prepare

    det = get_detector("phash")
    paths = sorted(fetch_openclipart(cache_dir()).rglob("*.png"))[:n]
    xs = []
    for p in paths:
        with Image.open(p) as im:
            x, _ = prepare(det, im.convert("RGB"))
        xs.append(x)
    batch = np.stack(xs)
    codes = det.embed(batch).view("<u8").ravel()
    low = np.asarray(det.low_information(batch), bool)
    codes = codes[~low]
    d = np.bitwise_count(codes[:, None] ^ codes[None, :])[np.triu_indices(len(codes), 1)]
    bits = ((codes[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)
    weight = np.bitwise_count(codes)
    out = {"n": int(len(codes)), "low_information": int(low.sum()), "weight_32": float((weight == 32).mean()),
           "weight_min": int(weight.min()), "weight_max": int(weight.max()), "odd_distances": float((d % 2).mean()),
           "mean_distance": float(d.mean()),
           "sd_distance": float(d.std()), "bit_p_min": float(bits.min()), "bit_p_max": float(bits.max()),
           "distinct": int(len(np.unique(codes)))}
    for r in RADII + (12, 14):
        out[f"pairs_within_{r}"] = float((d <= r).mean())
        out[f"uniform_within_{r}"] = uniform_within(r)
    return out


def uniform_within(r: int) -> float:
    """P(distance <= r) between two uniform 64-bit codes."""
    from math import comb

    return sum(comb(64, i) for i in range(r + 1)) / 2.0 ** 64


# --- the synthetic corpus --------------------------------------------------------------------------------

def generate(root: Path, n: int, n_queries: int, distances: np.ndarray, seed: int = 0) -> None:
    rng = np.random.default_rng([seed, 2])  # not the corpus blocks' seeds: unrelated queries are new codes
    codes = np.lib.format.open_memmap(root / "codes.npy", mode="w+", dtype=np.uint64, shape=(n,))
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        codes[start:stop] = np.random.default_rng([seed, 1, start]).integers(0, 2 ** 64, stop - start, dtype=np.uint64)
    n_planted = n_queries // 2
    rows = rng.choice(n, n_planted, replace=False)
    planted = flip(np.asarray(codes[rows]), rng.choice(distances, n_planted), rng)
    unrelated = rng.integers(0, 2 ** 64, n_queries - n_planted, dtype=np.uint64)
    codes.flush()
    del codes
    np.save(root / "queries.npy", np.concatenate([planted, unrelated]))
    np.save(root / "rows.npy", rows)


def child(kind: str, root: Path, arg: int) -> dict:
    """One measurement in its own process: build, mih at a radius, or flat on ``arg`` queries."""
    from overlap_audit.index.mih import (build_mih, choose_substrings, expected_cost, radius_search, read_mih,
                                         tables_pay, write_mih)

    queries = np.load(root / "queries.npy")
    rows = np.load(root / "rows.npy")
    n = len(np.load(root / "codes.npy", mmap_mode="r"))
    out: dict = {"kind": kind, "n": n}
    if kind == "build":
        m = choose_substrings(n, RADII[0])
        codes = np.load(root / "codes.npy")
        t = time.perf_counter()
        mih = build_mih(codes, m)
        out["build_s"] = time.perf_counter() - t
        out.update(m=m, widths=list(mih.widths), table_bytes=mih.nbytes)
        del mih
        t = time.perf_counter()
        # as an index's finish does: each table built again and written before the next (write_s: both)
        write_mih(root / "index.mih", codes, m)
        out["write_s"] = time.perf_counter() - t
    elif kind == "mih":
        radius = arg
        t = time.perf_counter()
        mih = read_mih(root / "index.mih")
        # a warm page cache (the file was just written): what is measured is the search, not the disk
        dist, found = radius_search(mih, queries[:16], K, radius)
        out["open_s"] = time.perf_counter() - t
        nq = len(queries) if radius <= RADII[0] else int(min(len(queries), 400, 2e10 / n))
        sel = np.r_[0:nq // 2, len(queries) // 2:len(queries) // 2 + nq - nq // 2]  # planted and unrelated
        t = time.perf_counter()
        dist, found = radius_search(mih, queries[sel], K, radius)
        out["search_s"] = time.perf_counter() - t
        m = len(mih.widths)
        out.update(radius=radius, n_queries=int(nq), qps=nq / out["search_s"], m=m,
                   modelled=expected_cost(n, m, radius), tables_pay=tables_pay(n, m, radius))
        planted = sel < len(rows)
        out["planted_found"] = float((found[planted] == rows[sel[planted]][:, None]).any(axis=1).mean())
        out["unrelated_with_match"] = float((found[~planted, 0] >= 0).mean())
        out["unrelated_mean_found_capped_k"] = float((found[~planted] >= 0).sum(axis=1).mean())
    elif kind == "flat":
        import faiss

        # one thread, as the tables' numpy search: on this shared machine two OpenMP threads ran 4x slower
        faiss.omp_set_num_threads(1)
        codes = np.load(root / "codes.npy")
        t = time.perf_counter()
        index = faiss.IndexBinaryFlat(64)
        index.add(codes.view(np.uint8).reshape(-1, 8))
        out["build_s"] = time.perf_counter() - t
        del codes
        nq = int(min(arg, len(queries), max(100, 2e10 / n)))
        sel = np.r_[0:nq // 2, len(queries) // 2:len(queries) // 2 + nq - nq // 2]
        q = queries[sel].view(np.uint8).reshape(-1, 8)
        index.search(q[:8], K)
        t = time.perf_counter()
        dist, found = index.search(q, K)
        out["search_s"] = time.perf_counter() - t
        out.update(n_queries=int(nq), qps=nq / out["search_s"], codes_per_s=nq * n / out["search_s"],
                   threads=faiss.omp_get_max_threads())
        planted = sel < len(rows)
        out["planted_found"] = float((found[planted] == rows[sel[planted]][:, None]).any(axis=1).mean())
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def numpy_popcount_rate() -> float:
    """Codes per second of xor + bitwise_count + compare over 10^7 uint64 on one thread."""
    a = np.random.default_rng(0).integers(0, 2 ** 64, 10 ** 7, dtype=np.uint64)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        _ = np.bitwise_count(a ^ np.uint64(12345)) <= 9
        best = min(best, time.perf_counter() - t)
    return len(a) / best


def run_child(kind: str, root: Path, arg: int = 0) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", kind, str(root), str(arg)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if r.returncode:
        raise RuntimeError(f"{kind} failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--flat-queries", type=int, default=1000, help="queries for the flat baseline (a rate)")
    ap.add_argument("--real", action="store_true", help="also measure real phash codes' clustering")
    ap.add_argument("--real-n", type=int, default=2000)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--json", default=None, help="append every result to this JSON-lines file")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "DIR", "ARG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), int(args.child[2]))))
        return
    with tempfile.TemporaryDirectory(prefix="overlap-audit-hash-", dir=args.work_dir) as tmp:
        run(args, Path(tmp))


def emit(args, res: dict) -> None:
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(res) + "\n")


def run(args: argparse.Namespace, work: Path) -> None:
    print(f"`python benchmarks/bench_hash_scale.py {' '.join(sys.argv[1:])}` — {date.today().isoformat()}, "
          f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, load average at start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    distances = planted_distances()
    hist = np.bincount(distances, minlength=19)
    print(f"planted copies' phash distances (development set, {len(distances)} tiles): median "
          f"{np.median(distances):.0f}, within 9 bits {np.mean(distances <= 9):.1%}, within 18 "
          f"{np.mean(distances <= 18):.1%}, histogram 0..18: {hist[:19].tolist()}")
    emit(args, {"kind": "planted_distances", "values": distances.tolist()})
    if args.real:
        real = real_clustering(args.real_n)
        emit(args, {"kind": "real", **real})
        print("real phash codes (Open Clip Art, first {n} PNGs, {low} low-information left out): {distinct} "
              "distinct; mean pairwise distance {mean:.1f} ± {sd:.1f} bits (uniform 32 ± 4); bit frequencies "
              "{pmin:.2f}–{pmax:.2f}; {w32:.0%} have exactly 32 bits set (weights {wmin}–{wmax}), {odd:.1%} of "
              "pairwise distances odd".format(w32=real["weight_32"], wmin=real["weight_min"], wmax=real["weight_max"],
                                              odd=real["odd_distances"], n=real["n"], low=real["low_information"],
                                              distinct=real["distinct"],
                                              mean=real["mean_distance"], sd=real["sd_distance"],
                                              pmin=real["bit_p_min"], pmax=real["bit_p_max"]))
        for r in (9, 12, 14, 18):
            got, uniform = real[f"pairs_within_{r}"], real[f"uniform_within_{r}"]
            print(f"  pairs within {r} bits: {got:.2e} (uniform {uniform:.2e}, ×{got / uniform:.0f})")
    rate = numpy_popcount_rate()
    print(f"numpy xor+bitwise_count+compare: {rate / 1e6:,.0f} M codes/s (one thread)")
    print()
    print("| corpus | search | radius | queries | queries/s | × flat | planted found | unrelated with a match "
          "| peak RSS MB | build s (write s) | bytes/item |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        n = int(size)
        root = work / f"n{n}"
        root.mkdir()
        generate(root, n, args.queries, distances)
        flat = run_child("flat", root, args.flat_queries)
        emit(args, flat)
        build = run_child("build", root)
        emit(args, build)
        print(f"| {n:,} | flat (FAISS, {flat['threads']} thread) | – | {flat['n_queries']:,} | {flat['qps']:,.0f} "
              f"| 1 | {flat['planted_found']:.1%} | (all) | {flat['peak_rss_mb']:,.0f} | {flat['build_s']:.1f} | 8 |"
              f"  <!-- {flat['codes_per_s'] / 1e9:.2f} G codes/s -->", flush=True)
        for radius in RADII:
            res = run_child("mih", root, radius)
            emit(args, {**res, "build": build})
            print(f"| {n:,} | mih m={res['m']} (1 thread) | {radius} | {res['n_queries']:,} | {res['qps']:,.0f} "
                  f"| {res['qps'] / flat['qps']:.1f} | {res['planted_found']:.1%} | {res['unrelated_with_match']:.1%} "
                  f"| {res['peak_rss_mb']:,.0f} | {build['build_s']:.1f} ({build['write_s']:.1f}) "
                  f"| {8 + build['table_bytes'] / n:.0f} |  <!-- model: {res['modelled'][0]:,.0f} lookups, "
                  f"{res['modelled'][1]:,.0f} candidates/query; tables_pay={res['tables_pay']} -->", flush=True)
        shutil.rmtree(root)
    print(f"\nload average at end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
