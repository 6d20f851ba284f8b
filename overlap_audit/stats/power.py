"""Calibration by simulation: type-I error and power of the paper's test, the two-sample test and the
corrections across datasets, on synthetic splits with known accuracies.

Under the null, Overlap and Clean have the same accuracy p: k_overlap ~ Binomial(n_overlap, p) and
k_clean ~ Binomial(n_clean, p), independently. A test at level alpha should reject at most an alpha
fraction of the time (within Monte Carlo error, standard error sqrt(alpha (1 − alpha) / n_sim)). The
paper's test takes the estimated Clean accuracy as known and so rejects too often when n_clean is small;
the two-sample exact tests do not. Under an alternative (acc_overlap > acc_clean) the rejection rate is
the power. numpy/scipy only; seeded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from ..settings import CORRECTIONS
from .overlap import BOSCHLOO_MAX_TABLES, family_correction, two_sample_test


@dataclass(frozen=True)
class CalibrationCell:
    """Rejection rates of both tests in one simulated setting."""

    n_overlap: int
    n_clean: int
    acc_clean: float
    acc_overlap: float
    alpha: float
    n_sim: int
    rejection_paper: float
    rejection_two_sample: float
    two_sample_method: str

    @property
    def mc_se(self) -> float:
        """Monte Carlo standard error of a rejection rate equal to alpha."""
        return math.sqrt(self.alpha * (1 - self.alpha) / self.n_sim)


def _paper_p(k_ov: np.ndarray, n_ov: int, k_cl: np.ndarray, n_cl: int) -> np.ndarray:
    return binom.sf(k_ov - 1, n_ov, k_cl / n_cl)


def _two_sample_p(k_ov: np.ndarray, n_ov: int, k_cl: np.ndarray, n_cl: int,
                  boschloo_max_tables: int) -> tuple[np.ndarray, str]:
    pairs, inverse = np.unique(np.stack([k_ov, k_cl], axis=1), axis=0, return_inverse=True)
    method = ""
    values = np.empty(len(pairs))
    for j, (a, b) in enumerate(pairs):  # each distinct table is tested once
        test = two_sample_test(int(a), n_ov, int(b), n_cl, boschloo_max_tables=boschloo_max_tables)
        values[j] = test.p_value
        method = test.method or method
    return values[np.asarray(inverse).reshape(-1)], method


def _draw(rng: np.random.Generator, n_ov: int, n_cl: int, acc_clean: float, acc_overlap: float, n_sim: int):
    return rng.binomial(n_ov, acc_overlap, n_sim), rng.binomial(n_cl, acc_clean, n_sim)


def simulate(n_overlap: int, n_clean: int, acc_clean: float, acc_overlap: float | None = None, *,
             alpha: float = 0.05, n_sim: int = 2000, seed: int = 0,
             boschloo_max_tables: int = BOSCHLOO_MAX_TABLES) -> CalibrationCell:
    """Rejection rates at level alpha; under the null when acc_overlap is None (= acc_clean)."""
    acc_overlap = acc_clean if acc_overlap is None else acc_overlap
    rng = np.random.default_rng(seed)
    k_ov, k_cl = _draw(rng, n_overlap, n_clean, acc_clean, acc_overlap, n_sim)
    paper = _paper_p(k_ov, n_overlap, k_cl, n_clean)
    two, method = _two_sample_p(k_ov, n_overlap, k_cl, n_clean, boschloo_max_tables)
    return CalibrationCell(n_overlap, n_clean, acc_clean, acc_overlap, alpha, n_sim,
                           float((paper <= alpha).mean()), float((two <= alpha).mean()), method)


@dataclass(frozen=True)
class FamilyCalibration:
    """Family-wise error (or power) of each test under each correction, across several datasets."""

    settings: tuple[tuple[int, int, float, float], ...]
    alpha: float
    n_sim: int
    rejection: dict[str, float]  # "paper+bonferroni", "paper+holm", "two_sample+bonferroni", "two_sample+holm"


def simulate_family(settings: Sequence[tuple[int, int, float] | tuple[int, int, float, float]], *,
                    alpha: float = 0.05, n_sim: int = 1000, seed: int = 0,
                    boschloo_max_tables: int = BOSCHLOO_MAX_TABLES) -> FamilyCalibration:
    """The probability that a correction rejects at least one dataset whose null is true.

    Each setting is (n_overlap, n_clean, acc_clean[, acc_overlap]); datasets with acc_overlap > acc_clean
    are false nulls and do not count as errors (with none true, the rate is the power to find any).
    """
    full = [tuple(s) if len(s) == 4 else (s[0], s[1], s[2], s[2]) for s in settings]
    rng = np.random.default_rng(seed)
    p_paper, p_two = [], []
    for n_ov, n_cl, acc_cl, acc_ov in full:
        k_ov, k_cl = _draw(rng, n_ov, n_cl, acc_cl, acc_ov, n_sim)
        p_paper.append(_paper_p(k_ov, n_ov, k_cl, n_cl))
        p_two.append(_two_sample_p(k_ov, n_ov, k_cl, n_cl, boschloo_max_tables)[0])
    true_null = np.array([acc_ov <= acc_cl for _, _, acc_cl, acc_ov in full])
    count_all = not true_null.any()
    out = {}
    for test, ps in (("paper", np.stack(p_paper, 1)), ("two_sample", np.stack(p_two, 1))):
        for method in CORRECTIONS:
            hits = 0
            for row in ps:
                sig = np.array(family_correction(list(map(float, row)), alpha, method).significant, dtype=bool)
                hits += bool(sig.any() if count_all else (sig & true_null).any())
            out[f"{test}+{method}"] = hits / n_sim
    return FamilyCalibration(tuple(full), alpha, n_sim, out)
