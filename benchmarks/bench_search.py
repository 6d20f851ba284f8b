"""Exact search throughput: FAISS flat indexes against a numpy brute-force baseline, in the same run.

Binary hashes (IndexBinaryFlat, 64 bits) and float vectors (IndexFlatIP, 256-d), random corpus and queries,
k = 5. The numpy baseline computes the same exact top-k (popcount via unpackbits + matmul, or a matmul) in
blocks. Reported as queries/s and the FAISS/numpy ratio.

    python benchmarks/bench_search.py [--corpus 200000] [--queries 2000]
"""

from __future__ import annotations

import argparse
import platform
import time

import faiss
import numpy as np


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def numpy_binary(corpus: np.ndarray, queries: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    cb = np.unpackbits(corpus, axis=1).astype(np.float32) * 2 - 1
    out = []
    for s in range(0, len(queries), block):
        qb = np.unpackbits(queries[s:s + block], axis=1).astype(np.float32) * 2 - 1
        out.append(topk(qb @ cb.T, k))  # agreement - disagreement = bits - 2 * hamming
    return np.concatenate(out)


def numpy_float(corpus: np.ndarray, queries: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    return np.concatenate([topk(queries[s:s + block] @ corpus.T, k) for s in range(0, len(queries), block)])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, q, k = args.corpus, args.queries, args.k
    print(f"# exact search, corpus {n:,}, {q:,} queries, k={k}; {platform.machine()}, faiss "
          f"{faiss.__version__} ({faiss.omp_get_max_threads()} threads)")
    print("| index | FAISS queries/s | numpy queries/s | ratio | top-1 agrees |")
    print("|---|---|---|---|---|")

    hashes = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
    qh = hashes[rng.choice(n, q, replace=False)].copy()
    qh[:, 0] ^= 1  # one bit off each corpus item: a unique nearest neighbour
    index = faiss.IndexBinaryFlat(64)
    index.add(hashes)
    (_, rows), t_faiss = timed(lambda: index.search(qh, k))
    ref, t_np = timed(lambda: numpy_binary(hashes, qh, k))
    print(f"| IndexBinaryFlat, 64-bit | {q / t_faiss:,.0f} | {q / t_np:,.0f} | {t_np / t_faiss:.1f}x "
          f"| {100 * (rows[:, 0] == ref[:, 0]).mean():.1f}% |")

    vecs = rng.standard_normal((n, 256), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    qv = vecs[rng.choice(n, q, replace=False)] + 0.01 * rng.standard_normal((q, 256), dtype=np.float32)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    findex = faiss.IndexFlatIP(256)
    findex.add(vecs)
    (_, frows), t_faiss = timed(lambda: findex.search(qv, k))
    fref, t_np = timed(lambda: numpy_float(vecs, qv, k))
    print(f"| IndexFlatIP, 256-d float32 | {q / t_faiss:,.0f} | {q / t_np:,.0f} | {t_np / t_faiss:.1f}x "
          f"| {100 * (frows[:, 0] == fref[:, 0]).mean():.1f}% |")


if __name__ == "__main__":
    main()
