"""Indexing reads each file once: the decoder's fingerprint of the bytes it decoded equals the file's own;
and the content box's one-pass lookup relies on PIL's grey conversion keeping its levels apart."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from PIL import Image

from overlap_audit import content
from overlap_audit.detectors.phash import PHash
from overlap_audit.embed import Decoder
from overlap_audit.index.manifest import checksum_bytes
from overlap_audit.index.shards import item_bytes
from overlap_audit.values import RawItem

from ..helpers import png_bytes, write_folder


@pytest.mark.parametrize("workers", [0, 1])
def test_fingerprint_is_the_files_own(tmp_path, workers):
    rng = np.random.default_rng(0)
    images = {f"{i}.png": Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)) for i in range(3)}
    images["broken.png"] = png_bytes(images["0.png"])[:60]  # read, fingerprinted, then rejected by the decoder
    root = write_folder(tmp_path, images)
    items = [RawItem("s", name, path=str(root / name)) for name in sorted(images)]
    items.append(RawItem("s", "missing.png", path=str(root / "missing.png")))
    items.append(RawItem("s", "inline", data=png_bytes(images["1.png"])))
    with Decoder(PHash(), workers=workers, checksum=checksum_bytes) as decoder:
        decoded = list(decoder.decode(items))
    assert [d.reason is None for d in decoded] == [True, True, True, False, False, True]
    for d in decoded:
        expected = item_bytes(d.item)
        if d.item.id == "missing.png":
            assert d.fingerprint is None and expected is None  # nothing was read
            continue
        assert d.fingerprint == (expected.size, expected.xxh3, expected.mtime_ns)
    assert decoded[0].fingerprint[2] == os.stat(items[0].path).st_mtime_ns


def test_without_checksum_no_fingerprint(tmp_path):
    root = write_folder(tmp_path, {"a.png": Image.new("RGB", (20, 20), "red")})
    with Decoder(PHash(), workers=0) as decoder:
        (d,) = decoder.decode([RawItem("s", "a.png", path=str(root / "a.png"))])
    assert d.reason is None and d.fingerprint is None


def test_grey_conversion_keeps_any_flag():
    """A pixel flagged (255) in any one channel stays non-zero in one band (content._flat's pixel test)."""
    for colour in itertools.product((0, 255), repeat=3):
        grey = content._any_band(Image.new("RGB", (1, 1), colour)).getpixel((0, 0))
        assert (grey == 0) == (colour == (0, 0, 0)), colour
