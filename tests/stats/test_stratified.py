"""The class-stratified statistics against statsmodels, brute-force enumeration and published values."""

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import chi2_contingency, norm
from statsmodels.stats.contingency_tables import StratifiedTable

from overlap_audit.stats.overlap import overlap_stats
from overlap_audit.stats.strata import ClassTable, StrataCounts, mix_check, strata_counts, unjudged
from overlap_audit.stats.stratified import (EXACT_MAX_WORK, Stratified, cmh_test, compare_within_classes, disagreement,
                                            disagreements, exact_conditional_test, mantel_fleiss, mh_odds_ratio,
                                            mh_risk_difference, stratified_inflation, stratify)
from overlap_audit.values import Neighbors, Split

# R's mantelhaen.test example (Agresti 1990, pp. 231-237, penicillin and rabbits): per stratum, immediate
# injection (our "Overlap") cured a of n1, delayed cured c of n0. R documents p = 0.047 (CMH with continuity
# correction), 0.040 (exact, two-sided), 0.020 (exact, "greater") and a common odds ratio of 7.
RABBITS = dict(a=[0, 3, 6, 5, 2], n1=[6, 6, 6, 6, 2], c=[0, 0, 2, 6, 5], n0=[5, 6, 6, 6, 5])


def random_tables(seed: int, strata: int, max_n: int):
    rng = np.random.default_rng(seed)
    n1 = rng.integers(1, max_n, strata)
    n0 = rng.integers(1, max_n, strata)
    a = rng.binomial(n1, rng.uniform(0.2, 0.95, strata))
    c = rng.binomial(n0, rng.uniform(0.2, 0.95, strata))
    return a, n1, c, n0


def statsmodels_table(a, n1, c, n0):
    return StratifiedTable(np.array([[a, n1 - a], [c, n0 - c]], dtype=float))


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("correction", [False, True])
def test_cmh_and_odds_ratio_equal_statsmodels(seed, correction):
    a, n1, c, n0 = random_tables(seed, strata=2 + seed % 9, max_n=5 + 7 * seed)
    ref = statsmodels_table(a, n1, c, n0)
    s = float(np.sum(a - n1 * (a + c) / (n1 + n0)))
    ours = cmh_test(a, n1, c, n0, correction=correction)
    # statsmodels subtracts the correction even where |S| < 1/2; R and this module leave S uncorrected there
    want = ref.test_null_odds(correction=correction and abs(s) >= 0.5)
    assert ours.statistic == pytest.approx(want.statistic, rel=1e-9, abs=1e-12)
    assert ours.p_two_sided == pytest.approx(want.pvalue, rel=1e-9, abs=1e-12)
    if np.sum((n1 - a) * c / (n1 + n0)) > 0:
        assert mh_odds_ratio(a, n1, c, n0) == pytest.approx(ref.oddsratio_pooled, rel=1e-9)


def test_cmh_one_sided_is_half_the_two_sided_in_the_right_direction():
    a, n1, c, n0 = np.array([9, 8, 7]), np.array([10, 10, 10]), np.array([5, 6, 4]), np.array([10, 10, 10])
    t = cmh_test(a, n1, c, n0, correction=False)
    assert t.p_greater == pytest.approx(t.p_two_sided / 2, rel=1e-12)
    worse = cmh_test(c, n0, a, n1, correction=False)  # swapped: Overlap now less accurate
    assert worse.p_greater == pytest.approx(1 - t.p_greater, rel=1e-12)
    corrected = cmh_test(a, n1, c, n0, correction=True)
    assert corrected.p_greater > t.p_greater


def test_cmh_correction_is_not_applied_below_one_half():
    # S = 0.25 here: R leaves the statistic uncorrected, it does not turn into (0.5 - 0.25)^2 / V
    a, n1, c, n0 = [1, 1], [2, 2], [1, 1], [2, 2]
    assert cmh_test(a, n1, c, n0, correction=True).statistic == 0.0
    a, n1, c, n0 = [2], [3], [1], [1]  # S = 2 - 3*3/4 = -0.25
    t = cmh_test(a, n1, c, n0, correction=True)
    assert t.statistic == pytest.approx(cmh_test(a, n1, c, n0, correction=False).statistic)


