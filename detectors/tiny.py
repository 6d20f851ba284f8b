"""``tiny``: a 16×16 grey thumbnail, mean-centred and L2-normalised, compared by cosine similarity.

The oldest near-duplicate baseline (Torralba et al. 2008, "80 million tiny images"): robust to resizing,
recompression and small brightness changes, blind to anything finer than 1/16 of the image. It needs
only numpy and gives float vectors, so it is also the reference for the vector (IndexFlatIP) path.
Mean-centring makes the vector invariant to global brightness; near-uniform images, whose centred
thumbnail is noise, are flagged ``low_information``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .base import DetectorBase


class Tiny(DetectorBase):
    """Mean-centred, L2-normalised 16×16 grey thumbnails (256-d, cosine)."""

    name = "tiny"
    version = "1"
    metric = "cosine"
    # The detector benchmark's threshold for 99% precision (benchmarks/bench_detectors.py; BENCHMARKS.md,
    # "Detector benchmark": 0.97675), rounded up; the synthetic hard negatives that are not flagged stay below
    # it (closest pair 0.915, tests/test_detectors.py).
    default_threshold = 0.9768

    def __init__(self, size: int = 16, *, min_std: float = 2.0, spec: str = ""):
        self.size = size
        self.dim = size * size
        self.min_std = min_std
        self.spec = spec or self.name

    def preprocess(self, image: Image.Image) -> np.ndarray:
        grey = image.convert("L").resize((self.size, self.size), Image.Resampling.BOX)
        return np.asarray(grey, dtype=np.float32)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        flat = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
        centred = flat - flat.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(centred, axis=1, keepdims=True)
        return (centred / np.maximum(norm, 1e-6)).astype(np.float32)

    def low_information(self, batch: np.ndarray) -> np.ndarray:
        flat = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
        return flat.std(axis=1) < self.min_std


def make_tiny(arg: str | None = None, *, spec: str = "tiny", **_options) -> Tiny:
    if arg not in (None, ""):
        from ..errors import DetectorError

        raise DetectorError(f"tiny takes no argument (got {arg!r})")
    return Tiny(spec=spec)
