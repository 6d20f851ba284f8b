"""The per-set threshold rule (decide.calibrate_set): intervals, the precision estimate, and a threshold
recovered from a generated set whose precision curve is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta, norm

from overlap_audit.decide.calibrate_set import (clopper_pearson, estimate_precision, false_match_rate,
                                                pick_threshold, threshold_candidates)


def test_clopper_pearson_known_values():
    # none of 10: the upper bound solves (1 - p)^10 = 0.025
    low, high = clopper_pearson(0, 10, 0.95)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** 0.1)
    low, high = clopper_pearson(10, 10, 0.95)
    assert high == 1.0 and low == pytest.approx(0.025 ** 0.1)
    low, high = clopper_pearson(3, 10, 0.95)  # reference values (scipy's binomtest agrees)
    assert (round(low, 4), round(high, 4)) == (0.0667, 0.6525)


def test_false_match_rate_is_above_zero_when_nothing_matched():
    assert false_match_rate(0, 100) == pytest.approx(1 - 0.5 ** (1 / 100))
    assert 0.0 < false_match_rate(0, 1000) < 0.001


def test_estimate_precision():
    est = estimate_precision(2, 400, 50, 1000)
    fpr = beta.ppf(0.5, 3, 398)
    assert est.value == pytest.approx(1 - fpr * 1000 / 50)
    assert est.low <= est.value <= est.high
    assert estimate_precision(0, 400, 0, 1000) is None  # nothing called Overlap: no precision
    assert estimate_precision(400, 400, 10, 1000).value == 0.0  # clipped


def test_pick_threshold_the_lowest_that_reaches_the_target():
    cands = np.array([0.5, 0.6, 0.7, 0.8], np.float32)
    # at 0.5 and 0.6 too many false matches; 0.7 reaches it; 0.8 does too but is higher
    assert pick_threshold(cands, [50, 10, 0, 0], 1000, [900, 700, 500, 100], 1000, 0.99) == pytest.approx(0.7)
    assert pick_threshold(cands, [50, 10, 5, 5], 1000, [900, 700, 500, 100], 1000, 0.99) is None
    # a threshold with nothing at or above it is never chosen
    assert pick_threshold(cands, [0, 0, 0, 0], 1000, [0, 0, 0, 0], 1000, 0.5) is None


def test_threshold_candidates_within_bounds():
    c = threshold_candidates([0.3, 0.75, np.nan], [0.8, 0.95], lower=0.7, upper=0.9)
    assert c.tolist() == pytest.approx([0.7, 0.75, 0.8, 0.9])


def test_recovers_a_known_threshold_on_a_generated_set():
    """A set of 20,000 examples, 30% copies; the top-1 similarity of a distinct example, and of a negative,
    is N(0.6, 0.08), a copy's N(0.92, 0.04). The true precision at t is 1 - FPR(t) n_distinct / O(t); the
    estimate (which counts all n examples as possible false matches) lies a little below it, so the chosen
    threshold is the one where 1 - FPR(t) n / O(t) = 0.99 on the true curves, found here by bisection."""
    rng = np.random.default_rng(7)
    n, share = 20_000, 0.3
    copies = rng.normal(0.92, 0.04, int(n * share))
    distinct = rng.normal(0.6, 0.08, n - len(copies))
    observed = np.concatenate([copies, distinct]).astype(np.float32)
    negatives = rng.normal(0.6, 0.08, 20_000).astype(np.float32)

    def estimated(t):  # on the true distributions
        fpr = norm.sf(t, 0.6, 0.08)
        o = len(copies) * norm.sf(t, 0.92, 0.04) + (n - len(copies)) * fpr
        return 1 - fpr * n / o

    lo, hi = 0.6, 0.95
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if estimated(mid) >= 0.99 else (mid, hi)
    known = hi
    cands = threshold_candidates(negatives, observed, lower=0.5, upper=1.0)
    x = len(negatives) - np.searchsorted(np.sort(negatives), cands, side="left")
    o = len(observed) - np.searchsorted(np.sort(observed), cands, side="left")
    chosen = pick_threshold(cands, x, len(negatives), o, n, 0.99)
    assert chosen == pytest.approx(known, abs=0.01)