def test_rabbits_match_r_documented_values():
    t = cmh_test(**RABBITS)
    assert round(t.p_two_sided, 3) == 0.047
    assert t.statistic == pytest.approx(3.9286, abs=5e-5)
    ex = exact_conditional_test(**RABBITS)
    assert round(ex.p_two_sided, 3) == 0.040
    assert round(ex.p_greater, 3) == 0.020
    assert mh_odds_ratio(**RABBITS) == pytest.approx(7.0, rel=1e-12)


def brute_force_exact(a, n1, c, n0):
    """Every combination of the a_j within their margins, probability the product of hypergeometrics."""
    keep = [(aj, m, cj, o) for aj, m, cj, o in zip(a, n1, c, n0) if m > 0 and o > 0]
    supports, probs = [], []
    for aj, m, cj, o in keep:
        k, big = aj + cj, m + o
        xs = range(max(0, m - (big - k)), min(m, k) + 1)
        supports.append(list(xs))
        probs.append({x: Fraction(math.comb(k, x) * math.comb(big - k, m - x), math.comb(big, m)) for x in xs})
    t_obs = sum(aj for aj, *_ in keep)
    dist: dict[int, Fraction] = {}
    for combo in itertools.product(*supports):
        p = Fraction(1)
        for j, x in enumerate(combo):
            p *= probs[j][x]
        dist[sum(combo)] = dist.get(sum(combo), Fraction(0)) + p
    assert sum(dist.values()) == 1
    greater = sum(p for t, p in dist.items() if t >= t_obs)
    two = sum(p for t, p in dist.items() if p <= dist[t_obs])
    return t_obs, float(greater), float(two)


@pytest.mark.parametrize("seed", range(12))
def test_exact_conditional_test_equals_brute_force_enumeration(seed):
    a, n1, c, n0 = random_tables(100 + seed, strata=2 + seed % 4, max_n=9)
    t_obs, greater, two = brute_force_exact(a, n1, c, n0)
    ex = exact_conditional_test(a, n1, c, n0)
    assert ex.t_observed == t_obs
    assert ex.p_greater == pytest.approx(greater, rel=1e-9, abs=1e-12)
    assert ex.p_two_sided == pytest.approx(two, rel=1e-9, abs=1e-12)


def test_exact_test_drops_uninformative_classes_and_handles_none():
    a, n1, c, n0 = [3, 2, 0], [4, 2, 0], [1, 0, 5], [4, 0, 6]  # the last two classes lack Clean / Overlap
    assert exact_conditional_test(a, n1, c, n0) == exact_conditional_test([3], [4], [1], [4])
    assert exact_conditional_test([2], [2], [0], [0]) is None
    assert cmh_test([2], [2], [0], [0]) is None
    assert mh_risk_difference([2], [2], [0], [0]) is None


def sato_by_hand(a, n1, c, n0):
    """Sato (1989) in exact rational arithmetic, one stratum at a time (as SAS PROC FREQ documents it)."""
    sw = sp = sq = swd = Fraction(0)
    for aj, m, cj, o in zip(map(int, a), map(int, n1), map(int, c), map(int, n0)):
        if m == 0 or o == 0:
            continue
        big = m + o
        w = Fraction(m * o, big)
        sw += w
        swd += w * (Fraction(aj, m) - Fraction(cj, o))
        sp += Fraction(m * m * cj - o * o * aj, big * big) + Fraction(m * o * (o - m), 2 * big * big)
        sq += Fraction(aj * (o - cj) + cj * (m - aj), 2 * big)
    rd = swd / sw
    return float(rd), float((rd * sp + sq) / (sw * sw))


@pytest.mark.parametrize("seed", range(10))
def test_risk_difference_equals_hand_computation(seed):
    a, n1, c, n0 = random_tables(200 + seed, strata=1 + seed, max_n=40)
    rd_hand, var_hand = sato_by_hand(a, n1, c, n0)
    rd = mh_risk_difference(a, n1, c, n0, ci_level=0.95)
    assert rd.estimate == pytest.approx(rd_hand, rel=1e-9, abs=1e-12)
    assert rd.variance == pytest.approx(var_hand, rel=1e-9, abs=1e-15)
    half = norm.ppf(0.975) * math.sqrt(var_hand)
    assert rd.ci == pytest.approx((max(-1, rd_hand - half), min(1, rd_hand + half)), abs=1e-9)


