"""Corpus-scale search: build time, bytes per vector, queries/s, recall of planted near-duplicates and peak
memory for each index type and for exact streaming, at growing corpus sizes; and exact search's GFLOP/s
beside this machine's matrix-multiply peak measured in the same run.

Synthetic unit vectors (dimension 256); the queries are near-duplicates (cosine ≈ 0.9) of random corpus
rows, so recall@1 = the fraction whose top-1 is the planted row. Shards are generated block by block (the
corpus never sits in this process's memory); each measurement runs in a fresh subprocess so that its peak
RSS (VmHWM) is its own.

    python benchmarks/bench_scale.py --sizes 1e4 1e5 1e6 [--queries 10000] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 256
SIGMA = 0.03  # per-dimension noise: cosine to the original about 0.9
SHARD = 100_000


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def generate(root: Path, n: int, n_queries: int, seed: int = 0) -> None:
    from overlap_audit.index import index_from_vector_blocks

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=n_queries, replace=n < n_queries))
    queries = np.zeros((n_queries, DIM), np.float32)

    def blocks():
        for s, start in enumerate(range(0, n, SHARD)):
            stop = min(start + SHARD, n)
            block = unit(np.random.default_rng(seed * 1_000_003 + s).standard_normal((stop - start, DIM),
                                                                                    dtype=np.float32))
            hit = np.nonzero((rows >= start) & (rows < stop))[0]
            noise = np.random.default_rng(seed + 7 + s).standard_normal((len(hit), DIM), dtype=np.float32)
            queries[hit] = unit(block[rows[hit] - start] + SIGMA * noise)
            yield [str(i) for i in range(start, stop)], block, None

    index_from_vector_blocks(root, blocks(), dim=DIM, shard_size=SHARD, build=False)
    np.save(root / "n.npy", np.array(n))
    np.save(root / "queries.npy", queries)
    np.save(root / "rows.npy", rows)


def child(kind: str, root: Path) -> dict:
    """One measurement, in its own process."""
    from overlap_audit.index import finish_from_shards, load_index, search

    queries, rows = np.load(root / "queries.npy"), np.load(root / "rows.npy")
    out: dict = {"kind": kind}
    t0 = time.perf_counter()
    if kind == "stream":
        # the streaming engine itself over the shards (what `report --exact` runs): no index, no id table
        from overlap_audit.index import iter_shard_vectors
        from overlap_audit.index.search import stream_search
        from overlap_audit.values import DetectorInfo

        info = DetectorInfo.from_dict(json.loads((root / "progress.json").read_text())["detector"])
        import faiss

        faiss.knn(queries[:8], queries[:64], 2, metric=faiss.METRIC_INNER_PRODUCT)  # warm up OpenMP/BLAS
        import pyarrow.parquet as pq

        pq.read_table(root / "shards" / "shard-000000.parquet",
                      columns=["low_information"])  # warm up pyarrow's reader (a one-time 0.4 s)
        t1 = time.perf_counter()
        sims, found = stream_search(queries, iter_shard_vectors(root, info), 10, info.metric, info.dim)
        out["search_s"] = time.perf_counter() - t1
        out["qps"] = len(queries) / out["search_s"]
        out["recall_at_1"] = float((found[:, 0] == rows).mean())
        n = int(np.load(root / "n.npy"))
        out["gflops"] = 2 * len(queries) * n * DIM / out["search_s"] / 1e9
        out["peak_rss_mb"] = peak_rss_mb()
        return out
    else:
        for f in ("manifest.json", "index.faiss", "vectors.npy"):
            (root / f).unlink(missing_ok=True)
        finish_from_shards(root, index_type=kind)
        out["build_s"] = time.perf_counter() - t0
        corpus = load_index(root)
        size = (root / "index.faiss").stat().st_size
        out["bytes_per_vector"] = size / len(corpus)
        if (root / "vectors.npy").exists():
            out["disk_bytes_per_vector_rerank"] = (root / "vectors.npy").stat().st_size / len(corpus)
    ids = [str(i) for i in range(len(queries))]
    t1 = time.perf_counter()
    nb = search(corpus, ids, queries, k=10, exact_stream=(kind == "stream"))
    out["search_s"] = time.perf_counter() - t1
    out["qps"] = len(queries) / out["search_s"]
    out["recall_at_1"] = float((nb.ids[:, 0] == np.array([str(r) for r in rows], dtype=object)).mean())
    n = len(corpus)
    if kind in ("flat", "stream"):
        out["gflops"] = 2 * len(queries) * n * DIM / out["search_s"] / 1e9
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM: reset by exec, unlike ru_maxrss, which a child
    inherits from its parent on Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(repeats: int = 3) -> float:
    a = unit(np.random.default_rng(0).standard_normal((4096, DIM), dtype=np.float32))
    b = unit(np.random.default_rng(1).standard_normal((65536, DIM), dtype=np.float32))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b.T
        best = min(best, time.perf_counter() - t)
    return 2 * 4096 * 65536 * DIM / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e4, 1e5, 1e6])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--types", nargs="+", default=["flat", "stream", "ivfpq", "hnsw"])
    ap.add_argument("--hnsw-max", type=float, default=1e6, help="skip HNSW above this size (build time)")
    ap.add_argument("--work-dir", "--workdir", dest="work_dir", default=None,
                    help="where the synthetic shards go (default: a temporary folder, removed at the end)")
    ap.add_argument("--json", default=None, help="append results to this JSON-lines file")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    if args.work_dir is None:
        with tempfile.TemporaryDirectory(prefix="overlap-audit-scale-") as tmp:
            run(args, Path(tmp))
    else:
        run(args, Path(args.work_dir))


def run(args: argparse.Namespace, work_dir: Path) -> None:
    """Every size and index type of ``args``, the synthetic corpora under ``work_dir``."""
    peak = matmul_peak()
    print(f"# {os.cpu_count()} CPUs; numpy sgemm (4096x256 @ 256x65536) peak {peak:.1f} GFLOP/s; "
          f"{args.queries:,} queries, k=10, dim {DIM}")
    print("| corpus | index | build s | bytes/vector | queries/s | recall@1 planted | peak RSS MB | GFLOP/s (% of sgemm) |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        n = int(size)
        root = work_dir / f"n{n}"
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        generate(root, n, args.queries)
        gen_s = time.perf_counter() - t
        for kind in args.types:
            if kind == "hnsw" and n > args.hnsw_max:
                print(f"| {n:,} | hnsw | skipped (build time; see notes) | | | | | |")
                continue
            r = subprocess.run([sys.executable, __file__, "--child", kind, str(root)], capture_output=True, text=True)
            if r.returncode:
                print(f"| {n:,} | {kind} | failed: {r.stderr.strip().splitlines()[-1][:80]} | | | | | |")
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res.update({"n": n, "generate_s": gen_s, "sgemm_gflops": peak})
            gfl = f"{res['gflops']:.1f} ({100 * res['gflops'] / peak:.0f}%)" if "gflops" in res else "–"
            bpv = f"{res['bytes_per_vector']:.0f}" if "bytes_per_vector" in res else "(shards only)"
            if "disk_bytes_per_vector_rerank" in res:
                bpv += f" (+{res['disk_bytes_per_vector_rerank']:.0f} on disk)"
            print(f"| {n:,} | {kind} | {res.get('build_s', 0):.1f} | {bpv} | {res['qps']:,.0f} "
                  f"| {100 * res['recall_at_1']:.1f}% | {res['peak_rss_mb']:,.0f} | {gfl} |", flush=True)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(res) + "\n")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
