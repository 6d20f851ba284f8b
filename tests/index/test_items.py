"""The item table (index/items.py): lookups by key and row equal the scan of the shards, and `check` holds
the table to the shards."""

import json

import numpy as np
import pytest

from overlap_audit.errors import IndexDamagedError
from overlap_audit.index import check_index, index_from_vectors, load_index, load_manifest
from overlap_audit.index import items as items_module
from overlap_audit.index.items import ItemTable, check_items, side_files, write_items
from overlap_audit.index.shards import content_boxes, rows_by_key, shard_paths

from .test_index_shards import info_for, write_example

COLUMNS = ["source", "id", "caption", "label", "skip_reason", "low_information", "item_size", "item_xxh3",
           "content_box", "no_such_column"]


def all_keys(index_dir) -> list[str]:
    import pyarrow.parquet as pq

    return [k for p in shard_paths(index_dir) for k in pq.read_table(p, columns=["key"])["key"].to_pylist()]


def test_a_real_index_reads_its_items_by_key_as_the_shard_scan_does(corpus_index):
    """The phash index of real images (trimmed, with skipped broken files): every key, skipped ones included,
    reads the same columns from the item table as from the shards; unknown keys and None are absent."""
    manifest = load_manifest(corpus_index)
    assert manifest.items_file == "items.rows" and set(side_files(manifest.items_file).values()) < set(manifest.files)
    keys = all_keys(corpus_index)
    assert len(keys) == manifest.n_given > manifest.n_indexed  # skipped items are in the table too
    asked = [*keys[::-1], "nope", None]
    by_table = rows_by_key(corpus_index, asked, COLUMNS)
    assert by_table == rows_by_key(corpus_index, asked, COLUMNS, items_file=None)
    assert len(by_table) == len(keys) and "nope" not in by_table
    assert any(row["content_box"] is not None for row in by_table.values())
    boxes = content_boxes(corpus_index, keys[:40])
    assert boxes and all(boxes[k].to_dict() == by_table[k]["content_box"] for k in boxes)
    assert rows_by_key(corpus_index, [], ["id"]) == {}
    # by row: the table's rows are the index rows (ids.parquet's keys), then the other shard rows in order, and
    # a loaded index's row keys are those of ids.parquet
    import pyarrow.parquet as pq

    ids = pq.read_table(corpus_index / manifest.ids_file)["key"].to_pylist()
    in_order = ids + [k for k in keys if k not in set(ids)]
    with ItemTable(corpus_index, manifest.items_file) as table:
        assert table.n_indexed == len(ids)
        assert table.read(range(len(keys))[::-1], ["key"])["key"] == in_order[::-1]
        assert table.rows_of(keys) == {k: i for i, k in enumerate(in_order)}
    loaded = load_index(corpus_index, load_faiss=False).keys
    rows = np.array([[len(ids) - 1, 0], [1, 1]])
    assert list(loaded) == ids and loaded[rows].tolist() == [[ids[-1], ids[0]], [ids[1], ids[1]]]
    assert loaded[np.zeros((0,), np.int64)].shape == (0,) and loaded[np.int64(2)] == ids[2]


def test_lookups_by_key_read_by_threads_equal_the_shard_scan(corpus_index, monkeypatch):
    """Where the first keys' reads were slow (forced here) the rest are looked up by several threads: every key
    reads the same columns as the shard scan gives, unknown keys and None absent."""
    import os
    import threading

    monkeypatch.setattr(items_module, "_PROBE_READS", 8)  # two keys in the caller's thread
    monkeypatch.setattr(items_module, "_READERS", 3)
    monkeypatch.setattr(items_module, "_SLOW_READ_S", -1.0)
    keys = all_keys(corpus_index)
    asked = [*keys[::-1], "nope", None]
    readers = set()
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: readers.add(threading.get_ident()) or real_pread(fd, n, at))
    by_table = rows_by_key(corpus_index, asked, COLUMNS)
    assert len(readers) > 1  # read by other threads too
    assert by_table == rows_by_key(corpus_index, asked, COLUMNS, items_file=None)
    assert len(by_table) == len(keys) and "nope" not in by_table


