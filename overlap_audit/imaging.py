"""Decoding untrusted image bytes into RGB, with every failure turned into a reason string."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .limits import DEFAULT_LIMITS, DEFAULT_MAX_PIXELS, ReadRefused, read_file


class ImageRejected(Exception):
    """An image cannot be used; the message is the reason recorded for it."""


# where a composited image keeps the alpha band it was composited from: content.content_box reads it, so a
# drawing's transparent canvas is still known as one after decoding (its soft shadow, white now, is no sky)
ALPHA_INFO = "overlap_audit.alpha"
# the attribute where a composite keeps the box outside which it is white (``white_outside``): on the object
# itself, not in its info, so that no copy, crop or transform of it (which carry the info over) claims it
_WHITE_OUTSIDE = "_overlap_audit_white_outside"


def white_outside(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The box (left, top, right, bottom) outside which ``image`` is white: the bounding box of the pixels that
    were not fully transparent, for an image ``to_rgb`` composited on white and returned as it is (drawing on
    it in place afterwards would make this untrue); None for any other image."""
    return getattr(image, _WHITE_OUTSIDE, None)


def _composite_on_white(img: Image.Image) -> Image.Image:
    if img.mode == "P" and img.palette is not None and img.palette.mode == "RGB":
        return _palette_on_white(img)
    # a paste through the alpha band: one pass, and the same pixels as Image.alpha_composite over opaque
    # white (both round c*a + 255*(255-a) over 255 to nearest; checked for every colour and alpha value)
    out = Image.new("RGB", img.size, (255, 255, 255))
    if img.mode in ("RGBA", "LA"):
        alpha = img.getchannel("A")
        # only the bounding box of the pixels that are not fully transparent is composited: outside it alpha
        # is 0 and the result white (drawings on a transparent canvas: about a third of their pixels)
        box = alpha.getbbox()
        if box is not None:
            region = img if box == (0, 0, *img.size) else img.crop(box)
            rgba = region if region.mode == "RGBA" else region.convert("RGBA")
            out.paste(rgba, box[:2], rgba)
            setattr(out, _WHITE_OUTSIDE, box)
        out.info[ALPHA_INFO] = alpha
        return out
    rgba = img.convert("RGBA")
    out.paste(rgba, (0, 0), rgba)
    out.info[ALPHA_INFO] = rgba.getchannel("A")
    return out


def _on_white(entries: np.ndarray) -> np.ndarray:
    """RGBA values [N, 4] composited on white as the paste through the alpha band does: c*a + 255*(255-a)
    over 255, rounded to nearest (PIL's DIV255: add 128, then add the result shifted right by 8 bits and
    shift right by 8 bits again)."""
    a = entries[:, 3:].astype(np.int32)
    t = entries[:, :3].astype(np.int32) * a + 255 * (255 - a) + 128
    return ((t + (t >> 8)) >> 8).astype(np.uint8)


def _palette_on_white(img: Image.Image) -> Image.Image:
    """A palette image with transparency composited on white through its palette: a pixel's result depends
    only on its index, so the 256 entries are composited and the image converted once (same pixels)."""
    indices = Image.frombytes("P", (256, 1), bytes(range(256)))
    indices.putpalette(img.getpalette(rawmode="RGB") or [], rawmode="RGB")
    indices.info["transparency"] = img.info["transparency"]
    entries = np.frombuffer(indices.convert("RGBA").tobytes(), dtype=np.uint8).reshape(256, 4)
    out = img.copy()
    out.info = {}
    out.putpalette(_on_white(entries).tobytes(), rawmode="RGB")
    rgb = out.convert("RGB")
    mask = img.point(entries[:, 3].tolist(), "L")  # each index through the entries' alpha
    mask.info = {}
    rgb.info = {ALPHA_INFO: mask}
    box = mask.getbbox()
    if box is not None:  # an entry with alpha 0 composites to white (c*0 + 255*255, rounded): white outside it
        setattr(rgb, _WHITE_OUTSIDE, box)
    return rgb


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    arr = np.asarray(img).astype(np.float64)
    finite = np.isfinite(arr)
    arr = np.where(finite, arr, 0.0)
    lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
    if img.mode != "F" and lo >= 0 and hi <= 65535:
        scaled = arr / 257.0  # 16-bit data (I;16*, or 32-bit I holding 16-bit values): 65535 -> 255
    else:
        # float data, or integers outside 0..65535: stretch the finite range onto 0..255
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Return ``img`` as 8-bit RGB: transparency composited on white; palette, CMYK, 16-bit, grey converted."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        if "transparency" in img.info:
            return _composite_on_white(img)
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(img)
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _high_bit_depth_to_rgb(img)
    # L, 1, CMYK, YCbCr, LAB, HSV: PIL converts these directly.
    return img.convert("RGB")


# modes Image.reduce takes (a palette image is expanded first, as ``to_rgb`` would; the rest decode whole)
_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK")


def _reduced(img: Image.Image, long_side: int) -> Image.Image:
    """``img`` shrunk by the largest integer factor that keeps its long side at least ``long_side`` (means of
    factor x factor blocks; transparency premultiplied, as PIL's reduce does)."""
    factor = max(img.size) // long_side
    if factor < 2:
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    return img.reduce(factor) if img.mode in _REDUCIBLE else img


def decode_image(data: bytes | None = None, path: str | None = None,
                 *, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int | None = None,
                 max_bytes: int = DEFAULT_LIMITS.max_file_bytes, long_side: int | None = None) -> Image.Image:
    """Decode image bytes (or a file) into an RGB image, or raise ImageRejected with the reason.

    A file is read only when it is a regular file of at most ``max_bytes``.

    With ``min_size``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at
    least ``min_size`` pixels: much faster for large photos, for detectors that need no more.

    With ``long_side``, the image is shrunk by the largest integer factor that keeps its long side at least
    ``long_side`` pixels (a JPEG at a DCT scale where one fits, then by block means), before transparency is
    composited: for comparisons that work on smaller views anyway. ``max_pixels`` applies to the stored size.
    """
    if data is None and path is None:
        raise ImageRejected("no image data")
    try:
        if data is None:
            data = read_file(path, max_bytes)  # type: ignore[arg-type]
    except ReadRefused as exc:
        raise ImageRejected(str(exc)) from None
    except OSError as exc:
        raise ImageRejected(f"unreadable file: {exc.strerror or exc}") from None
    if len(data) == 0:
        raise ImageRejected("zero-byte file")
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            if pil_limit is not None and max_pixels > pil_limit:
                Image.MAX_IMAGE_PIXELS = max_pixels  # PIL would refuse what the caller allowed
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"decompression bomb: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                    f"{max_pixels:,}"
                )
            if width == 0 or height == 0:
                raise ImageRejected(f"empty image ({width}x{height})")
            if min_size is not None and img.format == "JPEG":
                img.draft(img.mode, (min_size, min_size))
            if long_side is not None and img.format == "JPEG":
                factor = max(1, max(width, height) // long_side)  # draft keeps both sides >= the size asked
                img.draft(img.mode, (-(-width // factor), -(-height // factor)))
            img.load()
            if long_side is not None:
                img = _reduced(img, long_side)
            ImageOps.exif_transpose(img, in_place=True)  # returns a copy of an image it leaves as it is
            return to_rgb(img)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb: more than the limit of {max_pixels:,} pixels ({exc})") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL raises OSError for truncated data ("image file is truncated"), SyntaxError/ValueError for
        # malformed headers.
        raise ImageRejected(f"corrupt or truncated image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a decoder bug on hostile input must not end the run
        raise ImageRejected(f"image decoder failed: {type(exc).__name__}: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
