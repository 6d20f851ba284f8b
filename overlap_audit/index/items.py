"""The item table: every shard row's columns but the vectors, stored row by row and addressable by row and by
key, so that reading a report's matched items back costs a few positioned reads per item whatever the corpus
size.

Written when an index is finished, beside the FAISS index of the same generation, four files:

- ``items.rows``: a JSON header line (the columns and their Arrow types, the row count, the indexed rows), then
  one record per shard row: the indexed items first, in index row order (record r is index row r), then the
  items not indexed (skipped or low-information), in shard order. A record is its fields joined by NUL; a
  field is empty for null, else ``v`` followed by the value as text with ``\\`` and NUL escaped (``\\\\``, ``\\0``); a struct column is one field
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

Index rows are read back a batch at a time (``KeysByRow``, the search's rows to keys): the offsets and records
memory-mapped and gathered with numpy, each key confirmed against the key index, so the cost per key is the
same at any corpus size and nothing is read whole when an index is opened.
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
_FORMAT = "overlap_audit.items/2"  # /1 (records in shard order, never released) is read as an earlier layout
_SEP = "\x00"
_ESCAPED = re.compile(r"\\(.)", re.S)
_SIDE_FILES = ("offsets", "keys", "buckets")
_TWO = struct.Struct("<QQ")
_SPAN_GAP = 4096  # records closer than this are read together by ``KeysByRow``


def side_files(items_file: str) -> dict[str, str]:
    """The files beside an item table: items.rows -> items.offsets.npy, items.keys.npy, items.buckets.npy."""
    stem = items_file.rsplit(".", 1)[0]
    return {part: f"{stem}.{part}.npy" for part in _SIDE_FILES}


def is_item_table(index_dir: str | os.PathLike, items_file: str | None) -> bool:
    """Whether a manifest's ``items_file`` is an item table this version reads (an index finished by an earlier
    development version names an ``items.arrow``, or an ``items.rows`` in shard order, of another layout: its
    items are read from the shards and its row keys from ids.parquet). Reads the table's header line only."""
    if not items_file or not items_file.endswith(ROWS_SUFFIX):
        return False
    try:
        with open(Path(index_dir) / items_file, "rb") as fh:
            return json.loads(fh.readline(1 << 20)).get("format") != "overlap_audit.items/1"
    except (OSError, ValueError, AttributeError):
        return True  # not readable: the table's reader says what is wrong


