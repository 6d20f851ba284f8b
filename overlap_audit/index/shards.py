"""The index's Parquet shards: writing them, reading them back (vectors, rows, items by key), their paths.

A shard holds every item given, in input order; its columns are listed in ``overlap_audit.index.manifest``.
A shard checks itself: its Parquet metadata records the xxh3-64 of its vectors (``VECTORS_XXH3``), and every
read of its vectors (building, streaming search, recall, ``check``) holds them to it, so damaged vectors are
never indexed or searched, whatever the manifest says.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..content import ContentBox, box_arrow_type
from ..errors import IndexDamagedError, ResumeError
from ..values import DetectorInfo, ItemLocation, RawItem, Skipped
from .items import ItemTable, is_item_table, usable_mask
from .manifest import MANIFEST, SHARD_DIR, checksum_bytes, checksum_file, load_manifest

_SHARD_RE = re.compile(r"^shard-(\d{6})\.parquet$")
_TEXT_COLUMNS = ["key", "source", "id", "caption", "label", "low_information", "skip_reason"]
VECTORS_XXH3 = b"overlap_audit.vectors_xxh3"  # Parquet key-value metadata: the checksum of the shard's vectors


def corpus_key(source_name: str, item_id: str, n_sources: int) -> str:
    """The id a corpus item has in the index: its own id, qualified by its source when there are several."""
    return item_id if n_sources == 1 else f"{source_name}/{item_id}"


def shard_path(index_dir: str | os.PathLike, shard_no: int) -> Path:
    """Where shard number ``shard_no`` of an index directory lives."""
    return Path(index_dir) / SHARD_DIR / f"shard-{shard_no:06d}.parquet"


def shard_paths(index_dir: str | os.PathLike) -> list[Path]:
    """The shard files of an index directory, in shard order."""
    return sorted((Path(index_dir) / SHARD_DIR).glob("shard-*.parquet"))


def pending_shard_path(index_dir: str | os.PathLike, shard_no: int) -> Path:
    """Where a shard embedded out of order waits until every shard before it is written (``ShardsInOrder``);
    not a shard of the index until renamed to ``shard_path``."""
    return Path(index_dir) / SHARD_DIR / f"pending-{shard_no:06d}.parquet"


def remove_pending_shards(index_dir: str | os.PathLike) -> int:
    """Delete the pending shards an interrupted run left behind (their items are embedded again); returns
    how many."""
    found = list((Path(index_dir) / SHARD_DIR).glob("pending-*.parquet"))
    for p in found:
        p.unlink(missing_ok=True)
    return len(found)


class ShardsInOrder:
    """Shards written as pending files in whatever order they finish, each renamed into the index only once
    every shard before it is: so the shards on disk are always a contiguous run from 0, which is what
    ``--resume`` reads past, however a run of many workers is interrupted.

    ``first`` is the next shard to commit; ``done(shard_no, n_items)`` records one finished pending shard and
    commits what it completes, calling ``on_commit(shard_no, items committed so far)`` after each rename.
    """

    def __init__(self, index_dir: str | os.PathLike, first: int, items_before: int = 0,
                 on_commit=None) -> None:
        self.index_dir, self.next, self.items = Path(index_dir), first, items_before
        self.on_commit = on_commit
        self._ready: dict[int, int] = {}

    def done(self, shard_no: int, n_items: int) -> None:
        self._ready[int(shard_no)] = int(n_items)
        while self.next in self._ready:
            os.replace(pending_shard_path(self.index_dir, self.next), shard_path(self.index_dir, self.next))
            self.items += self._ready.pop(self.next)
            self.next += 1
            if self.on_commit is not None:
                self.on_commit(self.next - 1, self.items)

    @property
    def waiting(self) -> list[int]:
        """Finished shards not yet committed (a shard before them is still running)."""
        return sorted(self._ready)


def finished_shards(index_dir: str | os.PathLike) -> list[int]:
    """The numbers of the shards on disk; they must run contiguously from 0."""
    shard_dir = Path(index_dir) / SHARD_DIR
    if not shard_dir.exists():
        return []
    found = sorted(int(m.group(1)) for p in shard_dir.iterdir() if (m := _SHARD_RE.match(p.name)))
    if found != list(range(len(found))):
        raise ResumeError(f"{shard_dir}: finished shards are not a contiguous run from 0 ({found[:10]}...); "
                          "the directory was modified by hand; start again in a new directory")
    return found


def vector_width(info: DetectorInfo) -> int:
    """Values per stored vector: dim floats, or dim/8 bytes of a packed hash."""
    return info.dim // 8 if info.metric == "hamming" else info.dim


def _vector_dtype(info: DetectorInfo) -> np.dtype:
    return np.dtype(np.uint8 if info.metric == "hamming" else np.float32)


def _fixed_width(rows: list[np.ndarray | None], info: DetectorInfo):
    """Vectors as Parquet FIXED_LEN_BYTE_ARRAY (one value per row, no per-element levels): decoding is a
    zero-copy view, several times faster and leaner than a list<float> column."""
    import pyarrow as pa

    dtype = _vector_dtype(info)
    return pa.array([None if v is None else np.ascontiguousarray(v, dtype=dtype).tobytes() for v in rows],
                    type=pa.binary(vector_width(info) * dtype.itemsize))


@dataclass(frozen=True)
class ItemBytes:
    """The bytes an item was embedded from: their size and checksum, and the file's mtime where it is a file."""

    size: int
    xxh3: str
    mtime_ns: int | None = None


