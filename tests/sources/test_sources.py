import io
import os
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from overlap_audit.errors import DuplicateIdError, SourceError
from overlap_audit.sources import open_source, parse_eval_spec

from ..helpers import jpeg_bytes, png_bytes, write_folder


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tar(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                add_member(tar, f"{key}.{ext}", data)


def test_folder_recursive_labels_captions_and_non_images(tmp_path, photos):
    root = write_folder(tmp_path / "ev", {
        "cat/a.png": photos["chelsea"].resize((32, 32)),
        "cat/deep/b.jpg": photos["chelsea"].resize((32, 32)),
        "rocket/c.png": photos["rocket"].resize((32, 32)),
        "loose.png": photos["coffee"].resize((32, 32)),
        "rocket/c.txt": b"a rocket on its pad",
        "rocket/readme.pdf": b"%PDF-1.4",
    })
    items = list(open_source(str(root), labels_from_folders=True).iter_items())
    by_id = {it.id: it for it in items}
    assert set(by_id) == {"cat/a.png", "cat/deep/b.jpg", "rocket/c.png", "loose.png", "rocket/readme.pdf"}
    assert by_id["cat/deep/b.jpg"].label == "cat"
    assert by_id["loose.png"].label is None
    assert by_id["rocket/c.png"].caption == "a rocket on its pad"
    assert by_id["rocket/readme.pdf"].skip_reason.startswith("not an image file")
    assert [it.id for it in items] == sorted(by_id)  # deterministic order


def test_folder_without_labels_for_a_corpus(tmp_path, photos):
    root = write_folder(tmp_path / "c", {"x/a.png": photos["coffee"].resize((16, 16))})
    (item,) = open_source(str(root)).iter_items()
    assert item.label is None and item.id == "x/a.png"


def img2dataset_table(photos, **overrides):
    cols = {
        "key": ["000000000", "000000001", "000000002"],
        "jpg": [jpeg_bytes(photos["coffee"].resize((32, 32))), jpeg_bytes(photos["rocket"].resize((32, 32))), None],
        "caption": ["a cup of coffee", "a rocket", None],
        "status": ["success", "success", "failed_to_download"],
        "error_message": [None, None, "HTTP 404"],
    }
    cols.update(overrides)
    return pa.table(cols)


def test_parquet_img2dataset_layout(tmp_path, photos):
    pq.write_table(img2dataset_table(photos), tmp_path / "00000.parquet")
    src = open_source(str(tmp_path))
    assert src.kind == "parquet"
    items = list(src.iter_items())
    assert [it.id for it in items] == ["000000000", "000000001", "000000002"]
    assert items[0].caption == "a cup of coffee" and items[0].data[:2] == b"\xff\xd8"
    assert items[2].data is None and "failed_to_download" in items[2].skip_reason and "HTTP 404" in items[2].skip_reason


def test_parquet_id_image_txt_label_and_hf_struct(tmp_path, photos):
    image = pa.array([{"bytes": png_bytes(photos["coffee"].resize((8, 8))), "path": None}],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"id": [7], "image": image, "txt": ["hi"], "label": [3]}), tmp_path / "x.parquet")
    (item,) = open_source(str(tmp_path / "x.parquet")).iter_items()
    assert item.id == "7" and item.caption == "hi" and item.label == "3" and item.data[:4] == b"\x89PNG"


def test_parquet_errors_name_the_problem(tmp_path, photos):
    pq.write_table(pa.table({"key": ["a"], "url": ["http://x"]}), tmp_path / "noimg.parquet")
    with pytest.raises(SourceError, match="no image column"):
        list(open_source(str(tmp_path / "noimg.parquet")).iter_items())
    pq.write_table(pa.table({"name": ["a"], "jpg": [b"x"]}), tmp_path / "noid.parquet")
    with pytest.raises(SourceError, match="no id column"):
        list(open_source(str(tmp_path / "noid.parquet")).iter_items())


def test_parquet_duplicate_ids_are_named_before_streaming(tmp_path, photos):
    d = tmp_path / "dups"
    d.mkdir()
    pq.write_table(img2dataset_table(photos), d / "00000.parquet")
    pq.write_table(img2dataset_table(photos, key=["000000002", "x", "000000000"]), d / "00001.parquet")
    with pytest.raises(DuplicateIdError) as err:
        next(iter(open_source(str(d)).iter_items()))
    assert err.value.ids == ["000000000", "000000002"]
    assert "000000000" in str(err.value) and "dups" in str(err.value)


