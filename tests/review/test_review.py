"""Thresholds from human review: the picker on hand-made labels, the labels file's errors, and the
pairs -> label -> threshold -> report --thresholds round trip through the CLI."""

import csv
import json

import pytest
from click.testing import CliRunner
from scipy.stats import binomtest

from overlap_audit.api import build_index
from overlap_audit.cli import main
from overlap_audit.settings import IndexSettings
from overlap_audit.errors import ReportError, ThresholdError
from overlap_audit.report import load_report
from overlap_audit.review import (LabelledPairs, choose_threshold, nearest_rows, pick_thresholds, read_labels,
                                  write_thresholds)
from overlap_audit.decide.rule import DECISION_VERSION, DecisionRule, VerifySettings, rule_from_record
from overlap_audit.decide.points import load_points

from ..helpers import write_predictions

POS = [0.95, 0.93, 0.91, 0.88, 0.86]
NEG = [0.92, 0.85, 0.80, 0.70]


def labelled(pos, neg):
    return list(pos) + list(neg), [True] * len(pos) + [False] * len(neg)


def test_lowest_threshold_that_keeps_the_target_precision():
    sims, labels = labelled(POS, NEG)
    c = choose_threshold("a", sims, labels, target_precision=0.8)
    # at 0.86: 5 duplicates and the 0.92 non-duplicate at or above -> 5/6 >= 0.8
    assert (c.threshold, c.tp, c.fp, c.recall) == (0.86, 5, 1, 1.0)
    c = choose_threshold("a", sims, labels, target_precision=0.9, ci_level=0.995)
    # 0.86: 5/6, 0.88: 4/5, 0.91: 3/4 all below 0.9; 0.93: 2/2
    assert (c.threshold, c.tp, c.fp, c.precision, c.recall) == (0.93, 2, 0, 1.0, 0.4)
    ref = binomtest(2, 2).proportion_ci(confidence_level=0.995, method="exact")
    assert c.precision_ci == pytest.approx((ref.low, ref.high))
    ref = binomtest(2, 5).proportion_ci(confidence_level=0.995, method="exact")
    assert c.recall_ci == pytest.approx((ref.low, ref.high))
    assert (c.n_positive, c.n_negative) == (5, 4)


def test_no_positives_gives_no_threshold_and_says_so():
    c = choose_threshold("b", [0.9, 0.8], [False, False], target_precision=0.99)
    assert c.threshold is None and c.precision is None and "no pair labelled a duplicate" in c.note
    c = choose_threshold("c", [0.5, 0.9, 0.8], [True, False, False], target_precision=0.99)
    assert c.threshold is None and "no threshold reaches precision 0.99" in c.note


def write_labels(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["pair", "dataset", "eval_id", "corpus_id", "similarity", "is_duplicate"])
        for i, (ds, sim, lab) in enumerate(rows, start=1):
            w.writerow([i, ds, f"e{i}", f"c{i}", sim, lab])
    return path


def test_labels_file_unlabelled_rows_are_counted_and_bad_values_named(tmp_path):
    rows = [("a", s, "1") for s in POS] + [("a", s, "no") for s in NEG] + [("a", 0.99, ""), ("b", 0.97, " "),
                                                                           ("b", 0.96, "FALSE")]
    path = write_labels(tmp_path / "l.csv", rows)
    data = read_labels(path)  # a file from before the verdict columns still reads
    assert data["a"].n_unlabelled == 1 and len(data["a"].similarities) == 9
    assert data["b"] == LabelledPairs([0.96], [False], None, 1)
    choices = pick_thresholds(path, target_precision=0.9)
    assert choices["a"].threshold == 0.93 and choices["a"].n_unlabelled == 1 and choices["b"].threshold is None
    out, evidence = write_thresholds(choices, tmp_path / "t" / "thresholds.json")
    assert load_points(out).thresholds == {"a": 0.93}  # what `report --thresholds` reads
    ev = json.loads(evidence.read_text())
    assert ev["a"]["precision_counts"] == [2, 2] and ev["b"]["threshold"] is None and ev["b"]["note"]
    assert ev["a"]["decision"] is None and ev["a"]["first_stage"] is None  # no verdicts: the similarity alone

    write_labels(tmp_path / "bad.csv", [("a", 0.9, "1"), ("a", 0.8, "maybe")])
    with pytest.raises(ThresholdError, match=r"line 3: is_duplicate 'maybe'"):
        read_labels(tmp_path / "bad.csv")
    write_labels(tmp_path / "bad2.csv", [("a", "high", "1")])
    with pytest.raises(ThresholdError, match=r"line 2: similarity 'high'"):
        read_labels(tmp_path / "bad2.csv")
    (tmp_path / "bad3.csv").write_text("dataset,similarity\na,0.9\n")
    with pytest.raises(ThresholdError, match="is_duplicate"):
        read_labels(tmp_path / "bad3.csv")


