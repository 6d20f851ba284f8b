"""A detector's threshold from evidence: a user's own held-out images, their augmented copies as
positives and every other image as negatives, and the lowest threshold whose precision reaches a target
(the rule of ``overlap_audit.decide.thresholds``).

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


def curve_rows(thresholds: np.ndarray, precision: np.ndarray, target: float, *, n: int = 20,
               dense: int = 20) -> list[int]:
    """Which rows of a precision/recall curve to show (ascending): ``n`` spread over the whole curve, plus up
    to ``dense`` spread over where precision lies between 0.5 and max(0.999, target) and every row next to
    where precision first reaches ``target`` (the region that decides the threshold: most thresholds of a
    calibration sit among the negatives, far below it)."""
    m = len(thresholds)
    if m == 0:
        return []
    rows = set(range(0, m, max(1, m // n))) | {m - 1}
    region = np.nonzero((precision >= min(0.5, target)) & (precision <= max(0.999, target)))[0]
    if len(region):
        rows |= {int(region[i]) for i in np.linspace(0, len(region) - 1, min(dense, len(region))).round().astype(int)}
    reached = np.nonzero(precision >= target)[0]
    if len(reached):
        first = int(reached[0])
        rows |= set(range(max(0, first - 2), min(m, first + 3)))
    return sorted(rows)


def calibrate(source: str, detector: str = "phash", *, target_precision: float = 0.99, strength: str = "medium",
              seed: int = 0, max_images: int = 2000, workers: int | None = None) -> Calibration:
    """Embed held-out images and their augmented copies; the lowest threshold with precision >= target."""
    from .augment import augment_all
    from .detectors import get_detector
    from .detectors.base import prepare
    from .embed import Decoder
    from .errors import SourceError
    from .sources import open_source
    from .decide.thresholds import precision_recall, threshold_at_precision

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
        for decoded in decoder.decode(open_source(source).iter_items()):
            if decoded.array is not None:
                images.append(Image.fromarray(decoded.array))
            if len(images) >= max_images:
                break
    if len(images) < 3:
        raise SourceError(f"calibration needs at least 3 readable images in {source!r}; found {len(images)}")
    rng = np.random.default_rng(seed)
    copies = [augment_all(im, strength, rng) for im in images]
    a = np.stack([prepare(det, im)[0] for im in images])
    b = np.stack([prepare(det, im)[0] for im in copies])
    keep = ~det.low_information(a)
    va, vb = det.embed(a)[keep], det.embed(b)[keep]
    sims = det.similarity(vb, va)
    n = len(va)
    pos = np.diag(sims).astype(np.float64)
    neg = sims[~np.eye(n, dtype=bool)].astype(np.float64)
    thresholds, precision, recall = precision_recall(pos, neg)
    point = threshold_at_precision(pos, neg, target_precision)
    curve = [{"threshold": float(thresholds[i]), "precision": float(precision[i]), "recall": float(recall[i])}
             for i in curve_rows(thresholds, precision, target_precision)]
    return Calibration(
        detector=det.spec, target_precision=target_precision,
        threshold=None if point is None else point.threshold,
        precision=None if point is None else point.precision,
        recall=None if point is None else point.recall,
        n_images=int(n), n_low_information=int((~keep).sum()), strength=strength, curve=curve,
    )

