"""Opening an index for reading: the FAISS index with each row's key (``load_index``), the corpus items
behind keys, read back from the sources the manifest records (``corpus_items``), and the items the index
skipped (``skipped_items``).

``corpus_items`` is the one place corpus items are read back (verification, the gallery, pairs): each item
is read at the location its shard recorded (a tar member's offset and size, a Parquet row group and row;
``values.ItemLocation``) where there is one, else looked for by id in its source, and held to the size and
xxh3 checksum its shard recorded when it was embedded, so a file replaced after ``index`` is reported as
changed (``CHANGED``), never compared as if it were the original. A tar sample whose recorded offset holds
other bytes is looked for by key in its own tar (a re-packed tar still holds it), never in the whole source.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexDamagedError, OverlapAuditError
from ..limits import DEFAULT_LIMITS, ReadRefused, read_file
from ..sources import SOURCE_KINDS, Source, fetch_items, readback_problem
from ..values import ItemLocation, RawItem, Skipped
from .integrity import check_faiss, check_files, read_faiss_index, read_id_column
from .items import ItemTable, KeysByRow, is_item_table
from .manifest import REPAIR, VECTORS_FILE, IndexManifest, checksum_bytes, load_manifest
from .shards import ItemBytes, rows_by_key
from .views import read_view_indexes, view_index_name

# the start of the skip reason of a corpus item whose bytes are not the ones that were indexed
CHANGED = "changed since it was indexed"
_FINGERPRINT = ["item_size", "item_mtime_ns", "item_xxh3"]


class RowKeys:
    """Each index row's key, read for the rows asked only: from the item table (``items.KeysByRow``: a batch of
    rows costs a few µs a key at any corpus size, and opening reads nothing whole), or for an index without
    one, from ids.parquet's Arrow column (Python strings are made only for the rows asked)."""

    _BATCH = 1 << 16  # rows per read when iterating over every key

    def __init__(self, path: Path, manifest: IndexManifest, by_row: bool) -> None:
        self._n = manifest.n_indexed
        self._table = self._column = None
        if by_row:
            self._table = KeysByRow(path, manifest.items_file, manifest.n_indexed)
        else:
            self._column = read_id_column(path, manifest)

    def __len__(self) -> int:
        return self._n

    def _keys(self, rows: np.ndarray) -> list[str]:
        if self._table is not None:
            return self._table.keys(rows)
        import pyarrow as pa

        return self._column.take(pa.array(rows)).to_pylist()

    def __getitem__(self, rows):
        """The key of one row (an int), or an object array of the keys of an array of rows, in its shape."""
        if isinstance(rows, (int, np.integer)):
            row = int(rows)
            return self._keys(np.array([row + self._n if row < 0 else row], np.int64))[0]
        rows = np.asarray(rows, np.int64)
        out = np.empty(rows.size, dtype=object)
        out[:] = self._keys(rows.ravel()) if rows.size else []
        return out.reshape(rows.shape)

    def __iter__(self):
        for start in range(0, self._n, self._BATCH):
            yield from self._keys(np.arange(start, min(start + self._BATCH, self._n), dtype=np.int64))


@dataclass(frozen=True, eq=False)
class CorpusIndex:
    """A loaded index: its manifest, the FAISS index (None when loaded for streaming) and each row's key."""

    path: Path
    manifest: IndexManifest
    index: object
    keys: RowKeys
    view_indexes: tuple = ()  # the FAISS index of each of the manifest's views (none when loaded for streaming)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def params(self) -> dict:
        return self.manifest.extra.get("index_params", {})

    @property
    def vectors_file(self) -> str:
        return self.manifest.vectors_file or VECTORS_FILE