def test_threshold_measures_the_decision_not_the_similarity():
    """With verdicts, a pair verification holds evidence against is Overlap at no threshold, and a verified
    pair is Overlap down to the first stage: the chosen threshold and its counts are the decision's."""
    verify = VerifySettings(relax=2)
    sims = [0.95, 0.80, 0.93, 0.85]
    labels = [True, True, False, False]
    verdicts = [None, True, False, None]
    raw = choose_threshold("a", sims, labels, target_precision=1.0)
    assert (raw.threshold, raw.recall) == (0.95, 0.5)  # the similarity alone
    c = choose_threshold("a", sims, labels, verdicts=verdicts, verify=verify, target_precision=1.0)
    # at t = 0.9 the first stage is 0.8: the verified 0.80 duplicate is found, the rejected 0.93 and the
    # 0.85 below t are not called
    assert c.threshold == pytest.approx(0.9) and c.first_stage == pytest.approx(0.8)
    assert (c.tp, c.fp, c.precision, c.recall) == (2, 0, 1.0, 1.0)
    assert DecisionRule({"a": c.threshold}, verify).overlap("a", sims, verdicts).tolist() == [True, True, False, False]
    # a duplicate verification rejects is a miss at every threshold
    c = choose_threshold("a", sims, [True, True, True, False], verdicts=verdicts, verify=verify,
                         target_precision=1.0)
    assert (c.tp, c.fp, c.recall) == (2, 0, pytest.approx(2 / 3))
    c = choose_threshold("a", [0.93], [True], verdicts=[False], verify=verify, target_precision=0.9)
    assert c.threshold is None and "evidence against every duplicate" in c.note


def test_nearest_rows():
    assert nearest_rows([0.5, 0.9, float("nan"), 0.86, 0.88, 0.1], 0.87, 3) == [1, 4, 3]
    assert nearest_rows([0.5, 0.6], 0.87, 10) == [1, 0]