@pytest.mark.parametrize("a,n1,c,n0", [(7, 10, 20, 40), (3, 5, 9, 30), (50, 60, 300, 500)])
def test_sato_variance_in_one_class_is_the_two_binomial_variances(a, n1, c, n0):
    p1, p0 = a / n1, c / n0
    assert mh_risk_difference([a], [n1], [c], [n0]).variance == pytest.approx(
        p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0, rel=1e-9)


def test_sato_close_to_greenland_robins_for_few_large_classes():
    a, n1, c, n0 = random_tables(7, strata=3, max_n=2000)
    n1, n0 = n1 + 500, n0 + 500
    a = np.minimum(a, n1)
    c = np.minimum(c, n0)
    big = n1 + n0
    b, d = n1 - a, n0 - c
    # Greenland & Robins (1985): Σ (a b n0³ + c d n1³) / (n1 n0 N²) / (Σ n1 n0 / N)²
    gr = np.sum((a * b * n0 ** 3.0 + c * d * n1 ** 3.0) / (n1 * n0 * big ** 2.0)) / np.sum(n1 * n0 / big) ** 2
    assert mh_risk_difference(a, n1, c, n0).variance == pytest.approx(gr, rel=0.05)


def test_inflation_by_hand_and_its_decomposition():
    labels = ["cat"] * 10 + ["dog"] * 6 + ["eel"] * 4 + [None] * 2
    overlap = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0] + [1, 0, 0, 0, 0, 0] + [1, 1, 1, 1] + [1, 0]
    correct = [1, 1, 0, 1, 0, 0, 1, 0, 0, 0] + [1, 1, 1, 0, 0, 1] + [1, 1, 0, 1] + [1, 1]
    s = stratify(labels, overlap, correct)
    cmp = s.comparison
    assert (cmp.n_all, cmp.n_unlabelled, cmp.n_classes, cmp.n_classes_informative) == (22, 2, 3, 2)
    assert (cmp.n_classes_dropped, cmp.n_overlap_informative, cmp.n_overlap_dropped) == (1, 4, 5)
    # cat: Overlap 2/3, Clean 2/7; dog: Overlap 1/1, Clean 3/5
    gap_cat, gap_dog = 2 / 3 - 2 / 7, 1 - 3 / 5
    assert cmp.inflation == pytest.approx((3 * gap_cat + 1 * gap_dog) / 22, rel=1e-12)
    mix = s.mix
    assert mix.acc_overlap == pytest.approx(3 / 4)
    assert mix.acc_clean == pytest.approx(5 / 12)
    assert mix.acc_overlap_expected == pytest.approx((3 * 2 / 7 + 1 * 3 / 5) / 4)
    assert mix.gap_within + mix.gap_mix == pytest.approx(mix.acc_overlap - mix.acc_clean, abs=1e-15)
    assert mix.gap_within * 4 / 22 == pytest.approx(cmp.inflation, rel=1e-12)
    rows = {r.label: r for r in s.table.rows}
    assert [r.label for r in s.table.rows] == ["eel", "cat", "dog"]  # by Overlap count
    assert rows["eel"].acc_clean is None and not rows["eel"].informative and rows["eel"].inflation is None
    assert rows["cat"].gap == pytest.approx(gap_cat)
    assert sum(r.inflation for r in s.table.rows if r.inflation is not None) == pytest.approx(cmp.inflation)


def test_inflation_interval_contains_the_estimate_and_shrinks_with_n():
    small = stratified_inflation([8, 5], [10, 10], [50, 30], [100, 100], 220)
    large = stratified_inflation([80, 50], [100, 100], [500, 300], [1000, 1000], 2200)
    assert small[0] == pytest.approx(large[0])
    assert small[1][0] < small[0] < small[1][1]
    assert large[1][1] - large[1][0] < small[1][1] - small[1][0]
    # a class at 100% in both splits still has a positive width (the smoothed variance)
    lo, hi = stratified_inflation([5], [5], [20], [20], 25)[1]
    assert lo < 0 < hi


