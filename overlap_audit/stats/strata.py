"""The classes of an evaluation set's splits: per-class counts, the class mix of Overlap against Clean, the
per-class table, and what could not be judged. numpy/scipy only.

The mix check compares the class distribution of Overlap with Clean's: Pearson's chi-square on the
2 × (classes) table, asymptotic where Cochran's rule holds (no expected count below 1, at most 20% below 5),
otherwise a seeded Monte Carlo p-value conditional on the margins ((1 + #{X²* ≥ X²}) / (1 + draws), the
Overlap class counts drawn from the multivariate hypergeometric). The classes that drive it have an adjusted
residual (Haberman 1973, Biometrics 29:205–220: (O − E) / √(E (1 − n_overlap/n)(1 − N_j/n)) for the Overlap
cell) beyond the Bonferroni normal quantile over the classes. The pooled gap over the informative classes
splits exactly into within-class and mix parts: acc_overlap − acc_clean = (acc_overlap − expected) +
(expected − acc_clean), expected = Σ n1_j (c_j / n0_j) / Σ n1_j, the Overlap accuracy that Clean's
per-class accuracies predict. The comparison within classes is ``stats.stratified``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import chi2, norm

if TYPE_CHECKING:
    from ..values import Split

MIX_MONTE_CARLO_DRAWS = 10_000


class FlatRecord:
    """A frozen dataclass of plain fields that round-trips through report.json as it is."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def interval_list(v: tuple[float, float] | None) -> list[float] | None:
    return list(v) if v is not None else None


@dataclass(frozen=True)
class ClassRow(FlatRecord):
    """One class: its counts and accuracies in Overlap and Clean; None where undefined."""

    label: str
    n: int
    n_overlap: int
    n_clean: int
    k_overlap: int
    k_clean: int
    acc_overlap: float | None
    acc_clean: float | None
    gap: float | None  # acc_overlap − acc_clean
    informative: bool  # has both Overlap and Clean examples
    mix_residual: float | None  # adjusted residual of the Overlap count (the mix check)
    inflation: float | None  # n_overlap · gap / n_all: this class's part of the stratified inflation



