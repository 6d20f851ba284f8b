"""Exact k-nearest-neighbour search with one tie rule, over an in-memory index or streamed shards.

Every result is ordered by similarity, most similar first, and among equal similarities by corpus row,
lowest first (FAISS's flat indexes keep the lowest ids among ties at the k-th place; we also order within
ties, which FAISS does not). So a flat index and a stream over the same shards give identical answers.

Streaming (``stream_search``) makes the queries the small side: each corpus shard is read, searched
against every query in one FAISS brute-force call, and merged into a running top-k, so memory is bounded
by the queries plus one shard whatever the corpus size (the way DataComp deduplicated 12.8B images
against its evaluation sets).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

NO_ROW = -1


def order_topk(sims: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k best of each row of candidates: similarity descending, then corpus row ascending.

    Missing candidates (row −1) sort last.
    """
    sims = np.where(rows == NO_ROW, -np.inf, sims)
    big_row = np.where(rows == NO_ROW, np.iinfo(np.int64).max, rows)
    order = np.lexsort((big_row, -sims), axis=-1)[:, :k]
    out_sims = np.take_along_axis(sims, order, axis=1)
    out_rows = np.take_along_axis(rows, order, axis=1)
    return out_sims, out_rows


def merge_topk(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int):
    """Merge two top-k candidate sets (sims, rows) of the same queries."""
    return order_topk(np.concatenate([a[0], b[0]], axis=1), np.concatenate([a[1], b[1]], axis=1), k)


def similarity_from_faiss(values: np.ndarray, metric: str, dim: int) -> np.ndarray:
    """FAISS's raw scores as similarities: inner products as they are; Hamming distances as 1 − d/bits."""
    if metric == "hamming":
        return (1.0 - values.astype(np.float64) / dim).astype(np.float32)
    return values.astype(np.float32)


def search_index(index, queries: np.ndarray, k: int, metric: str, dim: int,
                 batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Search a FAISS index; returns (similarities, rows) in the canonical order, row −1 where none."""
    n = len(queries)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    rows = np.full((n, k), NO_ROW, dtype=np.int64)
    kk = min(k, int(index.ntotal))
    if n == 0 or kk == 0:
        return sims, rows
    dtype = np.uint8 if metric == "hamming" else np.float32
    for start in range(0, n, batch_size):
        chunk = np.ascontiguousarray(queries[start:start + batch_size], dtype=dtype)
        values, found = index.search(chunk, kk)
        s = similarity_from_faiss(values, metric, dim)
        s, r = order_topk(s, found.astype(np.int64), kk)
        sims[start:start + len(chunk), :kk] = s
        rows[start:start + len(chunk), :kk] = r
    return sims, rows


def knn_block(queries: np.ndarray, block: np.ndarray, k: int, metric: str, dim: int,
              gpu_resources=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query within one block of corpus vectors, without copying the block into an
    index: FAISS's brute-force kNN (BLAS for inner products, popcount for Hamming; faiss.knn_gpu on a GPU)."""
    import faiss

    kk = min(k, len(block))
    if metric == "hamming":
        values, rows = faiss.knn_hamming(np.ascontiguousarray(queries, dtype=np.uint8),
                                         np.ascontiguousarray(block, dtype=np.uint8), kk)
    elif gpu_resources is not None:
        values, rows = faiss.knn_gpu(gpu_resources, np.ascontiguousarray(queries, dtype=np.float32),
                                     np.ascontiguousarray(block, dtype=np.float32), kk,
                                     metric=faiss.METRIC_INNER_PRODUCT)
    else:
        values, rows = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32),
                                 np.ascontiguousarray(block, dtype=np.float32), kk, metric=faiss.METRIC_INNER_PRODUCT)
    return order_topk(similarity_from_faiss(values, metric, dim), rows.astype(np.int64), kk)


def stream_search(queries: np.ndarray, blocks: Iterable[tuple[int, np.ndarray]], k: int, metric: str, dim: int,
                  *, gpu_resources=None, query_batch: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query over corpus blocks streamed past it.

    ``blocks`` yields (first corpus row of the block, block vectors); each block is searched against all
    queries (in batches of ``query_batch``) and merged into the running top-k.
    """
    n = len(queries)
    best = (np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), NO_ROW, dtype=np.int64))
    for first_row, vectors in blocks:
        if len(vectors) == 0 or n == 0:
            continue
        for start in range(0, n, query_batch):
            stop = min(n, start + query_batch)
            s, r = knn_block(queries[start:stop], vectors, k, metric, dim, gpu_resources)
            r = np.where(r == NO_ROW, NO_ROW, r + first_row)
            merged = merge_topk((best[0][start:stop], best[1][start:stop]), (s, r), k)
            best[0][start:stop], best[1][start:stop] = merged
    return best
