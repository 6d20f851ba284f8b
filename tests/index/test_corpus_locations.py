"""Corpus items read back at the location the index recorded (``corpus_items``), on real tar and Parquet corpora
indexed here: the same items as the scanning path, a replaced tar reads as changed, and the files that do not hold
a wanted item are not needed."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from overlap_audit.index import build_index, corpus_items, finish_from_shards, is_changed
from overlap_audit.index.manifest import MANIFEST
from overlap_audit.index.shards import VECTORS_XXH3, rows_by_key, shard_paths
from overlap_audit.settings import IndexSettings

from ..helpers import png_bytes
from ..sources.test_sources import make_tar


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    # blocks, not noise: phash sees structure, and no two items are near-duplicates
    return png_bytes(Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((32, 32)))


def _index(tmp_path, spec: str) -> str:
    out = tmp_path / "index"
    build_index([spec], out, IndexSettings(workers=0, shard_size=7, views=()))
    return str(out)


@pytest.fixture
def tars(tmp_path):
    """Nine tars of four samples (an image and a caption; every other one a label), their samples by key."""
    samples = {}
    (tmp_path / "corpus").mkdir()
    for shard in range(9):
        rows = [(f"s{shard}-{i}", {"png": _png(10 * shard + i), "txt": f"caption {shard}-{i}".encode(),
                                   **({"cls": str(i).encode()} if i % 2 else {})}) for i in range(4)]
        make_tar(tmp_path / "corpus" / f"{shard:05d}.tar", rows)
        samples.update(rows)
    return tmp_path / "corpus", samples


def _views(items: dict) -> dict:
    return {k: (it.data, it.caption, it.label, it.skip_reason) for k, it in items.items()}


def test_every_tar_item_is_recorded_and_read_back_at_its_location(tmp_path, tars):
    corpus, samples = tars
    index = _index(tmp_path, str(corpus))
    rows = rows_by_key(index, samples, ["location"])
    assert all(rows[k]["location"]["members"].startswith("png@") for k in samples)
    assert sorted({rows[k]["location"]["file"] for k in samples}) == list(range(9))
    got = corpus_items(index, list(samples))
    assert _views(got) == {k: (parts["png"], parts["txt"].decode(), parts.get("cls", b"").decode() or None, None)
                           for k, parts in samples.items()}


def test_a_tar_item_needs_only_its_own_shard(tmp_path, tars):
    corpus, samples = tars
    index = _index(tmp_path, str(corpus))
    for shard in range(8):  # every shard but the last, which holds the wanted items
        os.remove(corpus / f"{shard:05d}.tar")
    got = corpus_items(index, ["s8-0", "s8-3"])
    assert got["s8-0"].data == samples["s8-0"]["png"] and got["s8-3"].data == samples["s8-3"]["png"]
    assert "no longer readable" in corpus_items(index, ["s0-0"])["s0-0"].skip_reason


def test_a_replaced_tar_reads_as_changed_never_as_other_bytes(tmp_path, tars):
    corpus, samples = tars
    index = _index(tmp_path, str(corpus))
    # the shard replaced by one with the same keys in another order, and other images for two of them
    keys = [f"s4-{i}" for i in range(4)]
    make_tar(corpus / "00004.tar", [(k, {"png": samples[k]["png"] if k in keys[2:] else _png(900 + i),
                                         "txt": b"other"}) for i, k in reversed(list(enumerate(keys)))])
    located = {k: rows_by_key(index, [k], ["location"])[k]["location"] for k in keys}
    got = corpus_items(index, keys + ["s3-1"])
    for key in keys[:2]:
        assert got[key].data is None and is_changed(got[key]), got[key]
    # the two with their own bytes, elsewhere in the re-packed tar: found there, by key in that tar alone
    assert [got[k].data for k in keys[2:]] == [samples[k]["png"] for k in keys[2:]]
    assert got["s3-1"].data == samples["s3-1"]["png"]  # the other shards are as they were
    for shard in (0, 1, 2, 3, 5, 6, 7, 8):
        os.remove(corpus / f"{shard:05d}.tar")
    assert corpus_items(index, keys[2:]) == {k: got[k] for k in keys[2:]}
    assert all(loc["file"] == 4 for loc in located.values())


def test_items_of_two_sources_are_each_read_from_their_own(tmp_path, tars):
    corpus, samples = tars
    _parquet(tmp_path / "more.parquet", 0, 6)
    out = tmp_path / "both"
    build_index([str(corpus), str(tmp_path / "more.parquet")], out, IndexSettings(workers=0, shard_size=7, views=()))
    got = corpus_items(out, ["corpus/s2-1", "more.parquet/k0004", "corpus/s7-3"])
    assert got["corpus/s2-1"].data == samples["s2-1"]["png"] and got["corpus/s7-3"].data == samples["s7-3"]["png"]
    assert got["more.parquet/k0004"].data == _png(4) and got["more.parquet/k0004"].caption == "c4"


def _strip_locations(index: str) -> None:
    """Make ``index`` one written before locations were recorded: its shards without the column, finished again."""
    for path in shard_paths(index):
        table = pq.read_table(path)
        table = table.drop_columns(["location"]).replace_schema_metadata(
            {VECTORS_XXH3: table.schema.metadata[VECTORS_XXH3]})
        pq.write_table(table, path)
    os.remove(os.path.join(index, MANIFEST))
    finish_from_shards(index)


def test_an_index_without_locations_reads_its_items_by_scanning_the_same(tmp_path, tars):
    corpus, samples = tars
    index = _index(tmp_path, str(corpus))
    keys = ["s0-1", "s5-2", "s8-3"]
    located = corpus_items(index, keys)
    _strip_locations(index)
    assert all(row["location"] is None for row in rows_by_key(index, keys, ["location"]).values())
    assert _views(corpus_items(index, keys)) == _views(located)
    os.remove(corpus / "00003.tar")  # the scanning path needs every shard of the source
    assert all("no longer readable" in it.skip_reason for it in corpus_items(index, keys).values())


def _parquet(path, start: int, n: int, *, reverse: bool = False) -> None:
    keys = [f"k{i:04d}" for i in range(start, start + n)]
    table = pa.table({"key": keys, "jpg": [_png(i) for i in range(start, start + n)],
                      "caption": [f"c{i}" for i in range(start, start + n)]})
    if reverse:
        table = table.take(pa.array(list(range(n - 1, -1, -1))))
    pq.write_table(table, path, row_group_size=4)


def test_parquet_items_are_read_back_from_their_row_group(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in range(3):
        _parquet(corpus / f"part-{f}.parquet", 100 * f, 10)
    index = _index(tmp_path, str(corpus))
    keys = [f"k{i:04d}" for f in range(3) for i in range(100 * f, 100 * f + 10)]
    rows = rows_by_key(index, keys, ["location"])
    assert rows["k0209"]["location"] == {"file": 2, "members": None, "row_group": 2, "row": 1}
    got = corpus_items(index, keys)
    assert _views(got) == {k: (_png(int(k[1:])), f"c{int(k[1:])}", None, None) for k in keys}
    os.remove(corpus / "part-0.parquet")
    _parquet(corpus / "part-2.parquet", 200, 10, reverse=True)  # rewritten: its rows found by id, bytes unchanged
    got = corpus_items(index, ["k0105", "k0209", "k0200"])
    assert [got[k].data for k in ("k0105", "k0209", "k0200")] == [_png(105), _png(209), _png(200)]


def test_corpus_matches_metadata_reads_only_the_files_that_hold_the_matched_items(tmp_path, tars):
    """corpus_matches.parquet's location columns: the same with and without recorded locations, and with them
    the tars and Parquet files that hold no matched item are never opened (here: removed)."""
    from overlap_audit.index import load_index
    from overlap_audit.matched import corpus_metadata

    corpus, _ = tars
    (tmp_path / "pq").mkdir()
    for f in range(3):
        _parquet(tmp_path / "pq" / f"part-{f}.parquet", 100 * f, 10)
    sources = [str(corpus), str(tmp_path / "pq" / "part-{0..2}.parquet")]
    indexes = [tmp_path / "index", tmp_path / "index2"]
    for out in indexes:
        build_index(sources, out, IndexSettings(workers=0, shard_size=7, views=()))
    wanted = [k for k in load_index(indexes[0], load_faiss=False).keys if k.endswith(("s8-1", "s8-2", "k0003"))]
    assert len(wanted) == 3
    located = corpus_metadata(indexes[0], wanted)
    by_id = {row["id"]: row for row in located.values()}
    assert by_id["s8-2"]["shard"] == "00008.tar" and by_id["s8-2"]["member"] == "s8-2.png"
    assert by_id["k0003"]["shard"] == "part-0.parquet" and by_id["k0003"]["row"] == 3
    _strip_locations(str(indexes[0]))
    assert corpus_metadata(indexes[0], wanted) == located  # the scan of every file finds the same
    # decoys: the first tar and the last Parquet file replaced by ones that hold the wanted ids too; the scan
    # names them (the first tar that holds a key, the last Parquet file); the recorded locations never open them
    make_tar(corpus / "00000.tar", [(k, {"png": _png(500 + i), "txt": b"decoy"}) for i, k in enumerate(("s8-1", "s8-2"))])
    _parquet(tmp_path / "pq" / "part-2.parquet", 3, 1)
    assert corpus_metadata(indexes[1], wanted) == located
    decoyed = corpus_metadata(indexes[0], wanted)
    assert {row["shard"] for row in decoyed.values()} == {"00000.tar", "part-2.parquet"}
