"""The verified pairs' comparisons kept between runs: a second report on the same index and sets compares
nothing again, and an image whose bytes changed is compared again."""

import io
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from overlap_audit.api import ReportSettings, run_report
from overlap_audit.decide.rule import (DECISION_VERSION, DECODE_SIDE, DecisionRule, VerifySettings, _judge,
                                       _judge_all, _Pair)
from overlap_audit.decide.verdicts import VERDICTS_FILE, comparison_key, fingerprint
from overlap_audit.report import SPLITS
from overlap_audit.settings import MatchSettings
from overlap_audit.values import RawItem

from ..helpers import write_predictions


@pytest.fixture(scope="module")
def predictions(tmp_path_factory, eval_set):
    root, planted, clean = eval_set
    return write_predictions(tmp_path_factory.mktemp("preds") / "p.csv", "val", planted + clean,
                             [1] * len(planted) + [i % 2 for i in range(len(clean))])


def _verified(out) -> dict[str, tuple]:
    rows = pq.read_table(out / SPLITS, columns=["id", "verify_score", "verified", "overlap"]).to_pylist()
    return {r["id"]: (r["verify_score"], r["verified"], r["overlap"]) for r in rows
            if r["verify_score"] is not None and np.isfinite(r["verify_score"])}


def test_a_second_report_reuses_the_comparisons_and_a_changed_image_is_compared_again(
        tmp_path, corpus_index, eval_set, predictions):
    root, planted, _ = eval_set
    evals = tmp_path / "val"
    shutil.copytree(root, evals)
    cache = tmp_path / "cache"

    def report(out, cache_dir=cache):
        rep = run_report(corpus_index, [("val", str(evals))],
                         ReportSettings(tmp_path / out, predictions=predictions, cache_dir=cache_dir,
                                        match=MatchSettings(workers=0)))
        return rep.verify["datasets"]["val"], _verified(tmp_path / out)

    first, judged = report("a")
    assert first["n_verified"] == len(judged) > 0 and first["n_cached"] == 0
    assert (cache / VERDICTS_FILE).is_file()
    second, again = report("b")
    assert second["n_cached"] == second["n_pairs"] == first["n_pairs"] >= first["n_verified"]
    assert again == judged
    # one verified example's bytes change (one pixel): its pair is compared again, every other one is not
    changed = next(i for i in planted if i in judged)
    img = Image.open(evals / changed).convert("RGB")
    img.putpixel((0, 0), tuple(255 - v for v in img.getpixel((0, 0))))
    img.save(evals / changed)
    third, after = report("c")
    assert third["n_verified"] == first["n_verified"] and third["n_pairs"] == first["n_pairs"]
    assert third["n_cached"] == third["n_pairs"] - 1  # the changed example's match is its nearest: one pair
    fresh, uncached = report("d", cache_dir=None)
    assert fresh["n_cached"] == 0 and after == uncached


def test_a_cache_that_cannot_be_written_leaves_the_report_as_it_is(tmp_path, corpus_index, eval_set, predictions):
    root, _, _ = eval_set
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    rep = run_report(corpus_index, [("val", str(root))],
                     ReportSettings(tmp_path / "a", predictions=predictions, cache_dir=blocked / "cache",
                                    match=MatchSettings(workers=0)))
    run_report(corpus_index, [("val", str(root))],
                       ReportSettings(tmp_path / "b", predictions=predictions, cache_dir=None,
                                      match=MatchSettings(workers=0)))
    assert rep.verify["datasets"]["val"]["n_cached"] == 0
    assert _verified(tmp_path / "a") == _verified(tmp_path / "b")


