"""The real-overlap development set (benchmarks/devset): pairs.csv is well formed, and the scorer counts
right on a table small enough to check by hand. Nothing is fetched."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

DEVSET = Path(__file__).resolve().parents[2] / "benchmarks" / "devset"
COLUMNS = ["stamp", "corpus", "label", "unsure", "signals", "note"]
SIGNALS = {"phash", "clipdup", "phash-trim", "clipdup-trim", "name"}


def _load(name: str):
    return importlib.import_module(f"benchmarks.devset.{name}")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    with open(DEVSET / "pairs.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_pairs_csv_values(rows):
    assert rows
    for r in rows:
        assert r["stamp"].startswith("usr/share/tuxpaint/stamps/") and r["stamp"].endswith(".svg"), r
        assert r["corpus"].startswith("usr/share/openclipart/png/") and r["corpus"].endswith(".png"), r
        assert r["label"] in ("0", "1") and r["unsure"] in ("0", "1"), r
        assert r["signals"] and set(r["signals"].split("+")) <= SIGNALS, r


def test_pairs_csv_has_no_duplicate_rows(rows):
    keys = [(r["stamp"], r["corpus"]) for r in rows]
    assert len(keys) == len(set(keys))


def test_pairs_csv_has_both_labels(rows):
    sure = [r["label"] for r in rows if r["unsure"] == "0"]
    assert "1" in sure and "0" in sure


def test_read_pairs_matches_csv(rows):
    labels = _load("score_devset").read_pairs(DEVSET / "pairs.csv")
    assert len(labels) == len(rows)


def test_score_on_a_hand_checked_table():
    score = _load("score_devset").score
    corpus = ["c0", "c1", "c2", "c3", "c4"]
    sim = np.array([[0.90, 0.80, 0.70, 0.10, 0.20],
                    [0.30, 0.95, 0.50, 0.60, 0.40]])
    labels = {("A", "c0"): (1, 0), ("A", "c2"): (1, 0), ("A", "c1"): (0, 0),
              ("B", "c1"): (1, 0), ("B", "c2"): (0, 1)}
    s = score(sim, ["A", "B"], corpus, labels, threshold=0.75, k=3)
    # positives 0.9, 0.7, 0.95; negatives among the top 3: A's c1 (0.8), B's c3 (0.6) (B's c2 is unsure)
    assert (s.n_positive, s.n_negative) == (3, 2)
    assert s.recall_default == pytest.approx(2 / 3) and s.precision_default == pytest.approx(2 / 3)
    # at 0.7 precision is 3/4; at 0.9 it is 1 with recall 2/3
    assert s.threshold_p95 == pytest.approx(0.9) and s.recall_p95 == pytest.approx(2 / 3)
    assert s.threshold_p99 == pytest.approx(0.9) and s.recall_p99 == pytest.approx(2 / 3)
    # A's c2 ranks second (A's c1 scores above it); the others first
    assert (s.rank1, s.top5, s.top10) == (2, 3, 3)


def test_score_ties_count_against_the_true_source():
    score = _load("score_devset").score
    sim = np.array([[0.5, 0.5, 0.1]])
    s = score(sim, ["A"], ["c0", "c1", "c2"], {("A", "c1"): (1, 0)}, threshold=0.5, k=2)
    assert s.rank1 == 0 and s.top5 == 1
    assert s.precision_default == pytest.approx(0.5) and s.recall_default == 1.0


def test_trim_to_content_crops_to_dark_pixels():
    from PIL import Image

    make = _load("make_devset")
    img = Image.new("RGB", (40, 30), "white")
    img.paste((250, 250, 250), (0, 0, 40, 5))  # faint: not content
    img.paste((0, 0, 0), (10, 8, 15, 20))
    assert make.trim_to_content(img).size == (5, 12)
    blank = Image.new("RGB", (8, 8), "white")
    assert make.trim_to_content(blank).size == (8, 8)
