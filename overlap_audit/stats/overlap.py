"""The CLIP paper's overlap statistics (Radford et al. 2021, Section 5 and Figure 17). numpy/scipy only.

For one evaluation set with n_all examples of which k_all are answered correctly, n_overlap examples
in Overlap (k_overlap correct) and the rest in Clean:

- overlap_rate = n_overlap / n_all; acc_x = k_x / n_x; delta = acc_all − acc_clean (the paper's
  "All − Clean": how much the reported accuracy is inflated by overlap).
- p_value: the paper's one-sided binomial test of H0 "Overlap accuracy equals acc_clean" against
  "greater": P(X ≥ k_overlap) for X ~ Binomial(n_overlap, acc_clean), with acc_clean taken as known.
- ci_overlap, ci_clean: two-sided Clopper–Pearson ("exact") intervals at ci_level (the paper: 99.5%).
- ci_delta = (f·(lo_overlap − hi_clean), f·(hi_overlap − lo_clean)), f = overlap_rate: since
  All − Clean = f·(acc_overlap − acc_clean), the interval implied by the two one-sample intervals.

Anything undefined (no examples, no Overlap, no Clean) is None, never NaN and never an exception.
``bonferroni`` corrects across the datasets of one report (m = the number of datasets with a p-value).

Beyond the paper (``extended_stats``), kept beside its numbers, never instead of them:

- Decomposition: All − Clean = overlap_rate × gap, gap = acc_overlap − acc_clean (both reported).
- Two-sample exact test of H0 "Overlap accuracy ≤ Clean accuracy" against "greater", treating both
  accuracies as estimates (the paper's test takes acc_clean as known, which is anti-conservative when
  Clean is small): Boschloo's exact test (Boschloo 1970; scipy.stats.boschloo_exact, which maximises
  Fisher's one-sided p-value as the statistic over the nuisance parameter), or Fisher's exact test
  (one-sided hypergeometric tail; scipy.stats.fisher_exact) where the table space
  (n_overlap + 1)(n_clean + 1) exceeds ``BOSCHLOO_MAX_TABLES`` and Boschloo would take seconds per
  dataset. Both are exact level-alpha tests; Boschloo is uniformly more powerful than Fisher.
  ``two_sample_method`` says which was used.
- Newcombe's hybrid score interval for p1 − p2 (Newcombe 1998, Statistics in Medicine 17:873–890,
  method 10): with Wilson score intervals (l_i, u_i) of p_i = k_i / n_i (Wilson 1927) at the same level,
  (d − sqrt((p1 − l1)² + (u2 − p2)²), d + sqrt((u1 − p1)² + (p2 − l2)²)), d = p1 − p2. The gap's interval
  is Newcombe's on (Overlap, Clean); the interval on All − Clean scales it by the observed overlap rate
  (treated as fixed: the split is given, only accuracies are sampled).
- Holm's step-down correction (Holm 1979): order the m p-values p_(1) ≤ … ≤ p_(m); reject H_(i) while
  p_(i) ≤ alpha / (m − i + 1); adjusted p_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)). Same family-wise
  guarantee as Bonferroni and never less powerful.
- Power of the paper's test: it rejects when k_overlap ≥ c, c the smallest k with
  P(X ≥ k | acc_clean) ≤ a (a = the per-dataset level, alpha / m); the minimum detectable gap is the
  smallest p1 − acc_clean with P(X ≥ c | p1) ≥ power (default 0.8), X ~ Binomial(n_overlap, ·). A
  non-significant dataset then reads "no gap larger than this was present (at 80% power)".
- Detector error (``detector_corrected``): if the Overlap split has precision P and recall R, the truly
  overlapping examples number T = n_overlap·P / R; a fraction π = (T − n_overlap·P) / n_clean of Clean is
  truly overlapping. Observed accuracies are mixtures, acc_overlap = P·a_T + (1 − P)·a_N and
  acc_clean = π·a_T + (1 − π)·a_N, solved for a_T (truly overlapping) and a_N (truly clean); corrected
  overlap rate = T / n_all and corrected All − Clean = acc_all − a_N. Its interval is a parametric
  bootstrap: P and R drawn from their Jeffreys posteriors Beta(s + ½, n − s + ½) when given as counts
  (fixed when given as numbers), both observed accuracies redrawn from their binomials, percentiles of
  the corrected All − Clean.

Why one module of this length: each statistic is short; together they are the report's statistics,
which callers use side by side (numpy/scipy only, no I/O).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom, binomtest, boschloo_exact, fisher_exact

from ..settings import CORRECTIONS, check_choice

# Boschloo's test enumerates the (n1 + 1)(n2 + 1) tables for each nuisance value: about 2 s at 250,000 on a
# 2-core machine (BENCHMARKS.md); beyond that, Fisher's exact test.
BOSCHLOO_MAX_TABLES = 250_000


@dataclass(frozen=True)
class OverlapStats:
    """The paper's statistics for one evaluation set; None where a value is undefined."""

    n_all: int
    n_overlap: int
    n_clean: int
    k_all: int
    k_overlap: int
    k_clean: int
    overlap_rate: float | None
    acc_all: float | None
    acc_overlap: float | None
    acc_clean: float | None
    delta: float | None
    p_value: float | None
    ci_overlap: tuple[float, float] | None
    ci_clean: tuple[float, float] | None
    ci_delta: tuple[float, float] | None
    ci_level: float

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("ci_overlap", "ci_clean", "ci_delta"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OverlapStats":
        fields = {k: d[k] for k in cls.__dataclass_fields__}
        for key in ("ci_overlap", "ci_clean", "ci_delta"):
            fields[key] = tuple(fields[key]) if fields[key] is not None else None
        return cls(**fields)


def _check_counts(k: int, n: int, what: str) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"{what}: need 0 <= k <= n, got k={k}, n={n}")


