"""The one precision-target rule: the lowest threshold whose precision is at least the target.

Scores are similarities of pairs; a pair at or above the threshold is called a duplicate. At threshold t,
TP(t) and FP(t) count the positive and negative pairs scoring >= t, precision(t) = TP / (TP + FP) and
recall(t) = TP / (number of positives).

The rule: among the positives' scores, the lowest t with precision(t) >= target. Why this rule and not
"the lowest t from which precision stays >= target at every higher threshold": precision(t) is exactly the
precision of the Overlap split that threshold t produces, so it is the quantity the target is about; the
stricter rule refuses a threshold because of a false positive far above it that does not change the
precision at t (and when the single highest-scoring pair is a false positive it finds no threshold at all,
whatever the thousands of duplicates below it). Only positives' scores are candidates: between two
positives, a lower threshold adds false positives and no true one, so the chosen t is the highest threshold
that gives its recall. ``calibrate``, ``threshold`` (labelled pairs) and the benchmarks all call this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PrecisionPoint:
    """A threshold and what it gives: counts, precision and recall."""

    threshold: float
    tp: int
    fp: int
    n_positive: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp)

    @property
    def recall(self) -> float:
        return self.tp / self.n_positive


def _sorted(scores) -> np.ndarray:
    a = np.asarray(scores, dtype=np.float64).ravel()
    if np.isnan(a).any():
        raise ValueError("scores must not be NaN")
    return np.sort(a)


def precision_recall(positives, negatives) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score used as a threshold (score >= t), thresholds ascending.
    Precision is 1.0 where nothing is at or above t."""
    pos, neg = _sorted(positives), _sorted(negatives)
    thresholds = np.unique(np.concatenate([pos, neg]))
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    return thresholds, precision, tp / max(len(pos), 1)


def threshold_at_precision(positives, negatives, target: float) -> PrecisionPoint | None:
    """The lowest threshold with precision >= ``target`` (the rule above); None when no threshold reaches it
    or there is no positive."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    pos, neg = _sorted(positives), _sorted(negatives)
    if len(pos) == 0:
        return None
    candidates = np.unique(pos)
    tp = len(pos) - np.searchsorted(pos, candidates, side="left")
    fp = len(neg) - np.searchsorted(neg, candidates, side="left")
    ok = np.nonzero(tp / (tp + fp) >= target)[0]
    if len(ok) == 0:
        return None
    i = int(ok[0])
    return PrecisionPoint(float(candidates[i]), int(tp[i]), int(fp[i]), len(pos))


def recall_at_precision(positives, negatives, target: float) -> float:
    """Recall at ``threshold_at_precision`` (0.0 where no threshold reaches the target)."""
    point = threshold_at_precision(positives, negatives, target)
    return 0.0 if point is None else point.recall
