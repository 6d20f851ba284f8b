"""Reading items back at the location their iteration recorded (tar member offsets, Parquet row groups), against
the scanning path (``fetch_items`` without locations), on real tars and Parquet files written here."""

from __future__ import annotations

import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from overlap_audit.limits import InputLimits
from overlap_audit.sources import fetch_items, open_source
from overlap_audit.values import ItemLocation

from ..helpers import png_bytes
from .test_remote import served  # noqa: F401 - the HTTP server fixture
from .test_sources import add_member, make_tar


def _png(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))


def _view(item) -> tuple:
    return item.id, item.data, item.caption, item.label, item.skip_reason


def _samples(shard: int, n: int = 4) -> list[tuple[str, dict[str, bytes]]]:
    """Samples with every kind of caption and label member, one without an image, a long member name."""
    out = []
    for i in range(n):
        key = f"s{shard:02d}-{i}"
        parts = {"png": _png(100 * shard + i)}
        if i % 4 == 0:
            parts["txt"] = f"caption {key}".encode()
        elif i % 4 == 1:
            parts["json"] = json.dumps({"caption": f"json caption {key}", "label": i}).encode()
        elif i % 4 == 2:
            parts = {"cls": str(i).encode(), "jpg": _png(100 * shard + i), "txt": b"t"}
        else:
            key = "long-" + "x" * 120 + key  # a name over 100 bytes: a PAX header before the member
        out.append((key, parts))
    out.append((f"s{shard:02d}-noimage", {"txt": b"nothing to see"}))
    return out


def test_item_location_round_trips_through_its_stored_form():
    loc = ItemLocation(3, (("png", 1536, 2048), ("txt", 4096, 12)))
    assert ItemLocation.from_dict(loc.to_dict()) == loc
    assert loc.to_dict()["members"] == "png@1536+2048 txt@4096+12"
    row = ItemLocation(1, row_group=2, row=7)
    assert ItemLocation.from_dict(row.to_dict()) == row and row.to_dict()["members"] is None


def test_tar_items_read_at_their_location_equal_the_scan(tmp_path):
    for shard in range(3):
        make_tar(tmp_path / f"shard-{shard:03d}.tar", _samples(shard))
    with tarfile.open(tmp_path / "shard-003.tar.gz", "w:gz") as tar:  # offsets of a compressed tar: not recorded
        for key, parts in _samples(3):
            for ext, data in parts.items():
                add_member(tar, f"{key}.{ext}", data)
    src = open_source(str(tmp_path))
    items = list(src.iter_items())
    assert len(items) == 20
    located = {it.id: it.location for it in items if it.location is not None}
    # every sample of the plain tars with an image; none of the compressed one, none without an image
    assert len(located) == 12 and all(not i.startswith("s03") and "noimage" not in i for i in located)
    assert {loc.file for loc in located.values()} == {0, 1, 2}
    assert src.paths[3].endswith(".tar.gz")
    ids = [it.id for it in items]
    by_location = fetch_items(src, ids, locations=located)
    scanned = fetch_items(src, ids)
    assert {i: _view(it) for i, it in by_location.items()} == {i: _view(it) for i, it in scanned.items()}
    assert {i: _view(it) for i, it in by_location.items()} == {it.id: _view(it) for it in items}
    assert by_location["s01-1"].caption == "json caption s01-1" and by_location["s01-1"].label == "1"
    assert by_location["s02-2"].label == "2" and by_location["s02-2"].caption == "t"


def test_a_tar_item_read_at_its_location_touches_no_other_shard(tmp_path):
    for shard in range(12):
        make_tar(tmp_path / f"shard-{shard:03d}.tar", _samples(shard, 3))
    src = open_source(str(tmp_path / "shard-*.tar"))
    items = {it.id: it for it in src.iter_items()}
    wanted = "s11-1"
    for path in src.paths[1:-1]:  # the shards between the first and the last, which holds the wanted sample
        os.remove(path)
    make_tar(src.paths[0], [(wanted, {"png": _png(999)})])  # a decoy with the same key in the first shard
    got = fetch_items(src, [wanted], locations={wanted: items[wanted].location})[wanted]
    assert _view(got) == _view(items[wanted])
    # the scan reads the shards in order and stops at the first sample with the key: the decoy
    assert fetch_items(src, [wanted])[wanted].data == _png(999)


