"""Finishing an index directory whose shards are written: build the FAISS index over the shards as the next
generation, measure an approximate index's recall, then switch the manifest to it (the last write) and
remove the generation it replaced.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import atomic_write, atomic_write_json, hold_lock
from ..devices import faiss_device
from ..errors import IndexDirError
from ..values import DetectorInfo, Skipped
from .ann import SHORTLISTS, IndexPlan, calibrate_probes, choose_index, new_index
from .integrity import stale_generation_files
from .items import side_files, write_items
from .manifest import (MANIFEST, PROGRESS, SHARD_DIR, SKIPPED_SAMPLE, GenerationFiles, IndexManifest, file_record,
                       load_manifest)
from .search import rerank_candidates, search_index, search_rows, stream_search
from .shards import iter_shard_vectors, read_shard, shard_paths, vector_width
from .views import build_view_indexes, view_index_name, view_tables_name

# At most this many recall queries (augmented corpus copies, ``build.RECALL_QUERIES_PER_SHARD`` per shard)
# measure an approximate index's recall at RECALL_K.
RECALL_QUERIES = 1000
RECALL_K = 10


@dataclass
class _ShardScan:
    """What the finishing pass learns from the shards before building an index (nothing per item but the
    recall copies: of the skipped items, their count and the first ``SKIPPED_SAMPLE``)."""

    indexed: int = 0
    given: int = 0
    embedded: int = 0
    low: int = 0
    skipped: int = 0
    skipped_sample: list[Skipped] = field(default_factory=list)
    query_vectors: list[np.ndarray] = field(default_factory=list)
    query_rows: list[int] = field(default_factory=list)
    query_crc: list[int] = field(default_factory=list)
    shard_rows: list[int] = field(default_factory=list)


def _scan_shards(out: Path, info: DetectorInfo, ids_file: str) -> _ShardScan:
    """Read the shards one at a time, writing the index rows' keys to ``ids_file`` (atomically) as they come."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scan = _ShardScan()
    schema = pa.schema([("key", pa.string())])

    def write(tmp: str) -> None:
        with pq.ParquetWriter(tmp, schema) as ids:
            for path in shard_paths(out):
                shard = read_shard(path, info)
                scan.shard_rows.append(len(shard.keys))
                scan.given += len(shard.keys)
                if len(scan.skipped_sample) < SKIPPED_SAMPLE:
                    scan.skipped_sample += shard.skipped[:SKIPPED_SAMPLE - len(scan.skipped_sample)]
                scan.skipped += sum(r is not None for r in shard.reasons)
                embedded = sum(r is None for r in shard.reasons)
                scan.embedded += embedded
                scan.low += embedded - int(shard.usable.sum())
                keys = [k for k, m in zip(shard.keys, shard.usable) if m]
                if keys:
                    ids.write_table(pa.table({"key": pa.array(keys, pa.string())}, schema=schema))
                usable_row = np.cumsum(shard.usable) - 1 + scan.indexed
                scan.indexed += len(keys)
                for j in np.nonzero(shard.has_query)[0]:
                    scan.query_vectors.append(shard.query_vectors[j:j + 1].copy())
                    scan.query_rows.append(int(usable_row[j]))
                    scan.query_crc.append(zlib.crc32(shard.keys[j].encode("utf-8", "surrogatepass")))

    atomic_write(out / ids_file, write)
    return scan


def _read_training_sample(out: Path, info: DetectorInfo, n_total: int, n_sample: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n_total, size=min(n_sample, n_total), replace=False))
    parts = []
    for first, vectors in iter_shard_vectors(out, info):
        local = keep[(keep >= first) & (keep < first + len(vectors))] - first
        if len(local):
            parts.append(vectors[local])
    return np.concatenate(parts) if parts else np.zeros((0, vector_width(info)), np.float32)


def _build_faiss(out: Path, info: DetectorInfo, plan, n: int, vectors_file: str):
    """Build the FAISS index the plan names over the shards' vectors (two passes for trained indexes);
    IVF-PQ over float vectors also writes the exact vectors to ``vectors_file``."""
    index = new_index(plan, info)
    if plan.needs_training:
        sample = _read_training_sample(out, info, n, plan.params["train_size"])
        index.train(np.ascontiguousarray(sample))

    def add_all(vectors_tmp: str | None) -> None:
        memmap = None
        if vectors_tmp is not None:
            memmap = np.lib.format.open_memmap(vectors_tmp, mode="w+", dtype=np.float32, shape=(n, info.dim))
        for first, vectors in iter_shard_vectors(out, info):
            if len(vectors):
                index.add(np.ascontiguousarray(vectors))
                if memmap is not None:
                    memmap[first:first + len(vectors)] = vectors
        if memmap is not None:
            memmap.flush()
            del memmap

    if plan.index_type == "ivfpq" and info.metric == "cosine":
        atomic_write(out / vectors_file, add_all)
    else:
        add_all(None)
    return index