def item_bytes(item: RawItem) -> ItemBytes | None:
    """Size, checksum (and mtime) of an item's bytes as its source gives them now; None when it has none."""
    if item.data is not None:
        return ItemBytes(len(item.data), checksum_bytes(item.data))
    if item.path is not None:
        try:
            st = os.stat(item.path)
            return ItemBytes(st.st_size, checksum_file(item.path), st.st_mtime_ns)
        except OSError:
            return None
    return None


def same_item_bytes(item: RawItem, recorded: ItemBytes, *, trust_mtime: bool = True) -> bool:
    """Whether an item still has the bytes a shard recorded: with ``trust_mtime``, a file's unchanged size
    and mtime suffice; otherwise (and for bytes that are not a file) the checksum decides."""
    if trust_mtime and item.path is not None and item.data is None and recorded.mtime_ns is not None:
        try:
            st = os.stat(item.path)
        except OSError:
            return False
        if st.st_size == recorded.size and st.st_mtime_ns == recorded.mtime_ns:
            return True
    now = item_bytes(item)
    return now is not None and now.size == recorded.size and now.xxh3 == recorded.xxh3


def location_arrow_type():
    """The Arrow struct an ``ItemLocation`` is stored as (``ItemLocation.to_dict``)."""
    import pyarrow as pa

    return pa.struct([("file", pa.int32()), ("members", pa.string()), ("row_group", pa.int32()),
                      ("row", pa.int64())])