def usable_mask(table) -> np.ndarray:
    """Rows of a shard table that are indexed: embedded (no skip reason) and not low-information."""
    skipped = np.asarray(table["skip_reason"].is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    low = np.asarray(table["low_information"].fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    return ~skipped & ~low


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


def _indexed(table) -> np.ndarray:
    """Which rows of a shard table are index rows (a table of keys alone: every row)."""
    return usable_mask(table) if "skip_reason" in table.column_names else np.ones(len(table), bool)


def _parts(records, indexed: np.ndarray):
    """(the index rows' records, the others'), each as (byte bounds rebased to 0, its data buffer)."""
    import pyarrow as pa

    out = []
    for mask in (indexed, ~indexed):
        if not mask.any():
            out.append((np.zeros(1, np.int64), b""))
            continue
        part = records.filter(pa.array(mask)) if not mask.all() else records
        bounds = np.frombuffer(part.buffers()[1], np.int64, len(part) + 1, part.offset * 8)
        data = part.buffers()[2]
        view = memoryview(data).cast("B") if data is not None else memoryview(b"")  # bytes, not signed chars
        out.append((bounds - bounds[0], view[bounds[0]:bounds[-1]]))
    return out


def _header(layout: list[dict], n: int, indexed: int, width: int = 0) -> bytes:
    """The table's header line, padded with spaces to ``width`` bytes (it is written before ``indexed`` is
    known, and again over itself after)."""
    text = json.dumps({"format": _FORMAT, "columns": layout, "rows": n, "indexed": indexed}, sort_keys=True)
    return (text.ljust(width - 1) + "\n").encode()


def write_items(index_dir: str | os.PathLike, items_file: str, paths: list[Path]) -> int:
    """Write the item table of the shards ``paths`` (in shard order) and its side files, each atomically;
    returns its rows."""
    import shutil
    import tempfile

    import pyarrow.parquet as pq

    out = Path(index_dir)
    layout = _layout(pq.read_schema(p) for p in paths) if paths else [{"name": "key", "type": "string"}]
    n = sum(pq.read_metadata(p).num_rows for p in paths)
    width = len(_header(layout, n, n))
    offsets = np.empty(n + 1, np.uint64)
    hashes = np.empty(n, np.uint64)

    def write(tmp: str) -> None:
        # index rows go straight to the table; the rest wait in a temporary file and follow them
        with open(tmp, "wb") as fh, tempfile.TemporaryFile(dir=out) as rest:
            fh.write(_header(layout, n, n, width))
            at, row, rest_at, rest_offsets, rest_hashes = width, 0, 0, [], []
            for _, table in _shard_tables(paths):
                indexed = _indexed(table)
                records = encode_records(table, layout)
                shard_hashes = key_hashes(table["key"].to_pylist())
                (bounds, data), (rest_bounds, rest_data) = _parts(records, indexed)
                k = len(bounds) - 1
                offsets[row:row + k] = at + bounds[:-1]
                hashes[row:row + k] = shard_hashes[indexed]
                fh.write(data)
                at += int(bounds[-1])
                row += k
                rest_offsets.append(rest_at + rest_bounds[:-1])
                rest_hashes.append(shard_hashes[~indexed])
                rest.write(rest_data)
                rest_at += int(rest_bounds[-1])
            rest.seek(0)
            shutil.copyfileobj(rest, fh, 1 << 22)
            if n > row:
                offsets[row:n] = at + np.concatenate(rest_offsets).astype(np.uint64)
                hashes[row:n] = np.concatenate(rest_hashes)
            offsets[n] = at + rest_at
            fh.seek(0)
            fh.write(_header(layout, n, row, width))

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
            self.n_indexed = int(header["indexed"])
            ok = header.get("format") == _FORMAT and 0 <= self.n_indexed <= self.n_rows
            side = {part: self._open(path.parent / side_files(items_file)[part])
                    for part in ("offsets", "keys", "buckets")}
            (self._offsets_at, offsets_shape), (self._entries_at, entries_shape), (self._buckets_at, buckets_shape) = (
                _npy_data(fh, items_file) for fh in side.values())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.close()
            raise self._damaged(f"cannot read the item table ({exc})") from None
        self._offsets_fd, self._entries_fd, self._buckets_fd = (fh.fileno() for fh in side.values())
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
    once), the index rows' first, in order, then the others, the offsets, and the key index and its buckets
    those of the keys in that order. Returns the rows compared; the first mismatch raises IndexDamagedError."""
    path = Path(index_dir)
    with ItemTable(path, items_file) as table:  # the header and the side files' shapes
        damaged, n_rows, n_indexed = table._damaged, table.n_rows, table.n_indexed
    side = {part: np.load(path / name, mmap_mode="r") for part, name in side_files(items_file).items()}
    offsets = side["offsets"]
    with open(path / items_file, "rb") as fh:
        layout = json.loads(fh.readline())["columns"]
        stored_bytes = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    row, rest_row = 0, n_indexed
    hashes, rest_hashes = [], []
    for shard, want in _shard_tables(paths):
        indexed = _indexed(want)
        parts = _parts(encode_records(want, layout), indexed)
        for (bounds, data), first, end in zip(parts, (row, rest_row), (n_indexed, n_rows)):
            k = len(bounds) - 1
            if first + k > end:
                raise damaged(f"holds {n_indexed} index rows and {n_rows} rows where the shards hold more")
            stored = np.asarray(offsets[first:first + k + 1], np.int64)
            start = int(stored[0])
            if not np.array_equal(stored - start, bounds) or stored_bytes[start:start + len(data)] != data:
                which = "other" if first >= n_indexed else "index"
                raise damaged(f"does not hold the rows of {shard.name} (its {which} rows at table rows "
                              f"{first}..{first + k - 1})")
        keys = key_hashes(want["key"].to_pylist())
        hashes.append(keys[indexed])
        rest_hashes.append(keys[~indexed])
        row += int(indexed.sum())
        rest_row += int((~indexed).sum())
    if row != n_indexed or rest_row != n_rows or len(stored_bytes) != int(offsets[-1]):
        raise damaged(f"holds {n_indexed} index rows and {n_rows} rows where the shards hold {row} and "
                      f"{rest_row}")
    entries, buckets = key_index(np.concatenate(hashes + rest_hashes) if paths else np.zeros(0, np.uint64))
    if not np.array_equal(entries, side["keys"]) or not np.array_equal(buckets, side["buckets"]):
        raise damaged("has a key index that is not that of its keys")
    return rest_row


class KeysByRow:
    """The keys of index rows (record r of the item table is index row r), read a batch of rows at a time: the
    records' places gathered from the memory-mapped offsets with numpy, the records read with one ``pread``
    each (those less than a page apart together, in file order) and their keys cut out, each key confirmed
    against the key index (its hash's bucket must hold it at that row), so a table replaced or damaged after
    indexing is an IndexDamagedError, never a wrong key.
    Opening reads the header line and the side files' headers only.

    The records are read, not mapped: on the 2-core VM of BENCHMARKS.md a first touch of a mapped page cost
    about 20 µs and a ``pread`` about 6 (cutting the keys out with Arrow cost more than this loop, in fresh
    memory); the side files are mapped, where neighbouring keys share pages."""

    def __init__(self, index_dir: str | os.PathLike, items_file: str, n_indexed: int) -> None:
        path = Path(index_dir) / items_file
        self.path = path
        names = side_files(items_file)
        try:
            with open(path, "rb") as fh:
                header = json.loads(fh.readline())
                self._start = fh.tell()
                self._size = os.fstat(fh.fileno()).st_size
            # plain arrays over the maps: numpy's memmap class costs more per gather than the gather
            side = [np.asarray(np.load(path.parent / names[part], mmap_mode="r", allow_pickle=False))
                    for part in _SIDE_FILES]
            n_rows, indexed = int(header["rows"]), int(header["indexed"])
            columns = header["columns"]
            width = [1 + len(col.get("fields", [])) if col["type"] == "struct" else 1 for col in columns]
            self._key_at = sum(width[:[col["name"] for col in columns].index("key")])
            ok = header.get("format") == _FORMAT
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self._damaged(f"cannot read the item table ({exc})") from None
        self._offsets, self._entries, self._buckets = side
        n_buckets = len(self._buckets) - 1
        if not ok or any(a.dtype != np.dtype("<u8") for a in side) or self._offsets.shape != (n_rows + 1,) \
                or self._entries.ndim != 2 or self._entries.shape[1] != 2 or n_buckets < 2 \
                or n_buckets & (n_buckets - 1) or indexed != n_indexed or n_indexed > n_rows:
            raise self._damaged(f"its files do not have the shapes its header records, or it holds {indexed} "
                                f"index rows where the manifest counts {n_indexed}")
        self._shift = np.uint64(64 - (n_buckets.bit_length() - 1))
        self.n_indexed = n_indexed

    def _damaged(self, what: str) -> IndexDamagedError:
        return IndexDamagedError(f"{self.path} is damaged: {what}; rebuild the index with "
                                 "`overlap-audit index ... --resume`", self.path.name)

    def __len__(self) -> int:
        return self.n_indexed

    def keys(self, rows) -> list[str]:
        """The key of each index row in ``rows`` (a 1-d integer array), in order."""
        rows = np.asarray(rows, np.int64)
        if not rows.size:
            return []
        if rows.min() < 0 or rows.max() >= self.n_indexed:
            raise IndexError(f"index rows must lie in [0, {self.n_indexed})")
        starts, ends = self._offsets[rows], self._offsets[rows + 1]
        if np.any(starts < self._start) or np.any(ends < starts) or np.any(ends > self._size):
            raise self._damaged("its offsets point outside its records (the table changed since it was indexed)")
        order = np.argsort(starts, kind="stable")
        first, last = starts[order].astype(np.int64), ends[order].astype(np.int64)
        # records less than a page apart are read in one span (a small corpus's keys share their pages)
        new_span = np.ones(len(first), bool)
        new_span[1:] = first[1:] - np.maximum.accumulate(last)[:-1] >= _SPAN_GAP
        span_of = np.cumsum(new_span) - 1
        span_first = first[new_span]
        span_last = np.maximum.reduceat(last, np.flatnonzero(new_span))
        keys: list = [None] * len(rows)
        key_at = self._key_at
        try:
            with open(self.path, "rb") as fh:
                fd, pread = fh.fileno(), os.pread
                spans = [pread(fd, b - a, a) for a, b in zip(span_first.tolist(), span_last.tolist())]
            begin = (first - span_first[span_of]).tolist()
            end = (last - span_first[span_of]).tolist()
            for i, span, a, b in zip(order.tolist(), span_of.tolist(), begin, end):
                field = spans[span][a:b].split(b"\0", key_at + 1)[key_at]
                if field[:1] == b"v":
                    keys[i] = field[1:].decode("utf-8", "surrogatepass")
        except (OSError, IndexError, ValueError):  # a record cut short, bytes that are not UTF-8
            raise self._damaged("an index row's record cannot be read (the table changed since it was "
                                "indexed)") from None
        if None in keys:
            raise self._damaged("an index row's record holds no key (the table changed since it was indexed)")
        keys = [_unescape(k) for k in keys]
        self._confirm(keys, rows)
        return keys

    def _confirm(self, keys: list[str], rows: np.ndarray) -> None:
        """Refuse keys whose bucket in the key index does not hold (their hash, their row)."""
        hashes = key_hashes(keys)
        bucket = (hashes >> self._shift).astype(np.int64)
        lo, hi = self._buckets[bucket].astype(np.int64), self._buckets[bucket + 1].astype(np.int64)
        if np.any(hi > len(self._entries)) or np.any(lo > hi):
            raise self._damaged("its bucket directory points past its key index")
        at = rows.astype(np.uint64)
        found = np.zeros(len(keys), bool)
        todo = np.flatnonzero(lo < hi)
        step = 0
        while todo.size:  # a bucket holds 2-4 entries on average: a few vectorised passes
            entries = self._entries[lo[todo] + step]
            found[todo] |= (entries[:, 0] == hashes[todo]) & (entries[:, 1] == at[todo])
            step += 1
            todo = todo[~found[todo] & (lo[todo] + step < hi[todo])]
        if not found.all():
            first = int(np.flatnonzero(~found)[0])
            raise self._damaged(f"the record of index row {int(rows[first])} holds key {keys[first]!r}, which its "
                                "key index does not place there (the table changed since it was indexed)")
