import numpy as np
import pytest

from overlap_audit.errors import ModelError
from overlap_audit.zeroshot.scoring import (ZeroShotClassifier, ZeroShotModel, build_classifier, classify,
                                   default_templates, load_templates)


class TableModel:
    """A text tower given as a lookup table, so the ensemble can be checked by hand."""

    spec = "table"

    def __init__(self, table):
        self.table = table
        self.calls = []

    def preprocess(self, images):
        return np.zeros((len(images), 3, 4, 4), np.float32)

    def encode_images(self, pixels):
        return np.ones((len(pixels), 2), np.float32) / np.sqrt(2)

    def encode_texts(self, texts):
        self.calls.append(list(texts))
        rows = np.array([self.table[t] for t in texts], np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_default_templates_are_the_papers_80():
    t = default_templates()
    assert len(t) == 80 and len(set(t)) == 80
    assert t[0] == "a bad photo of a {}." and "itap of my {}." in t
    assert all(x.count("{}") == 1 for x in t)


def test_prompt_ensemble_matches_hand_computation():
    table = {"a cat.": [3, 4], "art of cat": [1, 0], "a dog.": [0, 2], "art of dog": [0, 5]}
    model = TableModel(table)
    assert isinstance(model, ZeroShotModel)
    clf = build_classifier(model, ["0", "1"], ["cat", "dog"], ["a {}.", "art of {}"])
    # cat: mean of (0.6, 0.8) and (1, 0) = (0.8, 0.4), normalised
    expect_cat = np.array([0.8, 0.4]) / np.linalg.norm([0.8, 0.4])
    np.testing.assert_allclose(clf.weights[0], expect_cat, rtol=1e-6)
    np.testing.assert_allclose(clf.weights[1], [0, 1], atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(clf.weights, axis=1), 1, rtol=1e-6)
    assert clf.labels == ("0", "1") and clf.classnames == ("cat", "dog")
    assert model.calls == [["a cat.", "art of cat", "a dog.", "art of dog"]]


def test_classify_top_k_order_and_ties():
    clf = ZeroShotClassifier(labels=("a", "b", "c"), classnames=("a", "b", "c"), templates=("{}",),
                             weights=np.array([[1, 0], [0, 1], [1, 0]], np.float32))
    idx, scores = classify(clf, np.array([[0.0, 2.0], [3.0, 0.1]]), top=2)
    assert idx[0].tolist() == [1, 0]                 # (0, 1) is class b; a and c tie, a (lower index) first
    assert idx[1].tolist() == [0, 2]
    np.testing.assert_allclose(scores[0], [1.0, 0.0], atol=1e-6)
    assert idx.shape == (2, 2)


def test_template_files(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("# comment\n\na photo of a {}.\n{} in the wild\n", encoding="utf-8")
    assert load_templates(good) == ["a photo of a {}.", "{} in the wild"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a thing\n", encoding="utf-8")
    with pytest.raises(ModelError, match="line 1"):
        load_templates(bad)
    with pytest.raises(ModelError, match="cannot read"):
        load_templates(tmp_path / "missing.txt")


def test_classifier_rejects_bad_input():
    model = TableModel({"x": [0, 0]})
    with pytest.raises(ModelError, match="zero or non-finite"):
        build_classifier(model, ["x"], templates=["{}"])
    with pytest.raises(ModelError, match="distinct"):
        build_classifier(model, ["x", "x"], templates=["{}"])


def test_classnames_files(tmp_path):
    from overlap_audit.zeroshot.scoring import class_names, load_classnames, readable_name

    js = tmp_path / "n.json"
    js.write_text('{"n01": "tench", "n02": "goldfish"}')
    assert load_classnames(js) == {"n01": "tench", "n02": "goldfish"}
    csv = tmp_path / "n.csv"
    csv.write_text('label,name\nn01,tench\nn02,"great white, shark"\n')
    assert load_classnames(csv) == {"n01": "tench", "n02": "great white, shark"}
    tsv = tmp_path / "n.tsv"
    tsv.write_text("n01\ttench fish\n")
    assert load_classnames(tsv) == {"n01": "tench fish"}
    bad = tmp_path / "bad.csv"
    bad.write_text("n01,tench\nn01,again\n")
    with pytest.raises(ModelError, match="line 2: label 'n01' appears twice"):
        load_classnames(bad)
    (tmp_path / "list.json").write_text('["tench"]')
    with pytest.raises(ModelError, match="must hold"):
        load_classnames(tmp_path / "list.json")
    assert readable_name("hot_dog-stand") == "hot dog stand"
    # the file's labels first (all are classes), then the source's other labels, sorted
    assert class_names(["z_z", "n02", "a-b"], {"n02": "goldfish", "n09": "x"}) == (
        ["n02", "n09", "a-b", "z_z"], ["goldfish", "x", "a b", "z z"])


def test_assign_files_per_dataset():
    from overlap_audit.zeroshot.scoring import assign_files

    assert assign_files([], ["a", "b"], "--templates") == {}
    assert assign_files(["t.txt"], ["a", "b"], "--templates") == {"a": "t.txt", "b": "t.txt"}
    assert assign_files(["t.txt", "b=u.txt"], ["a", "b"], "--templates") == {"a": "t.txt", "b": "u.txt"}
    assert assign_files(["c=x.txt"], ["a", "b"], "--templates") == {"a": "c=x.txt", "b": "c=x.txt"}  # a file name
    with pytest.raises(ModelError, match="two files for dataset 'a'"):
        assign_files(["a=1", "a=2"], ["a"], "--templates")
    with pytest.raises(ModelError, match="two files for every dataset"):
        assign_files(["1", "2"], ["a"], "--classnames")


def test_classnames_and_templates_files_from_spreadsheets(tmp_path):
    from overlap_audit.zeroshot.scoring import load_classnames

    bom = tmp_path / "names.csv"
    bom.write_bytes("\ufefflabel,name\r\n0,zero\r\ncafé,coffee shop\r\n".encode("utf-8"))
    assert load_classnames(bom) == {"0": "zero", "café": "coffee shop"}  # the BOM is not a class
    brace = tmp_path / "brace.csv"
    brace.write_text("{x},braces\ncat,kitty\n", encoding="utf-8")
    assert load_classnames(brace) == {"{x}": "braces", "cat": "kitty"}  # a CSV, though it starts with {
    as_json = tmp_path / "names.txt"
    as_json.write_text('{"0": "zero"}', encoding="utf-8")
    assert load_classnames(as_json) == {"0": "zero"}
    tpl = tmp_path / "t.txt"
    tpl.write_bytes("\ufeffa photo of {}.\n".encode("utf-8"))
    assert load_templates(tpl) == ["a photo of {}."]


def test_classnames_that_name_no_label_are_refused():
    from overlap_audit.zeroshot.scoring import class_names

    assert class_names(["cat", "dog"], {"cat": "a cat", "bird": "a bird"}) == (
        ["cat", "bird", "dog"], ["a cat", "a bird", "dog"])
    with pytest.raises(ModelError, match="names none of the evaluation set's labels"):
        class_names(["cat", "dog"], {"0": "a cat", "1": "a dog"})
