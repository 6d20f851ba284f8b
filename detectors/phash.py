"""The DCT perceptual hash (pHash), computed for a whole batch at once.

Algorithm (Zauner 2010; the form popularised by the imagehash package): grey-scale, resize to
(h·4)×(h·4) with a Lanczos filter, take the 2-D DCT-II, keep the h×h lowest frequencies (the DC term
included), and set each bit to whether the coefficient exceeds their median. h = 8 gives 64 bits,
h = 16 gives 256. Similarity = 1 − Hamming distance / bits.

Speed: the Lanczos resize, not the hash, is the cost (benchmarks/bench_phash.py). By default the resize
first box-reduces by an integer factor while the image stays at least 3× the target (PIL's
``reducing_gap=3``), about 5× faster, and JPEGs are decoded at a reduced DCT scale no smaller than 4× the
target (``decode_size``). With ``reducing_gap=None`` and full decoding the bits equal imagehash.phash's.

Near-uniform images (blank, all-black, faint noise) have no structure for the median to split: their hashes
collapse onto a few codes, and two unrelated blank images would match almost perfectly (the CLIP paper's
Kinetics-700 black frames). The same happens to images whose low frequencies are mostly exactly zero —
padding bars, a stripe, a symmetric border — where most coefficients tie with the median and the hash
says nothing (black bars on white hash like a blank page). ``low_information`` flags both: a standard
deviation of the downsampled grey image under ``min_std`` grey levels, or more than ``max_tie_fraction``
of the hashed coefficients within a hair of the median. The split never counts such images as Overlap.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from PIL import Image

from .base import DetectorBase

# Default thresholds, as similarity = 1 - Hamming/bits: the benchmark's threshold for 99% precision
# (benchmarks/bench_detectors.py; BENCHMARKS.md, "Detector benchmark": 0.8438 = at most 10 differing bits for
# 64 bits, 0.7188 = at most 72 for 256), raised just above the closest pair of the synthetic hard negatives
# that the low-information rule does not flag (tests/test_detectors.py; letters B and O differ in only 10 of
# 64 bits, I and L in only 44 of 256). 64 bits: at most 9 differing bits; 256 bits: at most 43.
_DEFAULT_THRESHOLD = {8: 1 - 9 / 64, 16: 1 - 43 / 256}


class PHash(DetectorBase):
    """DCT perceptual hash with ``hash_size``² bits."""

    version = "1"
    metric = "hamming"
    preprocess_mode = "L"

    def __init__(self, hash_size: int = 8, *, highfreq_factor: int = 4, min_std: float = 2.0,
                 max_tie_fraction: float = 0.25, reducing_gap: float | None = 3.0, spec: str = ""):
        if hash_size not in _DEFAULT_THRESHOLD:
            raise ValueError("hash_size must be 8 (64 bits) or 16 (256 bits)")
        self.hash_size = hash_size
        self.image_size = hash_size * highfreq_factor
        self.dim = hash_size * hash_size
        self.name = "phash" if hash_size == 8 else "phash256"
        self.spec = spec or self.name
        self.default_threshold = _DEFAULT_THRESHOLD[hash_size]
        self.min_std = float(min_std)
        self.max_tie_fraction = float(max_tie_fraction)
        self.reducing_gap = reducing_gap
        # JPEGs may be decoded at a reduced scale (DCT scaling) down to this size: the hash needs no more.
        self.decode_size = self.image_size * 4

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Grey-scale and resize one image: uint8 [S, S] (a quarter of float32's bytes to send between processes)."""
        grey = image if image.mode == "L" else image.convert("L")
        grey = grey.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS,
                           reducing_gap=self.reducing_gap)
        return np.asarray(grey)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Hash a batch [N, S, S] into packed bits uint8 [N, bits/8]."""
        return self.embed_flagged(batch)[0]

    def low_information(self, batch: np.ndarray) -> np.ndarray:
        """Near-uniform images, and images whose hash is mostly decided by ties with the median."""
        return self.embed_flagged(batch)[1]

    def embed_flagged(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``embed`` and ``low_information`` of a batch from one DCT (the batch's cost in the main process)."""
        batch = np.asarray(batch, dtype=np.float64)
        if batch.ndim != 3 or batch.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(f"expected a batch of shape [N, {self.image_size}, {self.image_size}], got {batch.shape}")
        h = self.hash_size
        # the 2-D DCT-II as scipy.fft.dctn(axes=(1, 2)) computes it (along axis 1, then axis 2), the second only
        # on the h rows kept: the same numbers in a third of the time
        coeffs = scipy.fft.dct(scipy.fft.dct(batch, type=2, axis=1)[:, :h], type=2, axis=2)[:, :, :h]
        coeffs = coeffs.reshape(len(batch), h * h)
        median = np.median(coeffs, axis=1, keepdims=True)
        bits = np.packbits(coeffs > median, axis=1)
        flat_image = batch.reshape(len(batch), -1).std(axis=1) < self.min_std
        # "a hair": relative to the image's own coefficient scale (DCT-II of 0..255 pixels is large)
        scale = np.abs(coeffs).max(axis=1, keepdims=True)
        ties = (np.abs(coeffs - median) <= 1e-6 * scale + 1e-9).mean(axis=1)
        return bits, flat_image | (ties > self.max_tie_fraction)


def make_phash64(arg: str | None = None, *, spec: str = "phash", **_options) -> PHash:
    if arg not in (None, "", "64"):
        from ..errors import DetectorError

        raise DetectorError(f"phash takes no argument or '64' (got {arg!r}); use phash256 for 256 bits")
    return PHash(8, spec=spec)


def make_phash256(arg: str | None = None, *, spec: str = "phash256", **_options) -> PHash:
    if arg not in (None, "", "256"):
        from ..errors import DetectorError

        raise DetectorError(f"phash256 takes no argument (got {arg!r})")
    return PHash(16, spec=spec)
