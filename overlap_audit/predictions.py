"""Per-example correctness of the audited model, read from Parquet or CSV and matched to the splits.

Columns: ``dataset``, ``id`` and either ``correct`` (0/1 or true/false) or both ``prediction`` and
``label`` (correct = prediction == label, compared as text). Every evaluated example needs exactly one
row: missing, extra and duplicated ids are errors that name a few of them. Rows for examples that were
skipped (unreadable images) are accepted and left out, as the report says. The same columns in memory (a
pandas DataFrame or a pyarrow Table) are read by the same rules, with the same errors.

``write_predictions`` writes what ``report --model`` scored in this format (plus ``top5``), so a report
can be rerun from it with ``--predictions``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import numpy as np

from .errors import PredictionsError, param
from .settings import check_datasets_named
from .values import Predictions, Split

_TRUE = {"1", "true", "t", "yes", "y", "1.0"}
_FALSE = {"0", "false", "f", "no", "n", "0.0"}


def _few(values, n: int = 5) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:n])
    return shown + (f" (and {len(values) - n} more)" if len(values) > n else "")


PREDICTIONS = "predictions.parquet"


def write_predictions(path: str | os.PathLike, scored) -> None:
    """A predictions Parquet file from ``scoring.ScoredSet``s: dataset, id, label, prediction, correct and
    top5 (the top-5 labels, best first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .atomic import atomic_write

    rows: dict[str, list] = {k: [] for k in ("dataset", "id", "label", "prediction", "correct", "top5")}
    for s in scored:
        for ident, label, pred, top in zip(s.ids, s.labels, s.predictions, s.top):
            rows["dataset"].append(s.dataset)
            rows["id"].append(ident)
            rows["label"].append(label)
            rows["prediction"].append(pred)
            rows["correct"].append(pred == label)
            rows["top5"].append(list(top))
    table = pa.table({
        "dataset": pa.array(rows["dataset"], pa.string()),
        "id": pa.array(rows["id"], pa.string()),
        "label": pa.array(rows["label"], pa.string()),
        "prediction": pa.array(rows["prediction"], pa.string()),
        "correct": pa.array(rows["correct"], pa.bool_()),
        "top5": pa.array(rows["top5"], pa.list_(pa.string())),
    })
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _read_table(path: str):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise PredictionsError(f"predictions file {path} does not exist")
    try:
        if path.lower().endswith(".parquet"):
            return pq.read_table(path)
        text_cols = {c: pa.string() for c in ("dataset", "id", "label", "prediction", "correct")}
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=text_cols))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise PredictionsError(f"cannot read predictions file {path}: {exc}") from None


