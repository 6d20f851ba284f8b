"""The multi-seed controlled experiment's bookkeeping: the held-out choice and the per-seed quantities."""

import numpy as np
import pytest

from benchmarks.smallclip_seeds import CLASSES, choose_eval, seed_result, summary, table


def test_the_evaluation_drawings_are_per_class_and_fixed_by_the_seed():
    ids = [f"openclipart-png:{c}/x{i}.png" for c in (*CLASSES, "unsorted") for i in range(30)]
    idx, labels = choose_eval(ids, 10, seed=0)
    assert len(idx) == 10 * len(CLASSES) == len(set(idx.tolist()))
    assert all(ids[i].split(":")[1].startswith(lab + "/") for i, lab in zip(idx, labels))
    assert "unsorted" not in labels
    again, _ = choose_eval(ids, 10, seed=0)
    other, _ = choose_eval(ids, 10, seed=1)
    np.testing.assert_array_equal(idx, again)
    assert set(idx.tolist()) != set(other.tolist())


def test_audit_and_the_duplicates_own_inflation_by_hand():
    planted = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    a = np.array([1, 1, 1, 0, 1, 0, 0, 0], float)  # A: 3/4 planted, 1/4 other
    c = np.array([1, 0, 0, 0, 1, 1, 0, 0], float)  # C: 1/4 on A's planted half
    r = seed_result(a, c, planted, n_boot=200)
    assert r["audit_all_minus_clean"] == pytest.approx(4 / 8 - 1 / 4)
    # counterfactual: C on the planted half (1 right), A on the other (1 right)
    assert r["duplicate_inflation"] == pytest.approx(4 / 8 - 2 / 8)
    assert r["dup_minus_audit"] == pytest.approx(0.0)
    lo, hi = r["ci95_bootstrap"]["audit"]
    assert lo <= r["audit_all_minus_clean"] <= hi
    s = summary([r, {**r, "audit_all_minus_clean": 0.0}])
    assert s["audit_all_minus_clean"]["mean"] == pytest.approx(0.125)
    assert s["audit_all_minus_clean"]["sd"] == pytest.approx(np.std([0.25, 0.0], ddof=1))
    text = table({"per_seed": {"0": r, "1": r}})
    assert "| 0 | 50.0 / 75.0 / 25.0 |" in text and "mean (sd) over 2 seeds" in text
