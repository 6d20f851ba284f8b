"""The item table: every shard row's columns but the vectors, stored row by row and addressable by row and by
key, so that reading a report's matched items back touches a few pages per item whatever the corpus size.

Written when an index is finished, beside the FAISS index of the same generation, four files:

- ``items.rows``: a JSON header line (the columns and their Arrow types, the row count), then one record per
  shard row in shard order. A record is its fields joined by NUL; a field is empty for null, else ``v``
  followed by the value as text with ``\\`` and NUL escaped (``\\\\``, ``\\0``); a struct column is one field
  for the struct's validity followed by one per child. Records are built column-wise by Arrow, so writing
  costs about what reading the shards does.
- ``items.offsets.npy``: uint64 [n + 1], record r is bytes ``offsets[r]:offsets[r + 1]`` of ``items.rows``.
- ``items.keys.npy``: uint64 [n, 2], (xxh3-64 of the key, row) sorted by hash.
- ``items.buckets.npy``: uint64 [2^B + 1], the entries of ``items.keys.npy`` whose hash's top B bits are b
  lie at ``buckets[b]:buckets[b + 1]``; B is chosen so that a bucket holds 2-4 entries on average.

A key is looked up in its bucket (one page of the directory, one of the entries), its record read through its
offset (one page each), and confirmed against the key it holds (two keys may share a hash): a constant number
of page touches per key, where a binary search over sorted hashes and columnar buffers touched one page per
step and per column once the corpus outgrew the pages its lookups shared.
"""

from __future__ import annotations

import json
import mmap
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import IndexDamagedError

ROWS_SUFFIX = ".rows"
VECTOR_COLUMNS = ("vector", "query_vector")  # read from the shards (or the FAISS index), never from here
_FORMAT = "overlap_audit.items/1"
_SEP = "\x00"
_ESCAPED = re.compile(r"\\(.)", re.S)
_SIDE_FILES = ("offsets", "keys", "buckets")


def side_files(items_file: str) -> dict[str, str]:
    """The files beside an item table: items.rows -> items.offsets.npy, items.keys.npy, items.buckets.npy."""
    stem = items_file.rsplit(".", 1)[0]
    return {part: f"{stem}.{part}.npy" for part in _SIDE_FILES}


def is_item_table(items_file: str | None) -> bool:
    """Whether a manifest's ``items_file`` is an item table this version reads (an index finished by an earlier
    development version names an ``items.arrow`` of another layout: its items are read from the shards)."""
    return bool(items_file) and items_file.endswith(ROWS_SUFFIX)


def key_hashes(keys: Iterable[str]) -> np.ndarray:
    """The xxh3-64 of each key's UTF-8 bytes, as uint64."""
    import xxhash

    return np.fromiter((xxhash.xxh3_64_intdigest(k.encode("utf-8", "surrogatepass")) for k in keys),
                       dtype=np.uint64)


def bucket_bits(n: int) -> int:
    """Bits of the hash that pick a key's bucket: 2-4 entries per bucket on average, at least one bit."""
    return max(1, int(np.ceil(np.log2(max(n, 1)))) - 2)


def _type_name(t) -> str:
    import pyarrow as pa

    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    raise TypeError(f"the item table does not store columns of type {t}")


def _layout(schemas) -> list[dict]:
    """The stored columns of the shards' schemas (every column any of them has, in order of first appearance):
    name and type, a struct with its children."""
    import pyarrow as pa

    out, seen = [], set()
    for f in (f for schema in schemas for f in schema):
        if f.name in seen:
            continue
        seen.add(f.name)
        if f.name in VECTOR_COLUMNS or pa.types.is_binary(f.type) or pa.types.is_fixed_size_binary(f.type):
            continue
        if pa.types.is_struct(f.type):
            out.append({"name": f.name, "type": "struct",
                        "fields": [[c.name, _type_name(c.type)] for c in f.type]})
        else:
            out.append({"name": f.name, "type": _type_name(f.type)})
    return out


def _field(values):
    """One column as record fields: '' for null, 'v' + the escaped text otherwise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    if pa.types.is_string(values.type):
        text = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), _SEP, "\\0")
    return pc.binary_join_element_wise("v", text, "").fill_null("")


def encode_records(table, layout: list[dict]):
    """The records of a shard table's rows (a large_string array), fields in ``layout`` order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    fields = []
    for col in layout:
        values = table[col["name"]].combine_chunks() if col["name"] in table.column_names else None
        if values is None:  # a shard written before the column existed: every row null
            fields.extend([pa.nulls(len(table), pa.string()).fill_null("")]
                          * (1 + len(col.get("fields", [])) if col["type"] == "struct" else 1))
            continue
        if col["type"] == "struct":
            fields.append(pc.if_else(values.is_valid(), "v", ""))
            fields.extend(_field(child) for child in values.flatten())
        else:
            fields.append(_field(values))
    joined = pc.binary_join_element_wise(*fields, _SEP) if len(fields) > 1 else fields[0]
    return pc.cast(joined, pa.large_string())