def load_index(index_dir: str | os.PathLike, *, load_faiss: bool = True) -> CorpusIndex:
    """Load a complete index directory (without the FAISS index itself when only streaming), checked
    against its manifest (``check_files``, ``check_faiss``); row keys are read as they are asked for."""
    path = Path(index_dir)
    manifest = load_manifest(path)
    # the FAISS index (and mih's tables) are read whole when loaded: their checksums cost one pass in memory;
    # so is ids.parquet where there is no item table to read keys from
    view_files = tuple(view_index_name(manifest.index_file, a) for a in manifest.views)
    read = (manifest.index_file, *(n for n in manifest.files if n.endswith(".mih")), *view_files) if load_faiss else ()
    by_row = is_item_table(path, manifest.items_file)
    if not by_row:
        read += (manifest.ids_file,)
    check_files(path, manifest, read=read)
    index, views = None, ()
    if load_faiss:
        index = read_faiss_index(path, manifest)
        check_faiss(path, manifest, index)
        views = read_view_indexes(path, manifest.detector, manifest.views, manifest.index_file, manifest.n_indexed)
    return CorpusIndex(path, manifest, index, RowKeys(path, manifest, by_row), views)


def skipped_items(index_dir: str | os.PathLike) -> list[Skipped]:
    """Every corpus item the index skipped, with its reason, in shard order (the manifest holds their count and
    the first few): the item table's rows that are not index rows, read back, each key confirmed against its
    hash, so the cost grows with the skipped and low-information items, never with the indexed ones."""
    path = Path(index_dir)
    manifest = load_manifest(path)
    check_files(path, manifest)
    if manifest.items_file is None:
        raise IndexDamagedError(f"{path} is damaged: its manifest names no item table; {REPAIR}")
    with ItemTable(path, manifest.items_file) as table:
        if (table.n_rows, table.n_indexed) != (manifest.n_given, manifest.n_indexed):
            raise IndexDamagedError(f"{path} is damaged: {manifest.items_file} holds {table.n_rows} rows, "
                                    f"{table.n_indexed} indexed, where the manifest counts {manifest.n_given} and "
                                    f"{manifest.n_indexed}; {REPAIR}", manifest.items_file)
        out = [Skipped(row["source"], row["id"], row["skip_reason"])
               for row in table.unindexed(["source", "id", "skip_reason"]) if row["skip_reason"] is not None]
    if len(out) != manifest.n_skipped:
        raise IndexDamagedError(f"{path} is damaged: {manifest.items_file} holds {len(out)} skipped items where "
                                f"the manifest counts {manifest.n_skipped}; {REPAIR}", manifest.items_file)
    return out


def _recorded_source(entry: dict | None, name: str) -> Source | None:
    """The source a manifest entry records, or None for one that cannot be read back (vectors)."""
    if entry is None or entry.get("kind") not in SOURCE_KINDS:
        return None
    return Source(entry["kind"], tuple(entry.get("paths", ())), name, entry.get("spec", ""))


def is_changed(item: RawItem) -> bool:
    """Whether ``corpus_items`` found this item's bytes changed since it was indexed."""
    return bool(item.skip_reason) and item.skip_reason.startswith(CHANGED)


def _held_to(item: RawItem, recorded: ItemBytes | None) -> RawItem:
    """``item`` with its bytes read once and checked against the fingerprint its shard recorded: the bytes
    that passed are the ones returned (a file is not read again later, when it may have changed); an item
    with other bytes becomes a skipped one whose reason starts with CHANGED."""
    if item.skip_reason or recorded is None:
        return item  # nothing to check against: a shard written from vectors, an item without bytes
    data = item.data
    if data is None and item.path is not None:
        try:
            data = read_file(item.path, DEFAULT_LIMITS.max_file_bytes)
        except (OSError, ReadRefused) as exc:
            return RawItem(item.source, item.id, skip_reason=f"cannot be read back ({exc})")
    if data is None:
        return item
    if len(data) != recorded.size or checksum_bytes(data) != recorded.xxh3:
        return RawItem(item.source, item.id, path=item.path,
                       skip_reason=f"{CHANGED} ({len(data)} bytes, xxh3 {checksum_bytes(data)}, where the index "
                                   f"recorded {recorded.size} bytes, xxh3 {recorded.xxh3})")
    return RawItem(item.source, item.id, data=data, path=item.path, caption=item.caption, label=item.label)


