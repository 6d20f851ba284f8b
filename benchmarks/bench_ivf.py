"""The approximate float index against exact flat search at 10^6-10^7 256-d vectors: build time, memory,
queries/s and recall@1 of planted copies, with nprobe and the re-ranked shortlist calibrated at build time
(``index.ann.calibrate_probes``), and the exact flat scan's rate measured in the same run.

Corpus: synthetic clustered unit vectors shaped like clipdup's (a shared mean direction, a decaying
spectrum, clusters of log-normal sizes; ``corpus_stats`` prints how they compare with clipdup vectors of
the development photo tiles). Planted copies: a corpus row moved to a cosine drawn from the cosines that
clipdup measures between the development set's photo tiles and their planted copies (bench_planted's
families: resize, crop, brightness, JPEG), in a direction drawn from the same spectrum. The index is built
through the project's own path (``index_from_vector_blocks`` then ``finish_from_shards``), which calibrates
on 1,000 such copies (500 calibrate, 500 measure: the manifest's recall); the queries timed here are
another 10,000 copies of other rows, drawn with another seed.

Exact flat search is FAISS's brute-force kNN over the same vectors (``index.search.stream_search`` over the
memory-mapped vectors.npy in blocks of 100,000 rows: the flat index's arithmetic without holding the
corpus in memory), on a subsample of the queries. Each measurement runs in its own process (peak RSS =
its VmHWM).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_ivf --sizes 1e6 1e7 [--queries 10000] [--exact-queries 500]
        [--work-dir DIR] [--json FILE]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/bench_ivf.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_ivf", *sys.argv[1:]])

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

from benchmarks.bench_scale import peak_rss_mb

DIM = 256
SHARD = 100_000
CLUSTER_SIZE = 200  # mean items per cluster
SPREAD = 0.8  # within-cluster spread relative to the spread of the cluster centres
MEAN_NORM = 0.3  # the shared mean direction (clipdup's vectors have one: their mean has norm ~0.23)
RECALL_COPIES = 2000  # copies stored with the shards for the build's calibration (it uses 1,000)


def real_copy_cosines(seed: int = 0) -> np.ndarray:
    """clipdup cosines between the development set's photo tiles and their planted copies (bench_planted)."""
    from benchmarks.bench_planted import _views, planted_set
    from overlap_audit.demos.synthetic import bundled_photos
    from overlap_audit.detectors import get_detector

    det = get_detector("clipdup")
    data = planted_set(bundled_photos(), seed=seed)
    a, alow, _, _ = _views(det, data.corpus)
    b, blow, _, _ = _views(det, data.planted)
    keep = ~alow & ~blow
    return (a * b).sum(axis=1)[keep].astype(np.float64)