def clopper_pearson(k: int, n: int, ci_level: float = 0.995) -> tuple[float, float] | None:
    """Two-sided Clopper–Pearson interval for k successes in n trials; None when n = 0."""
    _check_counts(k, n, "clopper_pearson")
    if n == 0:
        return None
    ci = binomtest(k, n).proportion_ci(confidence_level=ci_level, method="exact")
    return float(ci.low), float(ci.high)


def binomial_p_greater(k: int, n: int, p: float) -> float | None:
    """P(X ≥ k) for X ~ Binomial(n, p); None when n = 0."""
    _check_counts(k, n, "binomial_p_greater")
    if n == 0:
        return None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return float(binomtest(k, n, p, alternative="greater").pvalue)


def _ratio(k: int, n: int) -> float | None:
    return k / n if n else None


def overlap_stats(k_all: int, n_all: int, k_overlap: int, n_overlap: int, *,
                  ci_level: float = 0.995) -> OverlapStats:
    """The paper's statistics for one dataset; Clean is All minus Overlap."""
    _check_counts(k_all, n_all, "all")
    _check_counts(k_overlap, n_overlap, "overlap")
    if n_overlap > n_all or k_overlap > k_all:
        raise ValueError("Overlap cannot hold more examples (or correct examples) than All")
    n_clean, k_clean = n_all - n_overlap, k_all - k_overlap
    if k_clean > n_clean:
        raise ValueError("Clean would hold more correct examples than examples")
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")
    acc_all, acc_overlap, acc_clean = _ratio(k_all, n_all), _ratio(k_overlap, n_overlap), _ratio(k_clean, n_clean)
    rate = _ratio(n_overlap, n_all)
    delta = acc_all - acc_clean if acc_all is not None and acc_clean is not None else None
    p_value = binomial_p_greater(k_overlap, n_overlap, acc_clean) if acc_clean is not None else None
    ci_overlap = clopper_pearson(k_overlap, n_overlap, ci_level)
    ci_clean = clopper_pearson(k_clean, n_clean, ci_level)
    ci_delta = None
    if ci_overlap is not None and ci_clean is not None and rate is not None:
        ci_delta = (rate * (ci_overlap[0] - ci_clean[1]), rate * (ci_overlap[1] - ci_clean[0]))
    return OverlapStats(
        n_all=n_all, n_overlap=n_overlap, n_clean=n_clean, k_all=k_all, k_overlap=k_overlap, k_clean=k_clean,
        overlap_rate=rate, acc_all=acc_all, acc_overlap=acc_overlap, acc_clean=acc_clean, delta=delta,
        p_value=p_value, ci_overlap=ci_overlap, ci_clean=ci_clean, ci_delta=ci_delta, ci_level=ci_level,
    )