def test_webdataset_stream(tmp_path, photos):
    samples = [
        ("s/000", {"jpg": jpeg_bytes(photos["coffee"].resize((16, 16))), "txt": b"coffee", "cls": b"4"}),
        ("s/001", {"png": png_bytes(photos["rocket"].resize((16, 16))),
                   "json": json.dumps({"caption": "rocket", "label": 2}).encode()}),
        ("s/002", {"txt": b"caption without image"}),
    ]
    make_tar(tmp_path / "shard-000.tar", samples[:2])
    make_tar(tmp_path / "shard-001.tar", samples[2:])
    src = open_source(str(tmp_path / "shard-{000..001}.tar"))
    assert src.kind == "wds" and len(src.paths) == 2
    items = list(src.iter_items())
    assert [it.id for it in items] == ["s/000", "s/001", "s/002"]
    assert items[0].caption == "coffee" and items[0].label == "4" and items[0].data[:2] == b"\xff\xd8"
    assert items[1].caption == "rocket" and items[1].label == "2"
    assert items[2].data is None and "no image" in items[2].skip_reason


def test_webdataset_truncated_shard_is_recorded(tmp_path, photos):
    samples = [(f"k{i}", {"png": png_bytes(photos["coffee"].resize((64, 64)))}) for i in range(4)]
    make_tar(tmp_path / "full.tar", samples)
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: int(len(data) * 0.6)])
    items = list(open_source(str(tmp_path / "cut.tar")).iter_items())
    usable = [it for it in items if it.skip_reason is None]
    recorded = [it for it in items if it.skip_reason is not None]
    assert 1 <= len(usable) < 4
    assert recorded and any("truncated" in it.skip_reason or "ends inside" in it.skip_reason for it in recorded)


def test_webdataset_duplicate_key_is_an_error(tmp_path, photos):
    data = png_bytes(photos["coffee"].resize((8, 8)))
    make_tar(tmp_path / "d.tar", [("a", {"png": data}), ("b", {"png": data}), ("a", {"jpg": data})])
    with pytest.raises(DuplicateIdError, match="'a'"):
        list(open_source(str(tmp_path / "d.tar")).iter_items())