def test_the_key_is_both_images_bytes_the_pixel_cap_and_the_rule_version():
    a, b = fingerprint(b"one image"), fingerprint(b"another image")
    key = comparison_key(a, b, max_pixels=10 ** 8, long_side=DECODE_SIDE, decision_version=DECISION_VERSION)
    others = [comparison_key(b, a, max_pixels=10 ** 8, long_side=DECODE_SIDE, decision_version=DECISION_VERSION),
              comparison_key(a, fingerprint(b"another image!"), max_pixels=10 ** 8, long_side=DECODE_SIDE,
                             decision_version=DECISION_VERSION),
              comparison_key(a, b, max_pixels=10 ** 6, long_side=DECODE_SIDE, decision_version=DECISION_VERSION),
              comparison_key(a, b, max_pixels=10 ** 8, long_side=DECODE_SIDE * 2, decision_version=DECISION_VERSION),
              comparison_key(a, b, max_pixels=10 ** 8, long_side=DECODE_SIDE, decision_version=DECISION_VERSION + 1)]
    assert len({key, *others}) == len(others) + 1
    assert key == comparison_key(a, b, max_pixels=10 ** 8, long_side=DECODE_SIDE, decision_version=DECISION_VERSION)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_workers_judge_as_this_process_does_with_corpus_images_shared(tmp_path, tile_sets):
    """Over worker processes, in tasks that prepare a shared corpus image once, every pair's outcome is the
    one ``_judge`` gives it alone; the second time, all of them come from the cache."""
    corpus, other = tile_sets
    files = {}
    for tid, im in corpus[:6] + other[:6]:
        (tmp_path / f"{tid}.png").write_bytes(_png(im))
        files[tid] = str(tmp_path / f"{tid}.png")
    ids = list(files)
    # each of 6 corpus tiles against itself resized and against 4 others: 30 pairs, corpus images shared
    pairs = []
    for k, (tid, im) in enumerate(corpus[:6]):
        small = _png(im.resize((80, 80), Image.Resampling.BICUBIC))
        pairs.append(_Pair(small, None, None, files[tid], 10 ** 8, 0.8144, 0.83))
        for j in range(1, 5):
            pairs.append(_Pair(None, files[ids[(k + j * 2) % len(ids)]], None, files[tid], 10 ** 8, 0.8144, 0.83))
    alone = [_judge(p) for p in pairs]
    pooled, cached = _judge_all(pairs, 2, False, tmp_path / "cache")
    assert not any(cached)
    assert [a[1:] for a in pooled] == [a[1:] for a in alone]
    np.testing.assert_allclose([a[0] for a in pooled], [a[0] for a in alone], equal_nan=True)
    assert sum(a[1] is True for a in alone) >= 6  # the resized copies are found
    again, cached = _judge_all(pairs, 0, False, tmp_path / "cache")
    assert all(cached) and again == pooled


def test_judge_pairs_takes_the_cache_too(tmp_path, tile_sets):
    corpus, _ = tile_sets
    (_, im), (_, im2) = corpus[0], corpus[1]
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(_png(im.resize((70, 70))))
    b.write_bytes(_png(im))
    rule = DecisionRule({"val": 0.9}, VerifySettings())
    pairs = [(RawItem("e", "a", path=str(a)), RawItem("c", "b", path=str(b)), 0.95)]
    first = rule.judge_pairs("val", pairs, workers=0, cache_dir=tmp_path / "cache")
    second = rule.judge_pairs("val", pairs, workers=0, cache_dir=tmp_path / "cache")
    assert first == second and first[0].verdict is True
    b.write_bytes(_png(im2))  # the corpus image is another picture now: compared again, not taken from the cache
    third = rule.judge_pairs("val", pairs, workers=0, cache_dir=tmp_path / "cache")
    assert third[0].verdict is not True


def test_calibrations_comparisons_are_kept_too(tmp_path, corpus_index, eval_set, predictions):
    """Calibration judges its seeded copies and transposes through the same cache: a second report adds no
    comparison to it, and a report without calibration stores fewer."""
    import sqlite3

    from overlap_audit.settings import CalibrationSettings

    root, _, _ = eval_set

    def stored(cache, out, calibrate):
        run_report(corpus_index, [("val", str(root))],
                   ReportSettings(tmp_path / out, predictions=predictions, cache_dir=cache, calibrate=calibrate,
                                  match=MatchSettings(workers=0)))
        with sqlite3.connect(cache / VERDICTS_FILE) as db:
            return db.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0]

    settings = CalibrationSettings(positives=8, negatives=8)
    first = stored(tmp_path / "c", "a", settings)
    assert stored(tmp_path / "c", "b", settings) == first
    assert stored(tmp_path / "plain", "p", None) < first
