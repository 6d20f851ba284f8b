"""The corpus items an audit found in the evaluation sets, for decontaminating a training pool:
``corpus_matches.parquet``.

One row per (corpus item, evaluation example) pair among each example's k neighbours whose similarity is at
or above the dataset's threshold (low-information examples, which are never Overlap, give none). Under
verification (``report --verify``) the rows are the Overlap examples' matched pairs (``Split.match``: the
item verification accepted, else the nearest): verified, or kept by the first decision because verification
had nothing to say or an image could not be read back (``verify_score`` null).

Columns: ``corpus_key`` (the index key), ``source`` and ``id`` (the corpus source's name and the item's id
in it: img2dataset's ``key``, a folder item's relative path), ``url``, ``uid`` and ``caption`` where the
source has them (null otherwise), where the item lies (``shard``: the tar or Parquet file's name;
``member``: a WebDataset sample's image member; ``row``: the row in a Parquet file; ``path``: a folder
item's relative path), ``item_xxh3`` (the xxh3 of the item's bytes the index recorded), ``dataset`` and
``eval_id`` (the evaluation example), ``rank`` (1 = its nearest corpus item; the matched item's rank), ``similarity`` and
``verify_score``.

The location and metadata are read for the matched items only: a Parquet source's ``url`` / ``uid`` columns
and row numbers (read without the images); a WebDataset shard's member headers and each matched sample's
``.json`` (img2dataset writes ``url``, ``key`` and, for DataComp, ``uid`` there), the shard found through
the metadata Parquet file img2dataset writes beside it where there is one; an image folder's ``.json``
sidecar (img2dataset's ``files`` output). A remote shard is not read again: its ``member`` and ``url``
stay null unless its metadata Parquet file is local. Where the index recorded the file that holds an item
(``location``), only that tar or Parquet file is read for it, not the source's others.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np

from .index.manifest import load_manifest
from .index.shards import rows_by_key
from .errors import SourceError
from .limits import ReadRefused, read_file
from .sources import PARQUET_ID_COLUMNS
from .sources.parquet import parquet_file
from .sources.remote import is_pipe, is_url, url_name
from .sources.webdataset import TAR_SUFFIXES, WDS_IMAGE_EXTENSIONS, wds_split
from .values import Split

__all__ = ["MATCH_COLUMNS", "corpus_matches", "corpus_metadata", "matched_pairs", "metadata_beside",
           "write_corpus_matches"]

MATCH_COLUMNS = ("corpus_key", "source", "id", "url", "uid", "caption", "shard", "member", "row", "path", "item_xxh3",
                 "dataset", "eval_id", "rank", "similarity", "verify_score")
_META = ("url", "uid")
_WHERE = ("shard", "member", "row", "path")
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
            if sp.verify_scores is not None:  # verified: the Overlap example's matched pair only
                if sp.overlap[i]:
                    score = float(sp.verify_scores[i])
                    j = int(sp.match_column[i])
                    out.append((name, ident, j + 1, sp.match_key(i), float(sims[i, j]),
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


def _parquet_metadata(paths: list[str], ids: set[str]) -> dict[str, dict]:
    """Per wanted id of a Parquet source: its file (``shard``), ``row`` and the ``url`` / ``uid`` columns it has."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out: dict[str, dict] = {}
    wanted = pa.array(sorted(ids), pa.string())
    for path in paths:
        try:
            with parquet_file(path) as pf:
                names = pf.schema_arrow.names
                ident = next((c for c in PARQUET_ID_COLUMNS if c in names), None)
                if ident is None:
                    continue
                meta = [c for c in _META if c in names]
                table = pf.read(columns=[ident, *meta])  # never the image column
        except (OSError, SourceError, pa.ArrowException):
            continue  # a source that cannot be read any more: its rows stay without a location
        mask = pc.is_in(pc.cast(table[ident], pa.string()), value_set=wanted).fill_null(False)
        rows = np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), bool))
        for row, values in zip(rows.tolist(), table.filter(mask).to_pylist()):
            out[str(values[ident])] = {"shard": _file_name(path), "row": row, **{c: _text(values[c]) for c in meta}}
    return out


def _file_name(path: str) -> str:
    return url_name(path) if is_url(path) else os.path.basename(path)


def metadata_beside(shard: str) -> str | None:
    """img2dataset's metadata Parquet file beside a local WebDataset shard (``00000.parquet`` for
    ``00000.tar``), or None when there is none."""
    if is_url(shard) or is_pipe(shard):
        return None
    base = shard
    for suffix in TAR_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base + ".parquet" if os.path.isfile(base + ".parquet") else None


def _scan_tar(path: str, wanted: set[str]) -> dict[str, dict]:
    """Per wanted key of a local tar: its image ``member`` and the ``url`` / ``uid`` of its ``.json``.

    The tar is opened for random access, so only member headers and the wanted ``.json`` members are read.
    """
    found: dict[str, dict] = {}
    images: dict[str, dict[str, str]] = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = wds_split(member.name)
            if key not in wanted:
                continue
            entry = found.setdefault(key, {"shard": os.path.basename(path)})
            if ext in WDS_IMAGE_EXTENSIONS:
                images.setdefault(key, {})[ext] = member.name
            elif ext == "json" and member.size <= _MAX_SIDECAR:
                fh = tar.extractfile(member)
                try:
                    data = json.loads(fh.read()) if fh is not None else {}
                except ValueError:
                    data = {}
                if isinstance(data, dict):
                    entry.update({c: _text(data[c]) for c in _META if data.get(c) is not None})
    for key, by_ext in images.items():  # the member the WebDataset reader embeds: the first image extension
        found[key]["member"] = by_ext[next(e for e in WDS_IMAGE_EXTENSIONS if e in by_ext)]
    return found