@dataclass(frozen=True)
class MultipleTestResult:
    """A correction across datasets: adjusted p-values and decisions, None where a p-value is None."""

    method: str
    alpha: float
    m: int
    adjusted: list[float | None]
    significant: list[bool | None]


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def bonferroni(p_values: Sequence[float | None], alpha: float = 0.05) -> MultipleTestResult:
    """Bonferroni: reject where p ≤ alpha / m, m = the number of p-values that are not None."""
    _check_alpha(alpha)
    m = sum(p is not None for p in p_values)
    adjusted = [None if p is None else min(1.0, p * m) for p in p_values]
    significant = [None if p is None else bool(p <= alpha / m) for p in p_values]
    return MultipleTestResult("bonferroni", alpha, m, adjusted, significant)


def holm(p_values: Sequence[float | None], alpha: float = 0.05) -> MultipleTestResult:
    """Holm's step-down correction over the p-values that are not None."""
    _check_alpha(alpha)
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    significant: list[bool | None] = [None] * len(p_values)
    running = 0.0
    rejecting = True
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
        rejecting = rejecting and p <= alpha / (m - rank)
        significant[i] = rejecting
    return MultipleTestResult("holm", alpha, m, adjusted, significant)


def family_correction(p_values: Sequence[float | None], alpha: float = 0.05, method: str = "bonferroni") -> MultipleTestResult:
    """Apply the named correction (one of ``settings.CORRECTIONS``)."""
    check_choice("correction", method, CORRECTIONS, ValueError)
    return (bonferroni if method == "bonferroni" else holm)(p_values, alpha)


# ---------------------------------------------------------------- beyond the paper


@dataclass(frozen=True)
class TwoSampleTest:
    """A one-sided exact test of Overlap accuracy > Clean accuracy; None where a split is empty."""

    p_value: float | None
    method: str | None  # "boschloo" | "fisher"


def _table(k1: int, n1: int, k2: int, n2: int) -> list[list[int]]:
    # columns are the samples (Overlap, Clean), rows correct / wrong: scipy's orientation for both tests
    return [[k1, k2], [n1 - k1, n2 - k2]]


def two_sample_test(k_overlap: int, n_overlap: int, k_clean: int, n_clean: int, *,
                    boschloo_max_tables: int = BOSCHLOO_MAX_TABLES) -> TwoSampleTest:
    """Boschloo's exact test (Fisher's beyond ``boschloo_max_tables``), alternative: Overlap greater."""
    _check_counts(k_overlap, n_overlap, "overlap")
    _check_counts(k_clean, n_clean, "clean")
    if n_overlap == 0 or n_clean == 0:
        return TwoSampleTest(None, None)
    table = _table(k_overlap, n_overlap, k_clean, n_clean)
    if (n_overlap + 1) * (n_clean + 1) <= boschloo_max_tables:
        p = float(boschloo_exact(table, alternative="greater").pvalue)
        return TwoSampleTest(min(1.0, max(0.0, p)), "boschloo")
    return TwoSampleTest(float(fisher_exact(table, alternative="greater").pvalue), "fisher")


def wilson(k: int, n: int, ci_level: float = 0.995) -> tuple[float, float] | None:
    """Wilson score interval for k of n (no continuity correction); None when n = 0."""
    _check_counts(k, n, "wilson")
    if n == 0:
        return None
    ci = binomtest(k, n).proportion_ci(confidence_level=ci_level, method="wilson")
    return float(ci.low), float(ci.high)


def newcombe(k1: int, n1: int, k2: int, n2: int, ci_level: float = 0.995) -> tuple[float, float] | None:
    """Newcombe's hybrid score interval (method 10) for p1 − p2; None when a sample is empty."""
    w1, w2 = wilson(k1, n1, ci_level), wilson(k2, n2, ci_level)
    if w1 is None or w2 is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    low = d - math.sqrt((p1 - w1[0]) ** 2 + (w2[1] - p2) ** 2)
    high = d + math.sqrt((w1[1] - p1) ** 2 + (p2 - w2[0]) ** 2)
    return max(-1.0, low), min(1.0, high)


