"""`threshold` chooses the whole operating point (threshold, first stage, photo accept) from labelled pairs, moves
a knob only where the labels support it, and `report --thresholds` decides at that point through the one rule."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from overlap_audit.decide.points import load_points
from overlap_audit.decide.rule import DECISION_VERSION, DecisionRule, VerifySettings, rule_from_record
from overlap_audit.errors import ThresholdError
from overlap_audit.review import MIN_GAIN, choose_threshold

# four duplicates and two other pairs; verdicts as pairs.csv records them at the sheet's accept (0.83) and at the
# lowest accept (verdict_floor), with the photo scores
SIMS = [0.95, 0.93, 0.80, 0.79, 0.85, 0.70]
LABELS = [True, True, True, True, False, False]
VERDICTS = [True, True, None, None, None, None]
FLOOR = [True, True, True, True, None, True]
SCORES = [0.9, 0.9, 0.75, 0.70, 0.3, 0.6]


def choose(sims=SIMS, labels=LABELS, verdicts=VERDICTS, floor=FLOOR, scores=SCORES, verify=VerifySettings(relax=2),
           **kw):
    return choose_threshold("a", sims, labels, verdicts=verdicts, verify=verify, floor_verdicts=floor,
                            scores=scores, target_precision=kw.pop("target_precision", 0.99), **kw)


def knob(choice, name):
    return next(k for k in choice.knobs if k.name == name)


def test_a_lower_photo_accept_is_chosen_where_two_duplicates_pay_for_it():
    c = choose()
    # at the sheet's accept the best point keeps the two verified duplicates (a lower threshold would take the
    # unverified 0.85 pair); accept 0.70 verifies both 0.8 duplicates, whose first stage the threshold reaches
    assert c.accept == pytest.approx(0.70) and c.threshold == pytest.approx(1 - (1 - 0.79) / 2)
    assert (c.tp, c.fp) == (4, 0) and c.first_stage == pytest.approx(0.79)
    assert knob(c, "accept").moved and knob(c, "accept").default == pytest.approx(0.83)
    assert not knob(c, "first_stage").moved and not knob(c, "verify_threshold").moved
    # the decision counted is the rule's at the point's settings
    rule = DecisionRule({"a": c.threshold}, VerifySettings(relax=2, accept=c.accept))
    assert rule.overlap("a", SIMS, [True, True, True, True, None, None]).tolist() == LABELS


def test_one_duplicate_does_not_move_a_knob():
    c = choose(floor=[True, True, True, None, None, True])
    assert c.accept == pytest.approx(0.83) and (c.tp, c.fp) == (2, 0)
    assert f"fewer than {MIN_GAIN}" in knob(c, "accept").reason
    # nor does a lower accept that verifies a labelled non-duplicate too (the 0.81 pair, scoring 0.72)
    c = choose(sims=SIMS[:5] + [0.81], scores=SCORES[:5] + [0.72])
    assert c.accept == pytest.approx(0.83) and not knob(c, "accept").moved


def test_a_sheet_without_floor_verdicts_keeps_the_accept_and_says_why():
    c = choose(floor=None, scores=None)
    assert c.accept == pytest.approx(0.83) and "no verdict at a lower photo accept" in knob(c, "accept").reason


def test_a_lower_first_stage_is_chosen_below_an_explicit_one():
    # the sheet verified from 0.9; two verified duplicates below it, and an unverified pair at 0.88 that a
    # lower threshold would call Overlap
    sims, labels = [0.95, 0.92, 0.85, 0.84, 0.88], [True, True, True, True, False]
    verdicts = [True, True, True, True, None]
    verify = VerifySettings(first_stage=0.9)
    c = choose(sims, labels, verdicts, verdicts, [0.9] * 5, verify)
    assert c.first_stage == np.float32(0.84) and (c.tp, c.fp) == (4, 0)
    assert knob(c, "first_stage").moved and knob(c, "first_stage").default == pytest.approx(0.9)
    assert not knob(c, "accept").moved and "no labelled duplicate that a lower photo accept" in knob(c, "accept").reason
    # with the duplicates above the first stage there is nothing to move
    c = choose(sims[:2] + [0.5], [True, True, False], verdicts[:2] + [None], None, None, verify)
    assert knob(c, "first_stage").reason == "no labelled duplicate below the first stage"


def test_thresholds_file_forms(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"val": 0.9}))
    assert load_points(path).thresholds == {"val": 0.9} and load_points(path).verify == {}
    point = {"threshold": 0.8, "first_stage": 0.5, "accept": 0.7, "verify_threshold": 0.8144}
    path.write_text(json.dumps({"decision_version": DECISION_VERSION, "detector": "phash", "datasets": {"val": point}}))
    p = load_points(path)
    assert p.thresholds == {"val": 0.8} and p.verify == {"val": {"first_stage": 0.5, "accept": 0.7, "threshold": 0.8144}}
    path.write_text(json.dumps({"decision_version": DECISION_VERSION - 1, "datasets": {"val": point}}))
    with pytest.raises(ThresholdError, match="chosen under version") as e:
        load_points(path)
    assert "\n" not in str(e.value)
    path.write_text(json.dumps({"decision_version": DECISION_VERSION, "datasets": {"val": point | {"relax": 3}}}))
    with pytest.raises(ThresholdError, match="unknown field"):
        load_points(path)
    path.write_text(json.dumps({"decision_version": DECISION_VERSION, "datasets": {"val": point | {"accept": 83}}}))
    with pytest.raises(ThresholdError, match="the accept of 'val'"):
        load_points(path)


def test_a_rule_with_per_set_settings_comes_back_from_its_record():
    class Det:
        verify_relax = None
        default_threshold = 0.86

    rule = DecisionRule.for_detector(Det(), {"a": 0.9, "b": 0.9}, VerifySettings(),
                                     {"a": {"first_stage": 0.5, "accept": 0.7}})
    assert rule.first_stage("a") == 0.5 and rule.first_stage("b") == pytest.approx(0.75)
    assert rule.verify_for("a").accept_for(0.9) == 0.7 and rule.verify_for("b").accept_for(0.9) == 0.83
    record = rule.verify.to_dict() | {"datasets": {"a": {"settings": {
        k: v for k, v in rule.verify_for("a").to_dict().items() if k != "decision_version"}}}}
    again = rule_from_record(record, rule.thresholds, where="report.json")
    assert again.first_stage("a") == 0.5 and again.verify_for("a").accept_for(0.9) == 0.7
    assert again.verify_for("b") == rule.verify


def _cli(*args: str) -> str:
    exe = str(Path(sys.executable).with_name("overlap-audit"))
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _label(sheet: Path, out: Path) -> list[dict]:
    """The reviewer: every copy (seen/) is a duplicate, every other quadrant (new/) is not."""
    with open(sheet, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["is_duplicate"] = "1" if row["eval_id"].startswith("seen/") else "0"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def _overlap(report: Path) -> set[str]:
    import pyarrow.parquet as pq

    return {r["id"] for r in pq.read_table(report / "splits.parquet").to_pylist() if r["overlap"]}


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory):
    """A corpus of one quadrant of each bundled photograph, and an evaluation set of a strong App. C copy of
    each (seen/) and the opposite quadrant of each (new/), with its index and predictions."""
    from benchmarks.photos import STRONG, appc_copy, quadrants
    from overlap_audit.demos.synthetic import bundled_photos

    root = tmp_path_factory.mktemp("photo-points")
    for d in ("corpus", "ev/seen", "ev/new"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for name, photo in bundled_photos().items():
        q = quadrants(photo)
        q[0].save(root / "corpus" / f"{name}.png")
        appc_copy(q[0], STRONG, rng).save(root / "ev" / "seen" / f"{name}.png")
        q[3].save(root / "ev" / "new" / f"{name}.png")
        ids += [f"seen/{name}.png", f"new/{name}.png"]
    (root / "preds.csv").write_text("dataset,id,correct\n" + "".join(f"val,{i},1\n" for i in ids))
    _cli("index", str(root / "corpus"), "--out", str(root / "idx"), "--workers", "0", "--quiet")
    return root


@pytest.mark.slow
def test_labels_that_pay_for_a_lower_accept_and_first_stage_and_report_decides_as_measured(photo_set, tmp_path):
    root = photo_set
    common = [str(root / "idx"), "--eval", f"val={root / 'ev'}", "--workers", "0", "--quiet",
              "--cache-dir", str(tmp_path / "cache")]

    def report(out: str, thresholds: Path) -> set[str]:
        _cli("report", *common, "--predictions", str(root / "preds.csv"), "--thresholds", str(thresholds),
             "--out", str(tmp_path / out))
        return _overlap(tmp_path / out)

    # the sheet at the detector's threshold: every pair of the set, verified, with its verdict at the lowest accept
    _cli("pairs", *common, "--n", "200", "--out", str(tmp_path / "rev"))
    rows = _label(tmp_path / "rev" / "pairs.csv", tmp_path / "rev" / "labels.csv")
    # the copies a lower photo accept verifies: what makes one pay here
    gainers = {r["eval_id"] for r in rows if r["is_duplicate"] == "1" and r["verdict"] == "none"
               and r["verdict_floor"] == "same"}
    assert len(gainers) >= MIN_GAIN, rows
    out = _cli("threshold", str(tmp_path / "rev" / "labels.csv"), "--precision", "0.99")
    assert "photo accept 0.8300 -> " in out and "more labelled duplicate(s) than the sheet's photo accept" in out
    assert "drawing verification score left at 0.8144: not chosen from labels" in out
    file = tmp_path / "rev" / "thresholds.json"
    points = json.loads(file.read_text())
    point = points["datasets"]["val"]
    assert points["decision_version"] == DECISION_VERSION and set(point) == {"threshold", "first_stage", "accept",
                                                                               "verify_threshold"}
    assert point["accept"] < 0.83
    evidence = json.loads((tmp_path / "rev" / "thresholds.evidence.json").read_text())["val"]
    labelled_dup = {r["eval_id"] for r in rows if r["is_duplicate"] == "1"}
    # the report at that point calls Overlap exactly what `threshold` counted, the gainers among them
    found = report("rep", file)
    # `threshold` judges each labelled row by the pair its sheet shows; the report may also find a row's copy
    # past its nearest item (report.json's n_by_neighbour): those come on top of what `threshold` counted
    walked = json.loads((tmp_path / "rep" / "report.json").read_text())["verify"]["datasets"]["val"]["n_by_neighbour"]
    counted = evidence["tp"] + evidence["fp"]
    assert counted <= len(found) <= counted + walked and found <= labelled_dup and gainers <= found
    assert (tmp_path / "rep" / "report.md").read_text().count("set the first stage and the photo accept") == 1
    # a file chosen for another detector is refused, in one line
    other = tmp_path / "other.json"
    other.write_text(json.dumps(points | {"detector": "clipdup"}))
    exe = str(Path(sys.executable).with_name("overlap-audit"))
    r = subprocess.run([exe, "report", *common, "--predictions", str(root / "preds.csv"), "--thresholds", str(other),
                        "--out", str(tmp_path / "rep-other")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "chosen for the detector clipdup" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # a thresholds file of the threshold alone still works, and decides at the report's accept: no gainer
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"val": point["threshold"]}))
    assert not gainers & report("rep-old", old)

    # a sheet verified from an explicit first stage above most copies: a lower first stage pays
    _cli("pairs", *common, "--n", "200", "--verify-from", "0.8", "--out", str(tmp_path / "rev2"))
    rows = _label(tmp_path / "rev2" / "pairs.csv", tmp_path / "rev2" / "labels.csv")
    below = {r["eval_id"] for r in rows if r["is_duplicate"] == "1" and r["verdict"] == "same"
             and float(r["similarity"]) < 0.8}
    assert len(below) >= MIN_GAIN
    out = _cli("threshold", str(tmp_path / "rev2" / "labels.csv"), "--precision", "0.99")
    assert "first stage 0.8000 -> " in out
    point = json.loads((tmp_path / "rev2" / "thresholds.json").read_text())["datasets"]["val"]
    evidence = json.loads((tmp_path / "rev2" / "thresholds.evidence.json").read_text())["val"]
    assert point["first_stage"] < 0.8
    found = report("rep2", tmp_path / "rev2" / "thresholds.json")
    walked = json.loads((tmp_path / "rep2" / "report.json").read_text())["verify"]["datasets"]["val"]["n_by_neighbour"]
    counted = evidence["tp"] + evidence["fp"]
    assert counted <= len(found) <= counted + walked and found <= labelled_dup
    assert below & found


def test_a_sheet_without_verification_sets_the_threshold_alone(tmp_path):
    from overlap_audit.review import write_thresholds

    decision = {"decision_version": DECISION_VERSION, "verify": None, "detector": "phash"}
    c = choose_threshold("a", SIMS, LABELS, verdicts=[None] * 6, verify=None, decision=decision,
                         target_precision=0.99)
    assert c.decision == decision and c.knobs == () and c.first_stage is None and c.accept is None
    assert c.threshold == 0.93 and (c.tp, c.fp) == (2, 0)
    path, _ = write_thresholds({"a": c}, tmp_path / "t.json")
    assert json.loads(path.read_text())["datasets"] == {"a": {"threshold": 0.93}}
    assert load_points(path).verify == {}