def test_kind_inference_and_prefixes(tmp_path, photos):
    make_tar(tmp_path / "a.tar", [("x", {"png": png_bytes(photos["coffee"].resize((8, 8)))})])
    pq.write_table(img2dataset_table(photos), tmp_path / "meta.parquet")
    assert open_source(str(tmp_path)).kind == "wds"  # img2dataset webdataset output: tars + metadata parquet
    assert open_source(f"parquet:{tmp_path}").kind == "parquet"
    assert open_source(f"folder:{tmp_path}").kind == "folder"
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(SourceError, match="do not exist"):
        open_source(str(tmp_path / "s-{0..3}.tar"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(SourceError, match="neither"):
        open_source(str(tmp_path / "x.csv"))


def test_parse_eval_spec():
    assert parse_eval_spec("cifar=/data/x=y") == ("cifar", "/data/x=y")
    with pytest.raises(SourceError, match="NAME=SOURCE"):
        parse_eval_spec("/data/x")


def test_hidden_and_linked_folders_are_read_once(tmp_path, photos):
    root = write_folder(tmp_path / "ds", {"real/a.png": photos["coffee"].resize((8, 8)),
                                          ".hidden/b.png": photos["coffee"].resize((8, 8)),
                                          ".DS_Store": b"\0\0\0\1Bud1"})
    outside = write_folder(tmp_path / "outside", {"c.png": photos["rocket"].resize((8, 8))})
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)  # a cycle must not hang or repeat
    items = {it.id: it for it in open_source(str(root)).iter_items()}
    assert {"real/a.png", ".hidden/b.png", "linked/c.png"} <= set(items)
    assert items[".DS_Store"].skip_reason.startswith("not an image file")  # listed, not silently dropped
    assert not any(i.startswith("real/loop/real") for i in items)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_directory_is_recorded(tmp_path, photos):
    root = write_folder(tmp_path / "ds", {"ok/a.png": photos["coffee"].resize((8, 8)),
                                          "locked/b.png": photos["coffee"].resize((8, 8))})
    os.chmod(root / "locked", 0)
    try:
        items = {it.id: it for it in open_source(str(root)).iter_items()}
    finally:
        os.chmod(root / "locked", 0o755)
    assert "unreadable directory" in items["locked/"].skip_reason


def test_undecodable_file_names_get_printable_ids(tmp_path, photos):
    root = tmp_path / "odd"
    root.mkdir()
    name = os.fsdecode(b"x\xff.png")
    photos["coffee"].resize((8, 8)).save(root / name)
    (item,) = open_source(str(root)).iter_items()
    assert item.id == "x\\xff.png" and item.id.encode("utf-8")
    assert os.path.exists(item.path)


def test_path_with_glob_characters_is_read_literally(tmp_path, photos):
    write_folder(tmp_path / "set[1]", {"a.png": photos["coffee"].resize((8, 8))})
    write_folder(tmp_path / "set1", {"other.png": photos["coffee"].resize((8, 8))})
    (item,) = open_source(str(tmp_path / "set[1]")).iter_items()
    assert item.id == "a.png"


def test_tar_links_and_truncation_at_a_header_are_recorded(tmp_path, photos):
    data = png_bytes(photos["coffee"].resize((8, 8)))
    path = tmp_path / "l.tar"
    with tarfile.open(path, "w") as tar:
        add_member(tar, "a.png", data)
        link = tarfile.TarInfo("b.png")
        link.type, link.linkname = tarfile.SYMTYPE, "a.png"
        tar.addfile(link)
        add_member(tar, "c.png", data)
    items = list(open_source(str(path)).iter_items())
    assert [it.id for it in items if it.skip_reason is None] == ["a", "c"]
    assert any("b.png" in it.id and "link" in it.skip_reason for it in items)
    # cut inside the third member's header: tarfile alone would stop without a word
    whole = path.read_bytes()
    third_header = whole.index(b"c.png")
    (tmp_path / "cut.tar").write_bytes(whole[: third_header + 100])
    items = list(open_source(str(tmp_path / "cut.tar")).iter_items())
    assert [it.id for it in items if it.skip_reason is None] == ["a"]
    assert any("truncated" in (it.skip_reason or "") or "unreadable tar header" in (it.skip_reason or "")
               for it in items)


def test_non_string_parquet_metadata_is_text(tmp_path, photos):
    pq.write_table(img2dataset_table(photos, caption=[5, 6, None], error_message=[None, None, 404]),
                   tmp_path / "x.parquet")
    items = list(open_source(str(tmp_path / "x.parquet")).iter_items())
    assert items[0].caption == "5" and "404" in items[2].skip_reason


def test_local_source_paths_are_recorded_absolute(tmp_path, monkeypatch, photos):
    from overlap_audit.sources import open_source

    write_folder(tmp_path / "imgs", {"a.png": next(iter(photos.values())).resize((32, 32))})
    monkeypatch.chdir(tmp_path)
    src = open_source("imgs")
    assert src.paths == (str(tmp_path / "imgs"),) and src.spec == "imgs"


def test_items_with_undecodable_file_names_are_read_back_by_id(tmp_path, photos):
    from overlap_audit.sources import fetch_items, open_source

    cls = tmp_path / "ev" / "c"
    cls.mkdir(parents=True)
    name = os.fsdecode(b"a\xff.png")
    next(iter(photos.values())).resize((32, 32)).save(cls / name)
    src = open_source(str(tmp_path / "ev"), labels_from_folders=True)
    ids = [item.id for item in src.iter_items()]
    assert ids == ["c/a\\xff.png"]
    found = fetch_items(src, ids)
    assert found[ids[0]].path == str(cls / name) and found[ids[0]].label == "c"


def test_count_is_known_where_it_is_cheap(tmp_path, photos):
    """Source.count(), the progress bars' total: a folder's listing, Parquet footers, img2dataset stats."""
    root = write_folder(tmp_path / "ev", {
        "cat/a.png": photos["chelsea"].resize((16, 16)),
        "cat/a.txt": b"a caption, read with its image",
        "rocket/c.png": photos["rocket"].resize((16, 16)),
        "rocket/readme.pdf": b"%PDF-1.4",
    })
    src = open_source(str(root))
    assert src.count() == len(list(src.iter_items())) == 3
    (tmp_path / "pq").mkdir()
    pq.write_table(img2dataset_table(photos), tmp_path / "pq" / "00000.parquet")
    pq.write_table(img2dataset_table(photos), tmp_path / "pq" / "00001.parquet")
    assert open_source(str(tmp_path / "pq")).count() == 6
    wds = tmp_path / "wds"
    wds.mkdir()
    make_tar(wds / "00000.tar", [("a", {"jpg": jpeg_bytes(photos["coffee"].resize((16, 16)))}),
                                 ("b", {"jpg": jpeg_bytes(photos["rocket"].resize((16, 16)))})])
    make_tar(wds / "00001.tar", [("c", {"jpg": jpeg_bytes(photos["coffee"].resize((16, 16)))})])
    src = open_source(str(wds))
    assert src.count() is None  # no stats files: unknown without reading the shards
    (wds / "00000_stats.json").write_text(json.dumps({"count": 3, "successes": 2, "failed_to_download": 1}))
    assert src.count() is None  # one shard still without its stats
    (wds / "00001_stats.json").write_text(json.dumps({"count": 1, "successes": 1}))
    assert src.count() == len(list(src.iter_items())) == 3
