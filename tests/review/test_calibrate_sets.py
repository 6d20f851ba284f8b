"""Each evaluation set's threshold calibrated in a report (calibrate.calibrate_sets through api.run_report):
where the threshold came from, recorded in report.json and the pages; a user's threshold wins."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from overlap_audit.api import ReportSettings, run_report
from overlap_audit.calibrate import lowest_threshold
from overlap_audit.detectors import get_detector
from overlap_audit.settings import CalibrationSettings, MatchSettings, StatsSettings

SMALL = CalibrationSettings(positives=8, negatives=12, seed=3)


@pytest.fixture(scope="module")
def predictions(eval_set):
    root, planted, clean = eval_set
    return pd.DataFrame({"dataset": "val", "id": planted + clean, "correct": 1})


def _report(tmp_path, corpus_index, eval_set, predictions, **kw):
    root, _, _ = eval_set
    return run_report(corpus_index, [("val", str(root))],
                      ReportSettings(tmp_path / "rep", predictions=predictions, match=MatchSettings(workers=0),
                                     **kw))


def test_a_set_is_calibrated_by_default_and_the_report_says_so(tmp_path, corpus_index, eval_set, predictions):
    report = _report(tmp_path, corpus_index, eval_set, predictions, calibrate=SMALL)
    phash = get_detector("phash")
    cal = report.calibration
    assert cal["origins"]["val"] in ("calibrated", "default")
    rec = cal["datasets"]["val"]
    # with verification (the default) below the default a pair must be verified: calibration keeps the default
    # and estimates the decision's precision and recall there
    assert lowest_threshold(phash.default_threshold, verifying=True) == phash.default_threshold
    assert rec["bounds"] == [pytest.approx(phash.default_threshold)] * 2
    assert report.dataset("val").threshold == pytest.approx(phash.default_threshold)
    assert rec["used"] == report.dataset("val").threshold
    assert (cal["seed"], cal["positives"], cal["negatives"]) == (3, 8, 12)
    assert cal["versions"]["detector"] == "phash" and cal["versions"]["decision_version"] >= 1
    assert rec["n_positives"] == 8 and 0 < rec["n_negatives"] <= 24
    r = rec["recall"]
    assert r["trials"] == 8 and r["low"] <= r["value"] <= r["high"]
    # the planted copies are found, so there is an Overlap split to estimate the precision of
    p = rec["precision"]
    assert p["n_overlap"] == report.dataset("val").stats.n_overlap and p["low"] <= p["value"] <= p["high"]
    on_disk = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert on_disk["calibration"] == cal
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    origin = "calibrated on this set" if cal["origins"]["val"] == "calibrated" else "the detector's default"
    assert f"Thresholds: val {report.dataset('val').threshold:.4f} ({origin}" in md
    assert "estimated precision" in md and "Thresholds: val" in html
    # the estimates feed the detector-error correction
    assert report.dataset("val").extended.detector is not None


def test_without_verification_calibration_may_lower_the_threshold(tmp_path, corpus_index, eval_set, predictions):
    report = _report(tmp_path, corpus_index, eval_set, predictions, calibrate=SMALL, verify=None)
    phash = get_detector("phash")
    rec = report.calibration["datasets"]["val"]
    lower = lowest_threshold(phash.default_threshold)
    assert lower < phash.default_threshold
    assert rec["bounds"] == [pytest.approx(lower), pytest.approx(phash.default_threshold)]
    assert lower <= report.dataset("val").threshold <= phash.default_threshold


def test_the_same_seed_gives_the_same_calibration(tmp_path, corpus_index, eval_set, predictions):
    a = _report(tmp_path / "a", corpus_index, eval_set, predictions, calibrate=SMALL).calibration
    b = _report(tmp_path / "b", corpus_index, eval_set, predictions, calibrate=SMALL).calibration
    for rec in (a, b):
        rec["datasets"]["val"].pop("seconds")
    assert a == b


def test_a_users_threshold_wins(tmp_path, corpus_index, eval_set, predictions):
    report = _report(tmp_path, corpus_index, eval_set, predictions, calibrate=SMALL,
                     stats=StatsSettings(threshold=0.9))
    assert report.dataset("val").threshold == 0.9
    assert report.calibration["origins"] == {"val": "threshold"} and "datasets" not in report.calibration
    assert "Thresholds: val 0.9000 (from --threshold)" in (tmp_path / "rep" / "report.md").read_text()
    thresholds = tmp_path / "t.json"
    thresholds.write_text('{"val": 0.95}')
    report = _report(tmp_path / "f", corpus_index, eval_set, predictions, calibrate=SMALL,
                     stats=StatsSettings(thresholds=str(thresholds)))
    assert report.dataset("val").threshold == 0.95 and report.calibration["origins"] == {"val": "file"}


def test_without_calibration_the_detectors_default(tmp_path, corpus_index, eval_set, predictions):
    report = _report(tmp_path, corpus_index, eval_set, predictions, calibrate=None)
    assert report.dataset("val").threshold == get_detector("phash").default_threshold
    assert report.calibration == {"origins": {"val": "default"}}
    assert "(the detector's default)" in (tmp_path / "rep" / "report.md").read_text()


def test_a_positive_pair_is_as_similar_as_a_reports_search_finds_it(tmp_path):
    """Calibration compares each App. C copy with its image through the views a report's search compares (the
    copy's whole image and centre crop, the image's corpus view): the same similarity as searching the copy in
    an index (with phash's default views) that holds only the image."""
    import numpy as np

    from benchmarks.photos import MEDIUM, appc_copy, quadrants
    from overlap_audit.calibrate import _view_similarity
    from overlap_audit.demos.synthetic import bundled_photos
    from overlap_audit.embed import embed_source
    from overlap_audit.index import build_index
    from overlap_audit.match import match_eval_sets, open_corpus, view_cut
    from overlap_audit.settings import IndexSettings
    from overlap_audit.sources import as_source

    photos = bundled_photos()
    settings = MatchSettings(workers=0)
    primary, searched = [], []
    for n, name in enumerate(("coffee", "astronaut", "rocket")):
        image = quadrants(photos[name])[1].convert("RGB")
        copy = appc_copy(image, MEDIUM, np.random.default_rng(n))
        (tmp_path / f"c{n}").mkdir()
        (tmp_path / f"q{n}").mkdir()
        image.save(tmp_path / f"c{n}" / "image.png")
        copy.save(tmp_path / f"q{n}" / "copy.png")
        m = build_index([str(tmp_path / f"c{n}")], tmp_path / f"i{n}", IndexSettings(workers=0))
        assert m.views == (0.7,)
        corpus = open_corpus(tmp_path / f"i{n}", settings)
        found = match_eval_sets(corpus, [("q", str(tmp_path / f"q{n}"))], settings)["q"].neighbors
        det = corpus.detector
        copies = embed_source(as_source(str(tmp_path / f"q{n}"), name="q"), det, workers=0, views=True,
                              crops=settings.query_crops())
        sources = embed_source(as_source(str(tmp_path / f"c{n}"), name="c"), det, workers=0, crops=m.views)
        assert _view_similarity(det, copies, 0, sources, 0, view_cut(settings, det)) == pytest.approx(
            float(found.similarities[0, 0]))
        primary.append(float(det.similarity(copies.vectors[:1], sources.vectors[:1])[0, 0]))
        searched.append(float(found.similarities[0, 0]))
    assert any(p < s for p, s in zip(primary, searched))  # the views matter for these copies
