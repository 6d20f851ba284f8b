"""Evaluation-set layouts read in place (overlap_audit.sources.layouts through sources.open_source), each on small
files made in its real on-disk layout: Hugging Face hub Parquet, a `datasets` save_to_disk folder,
CLIP_benchmark's WebDataset folder and torchvision's CIFAR python batches."""

from __future__ import annotations

import io
import json
import pickle
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from overlap_audit.cli import main
from overlap_audit.errors import ModelError, SourceError
from overlap_audit.sources import fetch_items, open_source
from overlap_audit.zeroshot.scoring import TemplateSet, class_names, load_templates

NAMES = ["airplane", "automobile", "bird"]


def _image(seed: int, size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _encoded(seed: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    _image(seed).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def _decode(item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(item.data)).convert("RGB"))


# ---------------------------------------------------------------- Hugging Face hub Parquet


def _hub_metadata(names: list[str]) -> dict[bytes, bytes]:
    """The schema metadata `datasets` writes (Dataset.to_parquet, the hub's Parquet files)."""
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _write_hub(path, seeds: list[int], labels: list[int], names: list[str] = NAMES) -> None:
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("label", pa.int64())], metadata=_hub_metadata(names))
    images = [{"bytes": _encoded(s), "path": f"{s}.png"} for s in seeds]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": images, "label": labels}, schema=schema), path)


@pytest.fixture
def hub_dir(tmp_path):
    """A hub dataset repository: the test split in two files, train in one."""
    root = tmp_path / "cifar10-hub"
    _write_hub(root / "data" / "test-00000-of-00002.parquet", [0, 1, 2], [0, 1, 2])
    _write_hub(root / "data" / "test-00001-of-00002.parquet", [3, 4], [2, -1])
    _write_hub(root / "data" / "train-00000-of-00001.parquet", [5, 6], [1, 0])
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    return root


def test_hub_parquet_rows_labels_and_classlabel_names(hub_dir):
    src = open_source(f"hf:{hub_dir}", name="c10")
    assert src.kind == "hf" and src.classnames == tuple(NAMES) and src.templates is None
    items = list(src.iter_items())
    # ids: the row's index in the split, counted over the split's files in order (datasets' ds[i])
    assert [i.id for i in items] == ["0", "1", "2", "3", "4"]
    assert [i.label for i in items] == ["0", "1", "2", "2", None]  # -1 is datasets' "no label"
    assert all(i.skip_reason is None for i in items)
    assert np.array_equal(_decode(items[3]), np.asarray(_image(3)))

    train = list(open_source(f"hf:{hub_dir}:train").iter_items())
    assert [(i.id, i.label) for i in train] == [("0", "1"), ("1", "0")]
    # the bare folder is recognised too, with the folder's name
    bare = open_source(str(hub_dir))
    assert bare.kind == "hf" and bare.name == "cifar10-hub" and len(list(bare.iter_items())) == 5
    one = open_source(str(hub_dir / "data" / "test-00001-of-00002.parquet"))
    assert one.kind == "hf" and one.name == "cifar10-hub" and [i.id for i in one.iter_items()] == ["0", "1"]
    assert fetch_items(src, ["3", "9"])["3"].label == "2"
    assert "no longer" in fetch_items(src, ["9"])["9"].skip_reason


def test_hub_errors_name_the_choices(hub_dir, tmp_path):
    with pytest.raises(SourceError, match="no split 'validation'.*test, train"):
        open_source(f"hf:{hub_dir}:validation")
    (hub_dir / "data" / "test-00000-of-00002.parquet").unlink()
    (hub_dir / "data" / "test-00001-of-00002.parquet").unlink()
    _write_hub(hub_dir / "data" / "validation-00000-of-00001.parquet", [1], [0])
    with pytest.raises(SourceError, match="no 'test': name one"):
        open_source(f"hf:{hub_dir}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no hub Parquet"):
        open_source(f"hf:{tmp_path / 'empty'}")


