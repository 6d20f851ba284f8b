"""The detector protocol: what every near-duplicate detector provides."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ..content import RULE_VERSION
from ..settings import Turn
from ..values import DetectorInfo, Metric

# How an image is normalised before a detector sees it (``settings.CONTENT_MODES``): "trim" embeds its content box (uniform or transparent
# margins and letterbox bars cut away: ``overlap_audit.content``), "whole" the image as it is. Part of the
# detector's identity: the version of a trimming detector ends in "+trim" and the trimming rule's version
# (``content.RULE_VERSION``), so an index built one way, or under another rule, is refused by the other.
# Every detector trims by default: on real overlap (BENCHMARKS.md, the development set of real clip-art
# copies) trimming lifts recall from about half to 0.8-0.93 for every detector; a photograph is trimmed only
# where its border is a flat canvas (the content module's rule), so a sky or a plain wall is kept.
# A JPEG is decoded at a reduced scale down to a detector's ``decode_size``; a trimming detector asks for this
# many times more, so that a content box filling 17% of the area (41% of each side) still has its size.
TRIM_DECODE_SCALE = 2.5


@runtime_checkable
class Detector(Protocol):
    """A near-duplicate detector.

    ``preprocess`` runs per image in decoding worker processes (so it must be picklable and cheap to ship);
    ``embed`` runs once per batch in the main process and returns float32 [N, D] L2-normalised vectors
    (metric "cosine") or uint8 [N, D/8] packed bits (metric "hamming"). Detectors know nothing of
    thresholds or search beyond documenting their default threshold.
    """

    name: str
    version: str
    dim: int
    metric: Metric
    default_threshold: float
    decode_size: int | None

    @property
    def info(self) -> DetectorInfo: ...

    def preprocess(self, image: Image.Image) -> np.ndarray: ...

    def embed(self, batch: np.ndarray) -> np.ndarray: ...

    def low_information(self, batch: np.ndarray) -> np.ndarray: ...

    def embed_flagged(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


class DetectorBase(ABC):
    """Shared behaviour: identity, batch helpers and the similarity of the detector's metric."""

    name: str = ""
    version: str = ""
    dim: int = 0
    metric: Metric = "cosine"
    default_threshold: float = 1.0
    spec: str = ""
    # Shorter side the detector needs from the decoder; JPEGs may be decoded at a reduced scale down to it.
    decode_size: int | None = None
    content: str = "trim"
    # verification's first stage for this detector: 1 - verify_relax * (1 - threshold) (None: the default,
    # overlap_audit.decide.rule.RELAX); a detector whose true copies lie far below its threshold relaxes further
    verify_relax: float | None = None
    # the smallest image side at which the report's decision with this detector was measured (the 32-px copies
    # of benchmarks/photos.py, BENCHMARKS.md); a report warns about a set whose images are mostly smaller
    measured_min_side: int | None = 32
    # the PIL mode ``preprocess`` converts every image to first (None: it converts as it needs); ``prepare_views``
    # converts the view once for it and its centre crops (a conversion per pixel commutes with cropping)
    preprocess_mode: str | None = None

    @property
    def info(self) -> DetectorInfo:
        version = f"{self.version}+trim{RULE_VERSION}" if self.content == "trim" else self.version
        return DetectorInfo(spec=self.spec or self.name, name=self.name, version=version, dim=self.dim,
                            metric=self.metric, default_threshold=self.default_threshold, content=self.content)

    @abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB image -> the array ``embed`` takes (runs in decoding workers)."""

    @abstractmethod
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """A stacked batch of preprocessed arrays -> float32 [N, D] unit vectors or uint8 packed bits."""

    def low_information(self, batch: np.ndarray) -> np.ndarray:
        """Mark near-uniform inputs that carry too little signal to match anything (none by default)."""
        return np.zeros(len(batch), dtype=bool)

    def embed_flagged(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``embed(batch)`` and ``low_information(batch)`` together (a detector may share their work)."""
        return self.embed(batch), self.low_information(batch)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Embed RGB PIL images directly (in this process); a convenience for notebooks and tests."""
        if not images:
            width = self.dim // 8 if self.metric == "hamming" else self.dim
            return np.zeros((0, width), dtype=np.uint8 if self.metric == "hamming" else np.float32)
        return self.embed(np.stack([prepare(self, im)[0] for im in images]))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairwise similarity [len(a), len(b)]: cosine, or 1 - Hamming distance / bits."""
        if self.metric == "hamming":
            bits_a = np.unpackbits(a, axis=1).astype(np.int32)
            bits_b = np.unpackbits(b, axis=1).astype(np.int32)
            agree = bits_a @ bits_b.T + (1 - bits_a) @ (1 - bits_b).T
            return (agree / self.dim).astype(np.float32)
        return (a @ b.T).astype(np.float32)


