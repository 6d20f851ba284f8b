import ast
import json
from pathlib import Path

import numpy as np
import pytest

import overlap_audit.report
from overlap_audit.errors import ReportError
from overlap_audit.report import DatasetReport, Report, format_markdown, format_table, load_report
from overlap_audit.stats.overlap import overlap_stats
from overlap_audit.values import DetectorInfo, Skipped


def make_report():
    det = DetectorInfo("phash", "phash", "1", 64, "hamming", 0.875)
    ds = [
        DatasetReport("a", 0.875, overlap_stats(70, 100, 18, 20), 0.01, True, 2, [Skipped("a", "x.png", "zero-byte file")]),
        DatasetReport("b", 0.9, overlap_stats(5, 10, 0, 0), None, None, 0, []),
    ]
    return Report(det, {"path": "idx", "n_indexed": 10}, ds, 5, 0.05, 0.995, "bonferroni", "p.csv", "0.1.0", "now")


def test_table_has_a_row_per_dataset_and_dashes_for_undefined():
    table = format_table(make_report())
    lines = table.splitlines()
    assert len(lines) == 2 + 2
    assert lines[2].startswith("| a | 100 | 20.0 | 70.0 | 65.0 | 90.0 | +5.0 |")
    assert lines[3].startswith("| b | 10 | 0.0 | 50.0 | 50.0 | – | +0.0 | – | – |")
    md = format_markdown(make_report())
    assert "x.png" in md and "zero-byte" in md and "Bonferroni" in md


def test_json_round_trip_and_no_nan(tmp_path):
    from overlap_audit.atomic import atomic_write_json

    rep = make_report()
    atomic_write_json(tmp_path / "report.json", rep.to_dict())
    text = (tmp_path / "report.json").read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["datasets"][1]["p_value"] is None and data["correction"] == {"method": "bonferroni", "m": 1}
    assert load_report(tmp_path) == rep


def test_load_report_errors(tmp_path):
    with pytest.raises(ReportError, match="cannot read"):
        load_report(tmp_path / "missing.json")
    (tmp_path / "report.json").write_text('{"format": 3}')
    with pytest.raises(ReportError, match="not an overlap-audit report"):
        load_report(tmp_path)


def test_a_report_of_another_format_is_refused_with_one_line(tmp_path):
    data = make_report().to_dict()
    assert data["format"] == 3  # 3: timings (seconds per phase, the evaluation cache's use)
    for found in (None, 2, 4):
        if found is None:
            data.pop("format")
        else:
            data["format"] = found
        (tmp_path / "report.json").write_text(json.dumps(data))
        with pytest.raises(ReportError, match="run `overlap-audit report` again") as exc:
            load_report(tmp_path)
        assert "\n" not in str(exc.value)


def test_report_modules_import_only_downwards():
    allowed = {"value": set(), "format": {"value"}, "markdown": {"value", "format"},
               "html": {"value", "format"}, "write": {"value", "format", "markdown", "html"}}
    folder = Path(overlap_audit.report.__file__).parent
    assert {p.stem for p in folder.glob("*.py")} == set(allowed) | {"__init__"}
    for name, may in allowed.items():
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        used = {n.module.split(".")[0] for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1 and not n.module
                 for a in n.names}
        assert used <= may, (name, used - may)


def test_summary_table_has_a_row_per_dataset_with_nulls_for_undefined():
    from overlap_audit.report.value import SUMMARY_COLUMNS

    table = make_report().summary_table()
    assert table.column_names == list(SUMMARY_COLUMNS)
    rows = table.to_pylist()
    assert [r["dataset"] for r in rows] == ["a", "b"]
    assert (rows[0]["n"], rows[0]["n_overlap"], rows[0]["n_skipped"], rows[0]["significant"]) == (100, 20, 1, True)
    assert rows[0]["acc_overlap"] == pytest.approx(0.9) and rows[0]["acc_clean"] == pytest.approx(52 / 80)
    assert rows[1]["acc_overlap"] is None and rows[1]["p_value"] is None and rows[1]["significant"] is None
    assert rows[0]["threshold_origin"] is None and rows[0]["n_edge"] is None  # not recorded in this report
    pd = pytest.importorskip("pandas")
    frame = table.to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame["dataset"]) == ["a", "b"]


def test_timings_round_trip_through_report_json(tmp_path):
    from dataclasses import replace

    from overlap_audit.atomic import atomic_write_json

    timings = {"seconds": {"open_index": 0.1, "embed:a": 2.0, "total": 3.0},
               "sets": {"a": {"n_items": 101, "from_cache": True, "cache_dir": "/c"}}}
    atomic_write_json(tmp_path / "report.json", replace(make_report(), timings=timings).to_dict())
    assert load_report(tmp_path).timings == timings
    atomic_write_json(tmp_path / "report.json", make_report().to_dict())
    assert "timings" not in json.loads((tmp_path / "report.json").read_text())
    assert load_report(tmp_path).timings == {}


def test_summary_table_names_each_thresholds_origin_estimates_and_edge_cases():
    from dataclasses import replace

    from overlap_audit.stats.edge import edge_cases

    rep = make_report()
    # set a: 20 Overlap of 100; two of its Overlap examples are flagged (one small, one nearly uniform)
    overlap = np.zeros(100, bool)
    overlap[:20] = True
    correct = np.zeros(100, bool)
    correct[:18] = True
    correct[20:72] = True
    small, uniform = np.zeros(100, bool), np.zeros(100, bool)
    small[0], uniform[1], small[50] = True, True, True  # 50 is Clean: not counted
    edge = edge_cases([str(i) for i in range(100)], overlap, correct, small, uniform, np.zeros(100, bool),
                      measured_min_side=32, uniform_std=8.0)
    cal = {"origins": {"a": "calibrated", "b": "file"},
           "datasets": {"a": {"precision": {"value": 0.995, "low": 0.98, "high": 1.0},
                              "recall": {"value": 0.8, "low": 0.7, "high": 0.9}}}}
    rep = replace(rep, datasets=[replace(rep.datasets[0], edge=edge), rep.datasets[1]], calibration=cal)
    a, b = rep.summary_table().to_pylist()
    assert (a["threshold_origin"], b["threshold_origin"]) == ("calibrated", "file")
    assert (a["estimated_precision"], a["estimated_recall"]) == (0.995, 0.8)
    assert b["estimated_precision"] is None and b["n_edge"] is None
    assert a["n_edge"] == 2
    # without the two flagged (both correct) Overlap examples: All 68/98, Clean 52/80
    assert a["delta_without_edge"] == pytest.approx(68 / 98 - 52 / 80)
