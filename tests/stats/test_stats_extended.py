"""The statistics beyond the paper, against scipy, published values and hand computation."""

import json
import math

import numpy as np
import pytest
from scipy.stats import binom, boschloo_exact, fisher_exact

from overlap_audit.stats.power import simulate, simulate_family
from overlap_audit.stats.overlap import (ExtendedStats, RateEstimate, detector_corrected, extended_stats, holm,
                                 min_detectable_gap, newcombe, overlap_stats, two_sample_test, wilson)

# Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score, no continuity
# correction), 95% intervals for p1 - p2.
NEWCOMBE_TABLE_II = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)),
    ((10, 10, 0, 10), (0.6075, 1.0000)),
]


@pytest.mark.parametrize("counts,published", NEWCOMBE_TABLE_II)
def test_newcombe_matches_the_published_table(counts, published):
    assert newcombe(*counts, ci_level=0.95) == pytest.approx(published, abs=5e-5)


def test_wilson_by_hand():
    # Wilson (1927): (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    k, n, z = 7, 20, 1.959963984540054
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson(k, n, 0.95) == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)),
                                               abs=1e-9)


@pytest.mark.parametrize("k1,n1,k2,n2", [(18, 20, 52, 80), (3, 10, 4, 10), (10, 10, 0, 5), (0, 4, 4, 4)])
def test_two_sample_test_is_scipys_boschloo_and_fisher(k1, n1, k2, n2):
    table = [[k1, k2], [n1 - k1, n2 - k2]]
    bos = two_sample_test(k1, n1, k2, n2)
    assert bos.method == "boschloo"
    assert bos.p_value == pytest.approx(boschloo_exact(table, alternative="greater").pvalue, abs=1e-9)
    fis = two_sample_test(k1, n1, k2, n2, boschloo_max_tables=0)
    assert fis.method == "fisher"
    assert fis.p_value == pytest.approx(fisher_exact(table, alternative="greater").pvalue, abs=1e-9)
    assert bos.p_value <= fis.p_value + 1e-12  # Boschloo is never less powerful than Fisher


def test_two_sample_direction_and_large_sets_use_fisher():
    assert two_sample_test(18, 20, 10, 20).p_value < 0.01  # Overlap better: small p
    assert two_sample_test(10, 20, 18, 20).p_value > 0.99  # Overlap worse: not evidence of inflation
    assert two_sample_test(800, 1000, 5000, 9000).method == "fisher"
    assert two_sample_test(3, 5, 0, 0) == two_sample_test(0, 0, 3, 5)
    assert two_sample_test(3, 5, 0, 0).p_value is None


