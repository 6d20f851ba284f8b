"""The corpus items an audit found in the evaluation sets, for decontaminating a training pool:
``corpus_matches.parquet``.

One row per (corpus item, evaluation example) pair among each example's k neighbours whose similarity is at
or above the dataset's threshold (low-information examples, which are never Overlap, give none). Under
verification (``report --verify``) the rows are the Overlap examples' nearest pairs: verified, or kept by
the first decision because an image could not be read back (``verify_score`` null).

Columns: ``corpus_key`` (the index key), ``source`` and ``id`` (the corpus source's name and the item's id
in it: img2dataset's ``key``), ``url``, ``uid`` and ``caption`` where the source has them (null otherwise),
``dataset`` and ``eval_id`` (the evaluation example), ``rank`` (1 = its nearest corpus item),
``similarity`` and ``verify_score``.

``url`` and ``uid`` are read for the matched items only: from a Parquet source's ``url`` / ``uid`` columns
(read without the images), and from an image folder's ``.json`` sidecar (img2dataset's ``files`` output).
A WebDataset source gives none here; its ``id`` is img2dataset's ``key``, which the shards' metadata Parquet
files beside the tars hold with the url.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .index.manifest import load_manifest
from .index.shards import rows_by_key
from .limits import ReadRefused, read_file
from .sources import PARQUET_ID_COLUMNS
from .values import Split

__all__ = ["MATCH_COLUMNS", "corpus_matches", "corpus_metadata", "matched_pairs", "write_corpus_matches"]

MATCH_COLUMNS = ("corpus_key", "source", "id", "url", "uid", "caption", "dataset", "eval_id", "rank", "similarity",
                 "verify_score")
_META = ("url", "uid")
_MAX_SIDECAR = 1 << 20  # a folder item's .json sidecar larger than this is not read


def matched_pairs(splits: dict[str, Split]) -> list[tuple[str, str, int, str, float, float | None]]:
    """(dataset, eval id, rank, corpus key, similarity, verify score) of every pair the report counts as a match."""
    out = []
    for name, sp in splits.items():
        if not sp.neighbors.k:
            continue
        sims = np.asarray(sp.neighbors.similarities, np.float64)
        low = np.asarray(sp.low_information, bool)
        for i, ident in enumerate(sp.ids):
            if sp.verify_scores is not None:  # verified: the Overlap example's nearest pair only
                if sp.overlap[i]:
                    score = float(sp.verify_scores[i])
                    out.append((name, ident, 1, str(sp.neighbors.ids[i, 0]), float(sims[i, 0]),
                                None if np.isnan(score) else score))
                continue
            if low[i]:
                continue
            for j in range(sp.neighbors.k):
                key = sp.neighbors.ids[i, j]
                if key is None or np.isnan(sims[i, j]) or sims[i, j] < sp.threshold:
                    continue
                out.append((name, ident, j + 1, str(key), float(sims[i, j]), None))
    return out


def _sidecar(path: str) -> dict:
    try:
        data = json.loads(read_file(path, _MAX_SIDECAR))
    except (OSError, ReadRefused, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _text(value) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def _source_metadata(entry: dict, ids: set[str]) -> dict[str, dict]:
    """``{id: {"url": ..., "uid": ...}}`` of the wanted items of one recorded corpus source (what it has)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out: dict[str, dict] = {}
    kind, paths = entry.get("kind"), [str(p) for p in entry.get("paths", ())]
    if kind == "parquet":
        wanted = pa.array(sorted(ids), pa.string())
        for path in paths:
            try:
                names = pq.read_schema(path).names
                ident = next((c for c in PARQUET_ID_COLUMNS if c in names), None)
                meta = [c for c in _META if c in names]
                if ident is None or not meta:
                    continue
                table = pq.read_table(path, columns=[ident, *meta])  # never the image column
                table = table.filter(pc.is_in(pc.cast(table[ident], pa.string()), value_set=wanted))
            except (OSError, pa.ArrowException):
                continue  # a source that cannot be read any more: its urls stay null
            for row in table.to_pylist():
                out[str(row[ident])] = {c: _text(row[c]) for c in meta}
    elif kind == "folder" and paths:
        root = paths[0]
        for ident in ids:
            stem = os.path.splitext(os.path.join(root, *ident.split("/")))[0]
            data = _sidecar(stem + ".json") if os.path.isfile(stem + ".json") else {}
            found = {c: _text(data.get(c)) for c in _META if data.get(c) is not None}
            if found:
                out[ident] = found
    return out


def corpus_metadata(index_dir: str | os.PathLike, keys) -> dict[str, dict]:
    """Per index key: ``source``, ``id``, ``caption`` (from the shards) and ``url``, ``uid`` (from the source,
    where it has them; else None)."""
    out = {key: {**row, "url": None, "uid": None}
           for key, row in rows_by_key(index_dir, keys, ["source", "id", "caption"]).items()}
    if not out:
        return out
    by_source: dict[str, set[str]] = {}
    for row in out.values():
        by_source.setdefault(row["source"], set()).add(row["id"])
    recorded = {s.get("name"): s for s in load_manifest(index_dir).sources}
    found = {name: _source_metadata(recorded[name], ids) for name, ids in by_source.items() if name in recorded}
    for row in out.values():
        row.update(found.get(row["source"], {}).get(row["id"], {}))
    return out


def corpus_matches(splits: dict[str, Split], index_dir: str | os.PathLike):
    """The pyarrow Table of ``corpus_matches.parquet`` (columns ``MATCH_COLUMNS``), sorted by corpus key."""
    import pyarrow as pa

    pairs = sorted(matched_pairs(splits), key=lambda p: (p[3], p[0], p[1]))
    meta = corpus_metadata(index_dir, {p[3] for p in pairs})
    blank = {"source": None, "id": None, "caption": None, "url": None, "uid": None}
    rows = [{**blank, **meta.get(key, {})} for _, _, _, key, _, _ in pairs]
    return pa.table({
        "corpus_key": pa.array([p[3] for p in pairs], pa.string()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "url": pa.array([r["url"] for r in rows], pa.string()),
        "uid": pa.array([r["uid"] for r in rows], pa.string()),
        "caption": pa.array([r["caption"] for r in rows], pa.string()),
        "dataset": pa.array([p[0] for p in pairs], pa.string()),
        "eval_id": pa.array([p[1] for p in pairs], pa.string()),
        "rank": pa.array([p[2] for p in pairs], pa.int32()),
        "similarity": pa.array([p[4] for p in pairs], pa.float32()),
        "verify_score": pa.array([p[5] for p in pairs], pa.float32()),
    })


def write_corpus_matches(path: str | os.PathLike, splits: dict[str, Split], index_dir: str | os.PathLike) -> Path:
    """Write ``corpus_matches`` to ``path`` atomically; returns it."""
    import pyarrow.parquet as pq

    from .atomic import atomic_write

    table = corpus_matches(splits, index_dir)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return Path(path)
