from overlap_audit.demo import AUGMENTATIONS, augment, bundled_photos, run_demo


def test_demo_finds_its_planted_duplicates(tmp_path):
    report = run_demo(tmp_path, workers=0)
    planted, clean = report.dataset("planted"), report.dataset("clean")
    assert planted.stats.n_overlap >= 36 and planted.significant
    assert clean.stats.n_overlap == 0
    assert (tmp_path / "report" / "report.md").exists()


def test_augmentations_are_deterministic_under_a_seed():
    import numpy as np

    photo = bundled_photos()["coffee"].resize((64, 64))
    for kind in AUGMENTATIONS:
        a = augment(photo, kind, np.random.default_rng(5))
        b = augment(photo, kind, np.random.default_rng(5))
        assert a.tobytes() == b.tobytes() and a.size == b.size