def test_hub_metadata_is_what_datasets_writes(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the `datasets` package (extra hf-datasets) is not installed")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": _encoded(0), "path": None}], "label": [1]},
                                    features=features)
    ds.to_parquet(str(tmp_path / "theirs.parquet"))
    _write_hub(tmp_path / "ours.parquet", [0], [1])
    theirs, ours = pq.read_schema(tmp_path / "theirs.parquet"), pq.read_schema(tmp_path / "ours.parquet")
    assert json.loads(theirs.metadata[b"huggingface"]) == json.loads(ours.metadata[b"huggingface"])
    assert theirs.field("image").type == ours.field("image").type
    theirs_source = open_source(str(tmp_path / "theirs.parquet"))
    assert theirs_source.kind == "hf" and theirs_source.name == "theirs.parquet"
    item, = theirs_source.iter_items()
    assert (item.id, item.label) == ("0", "1") and item.data == _encoded(0)


# ---------------------------------------------------------------- datasets' save_to_disk


def test_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the `datasets` package (extra hf-datasets) is not installed")
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=NAMES),
                                  "coarse_label": datasets.ClassLabel(names=["vehicle", "animal"])})

    def split(seeds, labels):
        return datasets.Dataset.from_dict({"img": [_image(s) for s in seeds], "fine_label": labels,
                                           "coarse_label": [0] * len(seeds)}, features=features)

    root = tmp_path / "saved"
    datasets.DatasetDict({"train": split([0, 1], [0, 1]), "test": split([2, 3, 4], [2, 0, 1])}).save_to_disk(root)
    src = open_source(f"hf:{root}", name="c100")
    assert src.kind == "hf-disk" and src.classnames == tuple(NAMES)  # fine_label is the label column
    items = list(src.iter_items())
    assert [(i.id, i.label) for i in items] == [("0", "2"), ("1", "0"), ("2", "1")]
    assert np.array_equal(_decode(items[0]), np.asarray(_image(2)))
    assert [i.label for i in open_source(f"hf:{root}:train").iter_items()] == ["0", "1"]
    assert open_source(str(root)).kind == "hf-disk"  # recognised by its dataset_dict.json
    one = tmp_path / "one"
    split([5], [2]).save_to_disk(one)
    assert [(i.id, i.label) for i in open_source(str(one)).iter_items()] == [("0", "2")]


