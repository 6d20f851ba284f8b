from overlap_audit.demos.synthetic import AUGMENTATIONS, augment, bundled_photos, run_demo


def test_demo_finds_its_planted_duplicates(tmp_path):
    result = run_demo(tmp_path, workers=0)
    planted, clean = result.report.dataset("planted"), result.report.dataset("clean")
    assert result.found["planted"] >= 36 and result.false_overlap == {"planted": 0, "clean": 0}
    assert planted.stats.n_overlap == result.found["planted"] and planted.significant
    assert clean.stats.n_overlap == 0
    # the measured inflation is within its interval, and near what the simulated model implies
    lo, hi = planted.stats.ci_delta
    assert lo <= result.expected_delta["planted"] <= hi
    assert "40 planted duplicates" in result.summary()
    assert (tmp_path / "report" / "report.md").exists()


def test_augmentations_are_deterministic_under_a_seed():
    import numpy as np

    photo = bundled_photos()["coffee"].resize((64, 64))
    for kind in AUGMENTATIONS:
        a = augment(photo, kind, np.random.default_rng(5))
        b = augment(photo, kind, np.random.default_rng(5))
        assert a.tobytes() == b.tobytes() and a.size == b.size
