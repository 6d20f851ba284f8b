"""The item table: every shard row's columns but the vectors, addressable by row and by key, so that reading
a report's matched items back costs per item read rather than per corpus item.

Written when an index is finished, beside the FAISS index of the same generation: ``items.arrow``, an Arrow
IPC file of the shards' rows in shard order (every item given; record batches of ``ITEM_BATCH`` rows, so row
r lies in batch r // ITEM_BATCH), read memory-mapped; and ``items.keys.npy``, the key index: uint64 [2, n],
the xxh3-64 of every key sorted ascending (row 0) and the table row of each (row 1). A key is looked up by
binary search in the hashes, confirmed against the table's ``key`` column (two keys may share a hash), and
its columns read from the record batches its rows fall in: a lookup touches a few pages of each file
instead of the key and asked columns of every shard (``shards.rows_by_key`` without a table).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import IndexDamagedError

ITEM_BATCH = 1 << 20  # a lookup's cost grows with the batches its rows fall in, not with their size
VECTOR_COLUMNS = ("vector", "query_vector")  # read from the shards (or the FAISS index), never from here


def keys_name(items_file: str) -> str:
    """The key index beside an item table: items.arrow -> items.keys.npy."""
    stem = items_file[:-len(".arrow")] if items_file.endswith(".arrow") else items_file
    return stem + ".keys.npy"


def key_hashes(keys: Iterable[str]) -> np.ndarray:
    """The xxh3-64 of each key's UTF-8 bytes, as uint64."""
    import xxhash

    return np.fromiter((xxhash.xxh3_64_intdigest(k.encode("utf-8", "surrogatepass")) for k in keys),
                       dtype=np.uint64)


def write_items(index_dir: str | os.PathLike, items_file: str, paths: list[Path]) -> int:
    """Write the item table of the shards ``paths`` (in shard order) and its key index, each atomically;
    returns its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(index_dir)
    hashes: list[np.ndarray] = []
    n = 0

    def write(tmp: str) -> None:
        nonlocal n
        schema, pending, held = None, [], 0
        with pa.OSFile(tmp, "wb") as sink:
            writer = None
            for path in paths:
                names = [c for c in pq.read_schema(path).names if c not in VECTOR_COLUMNS]
                table = pq.read_table(path, columns=names, memory_map=True)
                if schema is None:
                    schema = table.schema
                    writer = pa.ipc.new_file(sink, schema)
                hashes.append(key_hashes(table["key"].to_pylist()))
                pending.append(table.select(schema.names).cast(schema))
                held += len(table)
                while held >= ITEM_BATCH:  # whole batches of ITEM_BATCH rows: row r is in batch r // ITEM_BATCH
                    joined = pa.concat_tables(pending).combine_chunks()
                    writer.write_batch(joined.slice(0, ITEM_BATCH).to_batches()[0])
                    pending, held = [joined.slice(ITEM_BATCH)], held - ITEM_BATCH
                n += len(table)
            if writer is None:
                writer = pa.ipc.new_file(sink, pa.schema([("key", pa.string())]))
            elif held:
                writer.write_batch(pa.concat_tables(pending).combine_chunks().to_batches()[0])
            writer.close()

    atomic_write(out / items_file, write)
    all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    order = np.argsort(all_hashes, kind="stable")
    index = np.stack([all_hashes[order], order.astype(np.uint64)])
    atomic_write(out / keys_name(items_file), lambda tmp: _save_npy(tmp, index))
    return n


def _save_npy(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, array)


class ItemTable:
    """An item table opened memory-mapped: rows by key (``rows_of``) and columns by row (``read``)."""

    def __init__(self, index_dir: str | os.PathLike, items_file: str) -> None:
        import pyarrow as pa

        path = Path(index_dir) / items_file
        try:
            self._reader = pa.ipc.open_file(pa.memory_map(str(path)))
            index = np.load(Path(index_dir) / keys_name(items_file), mmap_mode="r")
        except (OSError, ValueError, pa.ArrowInvalid) as exc:
            raise IndexDamagedError(f"{path} is damaged: cannot read the item table ({exc}); rebuild the index "
                                    "with `overlap-audit index ... --resume`", items_file) from None
        if index.ndim != 2 or index.shape[0] != 2:
            raise IndexDamagedError(f"{path} is damaged: its key index has shape {list(index.shape)}", items_file)
        self.path = path
        self.names = list(self._reader.schema.names)
        self._hashes, self._rows = index[0], index[1]
        batches = self._reader.num_record_batches
        self.n_rows = 0 if not batches else (batches - 1) * ITEM_BATCH + self._reader.get_batch(batches - 1).num_rows

    def __len__(self) -> int:
        return len(self._hashes)

    def read(self, rows: np.ndarray, columns: Iterable[str]) -> dict[str, list]:
        """The asked columns at ``rows`` (in any order), one list per column, row-aligned; a column the
        table does not have reads as None."""
        import pyarrow as pa

        rows = np.asarray(rows, np.int64)
        columns = list(columns)
        have = [c for c in columns if c in self.names]
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexDamagedError(f"{self.path} is damaged: row {int(rows.max())} asked of an item table of "
                                    f"{self.n_rows} rows; rebuild the index with `overlap-audit index ... --resume`",
                                    self.path.name)
        if not len(rows) or not have:
            return {c: [None] * len(rows) for c in columns}
        # one take per record batch the rows fall in, in row order, then one take back into the asked order
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        batch_of = ordered // ITEM_BATCH
        cuts = np.flatnonzero(np.diff(batch_of)) + 1
        parts = [self._reader.get_batch(int(b)).select(have).take(pa.array(part - int(b) * ITEM_BATCH))
                 for b, part in zip(batch_of[np.r_[0, cuts]], np.split(ordered, cuts))]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        picked = pa.Table.from_batches(parts).take(pa.array(back))
        return {c: picked.column(c).to_pylist() if c in have else [None] * len(rows) for c in columns}

    def _candidates(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``keys``, table row) of every stored entry with a wanted key's hash: one per key it
        holds, unless two keys share a hash; the row's ``key`` confirms it."""
        if not keys or not len(self._hashes):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        wanted = key_hashes(keys)
        lo = np.searchsorted(self._hashes, wanted, side="left")
        n = np.searchsorted(self._hashes, wanted, side="right") - lo
        owner = np.repeat(np.arange(len(keys)), n)
        at = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        return owner, np.asarray(self._rows[at], np.int64)

    def rows_of(self, keys: Iterable[str]) -> dict[str, int]:
        """The table row of each key it holds (keys it does not hold are absent)."""
        keys = sorted({str(k) for k in keys})
        owner, rows = self._candidates(keys)
        stored = self.read(rows, ["key"])["key"]
        return {keys[o]: int(r) for o, r, found in zip(owner, rows, stored) if found == keys[o]}

    def by_key(self, keys: Iterable, columns: Iterable[str]) -> dict[str, dict]:
        """``{key: {column: value}}`` of the rows holding ``keys``, as ``shards.rows_by_key`` gives them."""
        columns = list(columns)
        keys = sorted({str(k) for k in keys if k is not None})
        owner, rows = self._candidates(keys)
        # the key that confirms a row is read with its columns
        values = self.read(rows, ["key", *(c for c in columns if c != "key")])
        return {keys[o]: {c: values[c][i] for c in columns}
                for i, (o, found) in enumerate(zip(owner, values["key"])) if found == keys[o]}


