"""Class-stratified statistics: Overlap against Clean within classes, and the class mix. numpy/scipy only.

The pooled comparison (``stats``) asks whether Overlap is more accurate than Clean. When Overlap sits in
easier (or harder) classes than Clean, that gap measures class difficulty as much as memorisation. Here each
class is one stratum, a 2×2 table of split (Overlap, Clean) by outcome (correct, wrong): in class j, a_j of the
n1_j Overlap examples and c_j of the n0_j Clean ones are correct, N_j = n1_j + n0_j, K_j = a_j + c_j.

A class with no Overlap or no Clean example says nothing about the difference and is dropped (counted in
``n_classes_dropped``; its Overlap examples in ``n_overlap_dropped``). Examples without a label are left out
(``n_unlabelled``).

- Cochran–Mantel–Haenszel (Mantel & Haenszel 1959, JNCI 22:719–748): S = Σ (a_j − n1_j K_j / N_j),
  V = Σ n1_j n0_j K_j (N_j − K_j) / (N_j² (N_j − 1)); chi² = (|S| − ½)² / V with the continuity correction,
  S² / V without, on 1 degree of freedom (two-sided). As in R's ``mantelhaen.test`` the correction is applied
  only where |S| ≥ ½ (statsmodels' ``StratifiedTable.test_null_odds`` subtracts ½ regardless; the two agree
  whenever |S| ≥ ½). One-sided "Overlap more accurate": z = (S − ½) / √V (S / √V without correction),
  p = P(Z ≥ z).
- Exact conditional test (Birch 1964; Mehta, Patel & Gray 1985): given all margins of every table, a_j is
  hypergeometric (N_j, K_j, n1_j) under "no difference within classes", independently across classes, so
  T = Σ a_j has the convolution of these distributions. One-sided p = P(T ≥ t_obs); two-sided p sums the
  probabilities no larger than P(T = t_obs) (the rule R uses). Computed where the convolution is cheap
  (``EXACT_MAX_WORK``) or where the normal approximation is doubtful by the Mantel–Fleiss criterion
  (Mantel & Fleiss 1980, Am J Epidemiol 112:129–134: min(E − L, U − E) < 5 with E = Σ n1_j K_j / N_j and
  L, U the sums of the tables' lower and upper bounds of a_j). ``p_value`` is the exact one then, the
  CMH one otherwise; ``method`` says which.
- Mantel–Haenszel common risk difference (accuracy gap within classes): RD = Σ w_j d_j / Σ w_j,
  d_j = a_j/n1_j − c_j/n0_j, w_j = n1_j n0_j / N_j; variance of Sato (1989, Biometrics 45:1323–1324),
  consistent both for a few large classes and for many small ones (the Greenland–Robins 1985 variance holds
  only for the first): Var = (RD Σ P_j + Σ Q_j) / (Σ w_j)², P_j = (n1_j² c_j − n0_j² a_j
  + n1_j n0_j (n0_j − n1_j) / 2) / N_j², Q_j = (a_j (n0_j − c_j) + c_j (n1_j − a_j)) / (2 N_j); Wald interval
  RD ± z √Var at ``ci_level`` (the formulas as SAS PROC FREQ documents them under COMMONRISKDIFF).
- Mantel–Haenszel odds ratio: Σ a_j d'_j / N_j over Σ b_j c_j / N_j (b, d' the wrong counts of Overlap and Clean).
- Stratified inflation of All: Σ n1_j d_j / n, n = every example of the set: the gap within each class
  weighted by that class's Overlap count (the paper's All − Clean = (n_overlap / n)·(acc_overlap − acc_clean)
  with the pooled gap replaced by the within-class one). Its variance treats the Overlap counts as fixed:
  Σ (n1_j / n)² (p1_j q1_j / n1_j + p0_j q0_j / n0_j), with p = (k + ½) / (m + 1) in the variance only, so a
  class at 0% or 100% does not claim zero variance (an assumption of this module; the simulation in
  benchmarks/bench_stratified.py measures the interval's coverage).

The class mix, the per-class table and the counts they start from are ``stats.strata``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2, hypergeom, norm

from .overlap import family_correction
from .strata import (ClassTable, FlatRecord, MixCheck, StrataCounts, class_table, interval_list, mix_check,
                     strata_counts)

# The exact conditional test convolves one hypergeometric per class: its cost is about Σ (length of the
# running distribution × support of the next class); below this it takes well under a second on one core.
EXACT_MAX_WORK = 20_000_000
# Mantel & Fleiss (1980): the normal approximation is adequate when E is at least 5 from both bounds.
MANTEL_FLEISS_MIN = 5.0


# ---------------------------------------------------------------- typed values


@dataclass(frozen=True)
class CMHTest(FlatRecord):
    """Cochran–Mantel–Haenszel test of Overlap against Clean within classes."""

    statistic: float  # chi-square, 1 degree of freedom
    p_two_sided: float
    p_greater: float  # alternative: Overlap more accurate
    correction: bool



@dataclass(frozen=True)
class ExactConditionalTest(FlatRecord):
    """Exact conditional test: the sum over classes of Overlap's correct counts, given all margins."""

    t_observed: int
    t_expected: float
    p_greater: float
    p_two_sided: float



