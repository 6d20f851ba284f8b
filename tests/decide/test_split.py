import json

import numpy as np
import pytest

from overlap_audit.errors import ThresholdError
from overlap_audit.decide.points import load_points
from overlap_audit.decide.split import resolve_thresholds, split, threshold_origins
from overlap_audit.values import Embeddings, Neighbors


def test_threshold_precedence():
    assert resolve_thresholds(["a", "b"], 0.8) == {"a": 0.8, "b": 0.8}
    assert resolve_thresholds(["a", "b"], 0.8, threshold=0.9) == {"a": 0.9, "b": 0.9}
    assert resolve_thresholds(["a", "b"], 0.8, threshold=0.9, per_dataset={"b": 0.95}) == {"a": 0.9, "b": 0.95}
    with pytest.raises(ThresholdError, match="not evaluated: c"):
        resolve_thresholds(["a"], 0.8, per_dataset={"c": 0.9})


def test_threshold_origins_follow_the_precedence():
    assert threshold_origins(["a", "b"], per_dataset={"b": 0.95}) == {"a": "default", "b": "file"}
    assert threshold_origins(["a", "b"], threshold=0.9, per_dataset={"b": 0.95}) == {"a": "threshold", "b": "file"}
    with pytest.raises(ThresholdError, match="not named: a"):
        resolve_thresholds(["a", "b"], None, per_dataset={"b": 0.95})


@pytest.mark.parametrize("content,match", [
    ("[1, 2]", "one object"),
    ('{"a": "high"}', "must be a number in \\[0, 1\\]"),
    ('{"a": true}', "must be a number in \\[0, 1\\]"),
    ("{", "not valid JSON"),
])
def test_bad_thresholds_files(tmp_path, content, match):
    p = tmp_path / "t.json"
    p.write_text(content)
    with pytest.raises(ThresholdError, match=match):
        load_points(p).thresholds


def test_thresholds_file(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"cifar": 0.9, "imagenet": 1}))
    assert load_points(p).thresholds == {"cifar": 0.9, "imagenet": 1.0}


def test_split_at_threshold_inclusive_and_low_information_never_overlaps():
    ids = ["a", "b", "c", "d", "e"]
    sims = np.array([[0.95], [0.9], [0.89], [0.99], [np.nan]], np.float32)
    nb = Neighbors(ids, np.array([["x"], ["y"], ["z"], ["w"], [None]], dtype=object), sims)
    emb = Embeddings(ids, np.zeros((5, 8), np.uint8), np.array([False, False, False, True, False]),
                     labels=["1"] * 5)
    sp = split("set", emb, nb, 0.9)
    assert sp.overlap.tolist() == [True, True, False, False, False]
    assert sp.low_information.tolist() == [False, False, False, True, False]
