"""Inputs checked before anything is embedded (``score.prepare_scoring``): every evaluation set opened, the
predictions checked against the sets (datasets, ids) and a ``label`` column against the sets' own labels."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from overlap_audit.api import ReportSettings, run_report
from overlap_audit.settings import MatchSettings
from overlap_audit.errors import PredictionsError, SourceError
from overlap_audit.predictions import LABEL_MISMATCH_LIMIT
from overlap_audit.score import prepare_scoring

MATCH = MatchSettings(workers=0, device="cpu")


def _table(rows: list[tuple[str, str, str, str]]) -> pa.Table:
    """(dataset, id, label, prediction) rows as a predictions Table."""
    return pa.table({c: [r[i] for r in rows] for i, c in enumerate(("dataset", "id", "label", "prediction"))})


def _rows(eval_set, dataset: str = "val", label=lambda rel: rel.split("/")[0]) -> list:
    root, planted, clean = eval_set
    return [(dataset, rel, label(rel), label(rel) if i % 3 else "seen") for i, rel in enumerate(planted + clean)]


def test_shuffled_labels_are_refused_naming_examples(eval_set):
    root, _, _ = eval_set
    rows = _rows(eval_set)
    labels = [r[2] for r in rows]
    random.Random(0).shuffle(labels)  # the ids no longer describe the images the labels were given for
    shuffled = [(d, i, lab, p) for (d, i, _, p), lab in zip(rows, labels)]
    with pytest.raises(PredictionsError, match=r"disagrees with the labels of 'val' in \d+ of the 50 rows.*e\.g\. '"):
        prepare_scoring(_table(shuffled), None, [("val", str(root))])
    prepare_scoring(_table(rows), None, [("val", str(root))])  # aligned: accepted


def test_labels_written_as_class_indices_or_with_a_few_errors_are_accepted(eval_set):
    root, _, _ = eval_set
    # torchvision's ImageFolder numbers the sorted folder names: new = 0, seen = 1
    as_index = _rows(eval_set, label=lambda rel: {"new": "0", "seen": "1"}[rel.split("/")[0]])
    prepare_scoring(_table(as_index), None, [("val", str(root))])
    rows = _rows(eval_set)
    n_wrong = int(LABEL_MISMATCH_LIMIT * len(rows))  # at the limit, not above it
    noisy = [(d, i, ("new" if lab == "seen" else "seen") if k < n_wrong else lab, p)
             for k, (d, i, lab, p) in enumerate(rows)]
    prepare_scoring(_table(noisy), None, [("val", str(root))])
    over = [(d, i, ("new" if lab == "seen" else "seen") if k <= n_wrong else lab, p)
            for k, (d, i, lab, p) in enumerate(rows)]
    with pytest.raises(PredictionsError, match="disagrees"):
        prepare_scoring(_table(over), None, [("val", str(root))])


def test_predictions_for_sets_not_evaluated_are_refused_or_ignored(eval_set):
    root, _, _ = eval_set
    rows = _rows(eval_set) + [("other", "x.png", "seen", "seen")]
    with pytest.raises(PredictionsError, match=r"not evaluated: 'other'.*ignore_extra_sets=True"):
        prepare_scoring(_table(rows), None, [("val", str(root))])
    scoring = prepare_scoring(_table(rows), None, [("val", str(root))], ignore_extra_sets=True)
    assert set(scoring.predictions.correct) == {"val"}


def test_unknown_ids_and_sets_without_predictions_are_refused_before_embedding(eval_set):
    root, _, _ = eval_set
    rows = _rows(eval_set)
    wrong_ids = [(d, "images/" + i, lab, p) for d, i, lab, p in rows]
    with pytest.raises(PredictionsError, match=r"50 prediction\(s\) for 'val' name ids that are not in it.*look like"):
        prepare_scoring(_table(wrong_ids), None, [("val", str(root))])
    with pytest.raises(PredictionsError, match="no prediction for the evaluation set 'test'"):
        prepare_scoring(_table(rows), None, [("val", str(root)), ("test", str(root))])


def test_every_evaluation_set_is_opened_first(eval_set, tmp_path):
    root, _, _ = eval_set
    with pytest.raises(SourceError, match="cifar"):
        prepare_scoring(_table(_rows(eval_set)), None, [("val", str(root)), ("cifar", f"cifar:{tmp_path}/nowhere")])


def test_report_ignores_predictions_of_sets_not_evaluated(tmp_path, corpus_index, eval_set):
    root, _, _ = eval_set
    rows = _rows(eval_set)
    plain = run_report(corpus_index, [("val", str(root))],
                       ReportSettings(tmp_path / "plain", predictions=_table(rows), match=MATCH, gallery=0))
    extra = run_report(corpus_index, [("val", str(root))],
                       ReportSettings(tmp_path / "extra", predictions=_table(rows + [("other", "x", "a", "a")]),
                                      match=MATCH, gallery=0, ignore_extra_sets=True))
    assert extra.dataset("val").stats == plain.dataset("val").stats