@dataclass(frozen=True)
class RiskDifference:
    """Mantel–Haenszel common accuracy gap (Overlap − Clean) with Sato's variance and a Wald interval."""

    estimate: float
    variance: float
    ci: tuple[float, float]
    ci_level: float

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "variance": self.variance, "ci": interval_list(self.ci),
                "ci_level": self.ci_level}

    @classmethod
    def from_dict(cls, d: dict) -> "RiskDifference":
        return cls(d["estimate"], d["variance"], tuple(d["ci"]), d["ci_level"])


@dataclass(frozen=True)
class StratifiedComparison:
    """Overlap against Clean within classes; None where nothing could be compared."""

    n_all: int
    n_unlabelled: int
    n_classes: int
    n_classes_informative: int
    n_classes_dropped: int  # classes with no Overlap or no Clean example
    n_overlap_informative: int
    n_overlap_dropped: int  # Overlap examples in dropped classes (and unlabelled ones)
    cmh: CMHTest | None
    exact: ExactConditionalTest | None
    p_value: float | None  # one-sided, Overlap more accurate: the exact one where computed, else CMH
    method: str | None  # "exact" | "cmh"
    mantel_fleiss: float | None  # min(E − L, U − E); the normal approximation wants ≥ 5
    risk_difference: RiskDifference | None
    odds_ratio_mh: float | None
    inflation: float | None  # stratified All − Clean
    ci_inflation: tuple[float, float] | None
    ci_level: float

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("cmh", "exact", "risk_difference"):
            d[key] = d[key].to_dict() if d[key] is not None else None
        d["ci_inflation"] = interval_list(self.ci_inflation)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StratifiedComparison":
        fields = {k: d[k] for k in cls.__dataclass_fields__}
        for key, kind in (("cmh", CMHTest), ("exact", ExactConditionalTest), ("risk_difference", RiskDifference)):
            fields[key] = kind.from_dict(d[key]) if d[key] is not None else None
        fields["ci_inflation"] = tuple(d["ci_inflation"]) if d["ci_inflation"] is not None else None
        return cls(**fields)


