"""Statistics against references computed independently: exact binomial sums with math.comb, and
Clopper–Pearson bounds found by bisection on those sums; and against scipy to 1e-9."""

import json
import math

import pytest
from scipy.stats import binomtest

from overlap_audit.stats.overlap import OverlapStats, bonferroni, clopper_pearson, overlap_stats


def tail_ge(k: int, n: int, p: float) -> float:
    """P(X >= k), X ~ Binomial(n, p), summed exactly term by term."""
    if k <= 0:
        return 1.0
    return math.fsum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def tail_le(k: int, n: int, p: float) -> float:
    return math.fsum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(0, k + 1))


def bisect(f, target: float, increasing: bool) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def cp_reference(k: int, n: int, level: float) -> tuple[float, float]:
    a = (1 - level) / 2
    low = 0.0 if k == 0 else bisect(lambda p: tail_ge(k, n, p), a, increasing=True)
    high = 1.0 if k == n else bisect(lambda p: tail_le(k, n, p), a, increasing=False)
    return low, high


CASES = [(0, 10), (10, 10), (3, 10), (1, 1), (0, 1), (57, 100), (250, 400), (7, 31)]


@pytest.mark.parametrize("k,n", CASES)
@pytest.mark.parametrize("level", [0.995, 0.95])
def test_clopper_pearson_matches_bisection_and_scipy(k, n, level):
    ours = clopper_pearson(k, n, level)
    ref = cp_reference(k, n, level)
    assert ours == pytest.approx(ref, abs=1e-9)
    sc = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    assert ours == pytest.approx((sc.low, sc.high), abs=1e-9)


def test_published_clopper_pearson_value():
    # Clopper & Pearson (1934) style textbook value: 95% interval for 0 of 10 is [0, 0.3085].
    assert clopper_pearson(0, 10, 0.95)[1] == pytest.approx(1 - 0.025 ** 0.1, abs=1e-12)
    assert clopper_pearson(0, 10, 0.95)[1] == pytest.approx(0.30850, abs=1e-5)


def test_paper_statistics_by_hand():
    # All: 70/100 correct; Overlap: 18/20 correct; Clean: 52/80.
    s = overlap_stats(70, 100, 18, 20)
    assert (s.n_all, s.n_overlap, s.n_clean, s.k_clean) == (100, 20, 80, 52)
    assert s.overlap_rate == 0.2 and s.acc_all == 0.7 and s.acc_overlap == 0.9 and s.acc_clean == 0.65
    assert s.delta == pytest.approx(0.05, abs=1e-15)
    assert s.delta == pytest.approx(s.overlap_rate * (s.acc_overlap - s.acc_clean), abs=1e-15)
    assert s.p_value == pytest.approx(tail_ge(18, 20, 0.65), abs=1e-12)
    assert s.p_value == pytest.approx(binomtest(18, 20, 0.65, alternative="greater").pvalue, abs=1e-9)
    lo_o, hi_o = cp_reference(18, 20, 0.995)
    lo_c, hi_c = cp_reference(52, 80, 0.995)
    assert s.ci_overlap == pytest.approx((lo_o, hi_o), abs=1e-9)
    assert s.ci_clean == pytest.approx((lo_c, hi_c), abs=1e-9)
    assert s.ci_delta == pytest.approx((0.2 * (lo_o - hi_c), 0.2 * (hi_o - lo_c)), abs=1e-9)


@pytest.mark.parametrize("k_all,n_all,k_ov,n_ov", [
    (5, 10, 5, 5),     # acc_clean = 0: any correct overlap example is impossible under H0
    (5, 10, 0, 5),     # acc_clean = 1, k_overlap = 0
    (10, 10, 5, 5),    # acc_clean = 1, all overlap correct: p = 1
    (0, 10, 0, 5),     # acc_clean = 0, k_overlap = 0: p = 1
    (3, 10, 0, 0),     # no overlap
    (3, 10, 3, 10),    # no clean
    (0, 0, 0, 0),      # empty dataset
])
def test_edge_cases_give_none_not_nan(k_all, n_all, k_ov, n_ov):
    s = overlap_stats(k_all, n_all, k_ov, n_ov)
    text = json.dumps(s.to_dict(), allow_nan=False)  # raises on NaN
    assert OverlapStats.from_dict(json.loads(text)) == s
    n_clean = n_all - n_ov
    if n_ov == 0 or n_clean == 0:
        assert s.p_value is None and s.ci_delta is None
    if n_ov == 0:
        assert s.acc_overlap is None and s.ci_overlap is None
    if n_clean == 0:
        assert s.acc_clean is None and s.delta is None and s.ci_clean is None
    if n_all == 0:
        assert s.overlap_rate is None and s.acc_all is None
    if n_ov and n_clean:
        ref = tail_ge(k_ov, n_ov, s.acc_clean)
        assert s.p_value == pytest.approx(ref, abs=1e-12)
        assert s.p_value == pytest.approx(binomtest(k_ov, n_ov, s.acc_clean, alternative="greater").pvalue, abs=1e-9)


def test_specific_boundary_p_values():
    assert overlap_stats(5, 10, 5, 5).p_value == 0.0       # acc_clean 0, 5 of 5 correct
    assert overlap_stats(0, 10, 0, 5).p_value == 1.0       # acc_clean 0, k = 0
    assert overlap_stats(10, 10, 5, 5).p_value == 1.0      # acc_clean 1
    assert overlap_stats(5, 10, 0, 5).p_value == 1.0       # acc_clean 1, k = 0: P(X >= 0) = 1


def test_inconsistent_counts_are_rejected():
    for args in [(5, 4, 0, 0), (3, 10, 4, 5), (3, 10, 2, 11), (-1, 10, 0, 0)]:
        with pytest.raises(ValueError):
            overlap_stats(*args)
    with pytest.raises(ValueError):
        overlap_stats(10, 10, 1, 1, ci_level=1.0)


def test_bonferroni():
    r = bonferroni([0.01, None, 0.02, 0.2], alpha=0.05)
    assert r.m == 3
    assert r.adjusted[1] is None and r.adjusted[0] == pytest.approx(0.03) and r.adjusted[2:] == pytest.approx([0.06, 0.6])
    assert r.significant == [True, None, False, False]
    assert bonferroni([0.5, 0.5], 0.05).adjusted == [1.0, 1.0]
    assert bonferroni([None], 0.05).m == 0
    with pytest.raises(ValueError):
        bonferroni([0.1], alpha=0)