def _npy(array: np.ndarray):
    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    return save


def _shard_tables(paths: list[Path]):
    import pyarrow.parquet as pq

    for path in paths:
        names = [c for c in pq.read_schema(path).names if c not in VECTOR_COLUMNS]
        yield path, pq.read_table(path, columns=names, memory_map=True)


def write_items(index_dir: str | os.PathLike, items_file: str, paths: list[Path]) -> int:
    """Write the item table of the shards ``paths`` (in shard order) and its side files, each atomically;
    returns its rows."""
    import pyarrow.parquet as pq

    out = Path(index_dir)
    layout = _layout(pq.read_schema(p) for p in paths) if paths else [{"name": "key", "type": "string"}]
    n = sum(pq.read_metadata(p).num_rows for p in paths)
    header = (json.dumps({"format": _FORMAT, "columns": layout, "rows": n}, sort_keys=True) + "\n").encode()
    offsets = np.empty(n + 1, np.uint64)
    hashes = np.empty(n, np.uint64)

    def write(tmp: str) -> None:
        at, row = len(header), 0
        with open(tmp, "wb") as fh:
            fh.write(header)
            for _, table in _shard_tables(paths):
                records = encode_records(table, layout)
                bounds = np.frombuffer(records.buffers()[1], np.int64, len(records) + 1, records.offset * 8)
                offsets[row:row + len(records)] = at + (bounds[:-1] - bounds[0])
                data = records.buffers()[2]
                fh.write(memoryview(data)[bounds[0]:bounds[-1]])
                at += int(bounds[-1] - bounds[0])
                hashes[row:row + len(records)] = key_hashes(table["key"].to_pylist())
                row += len(records)
        offsets[n] = at

    atomic_write(out / items_file, write)
    entries, buckets = key_index(hashes)
    names = side_files(items_file)
    atomic_write(out / names["offsets"], _npy(offsets))
    atomic_write(out / names["keys"], _npy(entries))
    atomic_write(out / names["buckets"], _npy(buckets))
    return n


def key_index(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hash, row) sorted by hash, and the bucket directory over the hashes' top bits."""
    order = np.argsort(hashes, kind="stable")
    entries = np.stack([hashes[order], order.astype(np.uint64)], axis=1)
    bits = bucket_bits(len(hashes))
    counts = np.bincount((entries[:, 0] >> np.uint64(64 - bits)).astype(np.int64), minlength=1 << bits)
    return entries, np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)


def _unescape(text: str) -> str:
    return _ESCAPED.sub(lambda m: _SEP if m.group(1) == "0" else m.group(1), text) if "\\" in text else text


_CONVERT = {"string": _unescape, "int": int, "bool": lambda s: s == "true"}


