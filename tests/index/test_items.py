"""The item table (index/items.py): lookups by key and row equal the scan of the shards, and `check` holds
the table to the shards."""

import json

import numpy as np
import pytest

from overlap_audit.errors import IndexDamagedError
from overlap_audit.index import check_index, index_from_vectors, load_manifest
from overlap_audit.index import items as items_module
from overlap_audit.index.items import ItemTable, check_items, keys_name, write_items
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
    assert manifest.items_file == "items.arrow" and keys_name(manifest.items_file) in manifest.files
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


def test_many_batches_and_shared_hashes_are_looked_up_right(tmp_path, monkeypatch):
    """Record batches smaller than a shard and not aligned with it, and a key hash that collides often:
    each key still finds its own row."""
    info = info_for("cosine")
    (tmp_path / "shards").mkdir()
    for n in range(4):
        write_example(tmp_path, n, info, np.random.default_rng(n), 5 * n)
    monkeypatch.setattr(items_module, "ITEM_BATCH", 4)
    real = items_module.key_hashes
    monkeypatch.setattr(items_module, "key_hashes", lambda keys: real(keys) % np.uint64(3))
    n = write_items(tmp_path, "items.arrow", shard_paths(tmp_path))
    keys = all_keys(tmp_path)
    assert n == len(keys) > 8
    table = ItemTable(tmp_path, "items.arrow")
    assert table.rows_of(keys) == {k: i for i, k in enumerate(keys)}
    asked = keys + ["src/nope", None]
    assert (rows_by_key(tmp_path, asked, COLUMNS, items_file="items.arrow")
            == rows_by_key(tmp_path, asked, COLUMNS, items_file=None))
    assert check_items(tmp_path, "items.arrow", shard_paths(tmp_path)) == len(keys)
    # a table of other shards, or of the shards in another order, is not this index's
    with pytest.raises(IndexDamagedError, match="does not hold the rows"):
        check_items(tmp_path, "items.arrow", shard_paths(tmp_path)[::-1])
    write_items(tmp_path, "items.arrow", shard_paths(tmp_path)[:2])
    with pytest.raises(IndexDamagedError):
        check_items(tmp_path, "items.arrow", shard_paths(tmp_path))


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
    index[1] = rng.permutation(index[1])
    np.save(keys_file, index)
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    from overlap_audit.index.manifest import checksum_file

    manifest["files"]["items.keys.npy"]["xxh3_64"] = checksum_file(keys_file)
    (tmp_path / "i" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexDamagedError, match="hashes are not those of its keys"):
        check_index(tmp_path / "i")