def prepare(detector, image: Image.Image):
    """The detector's input for one RGB image under its declared content normalisation, and the content box
    (a ``content.ContentBox``; None for a detector that embeds the whole image)."""
    if getattr(detector, "content", "whole") != "trim":
        return detector.preprocess(image), None
    from ..content import trim

    view, box = trim(image)
    return detector.preprocess(view), box


def centre_crop(image: Image.Image, area: float) -> Image.Image:
    """The centred crop of ``image`` holding the fraction ``area`` of its area (each side scaled by its
    square root), at least one pixel a side."""
    w, h = image.size
    side = float(area) ** 0.5
    cw, ch = max(1, round(w * side)), max(1, round(h * side))
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


# a turned view is taken from the image reduced (by an integer factor) to about this long side: the detectors'
# inputs are far smaller, and turning a large image costs its every pixel
TURN_SIDE = 512


def turned_crop(image: Image.Image, angle: float) -> Image.Image:
    """``image`` turned by ``angle`` degrees (counter-clockwise) about its centre, cut to the largest centred
    rectangle of its own shape inside the turned image (no corner filled in): a copy turned by a few degrees
    is nearer to its source turned back than to it as it is."""
    w, h = image.size
    f = max(1, max(w, h) // TURN_SIDE)
    if f > 1:
        image = image.reduce(f)
        w, h = image.size
    t = math.radians(abs(float(angle)))
    # a corner (±s w / 2, ±s h / 2) of the cut lies inside the turned w x h rectangle while
    # s <= 1 / (cos t + max(w / h, h / w) sin t)
    side = 1.0 / (math.cos(t) + max(w / h, h / w) * math.sin(t))
    turned = image.rotate(float(angle), resample=Image.Resampling.BILINEAR, expand=False)
    cw, ch = max(1, math.floor(w * side)), max(1, math.floor(h * side))
    left, top = (w - cw) // 2, (h - ch) // 2
    return turned.crop((left, top, left + cw, top + ch))


def prepare_views(detector, image: Image.Image, areas: tuple):
    """``prepare``'s input and box, plus the input of each view in ``areas`` of what the detector embeds (the
    content box of a trimming detector, else the whole image): an area is the centre crop holding that
    fraction of it (a copy that is a crop of its source is nearer to a crop of it than to the whole); a
    ``settings.Turn`` is it turned (``turned_crop``), except where trimming found a margin: a turn is a query
    view, and a query with a margin is searched without its views (``match.viewed_rows``), so the input
    stands in for its turns instead of being turned for nothing."""
    if getattr(detector, "content", "whole") == "trim":
        from ..content import trim

        view, box = trim(image)
    else:
        view, box = image, None
    mode = getattr(detector, "preprocess_mode", None)
    if areas and mode is not None and view.mode != mode:
        view = view.convert(mode)
    own = detector.preprocess(view)
    margin = box is not None and box.trimmed
    crops = tuple(own if margin and isinstance(a, Turn) else
                  detector.preprocess(turned_crop(view, a.angle) if isinstance(a, Turn) else centre_crop(view, a))
                  for a in areas)
    return own, box, crops
