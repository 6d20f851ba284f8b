"""Exact k-nearest-neighbour search with one tie rule, over an in-memory index or streamed shards.

Every result is ordered by similarity, most similar first, and among equal similarities by corpus row,
lowest first (FAISS's flat indexes keep the lowest ids among ties at the k-th place; we also order within
ties, which FAISS does not). So a flat index and a stream over the same shards give identical answers.

Streaming (``stream_search``) makes the queries the small side: each corpus shard is read, searched
against every query in one FAISS brute-force call, and merged into a running top-k, so memory is bounded
by the queries plus one shard whatever the corpus size (the way DataComp deduplicated 12.8B images
against its evaluation sets).

``search`` answers queries against a loaded ``CorpusIndex``: through its FAISS index (on the GPU when
asked), by streaming its shards, or by streaming them on a Ray cluster. Given ``min_similarity``, only
neighbours at least that similar are returned (the others as row −1), whatever the path; over 64-bit hashes
with multi-index hash tables (index type ``mih``) that is a radius search, which reads only the tables'
candidates when that costs less than the flat scan (``overlap_audit.index.mih.tables_pay``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..devices import faiss_device
from ..values import DetectorInfo, Neighbors
from .ann import hash_radius
from .mih import radius_search, read_mih, tables_name, tables_pay
from .ray import connect, map_shards
from .load import CorpusIndex
from .manifest import INDEX_FILE, VECTORS_FILE
from .shards import iter_shard_vectors, read_shard_vectors, shard_first_rows
from .views import iter_view_vectors, view_tables_name

NO_ROW = -1
SEARCH_BATCH = 8192  # queries per FAISS index search call
# FAISS computes inner products with BLAS only from a batch of this many queries (1.15 sets 128,000 and compares
# it with the batch's query count, so an evaluation set of a few hundred examples took the scalar path: 300
# 256-d queries against 200,000 vectors 2.95 s, with BLAS 0.29 s on the 2-core machine). From 20, FAISS's
# earlier default, BLAS is as fast or faster on that machine (1 query: the same; 5: scalar 0.03 s, BLAS 0.06 s).
BLAS_FROM = 20


def _blas_from_small_batches() -> None:
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_FROM
STREAM_BATCH = 16384  # queries per brute-force block search
RERANK_BATCH = 1024  # queries whose shortlist rows are gathered at once (shortlist·1 KB each)


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


def merge_max(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge top-k (sims, rows) of the same queries over several views: each corpus row once, with its
    highest similarity; then the k best, similarity descending and row ascending."""
    sims = np.concatenate([np.where(r == NO_ROW, -np.inf, s) for s, r in results], axis=1).astype(np.float32)
    rows = np.concatenate([r for _, r in results], axis=1)
    order = np.lexsort((-sims, rows), axis=-1)  # by row, the most similar first within a row
    sims, rows = np.take_along_axis(sims, order, axis=1), np.take_along_axis(rows, order, axis=1)
    repeat = np.zeros(rows.shape, dtype=bool)
    repeat[:, 1:] = (rows[:, 1:] == rows[:, :-1]) & (rows[:, 1:] != NO_ROW)
    rows = np.where(repeat, NO_ROW, rows)
    return order_topk(sims, rows, k)


def similarity_from_faiss(values: np.ndarray, metric: str, dim: int) -> np.ndarray:
    """FAISS's raw scores as similarities: inner products as they are; Hamming distances as 1 − d/bits."""
    if metric == "hamming":
        return (1.0 - values.astype(np.float64) / dim).astype(np.float32)
    return values.astype(np.float32)


def search_index(index, queries: np.ndarray, k: int, metric: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Search a FAISS index; returns (similarities, rows) in the canonical order, row −1 where none."""
    n = len(queries)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    rows = np.full((n, k), NO_ROW, dtype=np.int64)
    kk = min(k, int(index.ntotal))
    if n == 0 or kk == 0:
        return sims, rows
    dtype = np.uint8 if metric == "hamming" else np.float32
    if metric != "hamming":
        _blas_from_small_batches()
    for start in range(0, n, SEARCH_BATCH):
        chunk = np.ascontiguousarray(queries[start:start + SEARCH_BATCH], dtype=dtype)
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
        _blas_from_small_batches()
        values, rows = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32),
                                 np.ascontiguousarray(block, dtype=np.float32), kk, metric=faiss.METRIC_INNER_PRODUCT)
    return order_topk(similarity_from_faiss(values, metric, dim), rows.astype(np.int64), kk)


def stream_search(queries: np.ndarray, blocks: Iterable[tuple[int, np.ndarray]], k: int, metric: str, dim: int,
                  *, gpu_resources=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query over corpus blocks streamed past it.

    ``blocks`` yields (first corpus row of the block, block vectors); each block is searched against all
    queries (in batches of ``STREAM_BATCH``) and merged into the running top-k.
    """
    n = len(queries)
    best = (np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), NO_ROW, dtype=np.int64))
    for first_row, vectors in blocks:
        if len(vectors) == 0 or n == 0:
            continue
        for start in range(0, n, STREAM_BATCH):
            stop = min(n, start + STREAM_BATCH)
            s, r = knn_block(queries[start:stop], vectors, k, metric, dim, gpu_resources)
            r = np.where(r == NO_ROW, NO_ROW, r + first_row)
            merged = merge_topk((best[0][start:stop], best[1][start:stop]), (s, r), k)
            best[0][start:stop], best[1][start:stop] = merged
    return best


