"""Evaluation sets laid out by their own libraries' conventions: the hub's config folders and auto-converted
Parquet as `datasets` resolves them, torchvision's CIFAR root, a `datasets.Dataset` and a torchvision-style
dataset given to the Python API."""

from __future__ import annotations

import pytest

from overlap_audit.errors import SourceError
from overlap_audit.sources import open_source
from overlap_audit.sources.memory import memory_source

from .test_formats import NAMES, _image, _write_hub, write_cifar10


@pytest.mark.parametrize("layout", ["plain_text/test-00000-of-00001.parquet", "default/test/0000.parquet"])
def test_hub_config_folders_and_auto_converted_parquet(tmp_path, layout):
    root = tmp_path / "cifar10"
    _write_hub(root / layout, [0, 1, 2], [0, 1, 2])
    _write_hub(root / layout.replace("test", "train"), [3, 4], [1, 0])
    for spec in (str(root), f"hf:{root}", f"hf:{root}:test"):
        src = open_source(spec)
        assert src.kind == "hf" and src.classnames == tuple(NAMES)
        assert [i.label for i in src.iter_items()] == ["0", "1", "2"]
    assert len(list(open_source(f"hf:{root}:train").iter_items())) == 2


def test_several_hub_configs_are_named(tmp_path):
    root = tmp_path / "hub"
    _write_hub(root / "plain_text" / "test-00000-of-00001.parquet", [0], [0])
    _write_hub(root / "other" / "test-00000-of-00001.parquet", [1], [1])
    with pytest.raises(SourceError, match=r"configurations other, plain_text: name one, e\.g\. hf:"):
        open_source(f"hf:{root}")
    assert len(list(open_source(f"hf:{root / 'plain_text'}").iter_items())) == 1


def test_cifar_at_torchvisions_root(tmp_path):
    cifar10_dir = write_cifar10(tmp_path)
    root = cifar10_dir.parent  # torchvision's CIFAR10(root=...): the folder holding cifar-10-batches-py
    (root / "cifar-10-python.tar.gz").write_bytes(b"")
    for spec in (str(root), f"cifar:{root}"):
        src = open_source(spec)
        assert src.kind == "cifar" and src.classnames == tuple(NAMES) and len(list(src.iter_items())) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="or torchvision's root"):
        open_source(f"cifar:{tmp_path / 'empty'}")


def test_a_datasets_dataset_is_an_evaluation_set():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"img": [_image(i) for i in range(3)], "label": [2, 0, 1]},
                                    features=datasets.Features({"img": datasets.Image(),
                                                                "label": datasets.ClassLabel(names=NAMES)}))
    src = memory_source(ds, "cifar")
    assert [(i.id, i.label) for i in src.iter_items()] == [("0", "2"), ("1", "0"), ("2", "1")]
    assert src.classnames == tuple(NAMES)


def test_a_torchvision_style_dataset_is_an_evaluation_set():
    class Folder:  # what torchvision's datasets are: (image, target) by index, with .classes
        classes = NAMES

        def __len__(self):
            return 2

        def __getitem__(self, i):
            if i >= 2:
                raise IndexError(i)
            return _image(i), i

    src = memory_source(Folder(), "tv")
    assert [(i.id, i.label) for i in src.iter_items()] == [("0", "0"), ("1", "1")]
    assert src.classnames == tuple(NAMES)
    with pytest.raises(SourceError, match=r"a row dict \(a datasets.Dataset\)"):
        memory_source([[1, 2, 3, 4]], "bad")