def test_shared_hashes_and_awkward_text_are_looked_up_right(tmp_path, monkeypatch):
    """A key hash that collides often (every key in one of three buckets' worth of hashes), and text with the
    record separator, backslashes, non-ASCII and empty strings: each key still finds its own row and reads
    the values the shards hold."""
    info = info_for("cosine")
    (tmp_path / "shards").mkdir()
    for n in range(3):
        write_example(tmp_path, n, info, np.random.default_rng(n), 5 * n)
    rows = write_example(tmp_path, 3, info, np.random.default_rng(3), 15)
    awkward = ["nul\x00 here", "back\\slash\\0 \\\\", "", "caf\u00e9 \u2603", "v"]
    rows["captions"], rows["labels"] = awkward, awkward[::-1]
    from overlap_audit.index.shards import shard_path, write_shard

    write_shard(shard_path(tmp_path, 3), info, **rows)
    real = items_module.key_hashes
    monkeypatch.setattr(items_module, "key_hashes", lambda keys: real(keys) % np.uint64(3) << np.uint64(62))
    written = write_items(tmp_path, "items.rows", shard_paths(tmp_path))
    keys = all_keys(tmp_path)
    assert written.rows == len(keys) == 20 and written.indexed == 12 and written.repeated == ()
    table = ItemTable(tmp_path, "items.rows")
    # each shard's rows 0, 1 and 4 are indexed: they come first, the skipped and low-information ones after
    in_order = [k for i, k in enumerate(keys) if i % 5 in (0, 1, 4)] + [k for i, k in enumerate(keys)
                                                                         if i % 5 in (2, 3)]
    assert table.n_indexed == 12 and table.rows_of(keys) == {k: i for i, k in enumerate(in_order)}
    asked = keys + ["src/nope", None]
    got = rows_by_key(tmp_path, asked, COLUMNS, items_file="items.rows")
    assert got == rows_by_key(tmp_path, asked, COLUMNS, items_file=None)
    assert [got[k]["caption"] for k in keys[15:]] == awkward
    assert table.read(np.array([11, 0, 11]), ["id", "label"]) == {"id": ["im19.png", "im0.png", "im19.png"],
                                                                   "label": [awkward[0], "cat", awkward[0]]}
    assert check_items(tmp_path, "items.rows", shard_paths(tmp_path)) == len(keys)
    # a table of other shards, or of the shards in another order, is not this index's
    with pytest.raises(IndexDamagedError, match="does not hold the rows"):
        check_items(tmp_path, "items.rows", shard_paths(tmp_path)[::-1])
    write_items(tmp_path, "items.rows", shard_paths(tmp_path)[:2])
    with pytest.raises(IndexDamagedError):
        check_items(tmp_path, "items.rows", shard_paths(tmp_path))


