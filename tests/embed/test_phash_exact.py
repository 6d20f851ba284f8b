"""The cheaper phash paths give the plain paths' numbers: one DCT for the hash and the low-information flags
(the second axis only on the rows kept), uint8 inputs, and one grey conversion for a view and its centre
crops."""

import numpy as np
import pytest
import scipy.fft
from PIL import Image

from overlap_audit.content import trim
from overlap_audit.detectors.base import centre_crop, prepare_views
from overlap_audit.detectors.phash import PHash


def plain_hash(det: PHash, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hash and flags as the plain definition computes them: the whole 2-D DCT, then the lowest h x h."""
    batch = np.asarray(batch, dtype=np.float64)
    h = det.hash_size
    coeffs = scipy.fft.dctn(batch, type=2, axes=(1, 2))[:, :h, :h].reshape(len(batch), h * h)
    median = np.median(coeffs, axis=1, keepdims=True)
    scale = np.abs(coeffs).max(axis=1, keepdims=True)
    ties = (np.abs(coeffs - median) <= 1e-6 * scale + 1e-9).mean(axis=1)
    low = (batch.reshape(len(batch), -1).std(axis=1) < det.min_std) | (ties > det.max_tie_fraction)
    return np.packbits(coeffs > median, axis=1), low


def batches(size: int, rng) -> list[np.ndarray]:
    """Random pixels, coarse levels (many equal coefficients), symmetric images (exact zeros) and flat ones."""
    noise = rng.integers(0, 256, (40, size, size)).astype(np.uint8)
    coarse = (rng.integers(0, 4, (40, size, size)) * 85).astype(np.uint8)
    half = rng.integers(0, 256, (40, size, size // 2)).astype(np.uint8)
    mirrored = np.concatenate([half, half[:, :, ::-1]], axis=2)
    flat = np.full((5, size, size), 17, dtype=np.uint8)
    return [noise, coarse, mirrored, flat, np.concatenate([noise[:3], flat[:2], mirrored[:3]])]


@pytest.mark.parametrize("hash_size", [8, 16])
def test_one_dct_gives_the_plain_hash_and_flags(hash_size, photos):
    det = PHash(hash_size)
    rng = np.random.default_rng(hash_size)
    real = np.stack([det.preprocess(p.convert("RGB")) for p in photos.values()])
    for batch in [*batches(det.image_size, rng), real]:
        bits, low = plain_hash(det, batch)
        got_bits, got_low = det.embed_flagged(batch)
        np.testing.assert_array_equal(got_bits, bits)
        np.testing.assert_array_equal(got_low, low)
        np.testing.assert_array_equal(det.embed(batch), bits)
        np.testing.assert_array_equal(det.low_information(batch), low)
        # uint8 inputs and the float32 ones they used to be hash alike
        np.testing.assert_array_equal(det.embed_flagged(batch.astype(np.float32))[0], bits)


def test_the_input_is_the_grey_resize_as_uint8(photos):
    det = PHash()
    for photo in photos.values():
        rgb = photo.convert("RGB")
        plain = np.asarray(rgb.convert("L").resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0),
                           dtype=np.float32)
        got = det.preprocess(rgb)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got.astype(np.float32), plain)
        np.testing.assert_array_equal(det.preprocess(rgb.convert("L")), got)  # grey in: the same input


def test_views_from_one_grey_conversion_equal_each_view_converted(photos):
    det = PHash()
    areas = (0.7, 0.5, 0.25)
    for photo in photos.values():
        rgb = photo.convert("RGB")
        rgb.thumbnail((300, 300))
        padded = Image.new("RGB", (rgb.width + 40, rgb.height + 30), (255, 255, 255))
        padded.paste(rgb, (25, 5))
        for image in (rgb, padded):
            view, box = trim(image)
            array, got_box, crops = prepare_views(det, image, areas)
            assert got_box == box
            np.testing.assert_array_equal(array, det.preprocess(view))
            for area, crop in zip(areas, crops):
                np.testing.assert_array_equal(crop, det.preprocess(centre_crop(view, area)))
