"""An evaluation set's own threshold: the lowest one at which the estimated precision of its Overlap split
reaches a target.

Three kinds of similarity go in. ``negatives``: the top-1 corpus similarity of images known to have no copy in
the corpus (the set's own images transposed, i.e. turned by 90 degrees and mirrored: their statistics stay
the set's, but no corpus item can be the same picture); the share of them at or above t estimates the false-match rate per
query FPR(t). ``observed``: the set's own top-1 similarities; O(t) of them are at or above t. ``n_eval``:
the set's size. The estimated precision at t is

    precision(t) = 1 - FPR(t) * n_eval / O(t)

(expected false matches over all called Overlap; every example counted as a possible false match, so it
errs low when much of the set is overlap). FPR(t) is the median-unbiased estimate (the Clopper-Pearson upper
bound at 50%: as likely too high as too low; it is above zero when no negative matched, so a set whose
Overlap is only a handful of examples cannot claim a precision its sample cannot show). The interval uses the
two-sided Clopper-Pearson bounds of FPR. A threshold with nothing at or above it has no precision and is
never chosen: a set without overlap keeps the detector's default.

Why these negatives: a set's own nearest corpus neighbours include its true copies wherever it is
contaminated, so taking them as negatives makes the threshold strictest exactly where overlap exists; and a
set's own other images are poor negatives when the set holds several copies of one picture. The bias of
transposed images: a symmetric scene (a pattern whose parts are each other's transposes) can match another
part of itself in the corpus, which counts a false match too often (a stricter threshold); a transposed
image is less like the corpus's images than the set's own are (a looser one). Both are measured in
BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _beta_ppf(q: float, a: float, b: float) -> float:
    from scipy.stats import beta

    return float(beta.ppf(q, a, b))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The two-sided Clopper-Pearson interval of a binomial rate, k of n (n > 0)."""
    if n <= 0:
        raise ValueError("n must be positive")
    a = (1 - level) / 2
    low = 0.0 if k == 0 else _beta_ppf(a, k, n - k + 1)
    high = 1.0 if k == n else _beta_ppf(1 - a, k + 1, n - k)
    return low, high


def false_match_rate(k: int, n: int) -> float:
    """The median-unbiased estimate of a rate, k of n: the Clopper-Pearson upper bound at 50%."""
    return 1.0 if k >= n else _beta_ppf(0.5, k + 1, n - k)


@dataclass(frozen=True)
class PrecisionEstimate:
    """The estimated precision of an Overlap split of ``n_overlap`` examples of ``n_eval``, from ``false_matches``
    of ``n_negatives`` known-distinct queries; ``low``/``high`` its interval at ``level``."""

    value: float
    low: float
    high: float
    false_matches: int
    n_negatives: int
    n_overlap: int
    n_eval: int
    level: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def estimate_precision(false_matches: int, n_negatives: int, n_overlap: int, n_eval: int,
                       level: float = 0.95) -> PrecisionEstimate | None:
    """``1 - FPR * n_eval / n_overlap`` with FPR median-unbiased, and its interval from FPR's Clopper-Pearson
    bounds (clipped at 0); None when nothing is called Overlap or there are no negatives."""
    if n_overlap <= 0 or n_negatives <= 0:
        return None
    lo_fpr, hi_fpr = clopper_pearson(false_matches, n_negatives, level)

    def prec(fpr: float) -> float:
        return max(0.0, 1.0 - fpr * n_eval / n_overlap)

    return PrecisionEstimate(prec(false_match_rate(false_matches, n_negatives)), prec(hi_fpr), prec(lo_fpr),
                             int(false_matches), int(n_negatives), int(n_overlap), int(n_eval), level)


def threshold_candidates(negatives, observed, *, lower: float = 0.0, upper: float = 1.0) -> np.ndarray:
    """The thresholds worth trying, ascending: ``lower``, ``upper`` and every negative or observed similarity
    between them (the estimate changes only there), as float32 as ``split.split`` compares."""
    both = np.nan_to_num(np.concatenate([np.asarray(negatives, np.float32), np.asarray(observed, np.float32)]),
                         nan=-np.inf)
    return np.unique(np.concatenate([[np.float32(lower), np.float32(upper)], both[(both >= lower) & (both <= upper)]]))


def pick_threshold(candidates, false_matches, n_negatives: int, n_overlap, n_eval: int,
                   target: float) -> float | None:
    """The lowest of the ascending ``candidates`` whose estimated precision (``estimate_precision`` of its
    ``false_matches`` among ``n_negatives`` and its ``n_overlap`` of ``n_eval``; point value) is at least
    ``target``; None when none reaches it."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    for t, x, o in zip(candidates, false_matches, n_overlap):
        est = estimate_precision(int(x), n_negatives, int(o), n_eval)
        if est is not None and est.value >= target:
            return float(t)
    return None