def test_a_replaced_or_shortened_tar_gives_what_lies_at_the_offsets_now(tmp_path):
    make_tar(tmp_path / "a.tar", _samples(0, 4))
    src = open_source(str(tmp_path / "a.tar"))
    items = {it.id: it for it in src.iter_items()}
    locations = {i: it.location for i, it in items.items() if it.location}
    make_tar(tmp_path / "a.tar", list(reversed(_samples(0, 4))))  # same samples, other order
    got = fetch_items(src, list(locations), locations=locations)
    assert any(got[i].data != items[i].data for i in locations)  # the bytes there now: corpus_items checks them
    make_tar(tmp_path / "a.tar", _samples(0, 4))
    os.truncate(tmp_path / "a.tar", locations["s00-2"].members[0][1] + 10)  # cut inside the member's data
    got = fetch_items(src, ["s00-2"], locations=locations)["s00-2"]
    assert got.data is None and "ends before the member" in got.skip_reason


def test_a_tar_member_over_the_cap_is_refused_at_its_location(tmp_path):
    make_tar(tmp_path / "a.tar", _samples(0, 2))
    src = open_source(str(tmp_path / "a.tar"))
    items = {it.id: it for it in src.iter_items()}
    small = InputLimits(max_member_bytes=20)
    got = fetch_items(src, ["s00-0"], small, locations={"s00-0": items["s00-0"].location})["s00-0"]
    assert got.data is None and "exceeds the limit of 20 bytes" in got.skip_reason
    assert got.skip_reason == fetch_items(src, ["s00-0"], small)["s00-0"].skip_reason


def _parquet(path, start: int, n: int, *, reverse: bool = False) -> None:
    keys = [f"k{i:04d}" for i in range(start, start + n)]
    images = [None if i % 7 == 3 else _png(i) for i in range(start, start + n)]
    table = pa.table({"key": keys, "jpg": pa.array(images, pa.binary()),
                      "caption": [f"c{i}" for i in range(start, start + n)],
                      "status": ["failed_to_download" if im is None else "success" for im in images],
                      "error_message": ["HTTP 404" if im is None else None for im in images]})
    if reverse:
        table = table.take(pa.array(list(range(n - 1, -1, -1))))
    pq.write_table(table, path, row_group_size=5)


def test_parquet_rows_read_at_their_location_equal_the_scan(tmp_path):
    for f in range(3):
        _parquet(tmp_path / f"part-{f}.parquet", 100 * f, 23)
    src = open_source(str(tmp_path))
    items = list(src.iter_items())
    assert len(items) == 69 and all(it.location is not None for it in items)
    assert {(it.location.row_group, it.location.row) for it in items} == {(g, r) for g in range(5) for r in range(5)
                                                                          if 5 * g + r < 23}
    located = {it.id: it.location for it in items}
    ids = [it.id for it in items]
    by_location = fetch_items(src, ids, locations=located)
    assert {i: _view(it) for i, it in by_location.items()} == {i: _view(it) for i, it in fetch_items(src, ids).items()}
    assert {i: _view(it) for i, it in by_location.items()} == {it.id: _view(it) for it in items}
    assert "failed_to_download" in by_location["k0003"].skip_reason

    # only the file recorded is opened
    for f in (0, 1):
        os.remove(tmp_path / f"part-{f}.parquet")
    got = fetch_items(src, ["k0211"], locations=located)["k0211"]
    assert got.data == _png(211) and got.caption == "c211"


def test_a_parquet_row_that_holds_another_id_now_is_looked_for_by_id(tmp_path):
    _parquet(tmp_path / "part.parquet", 0, 23)
    src = open_source(str(tmp_path / "part.parquet"))
    located = {it.id: it.location for it in src.iter_items()}
    _parquet(tmp_path / "part.parquet", 0, 23, reverse=True)  # rewritten: every row elsewhere
    got = fetch_items(src, ["k0001", "k0020", "gone"], locations={**located, "gone": located["k0002"]})
    assert got["k0001"].data == _png(1) and got["k0020"].data == _png(20)
    assert "no longer in source" in got["gone"].skip_reason


@pytest.mark.network
def test_items_of_remote_tars_and_parquet_are_read_at_their_location_by_range_requests(
        served):  # noqa: F811 - the fixture imported above
    root, url, _, _ = served
    for spec in ("shard-{000..001}.tar", "corpus.parquet"):
        src = open_source(f"{url}/{spec}")
        items = {it.id: it for it in src.iter_items()}
        assert all(it.location is not None for it in items.values())
        local = {it.id: it for it in open_source(str(root / spec)).iter_items()}
        assert {i: it.location for i, it in items.items()} == {i: it.location for i, it in local.items()}
        wanted = sorted(items)[1::3]
        got = fetch_items(src, wanted, locations={i: items[i].location for i in wanted})
        assert {i: _view(it) for i, it in got.items()} == {i: _view(local[i]) for i in wanted}
