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
    # by row: the table's rows are the shards' rows in order, and a loaded index's row keys those of ids.parquet
    with ItemTable(corpus_index, manifest.items_file) as table:
        assert table.read(range(len(keys))[::-1], ["key"])["key"] == keys[::-1]
        assert table.rows_of(keys) == {k: i for i, k in enumerate(keys)}
    import pyarrow.parquet as pq

    ids = pq.read_table(corpus_index / manifest.ids_file)["key"].to_pylist()
    loaded = load_index(corpus_index, load_faiss=False).keys
    rows = np.array([[len(ids) - 1, 0], [1, 1]])
    assert list(loaded) == ids and loaded[rows].tolist() == [[ids[-1], ids[0]], [ids[1], ids[1]]]
    assert loaded[np.zeros((0,), np.int64)].shape == (0,) and loaded[np.int64(2)] == ids[2]


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
    n = write_items(tmp_path, "items.rows", shard_paths(tmp_path))
    keys = all_keys(tmp_path)
    assert n == len(keys) == 20
    table = ItemTable(tmp_path, "items.rows")
    assert table.rows_of(keys) == {k: i for i, k in enumerate(keys)}
    asked = keys + ["src/nope", None]
    got = rows_by_key(tmp_path, asked, COLUMNS, items_file="items.rows")
    assert got == rows_by_key(tmp_path, asked, COLUMNS, items_file=None)
    assert [got[k]["caption"] for k in keys[15:]] == awkward
    assert table.read(np.array([19, 0, 19]), ["id", "label"]) == {"id": ["im19.png", "im0.png", "im19.png"],
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