def write_shard(path: Path, info: DetectorInfo, *, keys: list[str], sources: list[str], ids: list[str],
                captions: list[str | None], labels: list[str | None], vectors: list[np.ndarray | None],
                low_information: list[bool], reasons: list[str | None], copies: list[np.ndarray | None],
                boxes: list | None = None, fingerprints: list[ItemBytes | None] | None = None,
                locations: list[ItemLocation | None] | None = None) -> None:
    """Write one shard atomically: every item given, embedded or skipped, plus any recall-query copies.

    ``boxes`` are the items' content boxes (``content.ContentBox`` or None) under a trimming detector: the
    ``content_box`` column holds left, top, right, bottom, width and height in the decoded image's pixels and
    whether the embedded view was cut to it (null where the detector does not trim or the item was skipped).
    ``fingerprints`` (``item_size``, ``item_mtime_ns``, ``item_xxh3``) let a resumed run check that a finished
    shard's items are unchanged (null where an item had no bytes, or the shard came from vectors).
    ``locations`` (``location``) are where a tar or Parquet source holds each item, to read it back without a
    scan (null where the source gave none).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    boxes = boxes if boxes is not None else [None] * len(keys)
    fingerprints = fingerprints if fingerprints is not None else [None] * len(keys)
    locations = locations if locations is not None else [None] * len(keys)

    table = pa.table({
        "key": pa.array(keys, pa.string()),
        "source": pa.array(sources, pa.string()),
        "id": pa.array(ids, pa.string()),
        "caption": pa.array(captions, pa.string()),
        "label": pa.array(labels, pa.string()),
        "vector": _fixed_width(vectors, info),
        "low_information": pa.array(low_information, pa.bool_()),
        "skip_reason": pa.array(reasons, pa.string()),
        "query_vector": _fixed_width(copies, info),
        "content_box": pa.array([None if b is None else b.to_dict() for b in boxes], box_arrow_type()),
        "item_size": pa.array([None if f is None else f.size for f in fingerprints], pa.int64()),
        "item_mtime_ns": pa.array([None if f is None else f.mtime_ns for f in fingerprints], pa.int64()),
        "item_xxh3": pa.array([None if f is None else f.xxh3 for f in fingerprints], pa.string()),
        "location": pa.array([None if loc is None else loc.to_dict() for loc in locations], location_arrow_type()),
    })
    table = table.replace_schema_metadata({VECTORS_XXH3: _vectors_checksum(table["vector"], info).encode()})
    # vectors do not compress, repeat or sort: no compression, dictionary or min/max statistics for them
    atomic_write(path, lambda tmp: pq.write_table(
        table, tmp, compression={c: ("snappy" if c in _TEXT_COLUMNS else "none") for c in table.column_names},
        use_dictionary=_TEXT_COLUMNS, write_statistics=_TEXT_COLUMNS))


def _column_vectors(column, info: DetectorInfo) -> np.ndarray:
    """All rows of a vector column as one [rows, width] array (null rows hold zeros or garbage)."""
    dtype = _vector_dtype(info)
    width = vector_width(info)
    parts = []
    for chunk in column.chunks:
        data = chunk.buffers()[1]
        if data is None or len(chunk) == 0:
            parts.append(np.zeros((len(chunk), width), dtype))
            continue
        view = np.frombuffer(data, dtype=dtype, count=len(chunk) * width, offset=chunk.offset * width * dtype.itemsize)
        parts.append(view.reshape(len(chunk), width))
    if not parts:
        return np.zeros((0, width), dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _vectors_checksum(column, info: DetectorInfo) -> str:
    """The xxh3-64 of a vector column's non-null vectors, in row order."""
    vectors = _column_vectors(column, info)
    if column.null_count:
        vectors = vectors[np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)]
    return checksum_bytes(np.ascontiguousarray(vectors).data)


def read_shard_vectors(path: Path, info: DetectorInfo) -> np.ndarray:
    """The vectors of a shard's indexed items, in index row order, held to the checksum the shard records
    (IndexDamagedError naming the shard when they differ or it records none)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["vector", "low_information", "skip_reason"], memory_map=True)
    recorded = (table.schema.metadata or {}).get(VECTORS_XXH3)
    name = f"{path.parent.name}/{path.name}"
    if recorded is None or _vectors_checksum(table["vector"], info) != recorded.decode():
        what = ("records no checksum of its vectors" if recorded is None
                else "has vectors that do not match the checksum it records")
        raise IndexDamagedError(f"{path.parent.parent} is damaged: {name} {what} (its embeddings are lost); "
                                "rebuild the index in a new directory", name)
    mask = usable_mask(table)
    vectors = _column_vectors(table["vector"], info)
    return vectors if mask.all() else vectors[mask]


@dataclass(frozen=True)
class ShardRows:
    """Everything a shard records about its items except their vectors."""

    keys: list[str]
    sources: list[str]
    ids: list[str]
    reasons: list[str | None]
    usable: np.ndarray  # bool per row: indexed
    has_query: np.ndarray  # bool per row: an indexed row with an augmented copy
    query_vectors: np.ndarray  # [rows, width]; meaningful where has_query

    @property
    def skipped(self) -> list[Skipped]:
        return [Skipped(s, i, r) for s, i, r in zip(self.sources, self.ids, self.reasons) if r is not None]


def read_shard(path: Path, info: DetectorInfo) -> ShardRows:
    """A shard's keys, item ids, skip reasons, indexed rows and recall-query copies."""
    import pyarrow.parquet as pq

    columns = ["key", "source", "id", "skip_reason", "low_information"]
    if "query_vector" in pq.read_schema(path).names:
        columns.append("query_vector")
    table = pq.read_table(path, columns=columns, memory_map=True)
    usable = usable_mask(table)
    if "query_vector" in table.column_names and table["query_vector"].null_count < table.num_rows:
        has_query = np.asarray(table["query_vector"].is_valid().to_numpy(zero_copy_only=False), dtype=bool) & usable
        queries = _column_vectors(table["query_vector"], info)
    else:
        has_query = np.zeros(table.num_rows, dtype=bool)
        queries = np.zeros((0, vector_width(info)), _vector_dtype(info))
    return ShardRows(table["key"].to_pylist(), table["source"].to_pylist(), table["id"].to_pylist(),
                     table["skip_reason"].to_pylist(), usable, has_query, queries)


