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
- ``items.offsets.npy``: uint64 [n + 1, 2], (where record r starts in ``items.rows``, the xxh3-64 of its key);
  record r is bytes ``offsets[r, 0]:offsets[r + 1, 0]`` (the last row's hash is 0).
- ``items.keys.npy``: uint64 [n, 2], (xxh3-64 of the key, row) sorted by hash (rows in order among equal hashes).
- ``items.buckets.npy``: uint64 [2^B + 1], the entries of ``items.keys.npy`` whose hash's top B bits are b
  lie at ``buckets[b]:buckets[b + 1]``; B is chosen so that a bucket holds 2-4 entries on average.

A key is looked up in its bucket (a positioned read of the directory's two bounds, one of the bucket's
entries), its record read through its offsets (one read each), and confirmed against the key it holds (two keys
may share a hash): four small reads per key at any corpus size, where a binary search over sorted hashes and
columnar buffers touched one page per step and per column once the corpus outgrew the pages its lookups
shared.

Index rows are read back a batch at a time (``KeysByRow``, the search's rows to keys): the offsets gathered from
their memory map with numpy, the records read, each key confirmed against the hash stored beside its offset (one
page of one side file per key), so nothing is read whole when an index is opened.

Writing streams: the shards are read one at a time, the offsets and hashes go to files as they are made, and the
key index is sorted a range of hashes at a time (``_PASS_ENTRIES``), so the memory a finish needs does not grow
with the corpus. Keys held by more than one index row are found on the way: equal hashes are neighbours in the
sorted key index, and each such pair's records are compared.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import IndexDamagedError

ROWS_SUFFIX = ".rows"
VECTOR_COLUMNS = ("vector", "query_vector")  # read from the shards (or the FAISS index), never from here
_FORMAT = "overlap_audit.items/3"  # /1 (records in shard order, never released) is read as an earlier layout
_SEP = "\x00"
_ESCAPED = re.compile(r"\\(.)", re.S)
_SIDE_FILES = ("offsets", "keys", "buckets")
_TWO = struct.Struct("<QQ")
_FOUR = struct.Struct("<QQQQ")
_SPAN_GAP = 4096  # records closer than this are read in one span by ``KeysByRow``
_SPAN_MAX = 16 << 20  # ... which starts its records within one block of this many bytes
# Reads of many records (row keys and their offsets, lookups by key) start with this many reads one after another,
# timed in two halves; where both took longer than _SLOW_READ_S a read on average (the table is read from the disk,
# not the page cache: a cached read takes a few µs, one from the disk of BENCHMARKS.md's VM 60-160 µs, and a small
# table warms up within the first few hundred reads through the kernel's readahead) the rest are read by _READERS
# threads at once: 50,000 records scattered over a 10^8-row table on disk took 5.9 s one after another and 0.9 s
# by 16 threads (cached, threads would make 0.055 s 0.19 s)
_PROBE_READS = 256
_SLOW_READ_S = 40e-6
_READERS = 16
_PASS_ENTRIES = 1 << 23  # key-index entries sorted at once when writing (128 MB), whatever the corpus size
_CHUNK_ROWS = 1 << 21  # rows of a side file read at once when writing or checking
_REST_BLOCK = 1 << 16  # records read at once by ``ItemTable.unindexed``
_U8 = np.dtype("<u8")


@dataclass(frozen=True)
class WrittenItems:
    """An item table as written: its rows, its index rows, and the keys more than one index row holds."""

    rows: int
    indexed: int
    repeated: tuple[str, ...]


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


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The .npy header of a C-ordered little-endian uint64 array of ``shape``."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<u8", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _chunks(fh, first: int, rows: int, width: int):
    """Blocks of a uint64 [rows, width] array stored from byte ``first`` of an open file: (row, block)."""
    for row in range(0, rows, _CHUNK_ROWS):
        count = min(_CHUNK_ROWS, rows - row)
        fh.seek(first + 8 * width * row)
        block = np.frombuffer(fh.read(8 * width * count), _U8)
        if len(block) != width * count:
            raise ValueError("a side file is shorter than its header says")
        yield row, block.reshape(count, width)


def _write_rows(out: Path, items_file: str, paths: list[Path], layout: list[dict], n: int, width: int) -> int:
    """Write ``items.rows`` and ``items.offsets.npy``, one shard at a time; returns the index rows."""
    import shutil
    import tempfile

    names = side_files(items_file)
    with tempfile.TemporaryFile(dir=out) as rest, tempfile.TemporaryFile(dir=out) as pairs, \
            tempfile.TemporaryFile(dir=out) as rest_pairs:
        # index rows go straight to the table; the rest wait in temporary files and follow them
        state = {}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(_header(layout, n, n, width))
                at, row, rest_at = width, 0, 0
                for _, table in _shard_tables(paths):
                    indexed = _indexed(table)
                    shard_hashes = key_hashes(table["key"].to_pylist())
                    (bounds, data), (rest_bounds, rest_data) = _parts(encode_records(table, layout), indexed)
                    pairs.write(np.stack([at + bounds[:-1].astype(np.uint64), shard_hashes[indexed]], 1)
                                .astype(_U8).tobytes())
                    rest_pairs.write(np.stack([rest_at + rest_bounds[:-1].astype(np.uint64),
                                               shard_hashes[~indexed]], 1).astype(_U8).tobytes())
                    fh.write(data)
                    rest.write(rest_data)
                    at += int(bounds[-1])
                    rest_at += int(rest_bounds[-1])
                    row += len(bounds) - 1
                rest.seek(0)
                shutil.copyfileobj(rest, fh, 1 << 22)
                fh.seek(0)
                fh.write(_header(layout, n, row, width))
            state.update(at=at, rest_at=rest_at, indexed=row)

        atomic_write(out / items_file, write)

        def write_offsets(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(_npy_header((n + 1, 2)))
                pairs.seek(0)
                shutil.copyfileobj(pairs, fh, 1 << 22)
                for _, block in _chunks(rest_pairs, 0, n - state["indexed"], 2):
                    block = block.copy()
                    block[:, 0] += np.uint64(state["at"])
                    fh.write(block.tobytes())
                fh.write(np.array([state["at"] + state["rest_at"], 0], _U8).tobytes())

        atomic_write(out / names["offsets"], write_offsets)
    return state["indexed"]


def _sort_key_index(offsets_path: Path, n: int, n_indexed: int, keys_fh, buckets_fh) -> list[tuple[int, int]]:
    """Write the key index of the hashes in ``offsets_path`` (its .npy data, headers included) to ``keys_fh``
    and its bucket directory to ``buckets_fh``: the (hash, row) entries spread over temporary files by their
    hash's top bits, then each range sorted on its own. Returns the (hash, row) of every index row whose hash
    another index row shares."""
    import tempfile

    bits = bucket_bits(n)
    range_bits = min(bits, max(0, int(np.ceil(np.log2(max(n, 1) / _PASS_ENTRIES)))))
    per_range = 1 << (bits - range_bits)
    keys_fh.write(_npy_header((n, 2)))
    buckets_fh.write(_npy_header(((1 << bits) + 1,)))
    buckets_fh.write(np.zeros(1, _U8).tobytes())
    same: list[tuple[int, int]] = []
    with open(offsets_path, "rb") as fh:
        first, _ = _npy_data(fh, offsets_path.name)
        ranges = [tempfile.TemporaryFile(dir=offsets_path.parent) for _ in range(1 << range_bits)]
        try:
            for row, block in _chunks(fh, first, n, 2):  # spread by range, rows in order within each
                hashes = block[:, 1]
                entries = np.stack([hashes, np.arange(row, row + len(block), dtype=_U8)], 1)
                if range_bits == 0:
                    ranges[0].write(entries.tobytes())
                    continue
                which = (hashes >> np.uint64(64 - range_bits)).astype(np.int64)
                order = np.argsort(which, kind="stable")
                cuts = np.searchsorted(which[order], np.arange(1, 1 << range_bits))
                for r, part in enumerate(np.split(entries[order], cuts)):
                    if len(part):
                        ranges[r].write(part.tobytes())
            done = 0
            for r, spill in enumerate(ranges):
                spill.seek(0)
                entries = np.frombuffer(spill.read(), _U8).reshape(-1, 2)
                spill.close()
                entries = entries[np.argsort(entries[:, 0], kind="stable")]
                keys_fh.write(entries.tobytes())
                local = (entries[:, 0] >> np.uint64(64 - bits)).astype(np.int64) - r * per_range
                counts = np.bincount(local, minlength=per_range)
                buckets_fh.write((done + np.cumsum(counts)).astype(_U8).tobytes())
                # equal hashes lie side by side, index rows (the smaller rows) first in each run
                index_entries = entries[entries[:, 1] < np.uint64(n_indexed)]
                tie = np.flatnonzero(index_entries[1:, 0] == index_entries[:-1, 0])
                if tie.size:
                    both = np.unique(np.concatenate([tie, tie + 1]))
                    same += [(int(h), int(r)) for h, r in index_entries[both]]
                done += len(entries)
        finally:
            for spill in ranges:
                spill.close()
    return same


def write_items(index_dir: str | os.PathLike, items_file: str, paths: list[Path]) -> WrittenItems:
    """Write the item table of the shards ``paths`` (in shard order) and its side files, each atomically, one
    shard at a time; returns its rows, its index rows and the keys that more than one index row holds."""
    import tempfile

    import pyarrow.parquet as pq

    out = Path(index_dir)
    layout = _layout(pq.read_schema(p) for p in paths) if paths else [{"name": "key", "type": "string"}]
    n = sum(pq.read_metadata(p).num_rows for p in paths)
    width = len(_header(layout, n, n))
    n_indexed = _write_rows(out, items_file, paths, layout, n, width)
    names = side_files(items_file)
    with tempfile.TemporaryFile(dir=out) as buckets:
        same: list = []

        def write_keys(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                same.extend(_sort_key_index(out / names["offsets"], n, n_indexed, fh, buckets))

        atomic_write(out / names["keys"], write_keys)

        def write_buckets(tmp: str) -> None:
            import shutil

            buckets.seek(0)
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(buckets, fh, 1 << 22)

        atomic_write(out / names["buckets"], write_buckets)
    repeated: set[str] = set()
    if same:  # index rows that share a hash: the same key twice, or (rarely) two keys
        seen: dict[tuple[int, str], int] = {}
        with ItemTable(out, items_file) as table:
            key_at = table._columns["key"][0]
            for h, r in same:
                key = _unescape(table._record(r)[key_at][1:])
                if seen.setdefault((h, key), r) != r:
                    repeated.add(key)
    return WrittenItems(n, n_indexed, tuple(sorted(repeated)))


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
        if not ok or offsets_shape != (self.n_rows + 1, 2) or len(entries_shape) != 2 or entries_shape[1] != 2 \
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
        a, _, b, _ = _FOUR.unpack(self._pread(self._offsets_fd, 32, self._offsets_at + 16 * row))
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

    def unindexed(self, columns: Iterable[str], block: int = _REST_BLOCK) -> Iterator[dict]:
        """``{column: value}`` of each row that is not an index row (skipped or low-information), in shard order:
        the records read ``block`` rows at a time (they follow the index rows, side by side), each key confirmed
        against the hash stored beside its offset."""
        columns = list(columns)
        key_at = self._columns["key"][0]
        for first in range(self.n_indexed, self.n_rows, block):
            count = min(block, self.n_rows - first)
            here = np.frombuffer(self._pread(self._offsets_fd, 16 * (count + 1), self._offsets_at + 16 * first),
                                 _U8).reshape(-1, 2)
            bounds = here[:, 0].astype(np.int64)
            if np.any(np.diff(bounds) < 0):
                raise self._damaged(f"its offsets of rows {first}..{first + count} are not in order")
            start = int(bounds[0])
            data = self._pread(self._fd, int(bounds[-1]) - start, start)
            records = [data[a:b].decode("utf-8", "surrogatepass").split(_SEP)
                       for a, b in zip((bounds[:-1] - start).tolist(), (bounds[1:] - start).tolist())]
            bad = [f for f in records if len(f) != self._n_fields or not f[key_at]]
            if bad:
                raise self._damaged(f"a record of rows {first}..{first + count - 1} holds {len(bad[0])} fields "
                                    f"where it should hold {self._n_fields}, or no key")
            keys = [_unescape(f[key_at][1:]) for f in records]
            differs = np.flatnonzero(key_hashes(keys) != here[:-1, 1])
            if differs.size:
                raise self._damaged(f"row {first + int(differs[0])} holds a key whose hash is not the one beside "
                                    "its offset (the table changed since it was indexed)")
            for fields in records:
                yield {c: self._value(fields, c) for c in columns}

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

        def find(run: list) -> list:
            got = []
            for key, wanted in run:
                for row in self._candidates(key, wanted):
                    fields = self._record(row)
                    if fields[key_at] and _unescape(fields[key_at][1:]) == key:
                        got.append((row, fields))
                        break
                else:
                    got.append(None)
            return got

        # four reads a key (its bucket's bounds, its entries, its offsets, its record), one after another; the
        # first two come from small files, mostly cached: a key is slow at two slow reads
        asked = list(zip(keys, key_hashes(keys).tolist()))
        found = _probe_then_threads(find, asked, _PROBE_READS // 4, 2 * _SLOW_READ_S,
                                    fds=[self._fd, self._offsets_fd, self._entries_fd, self._buckets_fd])
        return {key: hit for (key, _), hit in zip(asked, found) if hit is not None}

    def rows_of(self, keys: Iterable[str]) -> dict[str, int]:
        """The table row of each key it holds (keys it does not hold are absent)."""
        return {k: r for k, (r, _) in self._found(keys).items()}

    def by_key(self, keys: Iterable, columns: Iterable[str]) -> dict[str, dict]:
        """``{key: {column: value}}`` of the rows holding ``keys``, as ``shards.rows_by_key`` gives them."""
        columns = list(columns)
        return {k: {c: self._value(f, c) for c in columns} for k, (_, f) in self._found(keys).items()}


def check_items(index_dir: str | os.PathLike, items_file: str, paths: list[Path]) -> int:
    """Hold the item table to the shards ``paths``: every record the encoding of its shard row (each shard read
    once), the index rows' first, in order, then the others, the offsets and the hashes beside them, and the key
    index and its buckets those of the keys in that order (sorted again, as written). Returns the rows compared;
    the first mismatch raises IndexDamagedError."""
    import tempfile

    path = Path(index_dir)
    with ItemTable(path, items_file) as table:  # the header and the side files' shapes
        damaged, n_rows, n_indexed = table._damaged, table.n_rows, table.n_indexed
    names = side_files(items_file)
    offsets = np.load(path / names["offsets"], mmap_mode="r")
    with open(path / items_file, "rb") as fh:
        layout = json.loads(fh.readline())["columns"]
        stored_bytes = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    row, rest_row = 0, n_indexed
    for shard, want in _shard_tables(paths):
        indexed = _indexed(want)
        parts = _parts(encode_records(want, layout), indexed)
        hashes = key_hashes(want["key"].to_pylist())
        for (bounds, data), first, end, mask in zip(parts, (row, rest_row), (n_indexed, n_rows), (indexed, ~indexed)):
            k = len(bounds) - 1
            if first + k > end:
                raise damaged(f"holds {n_indexed} index rows and {n_rows} rows where the shards hold more")
            stored = np.asarray(offsets[first:first + k + 1, 0], np.int64)
            start = int(stored[0])
            if not np.array_equal(stored - start, bounds) or stored_bytes[start:start + len(data)] != data \
                    or not np.array_equal(offsets[first:first + k, 1], hashes[mask]):
                which = "other" if first >= n_indexed else "index"
                raise damaged(f"does not hold the rows of {shard.name} (its {which} rows at table rows "
                              f"{first}..{first + k - 1})")
        row += int(indexed.sum())
        rest_row += int((~indexed).sum())
    if row != n_indexed or rest_row != n_rows or len(stored_bytes) != int(offsets[-1, 0]):
        raise damaged(f"holds {n_indexed} index rows and {n_rows} rows where the shards hold {row} and "
                      f"{rest_row}")
    with tempfile.TemporaryFile(dir=path) as keys, tempfile.TemporaryFile(dir=path) as buckets:
        _sort_key_index(path / names["offsets"], n_rows, n_indexed, keys, buckets)
        if not all(_same_bytes(fh, path / names[part]) for fh, part in ((keys, "keys"), (buckets, "buckets"))):
            raise damaged("has a key index that is not that of its keys")
    return rest_row


def _same_bytes(fh, other: Path) -> bool:
    """Whether an open file holds the bytes of the file ``other``."""
    fh.seek(0)
    with open(other, "rb") as theirs:
        while True:
            a, b = fh.read(1 << 22), theirs.read(1 << 22)
            if a != b:
                return False
            if not a:
                return True


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _probe_then_threads(work: Callable, items, probe: int, slow_s: float,
                        join: Callable[[list], object] | None = None,
                        slow_work: Callable | None = None, fds: Iterable[int] = ()):
    """``work`` (a sequence of items -> one result each) over ``items``, the results joined in order by ``join``
    (default: into one list): the first ``probe`` items in this thread, in two halves, timed; the rest too where
    either half took at most ``slow_s`` an item on average (the files are in the page cache, or came into it), else by ``slow_work``
    (default ``work``) in runs by ``_READERS`` threads at once (a positioned read releases the GIL while the
    disk works, and the disk serves many reads at a time), the files ``fds`` read from then told that their
    reads are random (no readahead: a small read from a cold file otherwise reads a window around it; 50,000
    records of a 10^8-row table on disk took 3.0 s one after another without readahead, 6.7 s with it)."""
    import time

    half = probe // 2
    started = time.perf_counter()
    parts = [work(items[:half])]
    halfway = time.perf_counter()
    parts.append(work(items[half:probe]))
    ended = time.perf_counter()
    rest = items[probe:]
    join = join or _joined
    if not len(rest):
        return join(parts)
    if min(halfway - started, ended - halfway) <= slow_s * max(1, half):
        return join([*parts, work(rest)])
    from concurrent.futures import ThreadPoolExecutor

    for fd in fds if hasattr(os, "posix_fadvise") else ():
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    size = -(-len(rest) // _READERS)
    runs = [rest[i:i + size] for i in range(0, len(rest), size)]
    with ThreadPoolExecutor(len(runs), thread_name_prefix="overlap-audit-read") as pool:
        parts += pool.map(slow_work or work, runs)
    return join(parts)


def _joined(parts: list[list]) -> list:
    out = parts[0]
    for part in parts[1:]:
        out.extend(part)
    return out


def _spans(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte ranges ``first[i]:last[i]`` (int64, ``first`` ascending) merged where less than ``_SPAN_GAP`` apart and
    starting in the same ``_SPAN_MAX`` bytes of the file (one read is never much larger, however many rows are
    asked: Linux reads at most 2 GiB at once): each range's span, and each span's first and last byte."""
    new_span = np.ones(len(first), bool)
    new_span[1:] = first[1:] - np.maximum.accumulate(last)[:-1] >= _SPAN_GAP
    new_span[1:] |= first[1:] // _SPAN_MAX != first[:-1] // _SPAN_MAX  # a span starts in one block of the file
    heads = np.flatnonzero(new_span)
    return np.cumsum(new_span) - 1, first[heads], np.maximum.reduceat(last, heads)


def _read_spans(fd: int, spans: list[tuple[int, int]]) -> list[bytes]:
    """The bytes ``a:b`` of the file ``fd`` for each (a, b) in ``spans``, in order (``_probe_then_threads``)."""
    pread = os.pread
    return _probe_then_threads(lambda run: [pread(fd, b - a, a) for a, b in run], spans, _PROBE_READS,
                               _SLOW_READ_S, fds=[fd])


class KeysByRow:
    """The keys of index rows (record r of the item table is index row r), read a batch of rows at a time: the
    records' places gathered from the memory-mapped offsets with numpy, the records read (those close together
    in spans; ``_records``), each record's key cut out and confirmed against the hash stored beside its offset,
    so a table replaced or damaged after indexing is an IndexDamagedError, never a wrong key. Opening reads the
    header line and the offsets file's header only (and maps the offsets: a row's hash lies beside its offset,
    so a key touches one page of one side file, where confirming it in the key index took two more)."""

    def __init__(self, index_dir: str | os.PathLike, items_file: str, n_indexed: int) -> None:
        import weakref

        path = Path(index_dir) / items_file
        self.path = path
        # both files stay open (and the offsets mapped) for as long as this object lives: a later generation
        # that replaces or removes them (``index --resume``) leaves the files this index was opened with
        fds: list[int] = []
        weakref.finalize(self, _close_all, fds)
        try:
            fds.append(os.open(path, os.O_RDONLY))
            self._fd = fds[0]
            with open(fds[0], "rb", closefd=False) as fh:
                header = json.loads(fh.readline())
                self._start = fh.tell()
            self._size = os.fstat(self._fd).st_size
            fds.append(os.open(path.parent / side_files(items_file)["offsets"], os.O_RDONLY))
            self._offsets_fd = fds[1]
            with open(fds[1], "rb", closefd=False) as fh:
                self._offsets_at, shape = _npy_data(fh, items_file)
            count = int(np.prod(shape))
            if len(shape) != 2 or os.fstat(self._offsets_fd).st_size < self._offsets_at + 8 * count:
                raise ValueError("its offsets file is shorter than its header says")
            # a plain array over the map: numpy's memmap class costs more per gather than the gather
            offsets = np.frombuffer(mmap.mmap(self._offsets_fd, 0, access=mmap.ACCESS_READ), _U8, count,
                                    self._offsets_at).reshape(shape)
            n_rows, indexed = int(header["rows"]), int(header["indexed"])
            columns = header["columns"]
            width = [1 + len(col.get("fields", [])) if col["type"] == "struct" else 1 for col in columns]
            self._key_at = sum(width[:[col["name"] for col in columns].index("key")])
            ok = header.get("format") == _FORMAT
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self._damaged(f"cannot read the item table ({exc})") from None
        if not ok or offsets.dtype != _U8 or offsets.shape != (n_rows + 1, 2) or indexed != n_indexed \
                or n_indexed > n_rows:
            raise self._damaged(f"its files do not have the shapes its header records, or it holds {indexed} "
                                f"index rows where the manifest counts {n_indexed}")
        self._offsets = offsets
        self.n_indexed = n_indexed

    def _damaged(self, what: str) -> IndexDamagedError:
        return IndexDamagedError(f"{self.path} is damaged: {what}; rebuild the index with "
                                 "`overlap-audit index ... --resume`", self.path.name)

    def __len__(self) -> int:
        return self.n_indexed

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), 3] uint64: each row's record start, key hash and record end (``offsets[r]``, then
        ``offsets[r + 1, 0]``), gathered from the mapped offsets; where the first rows' pages came from the
        disk, the rest read by threads with positioned reads (``_probe_then_threads``: numpy gathers holding the
        GIL, so page faults would wait for one read at a time)."""
        offsets = self._offsets

        def from_map(run: np.ndarray) -> np.ndarray:
            return np.column_stack([offsets[run], offsets[run + 1, 0]])

        def by_reads(run: np.ndarray) -> np.ndarray:
            fd, at, pread = self._offsets_fd, self._offsets_at, os.pread
            data = b"".join(pread(fd, 32, at + 16 * r) for r in run.tolist())
            if len(data) != 32 * len(run):
                raise self._damaged("its offsets file came back short (it changed since it was indexed)")
            return np.frombuffer(data, _U8).reshape(-1, 4)[:, :3]

        return _probe_then_threads(from_map, rows, _PROBE_READS, _SLOW_READ_S, np.concatenate, by_reads,
                                   [self._offsets_fd])

    def _records(self, starts: np.ndarray, ends: np.ndarray) -> list[bytes]:
        """The records ``starts[i]:ends[i]`` of the table, in order, read with one ``pread`` per span of records
        less than ``_SPAN_GAP`` apart (a small corpus, or many rows asked of it, in a few large reads; scattered
        records one small read each). Not sliced from a memory map: on the 2-core VM of BENCHMARKS.md, 50,000
        records scattered over a 10^7-row table cost 3.4 s cold and 0.17 s cached as page faults into a fresh
        map (what a report's one call meets) against 1.3 s and 0.13 s read with ``pread``."""
        order = np.argsort(starts, kind="stable")
        first, last = starts[order].astype(np.int64), ends[order].astype(np.int64)
        span_of, span_first, span_last = _spans(first, last)
        spans = _read_spans(self._fd, list(zip(span_first.tolist(), span_last.tolist())))
        if sum(map(len, spans)) != int((span_last - span_first).sum()):  # a read comes back short, never long
            raise self._damaged("a read of its records came back short (the table changed since it was indexed)")
        place = np.empty((len(first), 3), np.int64)
        place[order] = np.stack([span_of, first - span_first[span_of], last - span_first[span_of]], 1)
        return [spans[at][a:b] for at, a, b in place.tolist()]

    def keys(self, rows) -> list[str]:
        """The key of each index row in ``rows`` (a 1-d integer array), in order."""
        rows = np.asarray(rows, np.int64)
        if not rows.size:
            return []
        if rows.min() < 0 or rows.max() >= self.n_indexed:
            raise IndexError(f"index rows must lie in [0, {self.n_indexed})")
        placed = self._gather(rows)
        starts, recorded, ends = placed[:, 0], placed[:, 1], placed[:, 2]
        if np.any(starts < self._start) or np.any(ends < starts) or np.any(ends > self._size):
            raise self._damaged("its offsets point outside its records (the table changed since it was indexed)")
        import xxhash

        keys: list = [None] * len(rows)
        hashes = [0] * len(rows)
        key_at, digest, escape = self._key_at, xxhash.xxh3_64_intdigest, b"\\"
        try:
            records = self._records(starts, ends)
            for i, record in enumerate(records):
                field = record.split(b"\0", key_at + 1)[key_at]
                if field[:1] != b"v":
                    continue
                body = field[1:]
                if escape in body:  # the stored text is escaped; the hash is of the key's own bytes
                    keys[i] = _unescape(body.decode("utf-8", "surrogatepass"))
                    hashes[i] = digest(keys[i].encode("utf-8", "surrogatepass"))
                else:  # the bytes stored are the key's: hashed as they are
                    keys[i] = body.decode("utf-8", "surrogatepass")
                    hashes[i] = digest(body)
        except (OSError, IndexError, ValueError):  # a record cut short, bytes that are not UTF-8
            raise self._damaged("an index row's record cannot be read (the table changed since it was "
                                "indexed)") from None
        if None in keys:
            raise self._damaged("an index row's record holds no key (the table changed since it was indexed)")
        wrong = np.flatnonzero(np.array(hashes, np.uint64) != recorded)
        if wrong.size:
            raise self._damaged(f"the record of index row {int(rows[wrong[0]])} holds key {keys[wrong[0]]!r}, "
                                "whose hash the offsets do not place there (the table changed since it was "
                                "indexed)")
        return keys
