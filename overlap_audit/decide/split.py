"""Thresholds and the Overlap / Clean split.

An evaluation example is in Overlap when the similarity of its nearest corpus item is at or above its
dataset's threshold, and it is not a low-information image (blank, near-uniform: such images match
each other whatever they show, the CLIP paper's Kinetics-700 black frames). Everything else is Clean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ..errors import ThresholdError, param
from ..settings import check_datasets_named
from ..values import Embeddings, Neighbors, Split


THRESHOLD_ORIGINS = ("file", "threshold", "default")  # the order of precedence


def threshold_origins(datasets: Iterable[str], *, threshold: float | None = None,
                      per_dataset: dict[str, float] | None = None) -> dict[str, str]:
    """Where each dataset's threshold comes from: ``"file"`` (the per-dataset thresholds), ``"threshold"``
    (the one threshold for every dataset) or ``"default"`` (the detector's)."""
    per_dataset = per_dataset or {}
    return {name: "file" if name in per_dataset else "threshold" if threshold is not None else "default"
            for name in datasets}


def resolve_thresholds(datasets: Iterable[str], default: float | None, *, threshold: float | None = None,
                       per_dataset: dict[str, float] | None = None) -> dict[str, float]:
    """The threshold of each dataset: the per-dataset file first, then ``threshold``, then the default."""
    datasets = list(datasets)
    per_dataset = per_dataset or {}
    origins = threshold_origins(datasets, threshold=threshold, per_dataset=per_dataset)
    if default is None and "default" in origins.values():
        missing = [n for n, o in origins.items() if o == "default"]
        raise ThresholdError(f"this detector has no calibrated default threshold: pass {param('threshold')} or a "
                             f"{param('thresholds')} file that names every dataset (not named: {', '.join(missing)})")
    check_datasets_named(per_dataset, datasets, "the thresholds file", ThresholdError)
    value = {"threshold": threshold, "default": default}
    out = {name: float(per_dataset[name] if o == "file" else value[o]) for name, o in origins.items()}
    for name, t in out.items():
        if not math.isfinite(t):
            raise ThresholdError(f"threshold of {name!r} is not finite")
    return out


def split(dataset: str, embeddings: Embeddings, neighbors: Neighbors, threshold: float) -> Split:
    """Split one embedded evaluation set into Overlap / Clean at ``threshold``."""
    if len(neighbors.query_ids) != len(embeddings):
        raise ValueError("neighbors and embeddings are not row-aligned")
    top = neighbors.similarities[:, 0] if neighbors.k else np.full(len(embeddings), np.nan, np.float32)
    low = np.asarray(embeddings.low_information, dtype=bool)
    with np.errstate(invalid="ignore"):
        overlap = np.nan_to_num(top, nan=-np.inf) >= threshold
    overlap &= ~low
    return Split(dataset=dataset, threshold=float(threshold), ids=list(embeddings.ids),
                 labels=list(embeddings.labels) or [None] * len(embeddings), neighbors=neighbors,
                 overlap=overlap, low_information=low, boxes=list(embeddings.boxes))