def corpus_items(index_dir: str | os.PathLike, keys) -> dict[str, RawItem]:
    """The corpus items behind index keys, read back from the sources the manifest records and held to the
    fingerprint (size, xxh3) their shard recorded.

    Every key maps to a RawItem; one whose image cannot be read any more (a moved source, a removed file,
    an index built from bare vectors) carries a ``skip_reason`` that says why, and so does one whose bytes
    changed since it was indexed (the reason starts with ``CHANGED``; ``is_changed``). An item that passes
    carries the checked bytes as ``data``.
    """
    manifest = load_manifest(index_dir)
    wanted = {str(k) for k in keys if k is not None}
    located = rows_by_key(index_dir, wanted, ["source", "id", "caption", "label", "location", *_FINGERPRINT],
                          items_file=manifest.items_file)
    out = {key: RawItem("", key, skip_reason="not in this index's shards") for key in wanted - located.keys()}
    by_source: dict[str, list[str]] = {}
    for key, row in located.items():
        by_source.setdefault(row["source"], []).append(key)
    sources = {s.get("name"): s for s in manifest.sources}
    for source_name, source_keys in by_source.items():
        src = _recorded_source(sources.get(source_name), source_name)
        items: dict[str, RawItem] = {}
        places: dict[str, ItemLocation] = {}
        if src is None:
            reason = f"source {source_name!r} is not recorded in the manifest (an index built from vectors)"
        else:
            places = {located[k]["id"]: ItemLocation.from_dict(located[k]["location"])
                      for k in source_keys if located[k]["location"] is not None}
            # every item recorded where it lies: only the files that hold them need to be there still
            files = ({p.file for p in places.values()} if len(places) == len(source_keys)
                     and all(0 <= p.file < len(src.paths) for p in places.values()) else None)
            reason = readback_problem(src, files)
            if reason is None:
                try:
                    items = fetch_items(src, [located[k]["id"] for k in source_keys], locations=places)
                except (OSError, OverlapAuditError) as exc:
                    reason = f"source {src.spec!r} is no longer readable ({exc})"
        for key in source_keys:
            out[key] = _checked(located[key], source_name, items.get(located[key]["id"]), reason)
        if src is not None and src.kind == "wds":  # read at their location, but not the bytes indexed
            retry = [k for k in source_keys if out[k].skip_reason and located[k]["id"] in items]
            _look_in_their_tars(src, located, retry, places, out)
    return out


def _checked(row: dict, source_name: str, item: RawItem | None, reason: str | None) -> RawItem:
    """The item read back for an item table ``row``, held to its fingerprint, with the caption and label the
    index recorded."""
    if item is None:
        item = RawItem(source_name, row["id"], skip_reason=reason or "not found in its source")
    else:
        fingerprint = (None if row["item_xxh3"] is None else
                       ItemBytes(int(row["item_size"]), row["item_xxh3"], row["item_mtime_ns"]))
        item = _held_to(item, fingerprint)
    return RawItem(source_name, row["id"], data=item.data, path=item.path, caption=row["caption"],
                   label=row["label"], skip_reason=item.skip_reason)


def _look_in_their_tars(src: Source, located: dict[str, dict], keys: list[str], places: dict[str, ItemLocation],
                        out: dict[str, RawItem]) -> None:
    """Tar samples whose recorded offsets no longer hold the indexed bytes (their tar was rewritten, or cut
    short): each looked for by key in its own tar only (a re-packed tar still holds it); one found with its
    indexed bytes replaces the skipped item in ``out``, the others stay as they are (CHANGED)."""
    by_file: dict[int, list[str]] = {}
    for key in keys:
        place = places.get(located[key]["id"])
        if place is not None:
            by_file.setdefault(place.file, []).append(key)
    for file, file_keys in by_file.items():
        one = dataclasses.replace(src, paths=(src.paths[file],))
        try:
            again = fetch_items(one, [located[k]["id"] for k in file_keys])
        except (OSError, OverlapAuditError):
            continue  # the CHANGED items say enough
        for key in file_keys:
            item = _checked(located[key], src.name, again.get(located[key]["id"]), None)
            if item.skip_reason is None:
                out[key] = item