def test_an_index_with_an_item_table_of_the_earlier_layout_reads_its_shards(tmp_path):
    """A manifest naming ``items.arrow`` (the layout before this one): lookups scan the shards, with the same
    answers, and ``check`` still passes it."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index_from_vectors(tmp_path / "i", vectors, shard_size=20)
    keys = all_keys(tmp_path / "i")
    want = rows_by_key(tmp_path / "i", keys, COLUMNS)
    raw = json.loads((tmp_path / "i" / "manifest.json").read_text())
    raw["items_file"] = "items.arrow"
    raw["files"]["items.arrow"] = raw["files"].pop("items.rows")
    (tmp_path / "i" / "items.rows").rename(tmp_path / "i" / "items.arrow")
    (tmp_path / "i" / "manifest.json").write_text(json.dumps(raw))
    assert load_manifest(tmp_path / "i").items_file == "items.arrow"
    assert rows_by_key(tmp_path / "i", keys, COLUMNS) == want
    assert check_index(tmp_path / "i").n_indexed == 50


def test_check_refuses_an_item_table_that_does_not_match_its_shards(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index_from_vectors(tmp_path / "i", vectors, shard_size=70)
    assert check_index(tmp_path / "i").n_indexed == 300
    # a key index with its rows shuffled, written with a manifest to match: only the check against the
    # shards can tell
    keys_file = tmp_path / "i" / "items.keys.npy"
    index = np.load(keys_file)
    index[:, 1] = rng.permutation(index[:, 1])
    np.save(keys_file, index)
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    from overlap_audit.index.manifest import checksum_file

    manifest["files"]["items.keys.npy"]["xxh3_64"] = checksum_file(keys_file)
    (tmp_path / "i" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexDamagedError, match="key index that is not that of its keys"):
        check_index(tmp_path / "i")


def _index_with_gaps(root, rng, n_shards=4, per_shard=40):
    """A finished flat index whose shards have skipped and low-information items scattered, in runs, and at
    the very first and last rows; returns the shards' indexed keys in order."""
    from overlap_audit.index.finish import finish_index
    from overlap_audit.index.shards import shard_path, write_shard

    info = info_for("hamming")
    (root / "shards").mkdir(parents=True)
    indexed = []
    for s in range(n_shards):
        n = per_shard
        kind = rng.choice(["ok", "low", "skip"], size=n, p=[0.6, 0.25, 0.15])
        if s == 0:
            kind[:3] = "skip"
        if s == n_shards - 1:
            kind[-2:] = "low"
        keys = [f"src/{s}/im{i}.png" for i in range(n)]
        vectors = [None if k == "skip" else rng.integers(0, 256, info.dim // 8, dtype=np.uint8) for k in kind]
        write_shard(shard_path(root, s), info, keys=keys, sources=["src"] * n, ids=[k[4:] for k in keys],
                    captions=[None] * n, labels=[None] * n, vectors=vectors, low_information=list(kind == "low"),
                    reasons=["cannot decode" if k == "skip" else None for k in kind], copies=[None] * n)
        indexed += [key for key, k in zip(keys, kind) if k == "ok"]
    finish_index(root, info, [{"kind": "vectors", "name": "src"}], per_shard, "cpu", 0.0, index_type="flat")
    return indexed


def test_row_keys_come_from_the_item_table_and_equal_the_ids_in_row_order(tmp_path):
    """Index rows read by row from the item table (records skipped over where items are not indexed) are
    the keys ids.parquet lists, for a batch in any order and shape, one row, and every row in turn."""
    import pyarrow.parquet as pq

    indexed = _index_with_gaps(tmp_path / "i", np.random.default_rng(5))
    manifest = load_manifest(tmp_path / "i")
    assert manifest.n_given > manifest.n_indexed == len(indexed)
    assert pq.read_table(tmp_path / "i" / manifest.ids_file)["key"].to_pylist() == indexed
    keys = load_index(tmp_path / "i", load_faiss=False).keys
    assert keys._table is not None  # read from the item table, not from ids.parquet
    rows = np.random.default_rng(0).integers(0, len(indexed), (30, 7))
    assert keys[rows].tolist() == [[indexed[r] for r in line] for line in rows]
    assert list(keys) == indexed and len(keys) == len(indexed)
    assert keys[0] == indexed[0] and keys[-1] == indexed[-1] and keys[np.int64(3)] == indexed[3]
    with pytest.raises(IndexError):
        keys[np.array([len(indexed)])]
    assert check_index(tmp_path / "i").n_indexed == len(indexed)


@pytest.mark.parametrize("gap", [1 << 30, 20, 0])
def test_row_keys_read_in_one_span_in_several_or_one_read_each_are_the_same(tmp_path, monkeypatch, gap):
    """Rows asked as a dense run, scattered rows and repeats among them: read in one span (one pread), the
    dense run in a few spans and the scattered rows one read each, or every record one read, the keys are
    the ids in row order."""
    import os

    from overlap_audit.index import items as items_module

    indexed = _index_with_gaps(tmp_path / "i", np.random.default_rng(8))
    monkeypatch.setattr(items_module, "_SPAN_GAP", gap)
    keys = load_index(tmp_path / "i", load_faiss=False).keys
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(n) or real_pread(fd, n, at))
    rng = np.random.default_rng(1)
    rows = np.concatenate([np.arange(40, 70), rng.integers(0, len(indexed), 25), [45, 3, 3]])
    rng.shuffle(rows)
    assert keys[rows].tolist() == [indexed[r] for r in rows]
    distinct = len(set(rows.tolist()))
    assert len(reads) == {1 << 30: 1, 0: distinct}.get(gap, len(reads))
    if gap == 20:  # the run's adjacent records share a span, scattered ones (a record or more apart) do not
        assert 1 < len(reads) < distinct - 20


@pytest.mark.parametrize("slow", [True, False])
def test_row_keys_read_by_threads_where_reads_are_slow_are_the_same(tmp_path, monkeypatch, slow):
    """Where the first reads were slow (a table on disk) the rest of the offsets and records are read by
    several threads, else one after another: the keys are the ids in row order either way."""
    import os
    import threading

    from overlap_audit.index import items as items_module

    indexed = _index_with_gaps(tmp_path / "i", np.random.default_rng(9))
    monkeypatch.setattr(items_module, "_SPAN_GAP", 0)  # every record its own read
    monkeypatch.setattr(items_module, "_PROBE_READS", 3)
    monkeypatch.setattr(items_module, "_READERS", 4)
    monkeypatch.setattr(items_module, "_SLOW_READ_S", -1.0 if slow else float("inf"))
    keys = load_index(tmp_path / "i", load_faiss=False).keys
    readers = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: readers.append(threading.get_ident()) or real_pread(fd, n, at))
    rows = np.random.default_rng(2).permutation(len(indexed))[:40]
    assert keys[rows].tolist() == [indexed[r] for r in rows]
    # cached: the offsets gathered from their map, the 40 records read here; slow: the offsets of the 37 rows
    # after the probe's 3 read too, by other threads (the records' probe in the caller's thread)
    assert len(readers) == (40 + 37 if slow else 40)
    assert (len(set(readers)) > 1) == slow
    assert threading.get_ident() in readers


