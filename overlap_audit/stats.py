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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy.stats import binomtest


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


def bonferroni(p_values: Sequence[float | None], alpha: float = 0.05) -> MultipleTestResult:
    """Bonferroni: reject where p ≤ alpha / m, m = the number of p-values that are not None."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    m = sum(p is not None for p in p_values)
    adjusted = [None if p is None else min(1.0, p * m) for p in p_values]
    significant = [None if p is None else bool(p <= alpha / m) for p in p_values]
    return MultipleTestResult("bonferroni", alpha, m, adjusted, significant)
