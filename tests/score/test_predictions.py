import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from overlap_audit.errors import PredictionsError
from overlap_audit.predictions import match_predictions, read_predictions
from overlap_audit.values import Neighbors, Split


def make_split(name, ids):
    n = len(ids)
    nb = Neighbors(ids, np.full((n, 1), "c", dtype=object), np.ones((n, 1), np.float32))
    return Split(name, 0.9, ids, [None] * n, nb, np.zeros(n, bool), np.zeros(n, bool))


def test_csv_with_correct_column(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("dataset,id,correct\nA,x,1\nA,y,0\nB,001,true\n")
    preds = read_predictions(p)
    assert preds.correct == {"A": {"x": True, "y": False}, "B": {"001": True}}  # ids stay text: '001' not 1


def test_parquet_with_prediction_and_label(tmp_path):
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"dataset": ["A", "A"], "id": ["x", "y"], "prediction": [3, 4], "label": [3, 5]}), p)
    assert read_predictions(p).correct == {"A": {"x": True, "y": False}}


@pytest.mark.parametrize("body,match", [
    ("dataset,id\nA,x\n", "needs a 'correct' column"),
    ("id,correct\nx,1\n", "missing column 'dataset'"),
    ("dataset,id,correct\nA,x,1\nA,x,0\nA,y,1\nA,y,1\n", "duplicated predictions for 'A/x', 'A/y'"),
    ("dataset,id,correct\nA,x,2\n", "row 1: 'correct' must be 0/1"),
])
def test_malformed_files_are_named(tmp_path, body, match):
    p = tmp_path / "p.csv"
    p.write_text(body)
    with pytest.raises(PredictionsError, match=match):
        read_predictions(p)


def test_missing_file():
    with pytest.raises(PredictionsError, match="does not exist"):
        read_predictions("/nonexistent/p.csv")


def test_missing_extra_and_unknown_datasets_are_errors(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("dataset,id,correct\nA,x,1\nA,zzz,0\nA,broken,1\n")
    preds = read_predictions(p)
    splits = {"A": make_split("A", ["x", "y", "w"])}
    with pytest.raises(PredictionsError) as err:
        match_predictions(preds, splits, {"A": {"broken"}})
    msg = str(err.value)
    assert "2 example(s) of 'A' have no prediction: 'y', 'w'" in msg
    assert "1 prediction(s) for 'A' name ids that are not in it: 'zzz'" in msg
    assert "broken" not in msg  # a prediction for a skipped (unreadable) example is accepted
    p.write_text("dataset,id,correct\nA,x,1\nB,x,1\n")
    with pytest.raises(PredictionsError, match="names datasets that are not evaluated: B"):
        match_predictions(read_predictions(p), {"A": make_split("A", ["x"])}, {})


def test_matching_aligns_with_split_order(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("dataset,id,correct\nA,b,0\nA,a,1\nA,c,1\n")
    out = match_predictions(read_predictions(p), {"A": make_split("A", ["a", "b", "c"])}, {})
    assert out["A"].tolist() == [True, False, True]


def test_numeric_classes_compare_as_numbers_and_empty_ids_are_errors(tmp_path):
    p = tmp_path / "p.PARQUET"
    pq.write_table(pa.table({"dataset": ["A", "A"], "id": ["x", "y"], "prediction": [3, 4], "label": [3.0, 5.0]}), p)
    assert read_predictions(p).correct == {"A": {"x": True, "y": False}}
    c = tmp_path / "p.csv"
    c.write_text("dataset,id,correct\nA,,1\n")
    with pytest.raises(PredictionsError, match="empty dataset or id"):
        read_predictions(c)
