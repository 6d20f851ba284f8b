"""A detector's threshold from evidence: a user's own held-out images, their augmented copies as
positives and every other image as negatives, and the lowest threshold whose precision reaches a target
(the rule of ``overlap_audit.thresholds``).

For n images, positives are the n pairs (copy_i, image_i); negatives are the n·(n − 1) pairs
(copy_i, image_j), j ≠ i — every pair a search could wrongly call a duplicate. At threshold t,
precision = TP / (TP + FP) and recall = TP / n. Images flagged low-information are left out (the split
never calls them Overlap anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold and the precision/recall curve it came from."""

    detector: str
    target_precision: float
    threshold: float | None
    precision: float | None
    recall: float | None
    n_images: int
    n_low_information: int
    strength: str
    curve: list[dict] = field(default_factory=list)  # threshold, precision, recall

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def calibrate(source: str, detector: str = "phash", *, target_precision: float = 0.99, strength: str = "medium",
              seed: int = 0, max_images: int = 2000, workers: int | None = None) -> Calibration:
    """Embed held-out images and their augmented copies; the lowest threshold with precision >= target."""
    from .augment import augment_all
    from .detectors import get_detector
    from .embed import Decoder
    from .errors import SourceError
    from .sources import open_source
    from .thresholds import precision_recall, threshold_at_precision

    det = get_detector(detector)

    class _Keep:  # decode in the worker pool, keep a bounded RGB copy of each image
        decode_size = 512

        def preprocess(self, image):
            image = image.copy()
            image.thumbnail((512, 512))
            return np.asarray(image, dtype=np.uint8)

    from PIL import Image

    images = []
    with Decoder(_Keep(), workers=workers) as decoder:
        for _, array, _, _ in decoder.decode(open_source(source).iter_items()):
            if array is not None:
                images.append(Image.fromarray(array))
            if len(images) >= max_images:
                break
    if len(images) < 3:
        raise SourceError(f"calibration needs at least 3 readable images in {source!r}; found {len(images)}")
    rng = np.random.default_rng(seed)
    copies = [augment_all(im, strength, rng) for im in images]
    a = np.stack([det.preprocess(im) for im in images])
    b = np.stack([det.preprocess(im) for im in copies])
    keep = ~det.low_information(a)
    va, vb = det.embed(a)[keep], det.embed(b)[keep]
    sims = det.similarity(vb, va)
    n = len(va)
    pos = np.diag(sims).astype(np.float64)
    neg = sims[~np.eye(n, dtype=bool)].astype(np.float64)
    thresholds, precision, recall = precision_recall(pos, neg)
    point = threshold_at_precision(pos, neg, target_precision)
    step = max(1, len(thresholds) // 20)
    curve = [{"threshold": float(thresholds[i]), "precision": float(precision[i]), "recall": float(recall[i])}
             for i in range(0, len(thresholds), step)]
    return Calibration(
        detector=det.spec, target_precision=target_precision,
        threshold=None if point is None else point.threshold,
        precision=None if point is None else point.precision,
        recall=None if point is None else point.recall,
        n_images=int(n), n_low_information=int((~keep).sum()), strength=strength, curve=curve,
    )


def weighted_recall_at_precision(order_scores: np.ndarray, order_rows: np.ndarray, order_cols: np.ndarray,
                                 weights: np.ndarray, target: float = 0.99) -> float:
    """Recall at the lowest threshold from which precision stays >= target, for weighted query images.

    The pairs of one n×n similarity matrix (row = query copy, column = image; the diagonal holds the
    positives) come sorted by score, highest first; image i counts ``weights[i]`` times (a bootstrap
    resample), so positive (i, i) weighs w_i and negative (i, j) weighs w_i·w_j. Ties are one threshold.
    With every weight 1 this is the unweighted rule of :func:`precision_recall`.
    """
    total = float(weights.sum())  # every image has one positive: its copy
    if total <= 0:
        return 0.0
    # the answer depends only on the pairs down to the first threshold below the target: look at a prefix,
    # longer only when it holds no such threshold (the top few thousand pairs decide at high precision)
    length = min(len(order_scores), 4096)
    while True:
        r, c = order_rows[:length], order_cols[:length]
        positive = r == c
        # a resampled image brings its copy once (not w_i² positives); two drawings of one image never pair up
        tp = np.cumsum(np.where(positive, weights[r], 0.0))
        fp = np.cumsum(np.where(positive, 0.0, weights[r] * weights[c]))
        # the last pair of each run of equal scores: a threshold keeps the whole run or none of it
        full = length == len(order_scores)
        ends = np.nonzero(np.append(order_scores[1:length] != order_scores[:length - 1],
                                    True if full else order_scores[length] != order_scores[length - 1]))[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp[ends] + fp[ends] > 0, tp[ends] / (tp[ends] + fp[ends]), 1.0)
        bad = np.nonzero(precision < target)[0]
        if len(bad):
            return 0.0 if bad[0] == 0 else float(tp[ends[bad[0] - 1]] / total)
        if full:
            return float(tp[-1] / total) if len(ends) else 0.0
        length = min(len(order_scores), 4 * length)


def weighted_average_precision(order_scores: np.ndarray, order_rows: np.ndarray, order_cols: np.ndarray,
                               weights: np.ndarray) -> float:
    """Average precision of the pairs of one n×n similarity matrix (sorted as :func:`sorted_pairs` sorts
    them: ties with negatives first, the pessimistic order) when image i counts ``weights[i]`` times."""
    total = float(weights.sum())
    if total <= 0:
        return 0.0
    positive = order_rows == order_cols
    wr = weights[order_rows]
    tp = np.cumsum(np.where(positive, wr, 0.0))
    fp = np.cumsum(np.where(positive, 0.0, wr * weights[order_cols]))
    at = np.nonzero(positive & (wr > 0))[0]
    return float((wr[at] * tp[at] / (tp[at] + fp[at])).sum() / total)


def sorted_pairs(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, rows, columns) of every cell of a square similarity matrix, highest score first; among equal
    scores the negatives (off the diagonal) come first."""
    n = len(sims)
    flat = np.asarray(sims, np.float64).ravel()
    order = np.lexsort((np.eye(n, dtype=bool).ravel(), -flat))
    return flat[order], (order // n).astype(np.int64), (order % n).astype(np.int64)


@dataclass(frozen=True)
class PairedBootstrap:
    """A metric of detector A minus the same metric of detector B on the same images, with a bootstrap
    interval (metric: "recall" at a precision, or "ap", average precision)."""

    metric: str
    difference: float  # on the images as they are
    low: float  # percentile interval of the resampled differences
    high: float
    p_a_better: float  # share of resamples in which A's metric is strictly higher
    replicates: int
    level: float


def paired_bootstrap(sims_a: np.ndarray, sims_b: np.ndarray, *, metric: str = "recall", replicates: int = 1000,
                     target: float = 0.99, level: float = 0.95, seed: int = 0,
                     groups: np.ndarray | None = None) -> PairedBootstrap:
    """Resample the images (with replacement, the same resample for both detectors) and recompute the
    difference in ``metric`` (recall at ``target`` precision, or "ap"); the images are the unit that varies,
    not the pairs. With ``groups`` (one label per image, e.g. the photo a tile was cut from) whole groups are
    resampled: images of one group are not independent (the tiles of one brick wall all look alike)."""
    if sims_a.shape != sims_b.shape or sims_a.ndim != 2 or sims_a.shape[0] != sims_a.shape[1]:
        raise ValueError(f"need two square similarity matrices of one shape, got {sims_a.shape} and {sims_b.shape}")
    if groups is not None and len(groups) != len(sims_a):
        raise ValueError(f"need one group label per image: {len(groups)} labels for {len(sims_a)} images")
    if metric == "recall":
        def score(ranked, w):
            return weighted_recall_at_precision(*ranked, w, target)
    elif metric == "ap":
        def score(ranked, w):
            return weighted_average_precision(*ranked, w)
    else:
        raise ValueError(f"metric must be 'recall' or 'ap', got {metric!r}")
    n = len(sims_a)
    a, b = sorted_pairs(sims_a), sorted_pairs(sims_b)
    ones = np.ones(n)
    point = score(a, ones) - score(b, ones)
    rng = np.random.default_rng(seed)
    diffs = np.empty(replicates)
    labels, member = np.unique(np.arange(n) if groups is None else np.asarray(groups), return_inverse=True)
    for k in range(replicates):
        drawn = np.bincount(rng.integers(len(labels), size=len(labels)), minlength=len(labels))
        w = drawn[member].astype(np.float64)  # an image counts as often as its group was drawn
        diffs[k] = score(a, w) - score(b, w)
    tail = (1 - level) / 2
    return PairedBootstrap(metric=metric, difference=float(point), low=float(np.quantile(diffs, tail)),
                           high=float(np.quantile(diffs, 1 - tail)), p_a_better=float((diffs > 0).mean()),
                           replicates=replicates, level=level)
