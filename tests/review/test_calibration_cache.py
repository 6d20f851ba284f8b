"""Calibration's generated images (transposes and App. C copies) keep their embeddings in the evaluation cache:
a second calibration of the same set reads them back and decides the same; a changed image or seed is a miss."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from overlap_audit.calibrate import calibrate_sets
from overlap_audit.decide.rule import DecisionRule, VerifySettings
from overlap_audit.match import match_eval_sets, open_corpus
from overlap_audit.settings import CalibrationSettings, MatchSettings

SETTINGS = MatchSettings(workers=0)
SMALL = CalibrationSettings(positives=4, negatives=10, seed=3)


def _small_set(eval_set, root):
    """Ten images of the evaluation set (planted copies and clean tiles): a sample of 10 takes them all."""
    src, planted, clean = eval_set
    for rel in planted[:5] + clean[:5]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, root / rel)
    return root


def _calibrate(corpus_index, root, cache, calibration=SMALL):
    corpus = open_corpus(corpus_index, SETTINGS)
    matches = match_eval_sets(corpus, [("val", str(root))], SETTINGS)
    return calibrate_sets(corpus, corpus_index, matches, {"val": str(root)},
                          lambda t: DecisionRule.for_detector(corpus.detector, t, VerifySettings()), calibration,
                          SETTINGS, cache_dir=cache)["val"]


def _same(a, b) -> None:
    assert (a.threshold, a.used, a.lower, a.upper) == (b.threshold, b.used, b.lower, b.upper)
    np.testing.assert_array_equal(a.positive_overlap, b.positive_overlap)
    np.testing.assert_array_equal(a.negative_overlap, b.negative_overlap)


def test_a_second_calibration_reads_the_generated_images_embeddings_from_the_cache(tmp_path, corpus_index,
                                                                                    eval_set):
    root = _small_set(eval_set, tmp_path / "val")
    first = _calibrate(corpus_index, root, tmp_path / "cache")
    assert not first.embeddings_cached
    stored = sorted(p.name for p in (tmp_path / "cache").glob("*.npz"))
    assert len(stored) == 3  # the transposes (embeddings and neighbours), the copies, their sources
    second = _calibrate(corpus_index, root, tmp_path / "cache")
    assert second.embeddings_cached
    _same(first, second)
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.npz")) == stored  # nothing written again
    # and the same as a calibration without any cache
    _same(first, _calibrate(corpus_index, root, None))


def test_a_changed_seed_or_image_misses_the_cache(tmp_path, corpus_index, eval_set):
    root = _small_set(eval_set, tmp_path / "val")
    cache = tmp_path / "cache"
    assert not _calibrate(corpus_index, root, cache).embeddings_cached
    other_seed = CalibrationSettings(positives=4, negatives=10, seed=4)
    assert not _calibrate(corpus_index, root, cache, other_seed).embeddings_cached
    assert _calibrate(corpus_index, root, cache, other_seed).embeddings_cached
    # one image changed (a block of pixels painted over): every image is in a sample of 10
    path = next(p for p in sorted(root.rglob("*.png")))
    with Image.open(path) as im:
        changed = im.convert("RGB")
    changed.paste((255, 0, 0), (0, 0, changed.width // 4, changed.height // 4))
    changed.save(path)
    assert not _calibrate(corpus_index, root, cache).embeddings_cached


def test_calibrations_verification_shows_its_progress(tmp_path, corpus_index, eval_set, capsys):
    root = _small_set(eval_set, tmp_path / "val")
    settings = MatchSettings(workers=0, progress=True)
    corpus = open_corpus(corpus_index, settings)
    matches = match_eval_sets(corpus, [("val", str(root))], settings)
    capsys.readouterr()
    calibrate_sets(corpus, corpus_index, matches, {"val": str(root)},
                   lambda t: DecisionRule.for_detector(corpus.detector, t, VerifySettings()), SMALL, settings)
    err = capsys.readouterr().err
    assert "verify val (calibration negatives)" in err and "verify val (calibration positives)" in err
