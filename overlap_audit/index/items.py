"""The item table: every shard row's columns but the vectors, stored row by row and addressable by row and by
key, so that reading a report's matched items back costs a few positioned reads per item whatever the corpus
size.

Written when an index is finished, beside the FAISS index of the same generation, four files:

- ``items.rows``: a JSON header line (the columns and their Arrow types, the row count), then one record per
  shard row in shard order. A record is its fields joined by NUL; a field is empty for null, else ``v``
  followed by the value as text with ``\\`` and NUL escaped (``\\\\``, ``\\0``); a struct column is one field
  for the struct's validity followed by one per child. Records are built column-wise by Arrow compute: no
  Python work per row but hashing its key.
- ``items.offsets.npy``: uint64 [n + 1], record r is bytes ``offsets[r]:offsets[r + 1]`` of ``items.rows``.
- ``items.keys.npy``: uint64 [n, 2], (xxh3-64 of the key, row) sorted by hash.
- ``items.buckets.npy``: uint64 [2^B + 1], the entries of ``items.keys.npy`` whose hash's top B bits are b
  lie at ``buckets[b]:buckets[b + 1]``; B is chosen so that a bucket holds 2-4 entries on average.

A key is looked up in its bucket (a positioned read of the directory's two bounds, one of the bucket's
entries), its record read through its offsets (one read each), and confirmed against the key it holds (two keys
may share a hash): four small reads per key at any corpus size, where a binary search over sorted hashes and
columnar buffers touched one page per step and per column once the corpus outgrew the pages its lookups
shared.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
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
_TWO = struct.Struct("<QQ")


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

    text = pc.cast(values, pa.string())
    if _type_name(values.type) == "string":  # only text can hold the separator or the escape
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


def _npy_data(fh, items_file: str) -> tuple[int, tuple[int, ...]]:
    """(byte offset of the data, shape) of an open little-endian uint64 .npy file."""
    fmt = np.lib.format
    read = fmt.read_array_header_1_0 if fmt.read_magic(fh) == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    if fortran or dtype != np.dtype("<u8"):
        raise ValueError(f"a side file of {items_file} is not a C-ordered uint64 array")
    return fh.tell(), shape


class ItemTable:
    """An item table opened for positioned reads: rows by key (``rows_of``) and columns by row (``read``).

    Every read is a ``pread`` of the bytes it needs (a bucket's bounds, its entries, a row's offsets, its record):
    nothing is memory-mapped, so a lookup costs the same few system calls at any corpus size, where faulting in
    mapped pages cost more per key as the files outgrew the pages their lookups shared."""

    def __init__(self, index_dir: str | os.PathLike, items_file: str) -> None:
        path = Path(index_dir) / items_file
        self.path = path
        self._files = []
        try:
            self._rows_fh = self._open(path)
            header = json.loads(self._rows_fh.readline())
            layout, self.n_rows = header["columns"], int(header["rows"])
            ok = header.get("format") == _FORMAT
            side = {part: self._open(path.parent / name) for part, name in side_files(items_file).items()}
            (self._offsets_at, offsets_shape), (self._entries_at, entries_shape), (self._buckets_at, buckets_shape) = (
                _npy_data(side[part], items_file) for part in _SIDE_FILES)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.close()
            raise self._damaged(f"cannot read the item table ({exc})") from None
        self._offsets_fd, self._entries_fd, self._buckets_fd = (side[part].fileno() for part in _SIDE_FILES)
        self._fd = self._rows_fh.fileno()
        n_buckets = buckets_shape[0] - 1 if len(buckets_shape) == 1 else 0
        if not ok or offsets_shape != (self.n_rows + 1,) or len(entries_shape) != 2 or entries_shape[1] != 2 \
                or n_buckets < 2 or n_buckets & (n_buckets - 1):
            self.close()
            raise self._damaged("its files do not have the shapes its header records")
        self._n_entries = entries_shape[0]
        self._bits = n_buckets.bit_length() - 1
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

    def _open(self, path: Path):
        fh = open(path, "rb")
        self._files.append(fh)
        return fh

    def close(self) -> None:
        for fh in self._files:
            fh.close()

    def __enter__(self) -> "ItemTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _damaged(self, what: str) -> IndexDamagedError:
        return IndexDamagedError(f"{self.path} is damaged: {what}; rebuild the index with "
                                 "`overlap-audit index ... --resume`", self.path.name)

    def __len__(self) -> int:
        return self._n_entries

    def _pread(self, fd: int, size: int, at: int) -> bytes:
        data = os.pread(fd, size, at)
        if len(data) != size:
            raise self._damaged(f"a read of {size} bytes at byte {at} came back short (a truncated file)")
        return data

    def records(self, rows: Iterable[int]) -> list[list[str]]:
        """The raw fields of each row's record."""
        return [self._record(int(row)) for row in rows]

    def _record(self, row: int) -> list[str]:
        if not 0 <= row < self.n_rows:
            raise self._damaged(f"row {row} asked of an item table of {self.n_rows} rows")
        a, b = _TWO.unpack(self._pread(self._offsets_fd, 16, self._offsets_at + 8 * row))
        fields = self._pread(self._fd, b - a, a).decode("utf-8", "surrogatepass").split(_SEP)
        if len(fields) != self._n_fields:
            raise self._damaged(f"a record at byte {a} holds {len(fields)} fields where it should hold "
                                f"{self._n_fields}")
        return fields

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

    def read(self, rows: Iterable[int], columns: Iterable[str]) -> dict[str, list]:
        """The asked columns at ``rows`` (in any order), one list per column, row-aligned; a column the
        table does not have reads as None."""
        columns = list(columns)
        records = self.records(rows)
        return {c: [self._value(f, c) for f in records] for c in columns}

    def _candidates(self, key: str, wanted: int) -> list[int]:
        """The table rows of the stored entries in ``key``'s bucket with its hash ``wanted``: one if the table
        holds the key, unless two keys share a hash; the row's ``key`` confirms it."""
        bucket = wanted >> (64 - self._bits)
        lo, hi = _TWO.unpack(self._pread(self._buckets_fd, 16, self._buckets_at + 8 * bucket))
        if hi <= lo:
            return []
        if hi > self._n_entries:
            raise self._damaged(f"bucket {bucket} ends at entry {hi} of {self._n_entries}")
        entries = struct.unpack(f"<{2 * (hi - lo)}Q", self._pread(self._entries_fd, 16 * (hi - lo),
                                                                  self._entries_at + 16 * lo))
        return [entries[i + 1] for i in range(0, len(entries), 2) if entries[i] == wanted]

    def _found(self, keys: Iterable) -> dict[str, tuple[int, list[str]]]:
        keys = sorted({str(k) for k in keys if k is not None})
        if not keys or not self._n_entries:
            return {}
        key_at = self._columns["key"][0]
        out = {}
        for key, wanted in zip(keys, key_hashes(keys).tolist()):
            for row in self._candidates(key, wanted):
                fields = self._record(row)
                if fields[key_at] and _unescape(fields[key_at][1:]) == key:
                    out[key] = (row, fields)
                    break
        return out

    def rows_of(self, keys: Iterable[str]) -> dict[str, int]:
        """The table row of each key it holds (keys it does not hold are absent)."""
        return {k: r for k, (r, _) in self._found(keys).items()}

    def by_key(self, keys: Iterable, columns: Iterable[str]) -> dict[str, dict]:
        """``{key: {column: value}}`` of the rows holding ``keys``, as ``shards.rows_by_key`` gives them."""
        columns = list(columns)
        return {k: {c: self._value(f, c) for c in columns} for k, (_, f) in self._found(keys).items()}