def _wds_metadata(paths: list[str], ids: set[str]) -> dict[str, dict]:
    """Per wanted key of a WebDataset source: its ``shard``, image ``member``, ``url`` and ``uid``.

    Where img2dataset's metadata file lies beside a tar, it says whether the tar holds a wanted key (and
    gives the url); only tars that do, or have no such file, are scanned.
    """
    import pyarrow as pa

    out: dict[str, dict] = {}
    for path in paths:
        remaining = ids - out.keys()
        if not remaining:
            break
        beside = metadata_beside(path)
        if beside is not None:
            listed = _parquet_metadata([beside], remaining)
            for entry in listed.values():
                entry.pop("row")
                entry["shard"] = os.path.basename(path)
            out.update(listed)
            remaining = set(listed)
            if not remaining:
                continue
        if is_url(path) or is_pipe(path):
            continue  # a remote shard is not downloaded again for its headers
        try:
            scanned = _scan_tar(path, remaining)
        except (OSError, tarfile.TarError, EOFError, pa.ArrowException):
            continue
        for key, entry in scanned.items():
            out[key] = {**out.get(key, {}), **{c: v for c, v in entry.items() if v is not None}}
    return out


def _folder_metadata(root: str, ids: set[str]) -> dict[str, dict]:
    """Per wanted id of an image folder: its relative ``path`` and the ``url`` / ``uid`` of its ``.json``."""
    out: dict[str, dict] = {}
    for ident in ids:
        stem = os.path.splitext(os.path.join(root, *ident.split("/")))[0]
        data = _sidecar(stem + ".json") if os.path.isfile(stem + ".json") else {}
        out[ident] = {"path": ident, **{c: _text(data.get(c)) for c in _META if data.get(c) is not None}}
    return out


def _source_metadata(entry: dict, ids: set[str], files: dict[str, int] | None = None) -> dict[str, dict]:
    """Per wanted id of one recorded corpus source: where it lies and its ``url`` / ``uid`` (what it has).
    ``files``: the position in the source's paths of the file that holds an id (the index recorded it): only
    that file is read for it; the other ids are looked for file by file."""
    kind, paths = entry.get("kind"), [str(p) for p in entry.get("paths", ())]
    if kind == "folder" and paths:
        return _folder_metadata(paths[0], ids)
    if kind not in ("parquet", "wds"):
        return {}
    read = _parquet_metadata if kind == "parquet" else _wds_metadata
    by_file: dict[int, set[str]] = {}
    for ident in ids:
        f = (files or {}).get(ident)
        if f is not None and 0 <= f < len(paths):
            by_file.setdefault(f, set()).add(ident)
    out: dict[str, dict] = {}
    for f, held in sorted(by_file.items()):
        out.update(read([paths[f]], held))
    rest = ids - out.keys()  # not located, or not where the index recorded it (a source re-packed since)
    return out | (read(paths, rest) if rest else {})


def corpus_metadata(index_dir: str | os.PathLike, keys) -> dict[str, dict]:
    """Per index key: ``source``, ``id``, ``caption``, ``item_xxh3`` (from the shards) and ``url``, ``uid``,
    ``shard``, ``member``, ``row``, ``path`` (from the source, where it has them; else None)."""
    blank = dict.fromkeys((*_META, *_WHERE))
    located = rows_by_key(index_dir, keys, ["source", "id", "caption", "item_xxh3", "location"])
    out = {key: {**{c: v for c, v in row.items() if c != "location"}, **blank} for key, row in located.items()}
    if not out:
        return out
    by_source: dict[str, set[str]] = {}
    files: dict[str, dict[str, int]] = {}
    for row in located.values():
        by_source.setdefault(row["source"], set()).add(row["id"])
        if row.get("location") is not None:
            files.setdefault(row["source"], {})[row["id"]] = int(row["location"]["file"])
    recorded = {s.get("name"): s for s in load_manifest(index_dir).sources}
    found = {name: _source_metadata(recorded[name], ids, files.get(name))
             for name, ids in by_source.items() if name in recorded}
    for row in out.values():
        row.update(found.get(row["source"], {}).get(row["id"], {}))
    return out


def corpus_matches(splits: dict[str, Split], index_dir: str | os.PathLike):
    """The pyarrow Table of ``corpus_matches.parquet`` (columns ``MATCH_COLUMNS``), sorted by corpus key."""
    import pyarrow as pa

    pairs = sorted(matched_pairs(splits), key=lambda p: (p[3], p[0], p[1]))
    meta = corpus_metadata(index_dir, {p[3] for p in pairs})
    blank = dict.fromkeys(("source", "id", "caption", "item_xxh3", *_META, *_WHERE))
    rows = [{**blank, **meta.get(key, {})} for _, _, _, key, _, _ in pairs]
    text = ("source", "id", "url", "uid", "caption", "shard", "member")
    return pa.table({
        "corpus_key": pa.array([p[3] for p in pairs], pa.string()),
        **{c: pa.array([r[c] for r in rows], pa.string()) for c in text},
        "row": pa.array([r["row"] for r in rows], pa.int64()),
        "path": pa.array([r["path"] for r in rows], pa.string()),
        "item_xxh3": pa.array([r["item_xxh3"] for r in rows], pa.string()),
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