def test_mix_check_chi2_equals_scipy_and_names_the_driving_class():
    rng = np.random.default_rng(3)
    labels = [f"c{i}" for i in rng.integers(0, 5, 3000)]
    overlap = rng.random(3000) < 0.2
    overlap[np.array(labels) == "c2"] = rng.random(int(np.sum(np.array(labels) == "c2"))) < 0.5
    correct = rng.random(3000) < 0.7
    counts = strata_counts(labels, overlap, correct)
    mix = mix_check(counts)
    assert mix.method == "chi2"
    ref = chi2_contingency(np.stack([counts.n_overlap, counts.n_clean]), correction=False)
    assert mix.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert mix.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    assert mix.dof == 4
    assert mix.drivers[0].label == "c2" and mix.drivers[0].residual > 0
    assert mix.drivers[0].n_overlap > mix.drivers[0].expected_overlap


def test_mix_check_small_counts_use_monte_carlo_close_to_the_exact_permutation_p():
    # 2 classes, 3 Overlap of 8: the exact conditional p-value of X² is a hypergeometric sum
    labels = ["a"] * 4 + ["b"] * 4
    overlap = [1, 1, 1, 0, 0, 0, 0, 0]
    counts = strata_counts(labels, overlap, [1] * 8)
    mix = mix_check(counts, n_draws=20000, seed=1)
    assert mix.method == "monte-carlo" and mix.n_draws == 20000
    # X² as extreme as 3-vs-0 in class a: k_a in {0, 3}; P = 2 * C(4,3)C(4,0)/C(8,3) = 8/56
    assert mix.p_value == pytest.approx(8 / 56, abs=0.01)
    assert mix_check(counts, n_draws=2000, seed=5) == mix_check(counts, n_draws=2000, seed=5)


def test_mix_check_no_overlap_gives_nones():
    mix = mix_check(strata_counts(["a", "b"], [0, 0], [1, 0]))
    assert mix.p_value is None and mix.drivers == () and mix.acc_overlap_expected is None


def test_compare_uses_exact_when_cheap_and_cmh_otherwise():
    a, n1, c, n0 = random_tables(11, strata=30, max_n=300)
    counts = strata_counts(
        [f"k{j:02d}" for j in range(30) for _ in range(n1[j] + n0[j])],
        np.concatenate([np.r_[np.ones(n1[j], bool), np.zeros(n0[j], bool)] for j in range(30)]),
        np.concatenate([np.r_[np.arange(n1[j]) < a[j], np.arange(n0[j]) < c[j]] for j in range(30)]))
    assert list(counts.k_overlap) == list(a) and list(counts.n_clean) == list(n0)
    cheap = compare_within_classes(counts)
    assert cheap.method == "exact" and cheap.p_value == cheap.exact.p_greater
    assert mantel_fleiss(a, n1, c, n0) >= 5
    costly = compare_within_classes(counts, exact_max_work=0)
    assert costly.method == "cmh" and costly.exact is None and costly.p_value == costly.cmh.p_greater
    assert abs(cheap.p_value - costly.p_value) < 0.05  # both approximate the same conditional distribution
    assert EXACT_MAX_WORK > 0


def test_mantel_fleiss_forces_exact_when_the_normal_approximation_is_doubtful():
    counts = strata_counts(["x"] * 6, [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0])
    assert compare_within_classes(counts, exact_max_work=0).method == "exact"


def test_input_checks():
    with pytest.raises(ValueError):
        strata_counts(["a", "b"], [True], [True, False])
    with pytest.raises(ValueError):
        cmh_test([3], [2], [0], [1])
    with pytest.raises(ValueError):
        mh_risk_difference([1], [2], [0], [1], ci_level=1.5)


def confounded(seed: int = 0, n: int = 4000) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Overlap concentrated in easy classes, no memorisation: the pooled gap is all class mix."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 10, n)
    acc = np.linspace(0.3, 0.95, 10)[cls]
    overlap = rng.random(n) < np.where(cls >= 7, 0.4, 0.02)
    correct = rng.random(n) < acc
    return [f"class{j}" for j in cls], overlap, correct


def test_disagreement_sentence_on_a_pure_class_confound():
    labels, overlap, correct = confounded()
    s = stratify(labels, overlap, correct)
    pooled_gap = correct[overlap].mean() - correct[~overlap].mean()
    d = disagreement("toy", pooled_significant=True, stratified_significant=bool(s.comparison.p_value <= 0.05),
                     pooled_gap=pooled_gap, stratified=s, pooled_p=1e-12, stratified_p=s.comparison.p_value)
    assert not d.stratified_significant
    assert d.interval_excludes_pooled
    assert d.disagrees and d.sentence.startswith("toy: Overlap is more accurate than Clean when pooled (+")
    assert "easier" in d.sentence and "class difficulty" in d.sentence
    assert s.mix.gap_mix > 0.15 and abs(s.mix.gap_within) < 0.05
    assert s.mix.p_value < 1e-6 and {m.label for m in s.mix.drivers} >= {"class7", "class8", "class9"}


