"""Corpus indexing: embed sources into Parquet shards (resumable), build a FAISS index, search it.

Modules, each importing only those listed before it: ``store`` (the directory format: file names,
manifest, shards, loading), ``ann`` (index choice), ``ray`` (per-shard work on a Ray cluster),
``search`` (the tie rule, flat and streaming kNN, search over a loaded index), ``build`` (embedding
into shards, building the FAISS index, import from vectors).
"""

from ..devices import faiss_device, faiss_gpu_count
from .build import (RECALL_QUERIES, RECALL_QUERIES_PER_SHARD, IndexSettings, build_index, finish_from_shards,
                    index_from_vector_blocks, index_from_vectors)
from .search import search, search_rows
from .store import (IDS_FILE, INDEX_FILE, MANIFEST, PROGRESS, SHARD_DIR, VECTORS_FILE, CorpusIndex, IndexManifest,
                    VerifyResult, check_detector, content_boxes, corpus_items, corpus_key, iter_shard_vectors,
                    load_index, load_manifest, verify_index)

__all__ = [
    "content_boxes",
    "IDS_FILE", "INDEX_FILE", "MANIFEST", "PROGRESS", "RECALL_QUERIES", "RECALL_QUERIES_PER_SHARD", "SHARD_DIR",
    "VECTORS_FILE", "CorpusIndex", "IndexManifest", "IndexSettings", "build_index", "check_detector",
    "corpus_items", "corpus_key", "faiss_device", "faiss_gpu_count", "finish_from_shards", "index_from_vector_blocks",
    "index_from_vectors", "iter_shard_vectors", "load_index", "load_manifest", "search",
    "search_rows", "VerifyResult", "verify_index",
]