def min_detectable_gap(n_overlap: int, acc_clean: float | None, alpha: float, *,
                       power: float = 0.8) -> float | None:
    """Smallest Overlap-minus-Clean accuracy gap the paper's test detects with ``power`` at level alpha.

    None when it is undefined (no Overlap, no Clean accuracy) or no gap is detectable (even 100% Overlap
    accuracy would not be significant: too few Overlap examples, or acc_clean = 1).
    """
    _check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if n_overlap <= 0 or acc_clean is None:
        return None
    ks = np.arange(n_overlap + 1)
    tails = binom.sf(ks - 1, n_overlap, acc_clean)  # P(X >= k) under H0
    rejecting = np.nonzero(tails <= alpha)[0]
    if len(rejecting) == 0:
        return None
    c = int(rejecting[0])

    def power_at(p1: float) -> float:
        return float(binom.sf(c - 1, n_overlap, p1))

    if power_at(1.0) < power:
        return None
    lo, hi = acc_clean, 1.0
    for _ in range(100):  # bisection: power is increasing in p1
        mid = (lo + hi) / 2
        if power_at(mid) >= power:
            hi = mid
        else:
            lo = mid
    return hi - acc_clean


@dataclass(frozen=True)
class RateEstimate:
    """A detector precision or recall: a number, or counts (successes of trials) that carry uncertainty."""

    value: float
    successes: int | None = None
    trials: int | None = None

    @classmethod
    def parse(cls, text: str | float | Sequence[int]) -> "RateEstimate":
        """From 0.97, "0.97", "97/100" or [97, 100]."""
        if isinstance(text, (list, tuple)):
            if len(text) != 2:
                raise ValueError(f"expected [successes, trials], got {text!r}")
            return cls.from_counts(int(text[0]), int(text[1]))
        if isinstance(text, str) and "/" in text:
            a, b = text.split("/", 1)
            return cls.from_counts(int(a), int(b))
        value = float(text)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"a precision or recall must be in (0, 1], got {value}")
        return cls(value)

    @classmethod
    def from_counts(cls, successes: int, trials: int) -> "RateEstimate":
        if trials <= 0 or not 0 < successes <= trials:
            raise ValueError(f"need 0 < successes <= trials, got {successes}/{trials}")
        return cls(successes / trials, successes, trials)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.trials is None:
            return np.full(size, self.value)
        return rng.beta(self.successes + 0.5, self.trials - self.successes + 0.5, size)

    def to_dict(self) -> dict:
        return {"value": self.value, "successes": self.successes, "trials": self.trials}

    @classmethod
    def from_dict(cls, d: dict) -> "RateEstimate":
        return cls(float(d["value"]), d.get("successes"), d.get("trials"))


@dataclass(frozen=True)
class DetectorCorrection:
    """Overlap rate and All − Clean corrected for the detector's precision and recall."""

    precision: RateEstimate
    recall: RateEstimate
    overlap_rate: float | None
    acc_true_overlap: float | None
    acc_true_clean: float | None
    delta: float | None
    ci_delta: tuple[float, float] | None
    ci_level: float
    n_boot: int
    note: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["precision"], d["recall"] = self.precision.to_dict(), self.recall.to_dict()
        d["ci_delta"] = list(self.ci_delta) if self.ci_delta is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorCorrection":
        fields_ = dict(d)
        fields_["precision"] = RateEstimate.from_dict(d["precision"])
        fields_["recall"] = RateEstimate.from_dict(d["recall"])
        fields_["ci_delta"] = tuple(d["ci_delta"]) if d["ci_delta"] is not None else None
        return cls(**fields_)


def _corrected(n_all, n_overlap, acc_overlap, acc_clean, precision, recall):
    """Vectorised point computation; returns (rate, a_T, a_N, delta) arrays, NaN where unidentifiable."""
    n_clean = n_all - n_overlap
    true_in_overlap = n_overlap * precision
    total_true = np.clip(true_in_overlap / recall, true_in_overlap, true_in_overlap + n_clean)
    pi = (total_true - true_in_overlap) / n_clean
    denom = precision - pi
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.where(np.abs(denom) > 1e-9, (acc_overlap - acc_clean) / denom, np.nan)
    a_clean = np.clip(acc_overlap - precision * diff, 0.0, 1.0)
    a_true = np.clip(a_clean + diff, 0.0, 1.0)
    acc_all = (n_overlap * acc_overlap + n_clean * acc_clean) / n_all
    return total_true / n_all, a_true, a_clean, acc_all - a_clean