@dataclass(frozen=True)
class Stratified:
    """The class-stratified statistics of one evaluation set."""

    comparison: StratifiedComparison
    mix: MixCheck
    table: ClassTable

    def to_dict(self) -> dict:
        return {"comparison": self.comparison.to_dict(), "mix": self.mix.to_dict(), "table": self.table.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Stratified":
        return cls(StratifiedComparison.from_dict(d["comparison"]), MixCheck.from_dict(d["mix"]),
                   ClassTable.from_dict(d["table"]))


# ---------------------------------------------------------------- counts


def _check_level(ci_level: float) -> None:
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")


def _check_tables(a, n1, c, n0) -> tuple[np.ndarray, ...]:
    a, n1, c, n0 = (np.asarray(x, dtype=np.int64).reshape(-1) for x in (a, n1, c, n0))
    if not len(a) == len(n1) == len(c) == len(n0):
        raise ValueError("the four count arrays must have one length")
    if (a < 0).any() or (c < 0).any() or (a > n1).any() or (c > n0).any():
        raise ValueError("need 0 <= correct <= examples in every class")
    return a, n1, c, n0


# ---------------------------------------------------------------- tests and estimates on informative strata


def cmh_test(a, n1, c, n0, *, correction: bool = True) -> CMHTest | None:
    """CMH test over classes that have both Overlap (n1, a correct) and Clean (n0, c correct); None if none."""
    a, n1, c, n0 = _check_tables(a, n1, c, n0)
    keep = (n1 > 0) & (n0 > 0)
    a, n1, c, n0 = (x[keep].astype(float) for x in (a, n1, c, n0))
    big_n, k = n1 + n0, a + c
    # a stratum of one example cannot hold both splits, so N_j ≥ 2 here
    s = float(np.sum(a - n1 * k / big_n))
    v = float(np.sum(n1 * n0 * k * (big_n - k) / (big_n ** 2 * (big_n - 1))))
    if not len(a):
        return None
    if v <= 0:  # every informative class all-correct or all-wrong: no information on the difference
        return CMHTest(0.0, 1.0, 1.0, correction)
    shift = 0.5 if correction and abs(s) >= 0.5 else 0.0
    stat = (abs(s) - shift) ** 2 / v
    z = (s - (0.5 if correction else 0.0)) / math.sqrt(v)
    return CMHTest(float(stat), float(chi2.sf(stat, 1)), float(norm.sf(z)), correction)


def _exact_work(n1, n0, k) -> int:
    lo = np.maximum(0, n1 - (n1 + n0 - k))
    hi = np.minimum(n1, k)
    sizes = hi - lo + 1
    return int(np.sum(np.cumsum(sizes) * sizes))


def exact_conditional_test(a, n1, c, n0) -> ExactConditionalTest | None:
    """Exact conditional test (convolution of hypergeometrics) over informative classes; None if none."""
    a, n1, c, n0 = _check_tables(a, n1, c, n0)
    keep = (n1 > 0) & (n0 > 0)
    a, n1, c, n0 = (x[keep] for x in (a, n1, c, n0))
    if not len(a):
        return None
    big_n, k = n1 + n0, a + c
    lo_all = np.maximum(0, n1 - (big_n - k))
    hi_all = np.minimum(n1, k)
    sizes = hi_all - lo_all + 1
    # every class's probabilities in one vectorised call (one call per class costs more than the convolutions)
    owner = np.repeat(np.arange(len(a)), sizes)
    x = lo_all[owner] + np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    probs = np.split(hypergeom.pmf(x, big_n[owner], k[owner], n1[owner]), np.cumsum(sizes)[:-1])
    pmf = np.array([1.0])
    for j in np.nonzero(sizes > 1)[0]:  # a class with one possible count only shifts T
        pmf = np.convolve(pmf, probs[j])
    offset = int(lo_all.sum())  # pmf[i] = P(T = offset + i)
    t = int(a.sum())
    i = t - offset
    # sum the upper tail directly: 1 − (lower sum) would lose small p-values to cancellation
    p_greater = float(min(1.0, pmf[i:].sum()))
    # R's rule: a relative tolerance so that ties with the observed table count as "as extreme"
    p_two = float(min(1.0, pmf[pmf <= pmf[i] * (1 + 1e-7)].sum()))
    expected = float(np.sum(n1 * k / big_n))
    return ExactConditionalTest(t, expected, p_greater, p_two)


def mantel_fleiss(a, n1, c, n0) -> float | None:
    """min(E − L, U − E) over informative classes: the normal approximation wants at least 5."""
    a, n1, c, n0 = _check_tables(a, n1, c, n0)
    keep = (n1 > 0) & (n0 > 0)
    a, n1, c, n0 = (x[keep] for x in (a, n1, c, n0))
    if not len(a):
        return None
    big_n, k = n1 + n0, a + c
    e = float(np.sum(n1 * k / big_n))
    low = float(np.sum(np.maximum(0, n1 - (big_n - k))))
    high = float(np.sum(np.minimum(n1, k)))
    return min(e - low, high - e)


def mh_risk_difference(a, n1, c, n0, *, ci_level: float = 0.995) -> RiskDifference | None:
    """Mantel–Haenszel common accuracy gap with Sato's (1989) variance; None without an informative class."""
    _check_level(ci_level)
    a, n1, c, n0 = _check_tables(a, n1, c, n0)
    keep = (n1 > 0) & (n0 > 0)
    a, n1, c, n0 = (x[keep].astype(float) for x in (a, n1, c, n0))
    if not len(a):
        return None
    big_n = n1 + n0
    w = n1 * n0 / big_n
    rd = float(np.sum(a * n0 / big_n - c * n1 / big_n) / w.sum())
    p = (n1 ** 2 * c - n0 ** 2 * a + n1 * n0 * (n0 - n1) / 2) / big_n ** 2
    q = (a * (n0 - c) + c * (n1 - a)) / (2 * big_n)
    var = float(max(0.0, (rd * p.sum() + q.sum()) / w.sum() ** 2))
    half = float(norm.ppf(0.5 + ci_level / 2)) * math.sqrt(var)
    return RiskDifference(rd, var, (max(-1.0, rd - half), min(1.0, rd + half)), ci_level)


def mh_odds_ratio(a, n1, c, n0) -> float | None:
    """Mantel–Haenszel common odds ratio (Overlap correct vs Clean correct); None where undefined."""
    a, n1, c, n0 = _check_tables(a, n1, c, n0)
    keep = (n1 > 0) & (n0 > 0)
    a, n1, c, n0 = (x[keep].astype(float) for x in (a, n1, c, n0))
    big_n = n1 + n0
    num = float(np.sum(a * (n0 - c) / big_n))
    den = float(np.sum((n1 - a) * c / big_n))
    if not len(a) or den == 0:
        return None
    return num / den


def stratified_inflation(a, n1, c, n0, n_all: int, *,
                         ci_level: float = 0.995) -> tuple[float, tuple[float, float]] | None:
    """Σ n1_j (acc gap in class j) / n_all over informative classes, with a Wald interval; None if none."""
    _check_level(ci_level)
    a, n1, c, n0 = _check_tables(a, n1, c, n0)
    keep = (n1 > 0) & (n0 > 0)
    a, n1, c, n0 = (x[keep].astype(float) for x in (a, n1, c, n0))
    if not len(a) or n_all <= 0:
        return None
    est = float(np.sum(n1 * (a / n1 - c / n0)) / n_all)
    p1, p0 = (a + 0.5) / (n1 + 1), (c + 0.5) / (n0 + 1)
    var = float(np.sum((n1 / n_all) ** 2 * (p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)))
    half = float(norm.ppf(0.5 + ci_level / 2)) * math.sqrt(var)
    return est, (est - half, est + half)


# ---------------------------------------------------------------- the whole set


def compare_within_classes(counts: StrataCounts, *, ci_level: float = 0.995, correction: bool = True,
                           exact_max_work: int = EXACT_MAX_WORK) -> StratifiedComparison:
    """Every within-class statistic of one set from its per-class counts."""
    _check_level(ci_level)
    a, n1, c, n0 = counts.k_overlap, counts.n_overlap, counts.k_clean, counts.n_clean
    informative = (n1 > 0) & (n0 > 0)
    cmh = cmh_test(a, n1, c, n0, correction=correction)
    mf = mantel_fleiss(a, n1, c, n0)
    exact = None
    if cmh is not None and (_exact_work(n1[informative], n0[informative], (a + c)[informative]) <= exact_max_work
                            or (mf is not None and mf < MANTEL_FLEISS_MIN)):
        exact = exact_conditional_test(a, n1, c, n0)
    p, method = ((exact.p_greater, "exact") if exact is not None
                 else (cmh.p_greater, "cmh") if cmh is not None else (None, None))
    infl = stratified_inflation(a, n1, c, n0, counts.n_all, ci_level=ci_level)
    return StratifiedComparison(
        n_all=counts.n_all, n_unlabelled=counts.n_unlabelled, n_classes=len(counts.labels),
        n_classes_informative=int(informative.sum()),
        n_classes_dropped=int((~informative).sum()),
        n_overlap_informative=int(n1[informative].sum()),
        n_overlap_dropped=int(n1[~informative].sum()) + counts.n_overlap_unlabelled,
        cmh=cmh, exact=exact, p_value=p, method=method, mantel_fleiss=mf,
        risk_difference=mh_risk_difference(a, n1, c, n0, ci_level=ci_level),
        odds_ratio_mh=mh_odds_ratio(a, n1, c, n0),
        inflation=infl[0] if infl else None, ci_inflation=infl[1] if infl else None, ci_level=ci_level)


def stratify(labels: Sequence[str | None], overlap: Sequence[bool] | np.ndarray, correct: Sequence[bool] | np.ndarray,
             *, alpha: float = 0.05, ci_level: float = 0.995, correction: bool = True, seed: int = 0) -> Stratified:
    """The class-stratified comparison, the mix check and the per-class table of one evaluation set."""
    counts = strata_counts(labels, overlap, correct)
    return Stratified(compare_within_classes(counts, ci_level=ci_level, correction=correction),
                      mix_check(counts, alpha=alpha, seed=seed), class_table(counts))


# ---------------------------------------------------------------- pooled against stratified


@dataclass(frozen=True)
class Disagreement(FlatRecord):
    """Whether the pooled and the within-class comparison of one set disagree, and the report's sentence."""

    dataset: str
    pooled_significant: bool | None
    stratified_significant: bool | None
    pooled_gap: float | None
    interval_excludes_pooled: bool | None  # the within-class gap's interval excludes the pooled gap
    sentence: str | None  # None when they agree (or one side could not be computed)

    @property
    def disagrees(self) -> bool:
        return self.sentence is not None



def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def disagreement(dataset: str, *, pooled_significant: bool | None, stratified_significant: bool | None,
                 pooled_gap: float | None, stratified: Stratified, pooled_p: float | None = None,
                 stratified_p: float | None = None) -> Disagreement:
    """The rule: conclusions differ at alpha (after correction), or the within-class interval excludes the pooled gap.

    ``pooled_gap`` is acc_overlap − acc_clean of the pooled comparison; the p-values, when given, are the
    corrected ones and are quoted in the sentence.
    """
    rd = stratified.comparison.risk_difference
    mix = stratified.mix
    excludes = (None if rd is None or pooled_gap is None
                else bool(pooled_gap < rd.ci[0] or pooled_gap > rd.ci[1]))
    differ = (pooled_significant is not None and stratified_significant is not None
              and pooled_significant != stratified_significant)
    if rd is None or not (differ or excludes):
        return Disagreement(dataset, pooled_significant, stratified_significant, pooled_gap, excludes, None)
    within = f"{_pts(rd.estimate)} points [{_pts(rd.ci[0])}, {_pts(rd.ci[1])}] at {100 * rd.ci_level:g}%"
    if stratified_p is not None:
        within += f", p = {stratified_p:.2g}"
    pooled = f"{_pts(pooled_gap)} points" if pooled_gap is not None else "gap"
    if pooled_p is not None:
        pooled += f", p = {pooled_p:.2g}"
    if mix.gap_mix is not None and mix.acc_overlap_expected is not None:
        mix_part = (f"Overlap's classes are {'easier' if mix.gap_mix > 0 else 'harder'} for the model "
                    f"(Clean's per-class accuracies predict {100 * mix.acc_overlap_expected:.1f}% on Overlap, "
                    f"{_pts(mix.gap_mix)} points from the class mix alone)")
    else:
        mix_part = "the class mix is not known"
    if differ and pooled_significant:
        why = ", so the pooled gap reflects class difficulty, not memorisation" if (mix.gap_mix or 0) > 0 else ""
        sentence = (f"{dataset}: Overlap is more accurate than Clean when pooled ({pooled}) but not within "
                    f"classes ({within}); {mix_part}{why}.")
    elif differ:
        why = ", which hides the gap when pooled" if (mix.gap_mix or 0) < 0 else ""
        sentence = (f"{dataset}: Overlap is more accurate than Clean within classes ({within}) but not when "
                    f"pooled ({pooled}); {mix_part}{why}.")
    else:
        sentence = (f"{dataset}: the pooled gap ({pooled}) lies outside the interval of the gap within classes "
                    f"({within}); {mix_part}.")
    return Disagreement(dataset, pooled_significant, stratified_significant, pooled_gap, excludes, sentence)


def disagreements(datasets: Sequence[str], pooled_p: Sequence[float | None], pooled_gap: Sequence[float | None],
                  stratified: Sequence[Stratified | None], *, alpha: float = 0.05,
                  correction: str = "bonferroni") -> list[Disagreement]:
    """The rule for every set of a report, each family (pooled, within classes) corrected on its own."""
    if not len(datasets) == len(pooled_p) == len(pooled_gap) == len(stratified):
        raise ValueError("datasets, pooled_p, pooled_gap and stratified must have one length")
    strat_p = [s.comparison.p_value if s is not None else None for s in stratified]
    pooled_c = family_correction(list(pooled_p), alpha, correction)
    strat_c = family_correction(strat_p, alpha, correction)
    out = []
    for i, name in enumerate(datasets):
        s = stratified[i]
        if s is None:
            out.append(Disagreement(name, pooled_c.significant[i], None, pooled_gap[i], None, None))
            continue
        out.append(disagreement(name, pooled_significant=pooled_c.significant[i],
                                stratified_significant=strat_c.significant[i], pooled_gap=pooled_gap[i],
                                stratified=s, pooled_p=pooled_c.adjusted[i], stratified_p=strat_c.adjusted[i]))
    return out


# ---------------------------------------------------------------- what could not be judged


