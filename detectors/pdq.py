"""Meta's PDQ perceptual hash (256 bits), through the ``pdqhash`` package (``pip install overlap-audit[pdq]``).

Algorithm (Meta's ThreatExchange reference, hashing.pdf): luminance, Jarosz-filter downscale to 64x64, 2-D DCT,
the 16x16 lowest frequencies (the DC row and column included), each bit whether its coefficient exceeds
their median. Similarity = 1 - Hamming distance / 256. Its quality score (0-100) measures how much gradient
the 64x64 image has: blank, uniform and faint images score near 0.

The downscale filters are sized from the full image, so the hash is computed from the whole decoded image
in ``preprocess`` (in the decode workers) and ``embed`` only takes the bits out: ``preprocess`` returns
uint8 [33], the 32 packed hash bytes then the quality. The bits equal ``pdqhash.compute``'s on the same RGB
image. JPEGs may be decoded at a reduced DCT scale down to ``decode_size`` (512 px): the hash needs no more.

Low information: a quality under ``MIN_QUALITY`` (see below). The split never counts such images as Overlap.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .base import DetectorBase

BITS = 256
# Quality floor: quality 0 (PDQ's gradient sum below its unit) is low-information. Measured on the development
# images below: blank, black, grey, transparent and faint-noise images score 0 (a letterbox — black bars on
# white — scores 100: PDQ's quality does not see padding, unlike phash's tie rule); 4 of the 384 photo tiles
# score 0, 47 under 10, 103 under 50 (blurred, smooth tiles). Higher floors make no threshold stricter: with
# floors 1, 10, 30, 50 the 99%-precision threshold below keeps a recall of 0.709, 0.657, 0.625, 0.581.
MIN_QUALITY = 1
# Default threshold, as similarity = 1 - Hamming/256, set on development photos, not on drawings: the pairs
# of the detector benchmark (benchmarks/bench_detectors.py: held_out_images, query_sets — 384 checkerboard
# tiles of 128 px of the photos bundled in scikit-image and scikit-learn; one copy per tile for each
# augmentation family and all together at each strength; positives (copy, its tile), negatives (copy, every
# other tile); a low-information side never matches), pooled, and overlap_audit.decide.thresholds'
# threshold_at_precision at 99%: 0.7266 (at most 70 differing bits, recall 0.709). Raised just above the
# closest pair of synthetic hard negatives that the quality floor does not flag (tests/test_detectors.py's
# shapes and letters on white: letters I and L differ in 60 bits): at most 59 differing bits, which keeps a
# recall of 0.669 at a precision of 0.997 on the same pairs.
_DEFAULT_THRESHOLD = 1 - 59 / BITS


class PDQ(DetectorBase):
    """Meta's PDQ hash: 256 bits, Hamming similarity, its quality score as the low-information rule."""

    name = "pdq"
    version = "1"
    metric = "hamming"
    dim = BITS
    default_threshold = _DEFAULT_THRESHOLD
    decode_size = 512

    def __init__(self, *, min_quality: int = MIN_QUALITY, spec: str = ""):
        self._compute = _pdqhash().compute  # fails here, with the install hint, when pdqhash is missing
        self.min_quality = int(min_quality)
        self.spec = spec or self.name

    def __getstate__(self) -> dict:  # picklable for the decode workers: the function is looked up again
        state = dict(self.__dict__)
        state.pop("_compute", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._compute = _pdqhash().compute

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Hash one RGB image: uint8 [33], the packed 256 bits then the quality (0-100)."""
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        bits, quality = self._compute(pixels)
        return np.concatenate([np.packbits(np.asarray(bits, dtype=np.uint8)),
                               np.array([min(255, max(0, int(quality)))], dtype=np.uint8)])

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """The packed hashes of a batch [N, 33]: uint8 [N, 32]."""
        batch = _check(batch)
        return np.ascontiguousarray(batch[:, :BITS // 8])

    def quality(self, batch: np.ndarray) -> np.ndarray:
        """PDQ's quality score (0-100) of each preprocessed image."""
        return _check(batch)[:, BITS // 8].astype(np.int32)

    def low_information(self, batch: np.ndarray) -> np.ndarray:
        """Images whose PDQ quality is under ``min_quality``."""
        return self.quality(batch) < self.min_quality


def _check(batch: np.ndarray) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.ndim != 2 or batch.shape[1] != BITS // 8 + 1 or batch.dtype != np.uint8:
        raise ValueError(f"expected a uint8 batch of shape [N, {BITS // 8 + 1}] from PDQ.preprocess, "
                         f"got {batch.dtype} {batch.shape}")
    return batch


def _pdqhash():
    try:
        import pdqhash
    except ImportError:
        from ..errors import DetectorError

        raise DetectorError("the pdq detector needs the pdqhash package: pip install overlap-audit[pdq] "
                            "(or pip install pdqhash)") from None
    return pdqhash


def make_pdq(arg: str | None = None, *, spec: str = "pdq", **_options) -> PDQ:
    if arg not in (None, ""):
        from ..errors import DetectorError

        raise DetectorError(f"pdq takes no argument (got {arg!r})")
    return PDQ(spec=spec)