class Model:
    """The clustered distribution: basis, spectrum, mean and cluster centres, all from one seed."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng([seed, 1])
        self.basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)
        scale = 1.0 / np.sqrt(np.arange(1, DIM + 1))  # variance ∝ 1/rank: a few directions dominate
        self.scale = (scale / np.linalg.norm(scale)).astype(np.float32)
        mean = rng.standard_normal(DIM)
        self.mean = (MEAN_NORM * mean / np.linalg.norm(mean)).astype(np.float32)
        n_clusters = max(1, n // CLUSTER_SIZE)
        weights = rng.lognormal(0.0, 1.0, n_clusters)
        self.cdf = np.cumsum(weights) / weights.sum()
        self.centres = self.mean + self.shaped(rng, n_clusters)

    def shaped(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return (rng.standard_normal((n, DIM), dtype=np.float32) * self.scale) @ self.basis

    def block(self, seed: int, start: int, stop: int) -> np.ndarray:
        rng = np.random.default_rng([seed, 2, start])
        cluster = np.minimum(np.searchsorted(self.cdf, rng.random(stop - start)), len(self.cdf) - 1)
        return unit(self.centres[cluster] + SPREAD * self.shaped(rng, stop - start))

    def copies(self, rng: np.random.Generator, originals: np.ndarray, cosines: np.ndarray) -> np.ndarray:
        """Each original moved to exactly the given cosine, along shaped noise orthogonal to it."""
        noise = self.shaped(rng, len(originals))
        noise -= (noise * originals).sum(axis=1, keepdims=True) * originals
        noise = unit(noise)
        c = cosines[:, None].astype(np.float32)
        return unit(c * originals + np.sqrt(np.maximum(0.0, 1.0 - c * c)) * noise)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def generate(root: Path, n: int, n_queries: int, cosines: np.ndarray, seed: int = 0) -> None:
    """Shards of the clustered corpus with RECALL_COPIES build-time copies, and ``n_queries`` timed copies of
    other rows (queries.npy, their rows in rows.npy)."""
    from overlap_audit.index import index_from_vector_blocks

    model = Model(n, seed)
    rng = np.random.default_rng([seed, 3])
    picked = rng.choice(n, size=min(n, RECALL_COPIES + n_queries), replace=False)
    recall_rows, rows = np.sort(picked[:RECALL_COPIES]), np.sort(picked[RECALL_COPIES:])
    queries = np.zeros((len(rows), DIM), np.float32)
    rng_recall, rng_query = np.random.default_rng([seed, 4]), np.random.default_rng([seed, 5])

    def blocks():
        for start in range(0, n, SHARD):
            stop = min(n, start + SHARD)
            block = model.block(seed, start, stop)
            copies = [None] * (stop - start)
            hit = recall_rows[(recall_rows >= start) & (recall_rows < stop)]
            for r, q in zip(hit, model.copies(rng_recall, block[hit - start], rng_recall.choice(cosines, len(hit)))):
                copies[r - start] = q
            at = np.nonzero((rows >= start) & (rows < stop))[0]
            queries[at] = model.copies(rng_query, block[rows[at] - start], rng_query.choice(cosines, len(at)))
            yield [str(i) for i in range(start, stop)], block, copies

    index_from_vector_blocks(root, blocks(), dim=DIM, shard_size=SHARD, build=False)
    np.save(root / "queries.npy", queries)
    np.save(root / "rows.npy", rows)


def corpus_stats(root: Path, sample: int = 2000) -> dict:
    """The first shard's shape beside clipdup's: mean pairwise cosine, its spread, the mean's norm, and each
    sampled item's nearest other item within the shard."""
    from overlap_audit.index import iter_shard_vectors
    from overlap_audit.values import DetectorInfo

    info = DetectorInfo.from_dict(json.loads((root / "progress.json").read_text())["detector"])
    _, block = next(iter(iter_shard_vectors(root, info)))
    s = block[:sample] @ block.T
    s[np.arange(len(s)), np.arange(len(s))] = -2
    pairs = s[:, :sample][np.triu_indices(min(sample, len(block)), 1)]
    return {"pair_mean": float(pairs.mean()), "pair_sd": float(pairs.std()),
            "mean_norm": float(np.linalg.norm(block.mean(axis=0))),
            "nn_quartiles": [float(x) for x in np.quantile(s.max(axis=1), [0.25, 0.5, 0.75])],
            "nn_within": len(block)}