def check_items(index_dir: str | os.PathLike, items_file: str, paths: list[Path]) -> int:
    """Hold the item table to the shards ``paths``: every record the encoding of its shard row (each shard read
    once), the offsets, and the key index and its buckets those of the shards' keys. Returns the rows
    compared; the first mismatch raises IndexDamagedError."""
    path = Path(index_dir)
    with ItemTable(path, items_file) as table:  # the header and the side files' shapes
        damaged, n_rows = table._damaged, table.n_rows
    side = {part: np.load(path / name, mmap_mode="r") for part, name in side_files(items_file).items()}
    offsets = side["offsets"]
    with open(path / items_file, "rb") as fh:
        layout = json.loads(fh.readline())["columns"]
        stored_bytes = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    row = 0
    hashes = []
    for shard, want in _shard_tables(paths):
        if row + len(want) > n_rows:
            raise damaged(f"holds {n_rows} rows where the shards hold more")
        records = encode_records(want, layout)
        bounds = np.frombuffer(records.buffers()[1], np.int64, len(records) + 1, records.offset * 8)
        start = int(offsets[row])
        stored = np.asarray(offsets[row:row + len(records) + 1], np.int64)
        data = memoryview(records.buffers()[2]).cast("B")[bounds[0]:bounds[-1]]  # bytes, not signed chars
        if not np.array_equal(stored - start, bounds - bounds[0]) or stored_bytes[start:start + len(data)] != data:
            raise damaged(f"does not hold the rows of {shard.name} (rows {row}..{row + len(want) - 1})")
        hashes.append(key_hashes(want["key"].to_pylist()))
        row += len(want)
    if row != n_rows or len(stored_bytes) != int(offsets[-1]):
        raise damaged(f"holds {n_rows} rows where the shards hold {row}")
    entries, buckets = key_index(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))
    if not np.array_equal(entries, side["keys"]) or not np.array_equal(buckets, side["buckets"]):
        raise damaged("has a key index that is not that of its keys")
    return row