def detector_corrected(k_all: int, n_all: int, k_overlap: int, n_overlap: int, precision: RateEstimate,
                       recall: RateEstimate, *, ci_level: float = 0.995, n_boot: int = 4000,
                       seed: int = 0) -> DetectorCorrection:
    """Correct the overlap rate and All − Clean for detector error, with a parametric bootstrap interval."""
    n_clean, k_clean = n_all - n_overlap, k_all - k_overlap

    def undefined(note: str) -> DetectorCorrection:
        return DetectorCorrection(precision, recall, None, None, None, None, None, ci_level, n_boot, note)

    if n_overlap == 0:
        return undefined("no Overlap examples: precision cannot be applied")
    if n_clean == 0:
        return undefined("no Clean examples")
    acc_ov, acc_cl = k_overlap / n_overlap, k_clean / n_clean
    rate, a_t, a_n, delta = _corrected(n_all, n_overlap, acc_ov, acc_cl, precision.value, recall.value)
    if not np.isfinite(delta):
        return undefined("precision equals the overlap fraction implied in Clean: accuracies not identifiable")
    rng = np.random.default_rng(seed)
    p_b = precision.draw(rng, n_boot)
    r_b = recall.draw(rng, n_boot)
    ov_b = rng.binomial(n_overlap, acc_ov, n_boot) / n_overlap
    cl_b = rng.binomial(n_clean, acc_cl, n_boot) / n_clean
    _, _, _, d_b = _corrected(n_all, n_overlap, ov_b, cl_b, p_b, r_b)
    d_b = d_b[np.isfinite(d_b)]
    tail = (1 - ci_level) / 2
    ci = (float(np.quantile(d_b, tail)), float(np.quantile(d_b, 1 - tail))) if len(d_b) else None
    return DetectorCorrection(precision, recall, float(rate), float(a_t), float(a_n), float(delta), ci, ci_level,
                              n_boot)


@dataclass(frozen=True)
class ExtendedStats:
    """The numbers beyond the paper for one dataset; None where undefined."""

    gap: float | None
    two_sample_p: float | None
    two_sample_method: str | None
    ci_gap_newcombe: tuple[float, float] | None
    ci_delta_newcombe: tuple[float, float] | None
    power: float
    power_alpha: float
    min_detectable_gap: float | None
    min_detectable_delta: float | None
    detector: DetectorCorrection | None = None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "detector"}
        for key in ("ci_gap_newcombe", "ci_delta_newcombe"):
            d[key] = list(d[key]) if d[key] is not None else None
        d["detector_correction"] = self.detector.to_dict() if self.detector is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExtendedStats":
        fields_ = {k: d[k] for k in cls.__dataclass_fields__ if k != "detector"}
        for key in ("ci_gap_newcombe", "ci_delta_newcombe"):
            fields_[key] = tuple(fields_[key]) if fields_[key] is not None else None
        dc = d.get("detector_correction")
        fields_["detector"] = DetectorCorrection.from_dict(dc) if dc is not None else None
        return cls(**fields_)


def extended_stats(base: OverlapStats, *, power_alpha: float, power: float = 0.8,
                   precision: RateEstimate | None = None, recall: RateEstimate | None = None,
                   boschloo_max_tables: int = BOSCHLOO_MAX_TABLES, n_boot: int = 4000,
                   seed: int = 0) -> ExtendedStats:
    """Two-sample test, Newcombe intervals, power and (given precision and recall) detector correction."""
    b = base
    gap = b.acc_overlap - b.acc_clean if b.acc_overlap is not None and b.acc_clean is not None else None
    test = two_sample_test(b.k_overlap, b.n_overlap, b.k_clean, b.n_clean, boschloo_max_tables=boschloo_max_tables)
    ci_gap = newcombe(b.k_overlap, b.n_overlap, b.k_clean, b.n_clean, b.ci_level)
    ci_delta = None
    if ci_gap is not None and b.overlap_rate is not None:
        ci_delta = (b.overlap_rate * ci_gap[0], b.overlap_rate * ci_gap[1])
    mdg = min_detectable_gap(b.n_overlap, b.acc_clean, power_alpha, power=power)
    mdd = mdg * b.overlap_rate if mdg is not None and b.overlap_rate is not None else None
    detector = None
    if precision is not None or recall is not None:
        detector = detector_corrected(b.k_all, b.n_all, b.k_overlap, b.n_overlap, precision or RateEstimate(1.0),
                                      recall or RateEstimate(1.0), ci_level=b.ci_level, n_boot=n_boot, seed=seed)
    return ExtendedStats(gap, test.p_value, test.method, ci_gap, ci_delta, power, power_alpha, mdg, mdd, detector)
