"""The paper's statistics of one set without its edge-case Overlap pairs (``decide.edge``: evaluation images
smaller than the detector's measured side, or nearly uniform). The flagged examples are left out of the set
altogether, not moved to Clean: whether they are copies is what cannot be trusted, so they count on neither
side. numpy/scipy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .overlap import OverlapStats, overlap_stats


@dataclass(frozen=True)
class EdgeCases:
    """One set's edge-case Overlap pairs and the statistics without them."""

    measured_min_side: int | None  # "small": the evaluation image's shorter side under this
    uniform_std: float  # "nearly uniform": grey-level spread under this
    n_small: int
    n_uniform: int
    n_flagged: int  # small or nearly uniform
    n_unread: int  # Overlap images that could not be read back (not flagged)
    ids: tuple[str, ...]  # the flagged examples
    without: OverlapStats  # the set with the flagged examples left out
    p_value_adjusted_without: float | None = None  # by the report's deciding correction, across sets
    significant_without: bool | None = None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["ids"] = list(self.ids)
        d["without"] = self.without.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EdgeCases":
        fields = {k: d[k] for k in cls.__dataclass_fields__}
        fields["ids"] = tuple(str(i) for i in d["ids"])
        fields["without"] = OverlapStats.from_dict(d["without"])
        return cls(**fields)


def edge_cases(ids, overlap, correct, small, uniform, unread, *, measured_min_side: int | None,
               uniform_std: float, ci_level: float = 0.995) -> EdgeCases:
    """Count the flagged Overlap examples (``small`` or ``uniform``; only Overlap ones count) and recompute
    the paper's statistics over the rest of the set."""
    ov = np.asarray(overlap, bool)
    ok = np.asarray(correct, bool)
    small_ov, uniform_ov = np.asarray(small, bool) & ov, np.asarray(uniform, bool) & ov
    flagged = small_ov | uniform_ov
    keep = ~flagged
    without = overlap_stats(int(ok[keep].sum()), int(keep.sum()), int(ok[keep & ov].sum()), int((keep & ov).sum()),
                            ci_level=ci_level)
    return EdgeCases(measured_min_side=measured_min_side, uniform_std=float(uniform_std),
                     n_small=int(small_ov.sum()), n_uniform=int(uniform_ov.sum()), n_flagged=int(flagged.sum()),
                     n_unread=int((np.asarray(unread, bool) & ov).sum()),
                     ids=tuple(str(ids[i]) for i in np.flatnonzero(flagged)), without=without)