def _as_bool(value, row: int, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise PredictionsError(f"{path}: row {row + 1}: 'correct' must be 0/1 or true/false, got {value!r}")


def _class_text(value) -> str:
    """A class as text; integral numbers compare equal however they were stored (3, 3.0, "3")."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() and "." in text else text


def _same_class(prediction, label) -> bool:
    return _class_text(prediction) == _class_text(label)


def _columns(value) -> tuple[dict[str, list], str]:
    """The columns of an in-memory table as lists (missing values as None), and what messages call it."""
    pandas = sys.modules.get("pandas")  # a DataFrame was made with pandas, so it is imported already
    if pandas is not None and isinstance(value, pandas.DataFrame):
        names = [str(c) for c in value.columns]
        if len(set(names)) != len(names):
            raise PredictionsError(f"predictions DataFrame: repeated column names ({', '.join(names)})")
        return ({str(c): value[c].astype(object).where(value[c].notna(), None).tolist() for c in value.columns},
                "predictions DataFrame")
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pa = None
    if pa is not None and isinstance(value, pa.RecordBatch):
        value = pa.Table.from_batches([value])
    if pa is not None and isinstance(value, pa.Table):
        if len(set(value.column_names)) != len(value.column_names):
            raise PredictionsError(f"predictions Table: repeated column names ({', '.join(value.column_names)})")
        return {c: value[c].to_pylist() for c in value.column_names}, "predictions Table"
    raise PredictionsError(f"predictions must be a file path, a pandas DataFrame or a pyarrow Table, "
                           f"not a {type(value).__name__}")


def read_predictions(path) -> Predictions:
    """Read predictions from a file (Parquet or CSV), a pandas DataFrame or a pyarrow Table; the same columns give
    the same value and the same errors whichever it is. Duplicated (dataset, id) rows are an error."""
    if isinstance(path, (str, os.PathLike)):
        path = str(path)
        table = _read_table(path)
        columns = {c: table[c].to_pylist() for c in table.column_names}
    else:
        columns, path = _columns(path)
    return _from_columns(columns, path)


def _from_columns(table: dict[str, list], path: str) -> Predictions:
    names = list(table)
    for col in ("dataset", "id"):
        if col not in names:
            raise PredictionsError(f"{path}: missing column {col!r} (it has {', '.join(names)})")
    if "correct" not in names and not {"prediction", "label"} <= set(names):
        raise PredictionsError(f"{path}: needs a 'correct' column, or both 'prediction' and 'label' "
                               f"(it has {', '.join(names)})")
    datasets = [None if v is None else str(v) for v in table["dataset"]]
    ids = [None if v is None else str(v) for v in table["id"]]
    if "correct" in names:
        correct = [_as_bool(v, i, path) for i, v in enumerate(table["correct"])]
    else:
        preds, labels = table["prediction"], table["label"]
        for row, (p, lab) in enumerate(zip(preds, labels)):
            missing = [c for c, v in (("prediction", p), ("label", lab))
                       if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())]
            if missing:
                column = missing[0]
                raise PredictionsError(f"{path}: row {row + 1} ({datasets[row]}/{ids[row]!r}) has no {column}; "
                                       "every example needs one (write the class the model chose; an abstention "
                                       "is a class of its own, e.g. 'none')")
        correct = [_same_class(p, lab) for p, lab in zip(preds, labels)]
    out: dict[str, dict[str, bool]] = {}
    given_labels: dict[str, dict[str, str]] = {}
    label_column = table.get("label", [None] * len(ids))
    dups = []
    for row, (ds, ident, ok, lab) in enumerate(zip(datasets, ids, correct, label_column)):
        if not ds or not ident:
            raise PredictionsError(f"{path}: row {row + 1} has an empty dataset or id")
        per = out.setdefault(ds, {})
        if ident in per:
            dups.append(f"{ds}/{ident}")
        per[ident] = ok
        if lab is not None and not (isinstance(lab, float) and lab != lab) and str(lab).strip():
            given_labels.setdefault(ds, {})[ident] = _class_text(lab)
    if dups:
        raise PredictionsError(f"{path}: duplicated predictions for {_few(sorted(set(dups)))}")
    return Predictions(correct=out, source=path, labels=given_labels)


LABEL_MISMATCH_LIMIT = 0.05  # of the rows that carry a label: more disagreeing is an error


def _label_readings(set_labels: list[str], classnames: tuple[str, ...] | None):
    """The ways a predictions file may write a set's labels, each as a function (file's label, set's label)
    -> agree: as the same text; as the index of the set's sorted labels (torchvision's ImageFolder); as the
    index of, or the name in, the class names the set's layout ships."""
    def index(text: str, names) -> str | None:
        return names[int(text)] if text.isdigit() and int(text) < len(names) else None

    ordered = sorted(set(set_labels))
    readings = [lambda p, s: p == s, lambda p, s: index(p, ordered) == s]
    if classnames:
        readings += [lambda p, s: index(s, classnames) == p, lambda p, s: index(p, classnames) == s]
    return readings


