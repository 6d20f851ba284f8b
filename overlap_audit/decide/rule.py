"""The Overlap decision, as one object: each dataset's threshold, then (with verification) a relaxed first
stage whose pairs are compared densely (``verify.verify_prepared``), then Overlap / Clean.

``DecisionRule`` holds the decision's settings; ``DecisionRule.decide`` turns the matches of a report's
evaluation sets into their ``Split``s. Without verification an example is Overlap when its nearest corpus
item is at or above its dataset's threshold (``split.split``). With it, the examples at or above the first
stage (``VerifySettings.first_stage_for``) are compared with that item, and Overlap is those whose pair
scores at least ``VerifySettings.threshold``; low-information examples are never Overlap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ..values import Embeddings, Neighbors, Split
from .split import split
from .verify import VERIFY_THRESHOLD, Prepared, prepare, verify_prepared

# the first stage proposes pairs at a relaxed threshold: a distance from 1 RELAX times the detector's,
# 1 - RELAX * (1 - t); a detector may declare its own (``verify_relax``, detectors/base.py). On the development
# set (trimmed views) RELAX = 2 keeps 74 of the 75 true copies for phash (0.7188) and for pdq (0.5391); for
# clipdup (0.9639) it keeps 60 of 75, and the copies clipdup misses lie far below its threshold (66 of 75 at
# RELAX = 5; BENCHMARKS.md), so there verification adds precision, not recall
RELAX = 2.0


def relax_for(detector) -> float:
    """The first stage's relaxation for ``detector``: its own ``verify_relax`` when it declares one, else
    ``RELAX``."""
    relax = getattr(detector, "verify_relax", None)
    return RELAX if relax is None else float(relax)


def first_stage_threshold(detector_threshold: float, relax: float = RELAX) -> float:
    """The relaxed first-stage threshold for a detector threshold: 1 - relax * (1 - t)."""
    return 1.0 - relax * (1.0 - float(detector_threshold))


@dataclass(frozen=True)
class VerifySettings:
    """Verification of a report's matches: the examples whose nearest corpus item is at or above the first
    stage (``first_stage``; None: ``first_stage_threshold`` of each dataset's threshold with ``relax``, which
    ``DecisionRule.for_detector`` takes from the detector's ``verify_relax`` when it is None) are verified, and
    Overlap is those whose pair scores at least ``threshold``; every other example is Clean."""

    threshold: float = VERIFY_THRESHOLD
    first_stage: float | None = None
    relax: float | None = None  # the first stage's relaxation when ``first_stage`` is None (None: ``RELAX``)

    def first_stage_for(self, dataset_threshold: float) -> float:
        if self.first_stage is not None:
            return float(self.first_stage)
        return first_stage_threshold(dataset_threshold, RELAX if self.relax is None else self.relax)

    def to_dict(self, splits: dict | None = None, unreadable: dict[str, int] | None = None,
                changed: dict[str, int] | None = None) -> dict:
        """The settings, and per dataset of ``splits`` (verified ones) its first stage and counts
        (``n_changed``: the unreadable pairs whose corpus image changed since it was indexed)."""
        d = {"threshold": self.threshold,
             "relax": (RELAX if self.relax is None else self.relax) if self.first_stage is None else None,
             "first_stage": self.first_stage}
        if splits:
            d["datasets"] = {n: {"first_stage": self.first_stage_for(sp.threshold),
                                 "n_verified": int(np.isfinite(sp.verify_scores).sum()),
                                 "n_accepted": int(np.asarray(sp.verified).sum()),
                                 "n_unreadable": int((unreadable or {}).get(n, 0)),
                                 "n_changed": int((changed or {}).get(n, 0))}
                             for n, sp in splits.items() if sp.verify_scores is not None}
        return d


@dataclass(frozen=True)
class Decision:
    """What a ``DecisionRule`` decided: each dataset's Split, and with verification the report's record of it
    (``VerifySettings.to_dict`` with each dataset's first stage and counts; None without verification)."""

    splits: dict[str, Split]
    verification: dict | None = None


@dataclass(frozen=True)
class DecisionRule:
    """The rule that makes an evaluation example Overlap: its dataset's threshold (``thresholds``, one per
    dataset) and, unless ``verify`` is None, pair verification from a relaxed first stage."""

    thresholds: Mapping[str, float]
    verify: VerifySettings | None = field(default_factory=VerifySettings)

    @classmethod
    def for_detector(cls, detector, thresholds: Mapping[str, float],
                     verify: VerifySettings | None = VerifySettings()) -> DecisionRule:
        """The rule for ``detector``'s matches: a ``verify`` without its own ``relax`` takes the detector's
        (``relax_for``)."""
        if verify is not None and verify.relax is None:
            verify = replace(verify, relax=relax_for(detector))
        return cls(dict(thresholds), verify)

    def first_stage(self, dataset: str) -> float | None:
        """The similarity from which ``dataset``'s examples are verified (None: no verification)."""
        return None if self.verify is None else self.verify.first_stage_for(self.thresholds[dataset])

    def decide(self, matches: Mapping[str, tuple[Embeddings, Neighbors]], *, index_dir: str | os.PathLike | None,
               eval_sources: Mapping[str, object], max_pixels: int | None = None) -> Decision:
        """Split each evaluation set's (embeddings, neighbours) into Overlap / Clean. Verification reads the
        pairs' images back: the corpus items from ``index_dir``, the examples from ``eval_sources`` (name ->
        spec or in-memory source); ``max_pixels`` caps their decoding."""
        splits = {n: split(n, emb, nb, self.thresholds[n]) for n, (emb, nb) in matches.items()}
        if self.verify is None:
            return Decision(splits)
        splits, unreadable, changed = _verify_splits(splits, index_dir, eval_sources, self.verify,
                                                     max_pixels=max_pixels)
        return Decision(splits, self.verify.to_dict(splits, unreadable, changed))


def _verify_splits(splits: dict[str, Split], index_dir, eval_sources: Mapping[str, object],
                   settings: VerifySettings, *, max_pixels: int | None = None
                   ) -> tuple[dict[str, Split], dict, dict]:
    """Verify each split's candidate pairs (top similarity at or above the first stage, not low-information):
    returns the splits with ``verify_scores``, ``verified`` and ``overlap = verified``, and per dataset the
    number of candidate pairs whose images could not be read, and of those whose corpus image changed since
    it was indexed (``index.is_changed``: counted unreadable too, never compared). Such a pair keeps the first decision (Overlap
    at or above the detector's threshold): an image that cannot be read back never hides overlap."""
    from ..imaging import ImageRejected, decode_image
    from ..limits import DEFAULT_MAX_PIXELS
    from ..index import corpus_items, is_changed
    from ..sources import as_source, fetch_items

    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    wanted: dict[str, list[int]] = {}
    for name, sp in splits.items():
        top = np.nan_to_num(np.asarray(sp.top_similarity, np.float64), nan=-np.inf)
        ok = (top >= settings.first_stage_for(sp.threshold)) & ~np.asarray(sp.low_information, bool)
        wanted[name] = [int(i) for i in np.flatnonzero(ok)] if sp.neighbors.k else []
    keys = {splits[n].neighbors.ids[i, 0] for n, rows in wanted.items() for i in rows}
    corpus = corpus_items(index_dir, keys) if keys else {}
    prepared: dict[str, Prepared | None] = {}

    def load(item) -> Prepared | None:
        if item is None or item.skip_reason:
            return None
        try:
            return prepare(decode_image(item.data, item.path, max_pixels=max_pixels))
        except ImageRejected:
            return None

    out, unreadable, changed = {}, {}, {}
    for name, sp in splits.items():
        rows = wanted[name]
        evals = (fetch_items(as_source(eval_sources[name], name=name, labels_from_folders=True),
                             [sp.ids[i] for i in rows]) if rows else {})
        scores = np.full(len(sp.ids), np.nan, np.float32)
        unreadable[name] = changed[name] = 0
        for i in rows:
            key = str(sp.neighbors.ids[i, 0])
            if key not in prepared:
                prepared[key] = load(corpus.get(key))
            a, b = load(evals.get(sp.ids[i])), prepared[key]
            if a is None or b is None:
                unreadable[name] += 1
                changed[name] += key in corpus and is_changed(corpus[key])
                continue
            scores[i] = verify_prepared(a, b).score
        with np.errstate(invalid="ignore"):
            verified = np.nan_to_num(scores, nan=-np.inf) >= settings.threshold
        unread = np.zeros(len(sp.ids), bool)
        unread[[i for i in rows if np.isnan(scores[i])]] = True
        overlap = np.where(unread, sp.overlap, verified) & ~np.asarray(sp.low_information, bool)
        out[name] = replace(sp, verify_scores=scores, verified=verified, overlap=overlap)
    return out, unreadable, changed