@dataclass(frozen=True)
class ClassTable:
    """The per-class table, rows ordered by Overlap count (most first), then label."""

    rows: tuple[ClassRow, ...]

    def to_dict(self) -> dict:
        return {"rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassTable":
        return cls(tuple(ClassRow.from_dict(r) for r in d["rows"]))

    def top(self, k: int, *, by: str = "n_overlap") -> list[ClassRow]:
        """The k rows with the largest ``by`` (absolute value for residuals and gaps; None last)."""
        if by not in ClassRow.__dataclass_fields__:
            raise ValueError(f"unknown column {by!r}")

        def key(r: ClassRow):
            v = getattr(r, by)
            return (v is None, -abs(v) if isinstance(v, (int, float)) else 0, r.label)

        return sorted(self.rows, key=key)[:k]


@dataclass(frozen=True)
class MixDriver(FlatRecord):
    """A class whose share of Overlap differs from its share of Clean beyond chance."""

    label: str
    n_overlap: int
    expected_overlap: float  # if Overlap had All's class distribution
    residual: float



@dataclass(frozen=True)
class MixCheck:
    """Does Overlap's class distribution differ from Clean's, and how much of the gap does that explain."""

    statistic: float | None  # Pearson's chi-square
    dof: int | None
    p_value: float | None
    method: str | None  # "chi2" | "monte-carlo"
    n_draws: int | None  # Monte Carlo draws, None for chi2
    residual_threshold: float | None  # |adjusted residual| above this marks a driver
    drivers: tuple[MixDriver, ...]  # by |residual|, largest first
    # over the informative classes
    acc_overlap: float | None
    acc_clean: float | None
    acc_overlap_expected: float | None  # from Clean's per-class accuracies
    gap_within: float | None  # acc_overlap − expected
    gap_mix: float | None  # expected − acc_clean

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["drivers"] = [m.to_dict() for m in self.drivers]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MixCheck":
        fields = {k: d[k] for k in cls.__dataclass_fields__}
        fields["drivers"] = tuple(MixDriver.from_dict(m) for m in d["drivers"])
        return cls(**fields)


@dataclass(frozen=True, eq=False)
class StrataCounts:
    """Per-class counts (one entry per class present); labels sorted."""

    labels: tuple[str, ...]
    n_overlap: np.ndarray  # int64 [J]
    n_clean: np.ndarray
    k_overlap: np.ndarray
    k_clean: np.ndarray
    n_all: int
    n_unlabelled: int
    n_overlap_unlabelled: int


def strata_counts(labels: Sequence[str | None], overlap: Sequence[bool] | np.ndarray,
                  correct: Sequence[bool] | np.ndarray) -> StrataCounts:
    """Count Overlap/Clean × correct/wrong per class from per-example arrays; None labels are left out."""
    ov = np.asarray(overlap, dtype=bool)
    ok = np.asarray(correct, dtype=bool)
    n = len(labels)
    if ov.shape != (n,) or ok.shape != (n,):
        raise ValueError(f"labels, overlap and correct must be 1-D of one length, got {n}, {ov.shape}, {ok.shape}")
    has = np.array([lab is not None for lab in labels], dtype=bool)
    named = [str(lab) for lab in labels if lab is not None]
    uniq, codes = np.unique(np.asarray(named, dtype=str), return_inverse=True) if named else (np.array([], str),
                                                                                             np.array([], int))
    codes = np.asarray(codes).reshape(-1)
    j = len(uniq)
    ov_l, ok_l = ov[has], ok[has]

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(codes[mask], minlength=j).astype(np.int64)

    return StrataCounts(labels=tuple(str(u) for u in uniq), n_overlap=count(ov_l), n_clean=count(~ov_l),
                        k_overlap=count(ov_l & ok_l), k_clean=count(~ov_l & ok_l), n_all=n,
                        n_unlabelled=int((~has).sum()), n_overlap_unlabelled=int((ov & ~has).sum()))


def _adjusted_residuals(n1: np.ndarray, n0: np.ndarray) -> np.ndarray:
    total = n1 + n0
    n, m1 = float(total.sum()), float(n1.sum())
    expected = m1 * total / n
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (n1 - expected) / np.sqrt(expected * (1 - m1 / n) * (1 - total / n))
    return np.where(np.isfinite(r), r, 0.0)


def _pearson(n1: np.ndarray, n0: np.ndarray) -> np.ndarray:
    """Pearson's X² of the 2 × J tables whose Overlap rows are n1 ([..., J]) with column totals n1 + n0."""
    total = n1 + n0
    n = total.sum(-1, keepdims=True).astype(float)
    m1 = n1.sum(-1, keepdims=True).astype(float)
    e1, e0 = m1 * total / n, (n - m1) * total / n
    return np.sum((n1 - e1) ** 2 / e1 + (n0 - e0) ** 2 / e0, axis=-1)


def mix_check(counts: StrataCounts, *, alpha: float = 0.05, n_draws: int = MIX_MONTE_CARLO_DRAWS,
              seed: int = 0) -> MixCheck:
    """Test whether Overlap's class distribution differs from Clean's, and split the gap into mix and within."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    a, n1, c, n0 = counts.k_overlap, counts.n_overlap, counts.k_clean, counts.n_clean
    inf = (n1 > 0) & (n0 > 0)
    acc_ov = acc_cl = expected_acc = within = mix = None
    if inf.any():
        acc_ov = float(a[inf].sum() / n1[inf].sum())
        acc_cl = float(c[inf].sum() / n0[inf].sum())
        expected_acc = float(np.sum(n1[inf] * c[inf] / n0[inf]) / n1[inf].sum())
        within, mix = acc_ov - expected_acc, expected_acc - acc_cl
    present = (n1 + n0) > 0
    m1, m0, j = int(n1.sum()), int(n0.sum()), int(present.sum())
    if m1 == 0 or m0 == 0 or j < 2:
        return MixCheck(None, None, None, None, None, None, (), acc_ov, acc_cl, expected_acc, within, mix)
    x1, x0 = n1[present], n0[present]
    stat = float(_pearson(x1, x0))
    total = x1 + x0
    e1, e0 = m1 * total / (m1 + m0), m0 * total / (m1 + m0)
    expected_all = np.concatenate([e1, e0])
    cochran = expected_all.min() >= 1 and (expected_all < 5).mean() <= 0.2
    if cochran:
        p, method, draws = float(chi2.sf(stat, j - 1)), "chi2", None
    else:
        rng = np.random.default_rng(seed)
        sim1 = rng.multivariate_hypergeometric(total, m1, size=n_draws)
        sims = _pearson(sim1, total - sim1)
        # a relative tolerance so that ties in floating point count as at least as extreme
        hits = int(np.sum(sims >= stat * (1 - 1e-12)))
        p, method, draws = (1 + hits) / (1 + n_draws), "monte-carlo", n_draws
    resid = _adjusted_residuals(x1, x0)
    threshold = float(norm.ppf(1 - alpha / (2 * j)))
    labels = [lab for lab, keep in zip(counts.labels, present) if keep]
    order = np.argsort(-np.abs(resid), kind="stable")
    drivers = tuple(MixDriver(labels[i], int(x1[i]), float(e1[i]), float(resid[i]))
                    for i in order if abs(resid[i]) > threshold)
    return MixCheck(stat, j - 1, p, method, draws, threshold, drivers, acc_ov, acc_cl, expected_acc, within, mix)


def class_table(counts: StrataCounts) -> ClassTable:
    """The per-class table of one set."""
    a, n1, c, n0 = counts.k_overlap, counts.n_overlap, counts.k_clean, counts.n_clean
    resid = _adjusted_residuals(n1, n0) if n1.sum() > 0 and n0.sum() > 0 else None
    rows = []
    for i, label in enumerate(counts.labels):
        acc_ov = float(a[i] / n1[i]) if n1[i] else None
        acc_cl = float(c[i] / n0[i]) if n0[i] else None
        gap = acc_ov - acc_cl if acc_ov is not None and acc_cl is not None else None
        rows.append(ClassRow(label=label, n=int(n1[i] + n0[i]), n_overlap=int(n1[i]), n_clean=int(n0[i]),
                             k_overlap=int(a[i]), k_clean=int(c[i]), acc_overlap=acc_ov, acc_clean=acc_cl, gap=gap,
                             informative=bool(n1[i] and n0[i]),
                             mix_residual=float(resid[i]) if resid is not None else None,
                             inflation=gap * int(n1[i]) / counts.n_all if gap is not None else None))
    rows.sort(key=lambda r: (-r.n_overlap, r.label))
    return ClassTable(tuple(rows))


@dataclass(frozen=True)
class Unjudged:
    """Examples of one set the detector could not judge (low-information: never Overlap)."""

    dataset: str
    n: int
    n_low_information: int

    @property
    def fraction(self) -> float | None:
        return self.n_low_information / self.n if self.n else None

    def to_dict(self) -> dict:
        return {**asdict(self), "fraction": self.fraction}


def unjudged(splits: Sequence["Split"]) -> list[Unjudged]:
    """Low-information counts per set, in the order given."""
    return [Unjudged(sp.dataset, len(sp.ids), int(np.asarray(sp.low_information, dtype=bool).sum())) for sp in splits]