def test_save_to_disk_without_datasets_names_the_extra(tmp_path, monkeypatch):
    root = tmp_path / "saved"
    root.mkdir()
    (root / "state.json").write_text("{}")
    (root / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(SourceError, match=r"overlap-audit\[hf-datasets\]"):
        open_source(f"hf:{root}")


# ---------------------------------------------------------------- CLIP_benchmark


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def clip_benchmark_dir(tmp_path):
    """CLIP_benchmark's `convert` output: classnames.txt, the templates with {c}, <split>/N.tar shards of
    sNNNNNNN.webp (or .jpg/.png) + .cls samples."""
    root = tmp_path / "wds_cifar10"
    (root / "test").mkdir(parents=True)
    (root / "train").mkdir()
    (root / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na blurry photo of a {c}.\n")
    samples = [(0, "webp", 0), (1, "png", 1), (2, "jpg", 2), (3, "webp", 1), (4, "png", 0), (5, "webp", 2)]
    for shard, chunk in enumerate((samples[:4], samples[4:])):
        with tarfile.open(root / "test" / f"{shard}.tar", "w") as tar:
            for n, ext, label in chunk:
                _add(tar, f"s{n:07d}.{ext}", _encoded(n, {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]))
                _add(tar, f"s{n:07d}.cls", str(label).encode())
    with tarfile.open(root / "train" / "0.tar", "w") as tar:
        _add(tar, "s0000000.png", _encoded(9))
        _add(tar, "s0000000.cls", b"2")
    (root / "test" / "nshards.txt").write_text("2")
    return root, samples


def test_clip_benchmark_folder(clip_benchmark_dir):
    root, samples = clip_benchmark_dir
    for spec in (str(root), f"clip_benchmark:{root}", f"clip_benchmark:{root}:test"):
        src = open_source(spec)
        assert src.kind == "wds" and src.name == "wds_cifar10"
        assert src.classnames == tuple(NAMES)
        assert src.templates == ("a photo of a {c}.", "a blurry photo of a {c}.")
        items = list(src.iter_items())
        assert [(i.id, i.label) for i in items] == [(f"s{n:07d}", str(lab)) for n, _, lab in samples]
    assert np.array_equal(_decode(items[3]), np.asarray(_image(3)))  # lossless webp
    train = open_source(f"clip_benchmark:{root}:train")
    assert [(i.id, i.label) for i in train.iter_items()] == [("s0000000", "2")]
    with pytest.raises(SourceError, match="no split 'val'"):
        open_source(f"clip_benchmark:{root}:val")
    # its templates read as {} templates
    assert TemplateSet.of(src.templates, "t").templates == ("a photo of a {}.", "a blurry photo of a {}.")


# ---------------------------------------------------------------- CIFAR python batches


def _cifar_rows(seeds: list[int]) -> np.ndarray:
    """Images as CIFAR rows: 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major."""
    return np.stack([np.asarray(_image(s)).transpose(2, 0, 1).reshape(-1) for s in seeds]).astype(np.uint8)


def _pickle(path, obj: dict) -> None:
    """Protocol 2 with bytes keys, as Python 2's cPickle wrote the real files, which name numpy 1's
    ``numpy.core.multiarray._reconstruct`` for their arrays."""
    data = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path.write_bytes(data)


@pytest.fixture
def cifar10_dir(tmp_path):
    return write_cifar10(tmp_path)


def write_cifar10(parent):
    """CIFAR-10's python batches (three test images, one per training batch) in ``parent``/cifar-10-batches-py."""
    root = parent / "cifar-10-batches-py"
    root.mkdir()
    _pickle(root / "batches.meta", {b"num_cases_per_batch": 3, b"num_vis": 3072,
                                    b"label_names": [n.encode() for n in NAMES]})
    _pickle(root / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": [2, 0, 1],
                                  b"data": _cifar_rows([0, 1, 2]),
                                  b"filenames": [b"a.png", b"b.png", b"c.png"]})
    for b in range(1, 6):
        _pickle(root / f"data_batch_{b}", {b"batch_label": f"training batch {b} of 5".encode(), b"labels": [b % 3],
                                           b"data": _cifar_rows([10 + b]), b"filenames": [b"t.png"]})
    return root


def test_cifar10_batches(cifar10_dir):
    for spec in (str(cifar10_dir), f"cifar:{cifar10_dir}", f"cifar:{cifar10_dir}:test"):
        src = open_source(spec)
        assert src.kind == "cifar" and src.classnames == tuple(NAMES) and src.name == "cifar-10-batches-py"
        items = list(src.iter_items())
        assert [(i.id, i.label) for i in items] == [("test_batch:0", "2"), ("test_batch:1", "0"),
                                                    ("test_batch:2", "1")]
    for i, item in enumerate(items):
        assert np.array_equal(_decode(item), np.asarray(_image(i)))  # the RGB planes, exactly
    train = list(open_source(f"cifar:{cifar10_dir}:train").iter_items())
    assert [i.id for i in train] == [f"data_batch_{b}:0" for b in range(1, 6)]
    assert fetch_items(src, ["test_batch:1"])["test_batch:1"].label == "0"


def test_cifar100_fine_labels(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    fine = ["apple", "aquarium_fish", "baby"]
    _pickle(root / "meta", {b"fine_label_names": [n.encode() for n in fine],
                            b"coarse_label_names": [b"fruit", b"fish"]})
    _pickle(root / "test", {b"filenames": [b"x.png", b"y.png"], b"batch_label": b"testing batch 1 of 1",
                            b"fine_labels": [1, 2], b"coarse_labels": [1, 0], b"data": _cifar_rows([3, 4])})
    src = open_source(str(root))
    assert src.classnames == tuple(fine)
    assert [(i.id, i.label) for i in src.iter_items()] == [("test:0", "1"), ("test:1", "2")]


def test_cifar_batch_cannot_run_code(cifar10_dir):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(cifar10_dir / "test_batch", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(SourceError, match="not part of a CIFAR batch"):
        list(open_source(str(cifar10_dir)).iter_items())


# ---------------------------------------------------------------- templates and class names


def test_templates_with_c_and_bare_integer_labels(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a photo of a {c}.\n{} art\n")
    assert load_templates(path) == ["a photo of a {}.", "{} art"]
    path.write_text("a {c} and a {}\n")
    with pytest.raises(ModelError, match="exactly one"):
        load_templates(path)
    with pytest.raises(ModelError, match=r"bare integers \(0, 1, 10\).*give classnames"):
        class_names(["10", "1", "0"])
    assert class_names(["1", "0"], {"0": "cat", "1": "dog"}) == (["0", "1"], ["cat", "dog"])


def test_other_sources_are_unchanged(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "cat").mkdir(parents=True)
    _image(0).save(folder / "cat" / "a.png")
    src = open_source(str(folder), labels_from_folders=True)
    assert src.kind == "folder" and src.classnames is None and src.templates is None
    (tmp_path / "classnames.txt").write_text("x\n")  # a file of that name alone is no CLIP_benchmark folder
    assert open_source(str(tmp_path)).kind == "folder"


# ---------------------------------------------------------------- end to end


def test_report_on_a_clip_benchmark_folder_uses_its_names_and_templates(tmp_path, corpus_dir,
                                                                        clip_benchmark_dir):
    root, samples = clip_benchmark_dir
    index = tmp_path / "index"
    r = CliRunner().invoke(main, ["index", str(corpus_dir), "--out", str(index), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["report", str(index), "--eval", f"c10=clip_benchmark:{root}", "--model",
                                  "overlap-audit:openclipart-small", "--out", str(out), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    rows = pq.read_table(out / "predictions.parquet").to_pylist()
    assert [(row["id"], row["label"]) for row in rows] == [(f"s{n:07d}", str(lab)) for n, _, lab in samples]
    assert all(set(row["top5"]) == {"0", "1", "2"} for row in rows)  # every class of classnames.txt
    model = json.loads((out / "report.json").read_text())["model"]
    assert model["templates"]["c10"]["templates"] == ["a photo of a {}.", "a blurry photo of a {}."]
    assert "own templates" in model["templates"]["c10"]["source"]
    assert "own class names" in model["classnames"]["c10"]


def test_a_hub_row_naming_a_file_outside_the_dataset_is_not_read(tmp_path):
    """A row with no bytes and an absolute image path is read only inside the dataset's folder (or the
    Hugging Face cache): a shared file must not have another file read into a report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    outside = tmp_path / "private" / "secret.png"
    outside.parent.mkdir()
    _image(7).save(outside)
    root = tmp_path / "ds"
    inside = root / "images" / "ok.png"
    inside.parent.mkdir(parents=True)
    _image(8).save(inside)
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("label", pa.int64())])
    rows = {"image": [{"bytes": None, "path": str(outside)}, {"bytes": None, "path": str(inside)}], "label": [0, 1]}
    (root / "data").mkdir()
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    pq.write_table(pa.table(rows, schema=schema), root / "data" / "test-00000-of-00001.parquet")
    items = list(open_source(f"hf:{root}").iter_items())
    assert items[0].path is None and items[0].data is None and "outside the dataset" in items[0].skip_reason
    assert items[1].path == str(inside) and items[1].skip_reason is None