def test_no_sentence_when_pooled_and_stratified_agree():
    rng = np.random.default_rng(4)
    cls = rng.integers(0, 10, 4000)
    overlap = rng.random(4000) < 0.1  # no confound
    correct = rng.random(4000) < np.linspace(0.3, 0.95, 10)[cls] + 0.04 * overlap
    s = stratify([str(j) for j in cls], overlap, correct)
    gap = correct[overlap].mean() - correct[~overlap].mean()
    d = disagreement("iid", pooled_significant=False, stratified_significant=False, pooled_gap=gap, stratified=s)
    assert d.sentence is None and d.interval_excludes_pooled is False


def test_disagreements_correct_each_family_and_keep_order():
    labels, overlap, correct = confounded()
    s = stratify(labels, overlap, correct)
    gap = float(correct[overlap].mean() - correct[~overlap].mean())
    out = disagreements(["a", "b", "c"], [1e-10, 0.5, None], [gap, 0.0, None], [s, None, None], alpha=0.05,
                        correction="holm")
    assert [d.dataset for d in out] == ["a", "b", "c"]
    assert out[0].disagrees and out[0].pooled_significant and not out[0].stratified_significant
    assert not out[1].disagrees and out[1].stratified_significant is None
    assert out[2].pooled_significant is None
    with pytest.raises(ValueError):
        disagreements(["a"], [0.1, 0.2], [0.0], [None])


def test_to_dict_is_json_and_table_top():
    labels, overlap, correct = confounded(n=600)
    s = stratify(labels, overlap, correct)
    assert isinstance(s, Stratified)
    back = json.loads(json.dumps(s.to_dict()))
    assert back["comparison"]["risk_difference"]["ci_level"] == 0.995
    assert len(back["table"]["rows"]) == 10 and isinstance(s.table, ClassTable)
    top = s.table.top(3, by="mix_residual")
    assert len(top) == 3 and abs(top[0].mix_residual) >= abs(top[2].mix_residual)
    with pytest.raises(ValueError):
        s.table.top(3, by="nope")


def test_unjudged_counts_low_information_per_set():
    neighbors = Neighbors(query_ids=["a", "b", "c"], ids=np.zeros((3, 1), object),
                          similarities=np.zeros((3, 1), np.float32))
    sp = Split(dataset="d", threshold=0.9, ids=["a", "b", "c"], labels=[None] * 3, neighbors=neighbors,
               overlap=np.zeros(3, bool), low_information=np.array([True, False, True]))
    (u,) = unjudged([sp])
    assert (u.dataset, u.n, u.n_low_information) == ("d", 3, 2)
    assert u.to_dict()["fraction"] == pytest.approx(2 / 3)


def test_under_a_pure_class_confound_the_pooled_test_rejects_and_the_stratified_one_holds_its_level():
    # 20 classes of 100, accuracy 0.3..0.95, Overlap 10x likelier in the easiest class than in the hardest,
    # no memorisation: the stratified test's false-positive rate stays within 3 Monte Carlo s.e. of alpha
    rng = np.random.default_rng(12)
    acc = np.linspace(0.3, 0.95, 20)
    q = 0.05 * np.exp(np.linspace(-1.15, 1.15, 20))
    labels = tuple(f"c{j:02d}" for j in range(20))
    n_sim, alpha = 300, 0.05
    pooled = strat = 0
    for _ in range(n_sim):
        n1 = rng.binomial(100, q)
        a, c = rng.binomial(n1, acc), rng.binomial(100 - n1, acc)
        counts = StrataCounts(labels, n1, 100 - n1, a, c, 2000, 0, 0)
        pooled += overlap_stats(int(a.sum() + c.sum()), 2000, int(a.sum()), int(n1.sum())).p_value <= alpha
        strat += compare_within_classes(counts).p_value <= alpha
    assert strat / n_sim <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / n_sim)
    assert pooled / n_sim > 0.5