def test_pairs_label_threshold_report_round_trip(tmp_path, corpus_dir, eval_set):
    root, planted, clean = eval_set
    idx = tmp_path / "index"
    build_index([str(corpus_dir)], idx, IndexSettings(workers=0))
    runner = CliRunner()
    r = runner.invoke(main, ["pairs", str(idx), "--eval", f"val={root}", "--around", "0.8", "--n", "30",
                             "--out", str(tmp_path / "rev"), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "val: 30 pairs nearest 0.8000" in r.output
    page = (tmp_path / "rev" / "pairs.html").read_text()
    assert page.count('<figure class="pair') == 30 and page.count("data:image/webp") == 60 and "<b>#30</b>" in page
    with open(tmp_path / "rev" / "pairs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 and all(row["is_duplicate"] == "" for row in rows)
    sims = [float(row["similarity"]) for row in rows]
    assert sims == sorted(sims, reverse=True)
    # the reviewer: planted copies are duplicates; leave two pairs unreviewed
    for row in rows:
        row["is_duplicate"] = "1" if row["eval_id"] in planted else "0"
    rows[-1]["is_duplicate"] = rows[-2]["is_duplicate"] = ""
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = runner.invoke(main, ["threshold", str(tmp_path / "labels.csv"), "--precision", "0.95"])
    assert r.exit_code == 2 and "pairs.json" in r.output  # the labels were moved away from the sheet's rule
    r = runner.invoke(main, ["threshold", str(tmp_path / "labels.csv"), "--precision", "0.95", "--rule",
                             str(tmp_path / "rev" / "pairs.json")])
    assert r.exit_code == 0, r.output
    chosen = load_points(tmp_path / "thresholds.json").thresholds["val"]
    assert "2 unlabelled" in r.output and f"threshold {chosen:.4f}" in r.output
    assert "first stage" in r.output and "the decision's precision" in r.output
    preds = write_predictions(tmp_path / "p.csv", "val", planted + clean, [1] * len(planted + clean))
    r = runner.invoke(main, ["report", str(idx), "--eval", f"val={root}", "--predictions", str(preds), "--out",
                             str(tmp_path / "rep"), "--thresholds", str(tmp_path / "thresholds.json"),
                             "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert load_report(tmp_path / "rep").dataset("val").threshold == chosen

    # the evidence file is a --detector-error file, and its counts (not just the rates) are used
    evidence = tmp_path / "thresholds.evidence.json"
    r = runner.invoke(main, ["report", str(idx), "--eval", f"val={root}", "--predictions", str(preds), "--out",
                             str(tmp_path / "rep2"), "--thresholds", str(tmp_path / "thresholds.json"),
                             "--detector-error", str(evidence), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    counts = json.loads(evidence.read_text())["val"]["precision_counts"]
    used = json.loads((tmp_path / "rep2" / "report.json").read_text())["datasets"][0]["detector_correction"]["precision"]
    assert [used["successes"], used["trials"]] == counts

    # writing the review sheet again over labelled pairs is refused: the labels would be lost
    with open(tmp_path / "rev" / "pairs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = runner.invoke(main, ["pairs", str(idx), "--eval", f"val={root}", "--around", "0.8", "--n", "5",
                             "--out", str(tmp_path / "rev"), "--workers", "0", "--quiet"])
    assert r.exit_code == 2 and "already holds labels" in r.output
    assert sum(1 for row in csv.DictReader(open(tmp_path / "rev" / "pairs.csv")) if row["is_duplicate"]) == 28

    (tmp_path / "labels.csv").write_text("pair,dataset,eval_id,corpus_id,similarity,is_duplicate\n1,val,e,c,0.9,perhaps\n")
    r = runner.invoke(main, ["threshold", str(tmp_path / "labels.csv")])
    assert r.exit_code == 2 and "line 2" in r.output and "Traceback" not in r.output


def test_pairs_against_an_empty_index_is_an_error(tmp_path):
    from PIL import Image

    (tmp_path / "blank").mkdir()
    Image.new("RGB", (64, 64), "white").save(tmp_path / "blank" / "white.png")
    (tmp_path / "ev" / "c").mkdir(parents=True)
    Image.new("RGB", (64, 64), "black").save(tmp_path / "ev" / "c" / "x.png")
    build_index([str(tmp_path / "blank")], tmp_path / "idx", IndexSettings(workers=0))
    r = CliRunner().invoke(main, ["pairs", str(tmp_path / "idx"), "--eval", f"ev={tmp_path / 'ev'}", "--out",
                                  str(tmp_path / "out"), "--workers", "0", "--quiet"])
    assert r.exit_code == 2 and "holds no items" in r.output


def test_a_pair_labelled_twice_is_an_error(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("pair,dataset,eval_id,corpus_id,similarity,is_duplicate\n1,val,e1,c1,0.9,1\n"
                      "2,val,e2,c2,0.8,0\n3,val,e1,c1,0.9,1\n", encoding="utf-8")
    with pytest.raises(ThresholdError, match="line 4.*also on line 2"):
        read_labels(labels)


@pytest.mark.slow
def test_report_names_with_pipes_and_stale_predictions(tmp_path, corpus_dir, eval_set):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, planted, clean = eval_set
    idx = tmp_path / "index"
    build_index([str(corpus_dir)], idx, IndexSettings(workers=0))
    out = tmp_path / "rep"
    out.mkdir()
    pq.write_table(pa.table({"dataset": ["x"], "id": ["y"], "correct": [True]}), out / "predictions.parquet")
    # an earlier --model report (it lists what it wrote); a file no report wrote would be refused instead
    (out / "report.json").write_text('{"files": ["report.json", "predictions.parquet"]}')
    preds = write_predictions(tmp_path / "p.csv", "a|b", planted + clean, [1] * len(planted + clean))
    r = CliRunner().invoke(main, ["report", str(idx), "--eval", f"a|b={root}", "--predictions", str(preds),
                                  "--out", str(out), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert not (out / "predictions.parquet").exists()  # an earlier run's predictions are not left beside it
    md = (out / "report.md").read_text(encoding="utf-8")
    row = next(line for line in md.splitlines() if line.startswith("| a"))
    assert row.startswith("| a\\|b |") and row.count(" | ") == 11  # still twelve cells


def test_ids_in_the_review_csv_cannot_run_as_spreadsheet_formulas():
    from overlap_audit.inert import csv_cell as _inert

    assert _inert('=HYPERLINK("http://x","y")') == '\'=HYPERLINK("http://x","y")'
    assert [_inert(x) for x in ("+1", "-1", "@a", "\tx")] == ["'+1", "'-1", "'@a", "'\\x09x"]  # a tab shown, never run
    assert _inert("cat/001.png") == "cat/001.png"


def test_report_pairs_threshold_and_report_again_decide_by_one_rule(tmp_path):
    """A look-alike above the threshold that verification rejects, and a padded copy below it (above the first
    stage) that verification accepts: the report, pairs.csv / pairs.html and `threshold` all decide them by
    the rule, not by the similarity; a sheet or evidence file of another version of the rule is refused."""
    import pyarrow.parquet as pq

    from ..decide.test_verify import copies, drawing
    from ..detectors.test_detectors import pictogram_signs

    corpus, evals = tmp_path / "corpus", tmp_path / "evals" / "x"
    corpus.mkdir()
    evals.mkdir(parents=True)
    signs = pictogram_signs()
    signs["bar"].save(corpus / "sign_bar.png")
    drawing(10).save(corpus / "drawing10.png")
    for i in range(20, 26):
        drawing(i).save(corpus / f"filler{i}.png")
    signs["arrow"].save(evals / "sign_arrow.png")  # another pictogram on the same sign
    copies(drawing(10))["padded"].save(evals / "drawing10_padded.png")
    drawing(11).save(evals / "new.png")
    ids = ["x/sign_arrow.png", "x/drawing10_padded.png", "x/new.png"]
    preds = write_predictions(tmp_path / "preds.csv", "val", ids, [1, 1, 0])
    runner = CliRunner()
    index = tmp_path / "index"
    # whole images, one vector each: the hash ranks the look-alike sign first and the copy below the threshold
    assert runner.invoke(main, ["index", str(corpus), "--out", str(index), "--workers", "0", "--quiet",
                                "--content", "whole", "--no-views"]).exit_code == 0
    t = 0.7
    common = [str(index), "--eval", f"val={tmp_path / 'evals'}", "--workers", "0", "--quiet"]
    r = runner.invoke(main, ["report", *common, "--predictions", str(preds), "--threshold", str(t), "--out",
                             str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    rows = {row["id"]: row for row in pq.read_table(tmp_path / "rep" / "splits.parquet").to_pylist()}
    look, copy = rows["x/sign_arrow.png"], rows["x/drawing10_padded.png"]
    # the cases that tell the rule from the similarity: default first stage 1 - 2.5 (1 - 0.7) = 0.25
    assert look["similarity"] >= t and look["verified"] is False and not look["overlap"]
    assert 0.25 <= copy["similarity"] < t and copy["verified"] is True and copy["overlap"]
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["verify"]["decision_version"] == DECISION_VERSION

    r = runner.invoke(main, ["pairs", *common, "--around", str(t), "--out", str(tmp_path / "rev")])
    assert r.exit_code == 0, r.output
    assert "1 Overlap by the decision at 0.7000" in r.output
    with open(tmp_path / "rev" / "pairs.csv", newline="") as fh:
        sheet = list(csv.DictReader(fh))
    by_id = {row["eval_id"]: row for row in sheet}
    for i in ids:  # pairs.csv's decision is the report's
        assert by_id[i]["overlap"] == ("true" if rows[i]["overlap"] else "false")
    assert by_id["x/sign_arrow.png"]["verdict"] == "different" and by_id["x/drawing10_padded.png"]["verdict"] == "same"
    assert float(by_id["x/drawing10_padded.png"]["verify_score"]) == pytest.approx(copy["verify_score"], abs=1e-6)
    page = (tmp_path / "rev" / "pairs.html").read_text()
    assert "rejected (a different picture)" in page and "verified (same picture)" in page

    # the reviewer agrees with verification; `threshold` measures the decision
    for row in sheet:
        row["is_duplicate"] = "1" if row["eval_id"] == "x/drawing10_padded.png" else "0"
    with open(tmp_path / "rev" / "pairs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(sheet[0]))
        w.writeheader()
        w.writerows(sheet)
    r = runner.invoke(main, ["threshold", str(tmp_path / "rev" / "pairs.csv"), "--precision", "0.95"])
    assert r.exit_code == 0, r.output
    chosen = load_points(tmp_path / "rev" / "thresholds.json").thresholds["val"]
    # the highest threshold whose first stage still reaches the copy; by the similarity alone the look-alike
    # above the copy would leave no threshold at precision 0.95
    assert chosen == pytest.approx(1 - (1 - copy["similarity"]) / 2.5)
    evidence = json.loads((tmp_path / "rev" / "thresholds.evidence.json").read_text())["val"]
    assert evidence["first_stage"] == pytest.approx(copy["similarity"])
    assert (evidence["tp"], evidence["fp"], evidence["recall"]) == (1, 0, 1.0)
    assert evidence["decision"]["decision_version"] == DECISION_VERSION
    assert f"threshold {chosen:.4f}; first stage {copy['similarity']:.4f}" in r.output
    assert pick_thresholds(tmp_path / "rev" / "pairs.csv", target_precision=0.95)["val"].threshold == chosen
    sims = [float(row["similarity"]) for row in sheet]
    assert choose_threshold("val", sims, [row["is_duplicate"] == "1" for row in sheet],
                            target_precision=0.95).threshold is None

    # the report at the chosen threshold decides as `threshold` measured, and takes its evidence
    r = runner.invoke(main, ["report", *common, "--predictions", str(preds), "--thresholds",
                             str(tmp_path / "rev" / "thresholds.json"), "--detector-error",
                             str(tmp_path / "rev" / "thresholds.evidence.json"), "--out", str(tmp_path / "rep2")])
    assert r.exit_code == 0, r.output
    again = {row["id"]: row["overlap"] for row in pq.read_table(tmp_path / "rep2" / "splits.parquet").to_pylist()}
    assert again == {"x/sign_arrow.png": False, "x/drawing10_padded.png": True, "x/new.png": False}

    # another version of the rule: the sheet, the evidence and the report are refused, in one line
    rule = json.loads((tmp_path / "rev" / "pairs.json").read_text())
    (tmp_path / "rev" / "pairs.json").write_text(json.dumps(rule | {"decision_version": DECISION_VERSION + 1}))
    r = runner.invoke(main, ["threshold", str(tmp_path / "rev" / "pairs.csv")])
    assert r.exit_code == 2 and "another version of the Overlap decision rule" in r.output
    assert len(r.output.strip().splitlines()) == 1
    ev = json.loads((tmp_path / "rev" / "thresholds.evidence.json").read_text())
    ev["val"]["decision"]["decision_version"] = None
    (tmp_path / "old.evidence.json").write_text(json.dumps(ev))
    r = runner.invoke(main, ["report", *common, "--predictions", str(preds), "--detector-error",
                             str(tmp_path / "old.evidence.json"), "--out", str(tmp_path / "rep3")])
    assert r.exit_code == 2 and "another version of the Overlap decision rule" in r.output
    recorded = json.loads((tmp_path / "rep" / "report.json").read_text())["verify"]
    with pytest.raises(ReportError, match="another version"):
        rule_from_record({k: v for k, v in recorded.items() if k != "decision_version"}, {"val": t}, where="old")
    assert rule_from_record(recorded, {"val": t}, where="r").verify == VerifySettings(relax=2.5, anchor=1 - 9 / 64)


def test_pairs_keeps_its_comparisons_in_the_cache_as_report_does(tmp_path, corpus_dir, eval_set):
    import sqlite3

    from overlap_audit.decide.verdicts import VERDICTS_FILE
    from overlap_audit.evalcache import default_cache_dir

    root, _, _ = eval_set
    idx = tmp_path / "index"
    build_index([str(corpus_dir)], idx, IndexSettings(workers=0))

    def pairs(out, *flags):
        r = CliRunner().invoke(main, ["pairs", str(idx), "--eval", f"val={root}", "--around", "0.8", "--n", "10",
                                      "--out", str(tmp_path / out), "--workers", "0", "--quiet", *flags])
        assert r.exit_code == 0, r.output

    pairs("none", "--no-cache")
    assert not (default_cache_dir() / VERDICTS_FILE).exists()
    pairs("a", "--cache-dir", str(tmp_path / "c"))
    with sqlite3.connect(tmp_path / "c" / VERDICTS_FILE) as db:
        assert db.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0] > 0
    r = CliRunner().invoke(main, ["pairs", str(idx), "--eval", f"val={root}", "--out", str(tmp_path / "x"),
                                  "--cache-dir", str(tmp_path / "c"), "--no-cache"])
    assert r.exit_code == 2 and "--cache-dir does not go with --no-cache" in r.output