def finish_index(out: Path, info: DetectorInfo, sources: list[dict], shard_size: int, device: str,
                  seconds: float, *, index_type: str = "auto", memory_budget: int | str | None = None,
                  limits: dict | None = None, previous: IndexManifest | None = None,
                  views: tuple[float, ...] = ()) -> IndexManifest:
    """Build the FAISS index over the shards as the generation after ``previous`` (or the first), write
    the manifest that switches to it (the last write), then remove the generation it replaced. With
    ``views`` (areas) the shards' view vectors get an index each too (``views.build_view_indexes``)."""
    import faiss

    started = time.monotonic()
    generation = 1 if previous is None else previous.generation + 1
    names = GenerationFiles.of(generation)
    scan = _scan_shards(out, info, names.ids)
    # the shards' rows, addressable by row and key: a report reads its matched items without scanning shards
    items = write_items(out, names.items, shard_paths(out))
    if items.repeated:  # ids are unique per source already; guards a hand-edited dir
        for name in (names.ids, names.items, *side_files(names.items).values()):
            (out / name).unlink(missing_ok=True)
        raise IndexDirError(f"{out}: the shards hold repeated keys; rebuild the index in a new directory")
    plan = choose_index(index_type, scan.indexed, info, memory_budget)
    index = _build_faiss(out, info, plan, scan.indexed, names.vectors)
    writer = faiss.write_index_binary if info.metric == "hamming" else faiss.write_index
    atomic_write(out / names.index, lambda tmp: writer(index, tmp))
    tables = None
    if plan.index_type == "mih":  # the multi-index hash tables beside the flat index they answer for
        from .mih import flat_codes, tables_name, write_mih

        tables = tables_name(names.index)
        write_mih(out / tables, flat_codes(index), plan.params["substrings"])
    n_items = items.rows
    build_seconds = time.monotonic() - started
    vectors_file = names.vectors if (out / names.vectors).exists() and plan.index_type == "ivfpq" else None
    recall = {"exact": True, "note": "flat index: exact search"}
    if plan.approximate:
        recall, plan = _measure_recall(out, info, index, plan, scan, device, vectors_file)
    files = {f"{SHARD_DIR}/{path.name}": file_record(path, rows)
             for path, rows in zip(shard_paths(out), scan.shard_rows)}
    files[names.index] = file_record(out / names.index, int(index.ntotal))
    files[names.ids] = file_record(out / names.ids, scan.indexed)
    if vectors_file is not None:
        files[vectors_file] = file_record(out / vectors_file, scan.indexed)
    if tables is not None:
        files[tables] = file_record(out / tables, scan.indexed)
    files[names.items] = file_record(out / names.items, n_items)
    for side in side_files(names.items).values():
        files[side] = file_record(out / side)
    if views:
        files.update(build_view_indexes(out, info, views, names.index, scan.indexed,
                                        plan.params["substrings"] if plan.index_type == "mih" else None))
    superseded = []
    if previous is not None:
        from .mih import tables_name

        now = {names.index, names.ids, vectors_file, tables, names.items, *files}
        before = previous.items_file
        superseded = [name for name in (previous.index_file, previous.ids_file, previous.vectors_file,
                                        tables_name(previous.index_file), before,
                                        *(side_files(before).values() if before else ()),
                                        *(view_index_name(previous.index_file, a) for a in previous.views),
                                        *(view_tables_name(previous.index_file, a) for a in previous.views))
                      if name is not None and name not in now and (out / name).exists()]
    manifest = IndexManifest(
        detector=info,
        sources=sources,
        n_given=scan.given,
        n_embedded=scan.embedded,
        n_indexed=scan.indexed,
        n_low_information=scan.low,
        n_skipped=scan.skipped,
        skipped_sample=scan.skipped_sample,
        shard_size=shard_size,
        n_shards=len(scan.shard_rows),
        index_type=plan.index_type,
        faiss_version=getattr(faiss, "__version__", "unknown"),
        package_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(seconds + build_seconds, 3),
        extra={"device": device, "faiss_index": type(index).__name__, "index_params": plan.params,
               "index_choice": plan.reason, "index_build_seconds": round(build_seconds, 3), "recall": recall,
               **({"limits": limits} if limits else {})},
        generation=generation,
        files=files,
        index_file=names.index,
        ids_file=names.ids,
        vectors_file=vectors_file,
        items_file=names.items,
        superseded=superseded,
        views=tuple(views),
    )
    atomic_write_json(out / MANIFEST, manifest.to_dict())  # the switch
    for stale in stale_generation_files(out, manifest):
        stale.unlink(missing_ok=True)
    return manifest