class ItemTable:
    """An item table opened memory-mapped: rows by key (``rows_of``) and columns by row (``read``)."""

    def __init__(self, index_dir: str | os.PathLike, items_file: str) -> None:
        path = Path(index_dir) / items_file
        names = side_files(items_file)
        self.path = path
        try:
            with open(path, "rb") as fh:
                header = json.loads(fh.readline())
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._offsets = np.load(path.parent / names["offsets"], mmap_mode="r")
            self._entries = np.load(path.parent / names["keys"], mmap_mode="r")
            self._buckets = np.load(path.parent / names["buckets"], mmap_mode="r")
            layout = header["columns"]
            self.n_rows = int(header["rows"])
            ok = header.get("format") == _FORMAT
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self._damaged(f"cannot read the item table ({exc})") from None
        if not ok or self._offsets.shape != (self.n_rows + 1,) or self._entries.ndim != 2 \
                or self._entries.shape[1] != 2 or len(self._buckets) < 3 or \
                len(self._buckets) - 1 != 1 << int(np.log2(len(self._buckets) - 1)):
            raise self._damaged("its files do not have the shapes its header records")
        self._bits = int(np.log2(len(self._buckets) - 1))
        # (column, position of its first field, converters: one, or the struct's children)
        self._columns: dict[str, tuple[int, object]] = {}
        at = 0
        for col in layout:
            if col["type"] == "struct":
                self._columns[col["name"]] = (at, [(name, _CONVERT[t]) for name, t in col["fields"]])
                at += 1 + len(col["fields"])
            else:
                self._columns[col["name"]] = (at, _CONVERT[col["type"]])
                at += 1
        self._n_fields = at
        self.names = list(self._columns)

    def _damaged(self, what: str) -> IndexDamagedError:
        return IndexDamagedError(f"{self.path} is damaged: {what}; rebuild the index with "
                                 "`overlap-audit index ... --resume`", self.path.name)

    def __len__(self) -> int:
        return len(self._entries)

    def records(self, rows: np.ndarray) -> list[list[str]]:
        """The raw fields of each row's record."""
        rows = np.asarray(rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise self._damaged(f"row {int(rows.max())} asked of an item table of {self.n_rows} rows")
        starts = np.asarray(self._offsets[rows], np.int64)
        stops = np.asarray(self._offsets[rows + 1], np.int64)
        out = []
        for a, b in zip(starts.tolist(), stops.tolist()):
            fields = self._map[a:b].decode("utf-8", "surrogatepass").split(_SEP)
            if len(fields) != self._n_fields:
                raise self._damaged(f"a record at byte {a} holds {len(fields)} fields where it should hold "
                                    f"{self._n_fields}")
            out.append(fields)
        return out

    def _value(self, fields: list[str], column: str):
        spot = self._columns.get(column)
        if spot is None:
            return None
        at, convert = spot
        if isinstance(convert, list):  # a struct: its validity, then its children
            if not fields[at]:
                return None
            return {name: (None if not f else conv(f[1:]))
                    for (name, conv), f in zip(convert, fields[at + 1:at + 1 + len(convert)])}
        f = fields[at]
        return None if not f else convert(f[1:])

    def read(self, rows: np.ndarray, columns: Iterable[str]) -> dict[str, list]:
        """The asked columns at ``rows`` (in any order), one list per column, row-aligned; a column the
        table does not have reads as None."""
        columns = list(columns)
        records = self.records(rows)
        return {c: [self._value(f, c) for f in records] for c in columns}

    def _candidates(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``keys``, table row) of every stored entry in a wanted key's bucket with its hash: one
        per key it holds, unless two keys share a hash; the row's ``key`` confirms it."""
        if not keys or not len(self._entries):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        wanted = key_hashes(keys)
        bucket = (wanted >> np.uint64(64 - self._bits)).astype(np.int64)
        lo = np.asarray(self._buckets[bucket], np.int64)
        n = np.asarray(self._buckets[bucket + 1], np.int64) - lo
        owner = np.repeat(np.arange(len(keys)), n)
        at = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        entries = np.asarray(self._entries[at])
        same = entries[:, 0] == wanted[owner] if len(at) else np.zeros(0, bool)
        return owner[same], entries[same, 1].astype(np.int64)

    def rows_of(self, keys: Iterable[str]) -> dict[str, int]:
        """The table row of each key it holds (keys it does not hold are absent)."""
        return {k: r for k, (r, _) in self._found(keys).items()}

    def _found(self, keys: Iterable) -> dict[str, tuple[int, list[str]]]:
        keys = sorted({str(k) for k in keys if k is not None})
        owner, rows = self._candidates(keys)
        key_at = self._columns["key"][0]
        return {keys[o]: (int(r), f) for o, r, f in zip(owner, rows, self.records(rows))
                if f[key_at] and _unescape(f[key_at][1:]) == keys[o]}

    def by_key(self, keys: Iterable, columns: Iterable[str]) -> dict[str, dict]:
        """``{key: {column: value}}`` of the rows holding ``keys``, as ``shards.rows_by_key`` gives them."""
        columns = list(columns)
        return {k: {c: self._value(f, c) for c in columns} for k, (_, f) in self._found(keys).items()}


def check_items(index_dir: str | os.PathLike, items_file: str, paths: list[Path]) -> int:
    """Hold the item table to the shards ``paths``: every record the encoding of its shard row (each shard read
    once), the offsets, and the key index and its buckets those of the shards' keys. Returns the rows
    compared; the first mismatch raises IndexDamagedError."""
    path = Path(index_dir)
    table = ItemTable(path, items_file)
    damaged = table._damaged
    with open(table.path, "rb") as fh:
        layout = json.loads(fh.readline())["columns"]
    row = 0
    hashes = []
    for shard, want in _shard_tables(paths):
        if row + len(want) > table.n_rows:
            raise damaged(f"holds {table.n_rows} rows where the shards hold more")
        records = encode_records(want, layout)
        bounds = np.frombuffer(records.buffers()[1], np.int64, len(records) + 1, records.offset * 8)
        start = int(table._offsets[row])
        stored = np.asarray(table._offsets[row:row + len(records) + 1], np.int64)
        data = memoryview(records.buffers()[2]).cast("B")[bounds[0]:bounds[-1]]  # bytes, not signed chars
        if not np.array_equal(stored - start, bounds - bounds[0]) or table._map[start:start + len(data)] != data:
            raise damaged(f"does not hold the rows of {shard.name} (rows {row}..{row + len(want) - 1})")
        hashes.append(key_hashes(want["key"].to_pylist()))
        row += len(want)
    if row != table.n_rows or len(table._map) != int(table._offsets[-1]):
        raise damaged(f"holds {table.n_rows} rows where the shards hold {row}")
    entries, buckets = key_index(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))
    if not np.array_equal(entries, table._entries) or not np.array_equal(buckets, table._buckets):
        raise damaged("has a key index that is not that of its keys")
    return row