def check_items(index_dir: str | os.PathLike, items_file: str, paths: list[Path],
                sample: np.ndarray | None = None) -> int:
    """Hold the item table to the shards ``paths``: the same rows in the same order with the same values (every row;
    each shard read once), and the key index sorted, each row once, a sample of its hashes right. Returns the
    rows compared; the first mismatch raises IndexDamagedError."""
    import pyarrow.parquet as pq

    path = Path(index_dir)
    table = ItemTable(path, items_file)

    def damaged(what: str) -> IndexDamagedError:
        return IndexDamagedError(f"{path} is damaged: {items_file} {what}; rebuild the index with "
                                 "`overlap-audit index ... --resume`", items_file)

    first = 0
    for shard in paths:
        names = [c for c in pq.read_schema(shard).names if c not in VECTOR_COLUMNS]
        want = pq.read_table(shard, columns=names)
        rows = np.arange(first, first + len(want))
        if first + len(want) > table.n_rows:
            raise damaged(f"holds {table.n_rows} rows where the shards hold more")
        got = table.read(rows, names) if len(rows) else {c: [] for c in names}
        if any(got[c] != want[c].to_pylist() for c in names):
            raise damaged(f"does not hold the rows of {shard.name} (rows {first}..{first + len(want) - 1})")
        first += len(want)
    if first != table.n_rows or first != len(table) or table._reader.num_record_batches != -(-first // ITEM_BATCH):
        raise damaged(f"holds {table.n_rows} rows ({len(table)} keys) where the shards hold {first}")
    hashes, rows = table._hashes, table._rows
    if len(hashes) and (np.any(hashes[1:] < hashes[:-1]) or
                        not np.array_equal(np.sort(np.asarray(rows)), np.arange(len(rows), dtype=np.uint64))):
        raise damaged("has a key index that is not sorted or does not list each row once")
    pick = np.arange(len(hashes)) if sample is None else sample[sample < len(hashes)]
    keys = table.read(np.asarray(rows[pick], np.int64), ["key"])["key"] if len(pick) else []
    if not np.array_equal(key_hashes(keys), np.asarray(hashes[pick])):
        raise damaged("has a key index whose hashes are not those of its keys")
    return first