def test_row_keys_are_read_in_spans_of_bounded_size(tmp_path, monkeypatch):
    """Every row asked (one span by distance) is read in spans that start within one block of ``_SPAN_MAX``
    bytes: many reads, none much larger than a block, the same keys."""
    import os

    indexed = _index_with_gaps(tmp_path / "i", np.random.default_rng(10))
    monkeypatch.setattr(items_module, "_SPAN_MAX", 256)
    keys = load_index(tmp_path / "i", load_faiss=False).keys
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(n) or real_pread(fd, n, at))
    rows = np.arange(len(indexed))[::-1]
    assert keys[rows].tolist() == indexed[::-1]
    assert len(reads) > 4 and max(reads) < 256 + 200  # a block, and the last record that starts in it


def test_a_loaded_index_reads_its_row_keys_after_its_files_are_replaced(tmp_path):
    """The item table and its offsets stay open from loading: removed, or replaced by another generation's
    files, the loaded index still reads its own keys."""
    indexed = _index_with_gaps(tmp_path / "i", np.random.default_rng(11))
    keys = load_index(tmp_path / "i", load_faiss=False).keys
    table, offsets = tmp_path / "i" / "items.rows", tmp_path / "i" / "items.offsets.npy"
    table.unlink()
    offsets.unlink()
    offsets.write_bytes(b"not an offsets file")
    rows = np.random.default_rng(3).integers(0, len(indexed), 50)
    assert keys[rows].tolist() == [indexed[r] for r in rows]