def child(kind: str, root: Path, n_exact: int) -> dict:
    """One measurement in its own process."""
    queries, rows = np.load(root / "queries.npy"), np.load(root / "rows.npy")
    out: dict = {"kind": kind}
    if kind == "build":
        from overlap_audit.index import finish_from_shards

        t = time.perf_counter()
        m = finish_from_shards(root, index_type="ivfpq")
        out.update({"build_s": time.perf_counter() - t, "params": m.extra["index_params"],
                    "manifest_recall": {k: v for k, v in m.extra["recall"].items() if k != "calibration"},
                    "calibration": m.extra["recall"].get("calibration"),
                    "index_bytes": (root / m.index_file).stat().st_size,
                    "vectors_bytes": (root / m.vectors_file).stat().st_size})
    elif kind == "ivf":
        from overlap_audit.index import load_index, search

        corpus = load_index(root)
        ids = [str(i) for i in range(len(queries))]
        search(corpus, ids[:100], queries[:100], k=10)  # warm: the first gathers from vectors.npy
        t = time.perf_counter()
        nb = search(corpus, ids, queries, k=10)
        out["search_s"] = time.perf_counter() - t
        out["qps"] = len(queries) / out["search_s"]
        out["top1_rows"] = [int(x) for x in nb.ids[:, 0]]
        out["top1_sims"] = [float(x) for x in nb.similarities[:, 0]]
        out["index_in_memory_bytes"] = (root / corpus.manifest.index_file).stat().st_size
    elif kind == "exact":
        import faiss

        from overlap_audit.index.search import stream_search

        from overlap_audit.index.manifest import load_manifest

        vectors = np.load(root / load_manifest(root).vectors_file, mmap_mode="r")
        sub = queries[:n_exact]
        # FAISS 1.15 computes a kNN without BLAS below a threshold (measured here: 300 queries of 256-d ran at
        # 3 GFLOP/s, 500 at 15-38); the exact baseline gets the BLAS path whatever the subsample
        faiss.cvar.distance_compute_blas_threshold = 20
        faiss.knn(sub[:8], sub[:64], 2, metric=faiss.METRIC_INNER_PRODUCT)  # warm up BLAS
        blocks = ((s, np.asarray(vectors[s:s + SHARD])) for s in range(0, len(vectors), SHARD))
        t = time.perf_counter()
        sims, found = stream_search(sub, blocks, 10, "cosine", DIM)
        out["search_s"] = time.perf_counter() - t
        out["qps"] = len(sub) / out["search_s"]
        out["top1_rows"] = [int(x) for x in found[:, 0]]
        out["top1_sims"] = [float(x) for x in sims[:, 0]]
        out["gflops"] = 2 * len(sub) * len(vectors) * DIM / out["search_s"] / 1e9
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_child(kind: str, root: Path, n_exact: int) -> dict:
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_ivf", "--child", kind, str(root), str(n_exact)],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{kind} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(root: Path, n: int, args: argparse.Namespace, cosines: np.ndarray) -> dict:
    t = time.perf_counter()
    if not (root / "queries.npy").exists():
        shutil.rmtree(root, ignore_errors=True)
        generate(root, n, args.queries, cosines)
    res: dict = {"n": n, "generate_s": time.perf_counter() - t, "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                 "stats": corpus_stats(root)}
    print(f"## n = {n:,}: generated in {res['generate_s']:.0f} s; {json.dumps(res['stats'])}", flush=True)
    res["build"] = run_child("build", root, args.exact_queries)
    print(f"build {json.dumps(res['build'])}", flush=True)
    res["ivf"] = run_child("ivf", root, args.exact_queries)
    res["exact"] = run_child("exact", root, args.exact_queries)
    ivf, exact = res["ivf"], res["exact"]
    m = len(exact["top1_sims"])
    # recall@1 against exact search (tie-aware, as the manifest measures it) on the exact subsample, and
    # the planted row found at rank 1 on every query
    ivf_sims, exact_sims = np.array(ivf["top1_sims"][:m]), np.array(exact["top1_sims"])
    rows = np.load(root / "rows.npy")
    res["summary"] = {
        "n": n, "nlist": res["build"]["params"]["nlist"], "nprobe": res["build"]["params"]["nprobe"],
        "shortlist": res["build"]["params"].get("shortlist"), "build_s": res["build"]["build_s"],
        "build_peak_rss_mb": res["build"]["peak_rss_mb"], "index_bytes": res["build"]["index_bytes"],
        "vectors_bytes_on_disk": res["build"]["vectors_bytes"], "ivf_qps": ivf["qps"],
        "ivf_peak_rss_mb": ivf["peak_rss_mb"], "exact_qps": exact["qps"], "exact_gflops": exact["gflops"],
        "exact_peak_rss_mb": exact["peak_rss_mb"], "speedup": ivf["qps"] / exact["qps"],
        "recall_at_1_vs_exact": float((ivf_sims >= exact_sims - 1e-5).mean()), "n_exact_queries": m,
        "planted_top1_ivf": float((np.array(ivf["top1_rows"]) == rows).mean()),
        "planted_top1_exact": float((np.array(exact["top1_rows"]) == rows[:m]).mean()),
        "planted_top1_ivf_on_exact_subsample": float((np.array(ivf["top1_rows"][:m]) == rows[:m]).mean()),
        "n_queries": len(rows), "manifest_recall_at_1": res["build"]["manifest_recall"].get("recall_at_1"),
        "calibration_recall_at_1": (res["build"]["calibration"] or {}).get("calibration_recall_at_1")}
    print(json.dumps(res["summary"]), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e6])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--exact-queries", type=int, default=500, help="the exact flat scan's query subsample")
    ap.add_argument("--work-dir", default=None, help="where the corpora go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep each corpus (a rerun measures it again)")
    ap.add_argument("--json", default=None, help="append results to this JSON-lines file")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "DIR", "N_EXACT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), int(args.child[2]))))
        return
    cosines = real_copy_cosines()
    print(f"# clipdup copy cosines (development photo tiles, {len(cosines)}): quartiles "
          f"{np.round(np.quantile(cosines, [0.01, 0.25, 0.5, 0.75]), 3).tolist()} (1%, 25%, 50%, 75%); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    with tempfile.TemporaryDirectory(prefix="overlap-audit-ivf-", dir=args.work_dir) as tmp:
        for size in args.sizes:
            n = int(size)
            root = (Path(args.work_dir) / f"n{n}") if args.keep and args.work_dir else Path(tmp) / f"n{n}"
            res = measure(root, n, args, cosines)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(res | {"ivf": {k: v for k, v in res["ivf"].items() if "top1" not in k},
                                               "exact": {k: v for k, v in res["exact"].items() if "top1" not in k}})
                             + "\n")
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