def shard_item_ids(path: Path) -> list[tuple[str, str]]:
    """The (source, id) of every item in a shard, in input order."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["source", "id"])
    return list(zip(table["source"].to_pylist(), table["id"].to_pylist()))


def shard_items(path: Path) -> list[tuple[str, str, ItemBytes | None]]:
    """The (source, id, recorded bytes or None) of every item in a shard, in input order."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if "item_xxh3" not in names:  # a shard written before items were fingerprinted
        return [(s, i, None) for s, i in shard_item_ids(path)]
    t = pq.read_table(path, columns=["source", "id", "item_size", "item_mtime_ns", "item_xxh3"]).to_pydict()
    return [(s, i, None if h is None else ItemBytes(int(n), h, m))
            for s, i, n, m, h in zip(t["source"], t["id"], t["item_size"], t["item_mtime_ns"], t["item_xxh3"])]


def shard_first_rows(index_dir: str | os.PathLike) -> list[tuple[Path, int]]:
    """Each shard with the index row of its first indexed item."""
    import pyarrow.parquet as pq

    out, row = [], 0
    for path in shard_paths(index_dir):
        out.append((path, row))
        row += int(usable_mask(pq.read_table(path, columns=["low_information", "skip_reason"])).sum())
    return out


def iter_shard_vectors(index_dir: str | os.PathLike, info: DetectorInfo) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (first corpus row, vectors) of the indexable items of each shard, in index row order.

    The next shard is read in a background thread while the caller works on this one (pyarrow releases
    the GIL), so reading overlaps searching; memory holds at most two shards.
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = shard_paths(index_dir)
    row = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read_shard_vectors, paths[0], info) if paths else None
        for i in range(len(paths)):
            vectors = pending.result()
            pending = pool.submit(read_shard_vectors, paths[i + 1], info) if i + 1 < len(paths) else None
            yield row, vectors
            row += len(vectors)


def rows_by_key(index_dir: str | os.PathLike, keys: Iterable, columns: Iterable[str], *,
                items_file: str | None | bool = True) -> dict[str, dict]:
    """``{key: {column: value}}`` of the shard rows holding ``keys``, for the columns asked (a column a shard
    does not have reads as None); a key in no shard is absent.

    Read from the index's item table (``items_file``, or with True the one its manifest names), looked up by
    key and row (``overlap_audit.index.items``); an index without one (None, False, or a table of an earlier
    development layout) has its shards scanned.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns = list(columns)
    if items_file is True:
        items_file = load_manifest(index_dir).items_file if (Path(index_dir) / MANIFEST).exists() else None
    if is_item_table(index_dir, items_file):
        with ItemTable(index_dir, items_file) as table:
            return table.by_key(keys, columns)
    wanted = {str(k) for k in keys if k is not None}
    found: dict[str, dict] = {}
    for path in shard_paths(index_dir):
        missing = wanted - found.keys()
        if not missing:
            break  # keys are unique across the shards
        with pq.ParquetFile(path, memory_map=True) as shard:
            table = shard.read(columns=["key", *(c for c in columns if c in shard.schema_arrow.names)])
        # the rows wanted, picked in Arrow (a shard holds many keys; only the few wanted become Python objects)
        table = table.filter(pc.is_in(table["key"], value_set=pa.array(sorted(missing), pa.string())))
        for row in table.to_pylist():
            found[row["key"]] = {c: row.get(c) for c in columns}
    return found


def content_boxes(index_dir: str | os.PathLike, keys) -> dict[str, ContentBox]:
    """The recorded content boxes of the corpus items behind ``keys``; keys without one (a detector that does
    not trim, a skipped item) are absent."""
    rows = rows_by_key(index_dir, keys, ["content_box"])
    return {key: ContentBox.from_dict(row["content_box"]) for key, row in rows.items()
            if row["content_box"] is not None}