def test_damage_found_by_a_reading_thread_is_one_line(tmp_path, monkeypatch, at_scale):
    """Lookups by key made by threads (forced) in a table whose bucket directory was overwritten after
    indexing: the thread's IndexDamagedError reaches the caller, in one line."""
    _index_with_gaps(tmp_path / "i", np.random.default_rng(12))
    buckets = tmp_path / "i" / "items.buckets.npy"
    data = bytearray(buckets.read_bytes())
    header = data.index(b"\n") + 1  # the .npy header ends with its first newline
    data[header:] = (np.arange((len(data) - header) // 8, dtype="<u8") * 1000).tobytes()
    buckets.write_bytes(bytes(data))
    monkeypatch.setattr(items_module, "_PROBE_READS", 4)
    monkeypatch.setattr(items_module, "_SLOW_READ_S", -1.0)
    keys = [f"src/{s}/im{i}.png" for s in range(3) for i in range(40)]
    with pytest.raises(IndexDamagedError, match=r"items\.rows is damaged: bucket \d+ ends at entry") as exc:
        rows_by_key(tmp_path / "i", keys, ["id"])
    _one_line(exc)


@pytest.fixture
def at_scale(monkeypatch):
    """Open-time checks as an index beyond the small sizes gets them: sizes only, nothing checksummed."""
    from overlap_audit.index import integrity

    monkeypatch.setattr(integrity, "SMALL_INDEX", 0)
    monkeypatch.setattr(integrity, "SMALL_FILE", 0)


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_an_item_table_changed_after_indexing_is_refused_never_a_wrong_key(tmp_path, at_scale):
    """Two records' keys exchanged in items.rows (the same size, so opening passes): asking for either row is
    a one-line IndexDamagedError naming items.rows; the other rows still read right; check refuses it."""
    indexed = _index_with_gaps(tmp_path / "i", np.random.default_rng(6))
    table = tmp_path / "i" / "items.rows"
    data = table.read_bytes()
    a, b = indexed[10].encode(), indexed[11].encode()
    assert len(a) == len(b) and data.count(a) == data.count(b) == 1
    table.write_bytes(data.replace(a, b"\x01" * len(a)).replace(b, a).replace(b"\x01" * len(a), b))
    keys = load_index(tmp_path / "i", load_faiss=False).keys
    assert keys[np.arange(10)].tolist() == indexed[:10]
    for row in (10, 11):
        with pytest.raises(IndexDamagedError, match=r"items\.rows is damaged: .* do not place there") as exc:
            keys[np.array([0, row])]
        assert _one_line(exc).endswith("--resume`")
    with pytest.raises(IndexDamagedError):
        check_index(tmp_path / "i")


def test_an_item_table_cut_short_or_bytes_overwritten_is_refused(tmp_path, at_scale):
    indexed = _index_with_gaps(tmp_path / "i", np.random.default_rng(7))
    table = tmp_path / "i" / "items.rows"
    data = table.read_bytes()
    table.write_bytes(data[:-100])
    with pytest.raises(IndexDamagedError, match=r"items\.rows is \d+ bytes where the manifest records"):
        load_index(tmp_path / "i", load_faiss=False)
    header = data.index(b"\n") + 1
    table.write_bytes(data[:header] + bytes(len(data) - header))  # every record zeroed
    keys = load_index(tmp_path / "i", load_faiss=False).keys
    with pytest.raises(IndexDamagedError, match="holds no key") as exc:
        keys[np.array([len(indexed) - 1])]
    _one_line(exc)


def test_ids_parquet_is_not_read_to_open_an_index_with_an_item_table(tmp_path, at_scale):
    """ids.parquet damaged in place (its size kept): a report's keys do not come from it, so they stay right;
    ``check`` refuses the file; with the small-index checks (the default here) opening refuses it too."""
    indexed = _index_with_gaps(tmp_path / "i", np.random.default_rng(9))
    ids = tmp_path / "i" / "ids.parquet"
    data = bytearray(ids.read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = bytes(16)
    ids.write_bytes(bytes(data))
    assert list(load_index(tmp_path / "i", load_faiss=False).keys) == indexed
    with pytest.raises(IndexDamagedError, match="ids.parquet does not have the checksum"):
        check_index(tmp_path / "i")


def test_a_small_index_is_checksummed_whole_when_opened(tmp_path):
    _index_with_gaps(tmp_path / "i", np.random.default_rng(9))
    ids = tmp_path / "i" / "ids.parquet"
    data = bytearray(ids.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ids.write_bytes(bytes(data))
    with pytest.raises(IndexDamagedError, match="ids.parquet does not have the checksum"):
        load_index(tmp_path / "i", load_faiss=False)


def test_an_item_table_in_shard_order_is_read_as_an_earlier_layout(tmp_path):
    """A table written by the development layout that kept records in shard order (``overlap_audit.items/1``):
    row keys come from ids.parquet and items from the shards, with the same answers."""
    from overlap_audit.index.manifest import checksum_file

    indexed = _index_with_gaps(tmp_path / "i", np.random.default_rng(3))
    keys = all_keys(tmp_path / "i")
    want = rows_by_key(tmp_path / "i", keys, COLUMNS)
    table = tmp_path / "i" / "items.rows"
    data = table.read_bytes()
    table.write_bytes(data.replace(b'"overlap_audit.items/3"', b'"overlap_audit.items/1"', 1))
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    manifest["files"]["items.rows"]["xxh3_64"] = checksum_file(table)
    (tmp_path / "i" / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_index(tmp_path / "i", load_faiss=False).keys
    assert loaded._table is None and list(loaded) == indexed
    assert rows_by_key(tmp_path / "i", keys, COLUMNS) == want


def test_offsets_changed_after_indexing_are_refused_never_read_through(tmp_path, at_scale):
    """items.offsets.npy overwritten in place: offsets past the file or out of order are refused before any
    record is read through them; offsets in order but one record off give keys whose recorded hashes refuse them."""
    indexed = _index_with_gaps(tmp_path / "i", np.random.default_rng(4))
    offsets_file = tmp_path / "i" / "items.offsets.npy"
    offsets = np.load(offsets_file)
    assert offsets.shape == (load_manifest(tmp_path / "i").n_given + 1, 2)
    shifted = offsets.copy()
    shifted[:, 0] += np.uint64(1 << 40)
    reversed_ = offsets.copy()
    reversed_[:, 0] = offsets[::-1, 0]
    one_off = offsets.copy()
    one_off[:-1, 0] = offsets[1:, 0]
    for damaged, what in ((shifted, "offsets point outside"), (reversed_, "offsets point outside"),
                          (one_off, "do not place there")):
        np.save(offsets_file, damaged)
        with pytest.raises(IndexDamagedError, match=what) as exc:  # when opened, or when the rows are read
            load_index(tmp_path / "i", load_faiss=False).keys[np.arange(len(indexed))]
        _one_line(exc)


def test_an_item_table_of_the_previous_format_is_refused_in_one_line(tmp_path, at_scale):
    """A table whose header names the format before this one (offsets without their keys' hashes): reading
    row keys or items by key is the one-line damaged error that says to rebuild, never a wrong answer."""
    from overlap_audit.index.manifest import checksum_file

    indexed = _index_with_gaps(tmp_path / "i", np.random.default_rng(8))
    table = tmp_path / "i" / "items.rows"
    table.write_bytes(table.read_bytes().replace(b'"overlap_audit.items/3"', b'"overlap_audit.items/2"', 1))
    offsets_file = tmp_path / "i" / "items.offsets.npy"
    np.save(offsets_file, np.ascontiguousarray(np.load(offsets_file)[:, 0]))
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    for name in ("items.rows", "items.offsets.npy"):
        manifest["files"][name].update(size=(tmp_path / "i" / name).stat().st_size,
                                       xxh3_64=checksum_file(tmp_path / "i" / name))
    (tmp_path / "i" / "manifest.json").write_text(json.dumps(manifest))
    for read in (lambda: load_index(tmp_path / "i", load_faiss=False),
                 lambda: rows_by_key(tmp_path / "i", indexed[:3], ["id"]), lambda: check_index(tmp_path / "i")):
        with pytest.raises(IndexDamagedError, match=r"items\.rows is damaged: .*rebuild the index") as exc:
            read()
        _one_line(exc)
    # the rebuild the message names: `index --resume` finds the table refused and finishes the index again
    from overlap_audit.index.build import _resume_complete
    from overlap_audit.settings import IndexSettings

    assert _resume_complete(tmp_path / "i", IndexSettings(), lambda *a, **k: "finished again") == "finished again"


def _reference_key_index(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The key index as one in-memory sort makes it: (hash, row) by hash, rows in order among equal hashes, and
    the bucket directory over the hashes' top bits."""
    order = np.argsort(hashes, kind="stable")
    entries = np.stack([hashes[order], order.astype(np.uint64)], axis=1)
    bits = items_module.bucket_bits(len(hashes))
    counts = np.bincount((entries[:, 0] >> np.uint64(64 - bits)).astype(np.int64), minlength=1 << bits)
    return entries, np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)


@pytest.mark.parametrize("pass_entries", [1 << 23, 7])
def test_the_key_index_sorted_a_range_at_a_time_equals_one_sort(tmp_path, monkeypatch, pass_entries):
    """Written with the sort spread over ranges of hashes (a few entries per pass, as at 10^8 items) or in one
    pass, the key index and its buckets are those of one in-memory sort of the table's keys' hashes (with
    hashes that collide often), the offsets file holds each row's hash, and ``check`` passes."""
    real = items_module.key_hashes
    monkeypatch.setattr(items_module, "key_hashes", lambda keys: real(keys) % np.uint64(5) << np.uint64(61)
                        | real(keys) % np.uint64(2))
    monkeypatch.setattr(items_module, "_PASS_ENTRIES", pass_entries)
    monkeypatch.setattr(items_module, "_CHUNK_ROWS", 13)
    _index_with_gaps(tmp_path / "i", np.random.default_rng(2), n_shards=5)
    manifest = load_manifest(tmp_path / "i")
    with ItemTable(tmp_path / "i", manifest.items_file) as table:
        in_order = table.read(range(table.n_rows), ["key"])["key"]
    offsets = np.load(tmp_path / "i" / "items.offsets.npy")
    assert offsets[:-1, 1].tolist() == items_module.key_hashes(in_order).tolist() and offsets[-1, 1] == 0
    entries, buckets = _reference_key_index(items_module.key_hashes(in_order))
    assert np.array_equal(np.load(tmp_path / "i" / "items.keys.npy"), entries)
    assert np.array_equal(np.load(tmp_path / "i" / "items.buckets.npy"), buckets)
    assert check_index(tmp_path / "i").n_indexed == manifest.n_indexed
    with ItemTable(tmp_path / "i", manifest.items_file) as table:
        assert table.rows_of(in_order) == {k: i for i, k in enumerate(in_order)}


def _shards_with_a_repeat(root, repeat_in: str):
    """Three shards of 30 items; shard 2's fifth key repeats shard 0's third, in an indexed row or a skipped one."""
    from overlap_audit.index.shards import shard_path, write_shard

    info = info_for("hamming")
    (root / "shards").mkdir(parents=True)
    rng = np.random.default_rng(11)
    for s in range(3):
        keys = [f"src/{s}/im{i}.png" for i in range(30)]
        reasons = [None] * 30
        if s == 2:
            keys[4] = "src/0/im2.png"
            if repeat_in == "skipped":
                reasons[4] = "cannot decode"
        vectors = [None if r else rng.integers(0, 256, info.dim // 8, dtype=np.uint8) for r in reasons]
        write_shard(shard_path(root, s), info, keys=keys, sources=["src"] * 30, ids=[k[4:] for k in keys],
                    captions=[None] * 30, labels=[None] * 30, vectors=vectors, low_information=[False] * 30,
                    reasons=reasons, copies=[None] * 30)
    return info


def test_a_key_repeated_in_index_rows_is_refused_and_leaves_no_files(tmp_path, monkeypatch):
    """The same key in two index rows: finishing refuses it as it always did (a repeat found through the
    sorted hashes and confirmed by the keys), and leaves nothing beside the shards; hashes shared by different
    keys are no repeat; a repeated key whose second row is skipped is not an index row's and passes."""
    from overlap_audit.errors import IndexDirError
    from overlap_audit.index.finish import finish_index

    real = items_module.key_hashes
    monkeypatch.setattr(items_module, "key_hashes", lambda keys: real(keys) % np.uint64(4) << np.uint64(62))
    for repeat_in in ("indexed", "skipped"):
        root = tmp_path / repeat_in
        info = _shards_with_a_repeat(root, repeat_in)
        run = lambda: finish_index(root, info, [{"kind": "vectors", "name": "src"}], 30, "cpu", 0.0,  # noqa: E731
                                   index_type="flat")
        if repeat_in == "indexed":
            with pytest.raises(IndexDirError, match="the shards hold repeated keys; rebuild the index"):
                run()
            assert sorted(p.name for p in root.iterdir()) == ["shards"]
        else:
            assert run().n_indexed == 89