def check_predictions(predictions: Predictions, sets: dict[str, dict[str, str | None] | None], *,
                      ignore_extra_sets: bool = False,
                      classnames: dict[str, tuple[str, ...] | None] | None = None) -> Predictions:
    """Predictions checked against the evaluation sets before anything is embedded; returns them restricted to
    the sets evaluated.

    ``sets`` gives per evaluated set ``{id: label}`` of its items (None: not known before embedding, e.g. a
    set read from a URL). Refused: predictions for sets not evaluated (unless ``ignore_extra_sets``), a set
    with no prediction, ids that are not in their set, and a ``label`` column that disagrees with the set's
    own labels in more than ``LABEL_MISMATCH_LIMIT`` of the rows that carry both (predictions not aligned
    with the set). Missing ids are checked once the skipped items are known (``match_predictions``).
    """
    src = predictions.source
    extra_sets = sorted(set(predictions.correct) - set(sets))
    if extra_sets and not ignore_extra_sets:
        raise PredictionsError(f"{src}: predictions for datasets that are not evaluated: {_few(extra_sets)} "
                               f"(evaluated: {', '.join(sets)}); evaluate them too, leave their rows out, or pass "
                               f"{param('ignore_extra_sets', True)}")
    problems = []
    for name, items in sets.items():
        given = predictions.correct.get(name)
        if not given:
            others = sorted(set(predictions.correct) - set(sets))
            hint = f" (it has predictions for {_few(others)}: is the set named differently?)" if others else ""
            problems.append(f"no prediction for the evaluation set {name!r}{hint}")
            continue
        if items is None:
            continue
        unknown = [i for i in given if i not in items]
        if unknown:
            problems.append(f"{len(unknown)} prediction(s) for {name!r} name ids that are not in it: {_few(unknown)} "
                            f"(its ids look like {_few(list(items)[:3])})")
            continue
        pairs = [(i, lab, _class_text(items[i])) for i, lab in predictions.labels.get(name, {}).items()
                 if items.get(i) is not None]
        if not pairs:
            continue
        readings = _label_readings([s for _, _, s in pairs], (classnames or {}).get(name))
        wrong = min(([(i, p, s) for i, p, s in pairs if not agree(p, s)] for agree in readings), key=len)
        if len(wrong) > LABEL_MISMATCH_LIMIT * len(pairs):
            shown = ", ".join(f"{i!r} (label {p!r}, the set's {s!r})" for i, p, s in wrong[:3])
            problems.append(f"the 'label' column disagrees with the labels of {name!r} in {len(wrong)} of the "
                            f"{len(pairs)} rows that carry one ({len(wrong) / len(pairs):.0%}), e.g. {shown}: the "
                            "predictions are not aligned with the set's ids; fix the id (or label) column, so "
                            "that each row describes the example its id names")
    if problems:
        raise PredictionsError(f"{src}: " + "; ".join(problems))
    if not extra_sets:
        return predictions
    return replace(predictions, correct={n: v for n, v in predictions.correct.items() if n in sets},
                   labels={n: v for n, v in predictions.labels.items() if n in sets})


def match_predictions(predictions: Predictions, splits: dict[str, Split],
                      skipped_ids: dict[str, set[str]]) -> dict[str, np.ndarray]:
    """Correctness of each split's examples, row-aligned; raises on missing or extra ids."""
    check_datasets_named(predictions.correct, splits, str(predictions.source), PredictionsError)
    out = {}
    problems = []
    for name, sp in splits.items():
        given = predictions.correct.get(name, {})
        missing = [i for i in sp.ids if i not in given]
        known = set(sp.ids) | skipped_ids.get(name, set())
        extra = [i for i in given if i not in known]
        if missing:
            problems.append(f"{len(missing)} example(s) of {name!r} have no prediction: {_few(missing)}")
        if extra:
            problems.append(f"{len(extra)} prediction(s) for {name!r} name ids that are not in it: {_few(extra)}")
        out[name] = np.array([given.get(i, False) for i in sp.ids], dtype=bool)
    if problems:
        raise PredictionsError(f"{predictions.source}: " + "; ".join(problems))
    return out