def _measure_recall(out: Path, info: DetectorInfo, index, plan: IndexPlan, scan: _ShardScan, device: str,
                    vectors_file: str | None) -> tuple[dict, IndexPlan]:
    """Recall of the approximate index against exact search, on augmented copies of corpus items. An IVF
    index is first calibrated (``ann.calibrate_probes``) on every other copy, and its recall measured on the
    others; the plan comes back with the calibrated nprobe and shortlist."""
    if not scan.query_vectors:
        return {"exact": False, "n_queries": 0, "note": "no augmented corpus copies to measure recall with"}, plan
    queries = np.concatenate(scan.query_vectors)
    order = np.argsort(np.array(scan.query_crc, dtype=np.int64), kind="stable")[:RECALL_QUERIES]
    queries, source_rows = queries[order], np.array(scan.query_rows, dtype=np.int64)[order]
    k = min(RECALL_K, scan.indexed)
    exact_sims, exact_rows = stream_search(queries, iter_shard_vectors(out, info), k, info.metric, info.dim)
    # Tie-aware: a returned neighbour counts when its (exact) similarity reaches the exact k-th one, so
    # equally similar items (common with Hamming distances) are interchangeable.
    # (within float rounding: the two searches compute inner products with differently blocked BLAS calls)
    tol = 1e-5 if info.metric == "cosine" else 0.0
    calibration = None
    if plan.index_type == "ivfpq" and len(queries) >= 2:
        held = np.arange(len(queries)) % 2 == 1
        calibration = _calibrate(out, info, index, plan, queries[~held], exact_sims[~held, 0], vectors_file, tol)
        chosen = {"nprobe": calibration["nprobe"]}
        if "shortlist" in plan.params:
            chosen["shortlist"] = calibration["shortlist"]
        plan = replace(plan, params={**plan.params, **chosen, "calibrated": True})
        queries, exact_sims, exact_rows, source_rows = (queries[held], exact_sims[held], exact_rows[held],
                                                        source_rows[held])
    approx_sims, approx_rows = search_rows(index, plan.index_type, plan.params, queries, k, info, out, device,
                                           **({"vectors_file": vectors_file} if vectors_file else {}))
    recall_1 = float((approx_sims[:, 0] >= exact_sims[:, 0] - tol).mean())
    overlap = np.minimum((approx_sims >= exact_sims[:, k - 1:k] - tol).sum(axis=1), k) / k
    found_exact = float((exact_rows == source_rows[:, None]).any(axis=1).mean())
    found_approx = float((approx_rows == source_rows[:, None]).any(axis=1).mean())
    recall = {"exact": False, "n_queries": int(len(queries)), "k": int(k), "recall_at_1": recall_1,
              "recall_at_k": float(overlap.mean()), "source_found_at_k_exact": found_exact,
              "source_found_at_k": found_approx,
              "queries": "augmented copies (resize + JPEG) of corpus items, embedded during indexing"
                         + ("; those not used to calibrate" if calibration else "")}
    if calibration is not None:
        recall["calibration"] = calibration
    return recall, plan


def _calibrate(out: Path, info: DetectorInfo, index, plan: IndexPlan, queries: np.ndarray, best: np.ndarray,
               vectors_file: str | None, tolerance: float) -> dict:
    """``ann.calibrate_probes`` on these copies: the index's candidates at each nprobe, exactly re-ranked."""
    before = index.nprobe
    vectors = np.load(out / vectors_file, mmap_mode="r") if vectors_file else None

    def candidates(nprobe: int, shortlist: int) -> np.ndarray:
        index.nprobe = nprobe
        if vectors is None:  # binary IVF: its distances are exact already
            return search_index(index, queries, shortlist, info.metric, info.dim)[0]
        return rerank_candidates(index, queries, shortlist, info, vectors)[0]

    try:
        return calibrate_probes(candidates, best, n=int(index.ntotal), nlist=int(plan.params["nlist"]),
                                shortlists=SHORTLISTS if vectors is not None else (1,), tolerance=tolerance)
    finally:
        index.nprobe = before


def finish_from_shards(out_dir: str | os.PathLike, *, index_type: str = "auto") -> IndexManifest:
    """(Re)build the FAISS index of a directory whose shards are written, holding its lock."""
    out = Path(out_dir)
    with hold_lock(out, "index"):
        progress = json.loads((out / PROGRESS).read_text())
        previous = load_manifest(out) if (out / MANIFEST).exists() else None
        return finish_index(out, DetectorInfo.from_dict(progress["detector"]), progress["sources"],
                            progress["shard_size"], faiss_device("auto"), 0.0, index_type=index_type,
                            limits=progress.get("limits"), previous=previous,
                            views=tuple(progress.get("views", ())))