def shard_topk(spec: dict, shared: dict) -> dict:
    """Top-k of the queries within one shard (``spec``: path, first_row; ``shared``: queries, k, detector
    info as a dict), padded to k, rows as index rows: the per-shard step of a distributed stream."""
    info = DetectorInfo.from_dict(shared["info"])
    queries, k = shared["queries"], shared["k"]
    sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), NO_ROW, dtype=np.int64)
    vectors = read_shard_vectors(Path(str(spec["path"])), info)
    if len(vectors):
        s, r = knn_block(queries, vectors, k, info.metric, info.dim)
        sims[:, :s.shape[1]] = s
        rows[:, :r.shape[1]] = np.where(r == NO_ROW, NO_ROW, r + int(spec["first_row"]))
    return {"sims": sims, "rows": rows}


def ray_stream_search(index_dir: str | os.PathLike, info: DetectorInfo, queries: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact streaming search as a map over the shards on the connected Ray cluster, merged here."""
    n = len(queries)
    best = (np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), NO_ROW, dtype=np.int64))
    if n == 0:
        return best
    specs = [{"path": str(path), "first_row": row} for path, row in shard_first_rows(index_dir)]
    shared = {"queries": np.ascontiguousarray(queries), "k": k, "info": info.to_dict()}
    for part in map_shards(specs, shard_topk, shared):
        best = merge_topk(best, (part["sims"], part["rows"]), k)
    return best


def to_device(index, metric: str, device: str):
    """Move an index to the GPU when asked and possible (HNSW and fast-scan IVF-PQ have no GPU version and
    stay on the CPU)."""
    if device != "cuda":
        return index
    import faiss

    res = faiss.StandardGpuResources()
    if metric == "hamming":
        if isinstance(index, faiss.IndexBinaryFlat):
            return faiss.GpuIndexBinaryFlat(res, index)
        return index
    if "HNSW" in type(index).__name__ or "FastScan" in type(index).__name__:
        return index
    return faiss.index_cpu_to_gpu(res, 0, index)


def within(sims: np.ndarray, rows: np.ndarray, min_similarity: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Canonical top-k with the neighbours below ``min_similarity`` removed (row −1); None keeps all."""
    if min_similarity is None:
        return sims, rows
    below = sims < np.float32(min_similarity)
    return np.where(below, -np.inf, sims).astype(np.float32), np.where(below, NO_ROW, rows)


def search_rows(index, index_type: str, params: dict, queries: np.ndarray, k: int, info: DetectorInfo,
                path: Path, device: str = "cpu", *, vectors_file: str = VECTORS_FILE,
                min_similarity: float | None = None, tables_file: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (similarities, rows) from a FAISS index of any type, in the canonical order; with
    ``min_similarity``, only those at least that similar.

    Approximate indexes may miss neighbours but never report a wrong similarity: HNSW and binary IVF
    store exact codes, and IVF-PQ's shortlist is re-ranked with the exact vectors (``vectors_file`` in the
    index directory ``path``). A ``mih`` index answers a ``min_similarity`` search from its tables
    (``tables_file`` in ``path``) by radius search when that costs less than scanning its codes: exact
    either way.
    """
    if index_type == "mih" and min_similarity is not None:
        radius = hash_radius(float(np.float32(min_similarity)), info.dim)  # compared in float32, as ``within``
        tables = read_mih(Path(path) / (tables_file or tables_name(INDEX_FILE)))
        if tables_pay(len(tables), len(tables.widths), radius):
            dist, rows = radius_search(tables, np.asarray(queries), k, radius)
            sims = np.where(rows == NO_ROW, -np.inf, 1.0 - dist / info.dim).astype(np.float32)
            return sims, rows
    return within(*_search_rows(index, index_type, params, queries, k, info, path, device, vectors_file),
                  min_similarity)


def _search_rows(index, index_type: str, params: dict, queries: np.ndarray, k: int, info: DetectorInfo,
                 path: Path, device: str, vectors_file: str) -> tuple[np.ndarray, np.ndarray]:
    if index_type == "hnsw":
        index.hnsw.efSearch = int(params.get("ef_search", 128))
    if index_type == "ivfpq":
        index.nprobe = int(params.get("nprobe", 16))
    index = to_device(index, info.metric, device)
    if index_type == "ivfpq" and info.metric == "cosine":
        vectors = np.load(Path(path) / vectors_file, mmap_mode="r")
        exact, cand = rerank_candidates(index, queries, max(k, int(params["shortlist"])), info, vectors)
        return order_topk(exact, cand, k)
    return search_index(index, queries, k, info.metric, info.dim)


def rerank_candidates(index, queries: np.ndarray, shortlist: int, info: DetectorInfo,
                      vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The index's first ``shortlist`` candidates of each query in its own order, with their exact
    similarities from ``vectors`` (the corpus rows, memory-mapped): (similarities, rows), −inf / −1 where none."""
    _, cand = search_index(index, queries, shortlist, info.metric, info.dim)
    exact = np.full(cand.shape, -np.inf, dtype=np.float32)
    for start in range(0, len(queries), RERANK_BATCH):
        rows = cand[start:start + RERANK_BATCH]
        gathered = np.asarray(vectors[np.where(rows < 0, 0, rows).reshape(-1)]).reshape(*rows.shape, -1)
        sims = np.einsum("qd,qcd->qc", np.asarray(queries[start:start + RERANK_BATCH], np.float32), gathered)
        exact[start:start + RERANK_BATCH] = np.where(rows < 0, -np.inf, sims)
    return exact, cand


def with_views(corpus: CorpusIndex, queries: np.ndarray, primary: tuple[np.ndarray, np.ndarray], k: int,
               device: str = "cpu", *, stream: bool = False,
               min_similarity: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The primary top-k merged with each corpus view's (``overlap_audit.index.views``): per corpus item its
    most similar view. Exact: an item of the merged top-k is in the top-k of the view that gives its
    similarity. The views are searched through their flat indexes, or streamed from their shard files
    (``stream``: the exact stream and Ray paths; the views' stream runs here)."""
    info = corpus.manifest.detector
    m = corpus.manifest
    results = [primary]
    for v, area in enumerate(m.views):
        if stream or not corpus.view_indexes:
            found = within(*stream_search(queries, iter_view_vectors(corpus.path, v), k, info.metric, info.dim),
                           min_similarity)
        elif m.index_type == "mih" and view_tables_name(m.index_file, area) in m.files:
            # the view's own tables: a radius search at the decision's floor, as for the primary vectors
            found = search_rows(corpus.view_indexes[v], "mih", {}, queries, k, info, corpus.path, device,
                                min_similarity=min_similarity, tables_file=view_tables_name(m.index_file, area))
        else:
            found = within(*search_index(to_device(corpus.view_indexes[v], info.metric, device), queries, k,
                                         info.metric, info.dim), min_similarity)
        results.append(found)
    return merge_max(results, k)


def search(corpus: CorpusIndex, query_ids: list[str], vectors: np.ndarray, *, k: int = 5,
           device: str = "auto", exact_stream: bool = False, ray_address: str | None = None,
           min_similarity: float | None = None, progress: bool = False) -> Neighbors:
    """The k nearest corpus items of each query vector, most similar first, ties by corpus row; with
    ``min_similarity``, only those at least that similar (the other slots empty: id None, similarity NaN).

    With ``exact_stream`` the stored shards are streamed past the queries (exact at any corpus size, memory
    bounded by the queries plus one shard); otherwise the index is searched (exact for flat indexes, and
    for mih indexes, whose tables answer a ``min_similarity`` search by radius search). With
    ``ray_address`` the stream runs as a map over shards on a Ray cluster. ``progress`` shows a bar over the
    shards of the stream. An index with corpus views gives each item its most similar view (``with_views``).
    """
    info = corpus.manifest.detector
    k = max(1, int(k))
    dev = faiss_device(device)
    if ray_address and (exact_stream or corpus.index is None):
        connect(ray_address)
        sims, rows = within(*ray_stream_search(corpus.path, info, np.asarray(vectors), k), min_similarity)
    elif exact_stream or corpus.index is None:
        gpu = None
        if dev == "cuda" and info.metric == "cosine":
            import faiss

            gpu = faiss.StandardGpuResources()
        from tqdm import tqdm

        blocks = tqdm(iter_shard_vectors(corpus.path, info), total=corpus.manifest.n_shards, desc="search",
                      unit="shard", disable=not progress, leave=False)
        sims, rows = within(*stream_search(np.asarray(vectors), blocks, k, info.metric, info.dim,
                                           gpu_resources=gpu), min_similarity)
    else:
        sims, rows = search_rows(corpus.index, corpus.manifest.index_type, corpus.params, np.asarray(vectors), k,
                                 info, corpus.path, dev, vectors_file=corpus.vectors_file,
                                 min_similarity=min_similarity, tables_file=tables_name(corpus.manifest.index_file))
        if sims.shape[1] < k:
            pad = k - sims.shape[1]
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=NO_ROW)
    if corpus.manifest.views:
        sims, rows = with_views(corpus, np.asarray(vectors), (sims, rows), k, dev,
                                stream=exact_stream or corpus.index is None, min_similarity=min_similarity)
    ids = np.full(rows.shape, None, dtype=object)
    valid = rows != NO_ROW
    ids[valid] = corpus.keys[rows[valid]]
    return Neighbors(list(query_ids), ids, np.where(valid, sims, np.nan).astype(np.float32))
