"""benchmarks/bench_planted.py: the planted copies it makes and a tiny run's figures."""

import json

import numpy as np
from PIL import Image

from benchmarks.bench_planted import main, planted_copy, planted_set


def test_planted_copy_is_smaller_and_jpeg_like():
    tile = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    for seed in range(20):
        copy = planted_copy(tile, np.random.default_rng(seed))
        assert copy.mode == "RGB"
        # resized to 60-95%, then up to 5% off each side
        assert 0.6 * 0.9 * 96 - 1 <= copy.width <= 0.95 * 96 + 1 and 0.6 * 0.9 * 96 - 1 <= copy.height <= 0.95 * 96 + 1


def test_planted_set_is_seeded_and_balanced():
    from overlap_audit.demos.synthetic import bundled_photos

    photos = dict(list(bundled_photos().items())[:2])
    a, b = planted_set(photos, limit=5), planted_set(photos, limit=5)
    assert len(a.corpus) == len(a.planted) == len(a.unrelated) == 5
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.planted, b.planted))


def test_tiny_run_writes_sane_figures(tmp_path, capsys):
    out = tmp_path / "planted.json"
    main(["--photos", "bundled", "--detectors", "phash", "--limit", "12", "--json", str(out)])
    assert "bundled (development) | phash |" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert row["set"] == "bundled (development)" and row["n_planted"] == row["n_unrelated"] == 12
    for key in ("recall", "precision", "recall_p95", "first_stage_recall", "verified_recall", "verified_precision"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["first_stage"] < row["threshold"] and row["first_stage_recall"] >= row["recall"]
    assert row["verified_recall"] > 0.5  # copies of textured tiles pass verification
    assert row["n_verified"] > 0 and row["verify_ms_median"] > 0