def test_holm_by_hand():
    r = holm([0.01, None, 0.04, 0.03, 0.005], alpha=0.05)
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1 -> max(0.06, 0.04)=0.06
    assert r.m == 4
    assert [r.adjusted[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert r.significant == [True, None, False, False, True]
    # Holm rejects at least whatever Bonferroni rejects
    from overlap_audit.stats.overlap import bonferroni

    rng = np.random.default_rng(0)
    for _ in range(200):
        ps = list(rng.uniform(0, 0.1, 5))
        b, h = bonferroni(ps, 0.05).significant, holm(ps, 0.05).significant
        assert all(hb or not bb for bb, hb in zip(b, h))


def test_min_detectable_gap_is_where_power_reaches_80_percent():
    n, p0, alpha = 40, 0.6, 0.05
    gap = min_detectable_gap(n, p0, alpha)
    c = next(k for k in range(n + 1) if binom.sf(k - 1, n, p0) <= alpha)
    assert binom.sf(c - 1, n, p0 + gap) == pytest.approx(0.8, abs=1e-6)
    assert binom.sf(c - 1, n, p0 + gap - 0.01) < 0.8
    assert min_detectable_gap(400, p0, alpha) < gap  # more Overlap examples: smaller detectable gap
    assert min_detectable_gap(2, 0.6, 0.05) is None  # 2 of 2 correct is not significant at 0.6
    assert min_detectable_gap(50, 1.0, 0.05) is None and min_detectable_gap(0, 0.5, 0.05) is None


def test_power_function_agrees_with_simulation():
    # with a huge Clean set, acc_clean is known and the paper's test is exact: at the minimum detectable
    # gap it rejects 80% of the time
    n_ov, p0, alpha = 60, 0.7, 0.05
    gap = min_detectable_gap(n_ov, p0, alpha)
    cell = simulate(n_ov, 10**7, p0, p0 + gap, alpha=alpha, n_sim=4000, seed=3, boschloo_max_tables=0)
    assert abs(cell.rejection_paper - 0.8) < 3 * math.sqrt(0.8 * 0.2 / 4000)


def test_detector_correction_with_perfect_detector_is_the_paper():
    base = overlap_stats(70, 100, 18, 20)
    c = detector_corrected(70, 100, 18, 20, RateEstimate(1.0), RateEstimate(1.0), n_boot=500)
    assert c.overlap_rate == pytest.approx(base.overlap_rate)
    assert c.delta == pytest.approx(base.delta)
    assert c.acc_true_overlap == pytest.approx(0.9) and c.acc_true_clean == pytest.approx(0.65)


def test_detector_correction_recovers_a_known_truth():
    # 1000 examples, 200 truly overlapping (accuracy 0.95), 800 clean (accuracy 0.60): true All - Clean
    # = 0.2 * 0.35 = 0.07. The detector finds 150 of the 200 (recall 0.75) plus 10 false positives
    # (precision 150/160). Its naive split underestimates the inflation; the correction recovers it.
    n_all, n_ov = 1000, 160
    k_ov = 150 * 0.95 + 10 * 0.60
    k_cl = 50 * 0.95 + 790 * 0.60
    k_all = k_ov + k_cl
    naive = k_all / n_all - k_cl / (n_all - n_ov)
    c = detector_corrected(round(k_all), n_all, round(k_ov), n_ov, RateEstimate.parse("150/160"),
                           RateEstimate.parse("0.75"), n_boot=2000)
    assert naive < 0.06
    assert c.overlap_rate == pytest.approx(0.2, abs=1e-3)
    assert c.delta == pytest.approx(0.07, abs=0.004)
    assert c.ci_delta[0] < 0.07 < c.ci_delta[1]


def test_detector_correction_undefined_cases_and_parsing():
    assert detector_corrected(5, 10, 0, 0, RateEstimate(0.9), RateEstimate(0.9)).delta is None
    assert detector_corrected(5, 10, 5, 10, RateEstimate(0.9), RateEstimate(0.9)).note == "no Clean examples"
    assert RateEstimate.parse("97/100") == RateEstimate(0.97, 97, 100)
    assert RateEstimate.parse([3, 4]).trials == 4
    for bad in ("1.5", "0", "5/4", "x"):
        with pytest.raises(ValueError):
            RateEstimate.parse(bad)


def test_extended_stats_decomposition_and_json():
    base = overlap_stats(70, 100, 18, 20)
    e = extended_stats(base, power_alpha=0.05, precision=RateEstimate.parse("45/50"), recall=RateEstimate(0.8),
                       n_boot=300)
    assert e.gap == pytest.approx(0.25)
    assert base.delta == pytest.approx(base.overlap_rate * e.gap)
    assert e.ci_delta_newcombe == pytest.approx(tuple(0.2 * x for x in newcombe(18, 20, 52, 80, 0.995)))
    assert e.ci_gap_newcombe[0] < e.gap < e.ci_gap_newcombe[1]
    text = json.dumps(e.to_dict(), allow_nan=False)
    assert ExtendedStats.from_dict(json.loads(text)) == e
    empty = extended_stats(overlap_stats(3, 10, 0, 0), power_alpha=0.05)
    assert empty.two_sample_p is None and empty.ci_gap_newcombe is None and empty.min_detectable_gap is None
    json.dumps(empty.to_dict(), allow_nan=False)


# ---------------------------------------------------------------- calibration (seeded, small grid)

NULL_GRID = [(20, 5, 0.7), (30, 10, 0.5), (10, 40, 0.8)]


@pytest.mark.parametrize("n_ov,n_cl,acc", NULL_GRID)
def test_two_sample_test_holds_its_level_under_the_null(n_ov, n_cl, acc):
    cell = simulate(n_ov, n_cl, acc, alpha=0.05, n_sim=2000, seed=11)
    assert cell.rejection_two_sample <= 0.05 + 3 * cell.mc_se


def test_papers_test_exceeds_its_level_when_clean_is_small():
    cell = simulate(50, 5, 0.8, alpha=0.05, n_sim=2000, seed=5)
    assert cell.rejection_paper > 0.05 + 10 * cell.mc_se  # about 0.26: five times the nominal level
    assert cell.rejection_two_sample <= 0.05 + 3 * cell.mc_se


def test_papers_test_is_calibrated_when_clean_is_large():
    cell = simulate(30, 20_000, 0.6, alpha=0.05, n_sim=3000, seed=7, boschloo_max_tables=0)
    assert cell.rejection_paper <= 0.05 + 3 * cell.mc_se


def test_holm_and_bonferroni_control_the_family_wise_error():
    fam = simulate_family(NULL_GRID + [(40, 40, 0.6)], alpha=0.05, n_sim=600, seed=2)
    se = math.sqrt(0.05 * 0.95 / 600)
    assert fam.rejection["two_sample+holm"] <= 0.05 + 3 * se
    assert fam.rejection["two_sample+bonferroni"] <= fam.rejection["two_sample+holm"] + 1e-12
    assert fam.rejection["paper+holm"] > 0.05 + 3 * se  # the paper's own test does not


def test_power_under_an_alternative():
    cell = simulate(40, 40, 0.5, 0.85, alpha=0.05, n_sim=1000, seed=9)
    assert cell.rejection_two_sample > 0.8
    fam = simulate_family([(40, 40, 0.5, 0.85), (40, 40, 0.5, 0.85)], alpha=0.05, n_sim=300, seed=1)
    assert fam.rejection["two_sample+holm"] >= fam.rejection["two_sample+bonferroni"] > 0.8
