"""Corpus indexing: embed sources into Parquet shards (resumable), build a FAISS index, check it, search it.

Modules, each importing only those listed before it: ``manifest`` (the directory format: file names,
checksums, the manifest), ``shards`` (writing and reading shards, rows by key), ``integrity`` (files held
to the manifest, ``check_index``, detector comparability), ``views`` (corpus views: the centre crops' vectors
and indexes), ``load`` (a loaded index, corpus items by key, the skipped items),
``ann`` (index choice), ``ray`` (per-shard work on a Ray cluster), ``search`` (the tie rule, flat and
streaming kNN, search over a loaded index), ``finish`` (the FAISS index over written shards, its recall,
the generation switch), ``build`` (embedding into shards, import from vectors).
"""

from ..devices import faiss_device, faiss_gpu_count
from .build import RECALL_QUERIES_PER_SHARD, build_index, index_from_vector_blocks, index_from_vectors
from .finish import RECALL_QUERIES, finish_from_shards
from .integrity import CheckResult, check_detector, check_index
from .load import CHANGED, CorpusIndex, corpus_items, is_changed, load_index, skipped_items
from .manifest import (IDS_FILE, INDEX_FILE, MANIFEST, PROGRESS, SHARD_DIR, VECTORS_FILE, IndexManifest,
                       load_manifest)
from .search import search, search_rows
from .shards import content_boxes, corpus_key, iter_shard_vectors
from .views import DEFAULT_VIEWS, index_views, view_tag, views_line

__all__ = [
    "CHANGED", "DEFAULT_VIEWS", "content_boxes", "index_views", "is_changed", "view_tag", "views_line",
    "IDS_FILE", "INDEX_FILE", "MANIFEST", "PROGRESS", "RECALL_QUERIES", "RECALL_QUERIES_PER_SHARD", "SHARD_DIR",
    "VECTORS_FILE", "CheckResult", "CorpusIndex", "IndexManifest", "build_index", "check_detector",
    "check_index", "corpus_items", "corpus_key", "faiss_device", "faiss_gpu_count", "finish_from_shards",
    "index_from_vector_blocks", "index_from_vectors", "iter_shard_vectors", "load_index", "load_manifest", "search",
    "search_rows", "skipped_items",
]
