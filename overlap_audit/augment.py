"""Near-duplicate augmentations: the copies the demo plants and the queries that measure an approximate
index's recall. Deterministic under a seeded generator."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

AUGMENTATIONS = ("resize", "jpeg", "crop", "brighten", "resize+jpeg")


def augment(image: Image.Image, kind: str, rng: np.random.Generator | None = None) -> Image.Image:
    """A near-duplicate of ``image``: resized, JPEG-recompressed, slightly cropped, brightened, or both."""
    rng = rng or np.random.default_rng(0)
    w, h = image.size
    if kind == "resize":
        scale = rng.uniform(0.6, 0.9)
        return image.resize((max(8, int(w * scale)), max(8, int(h * scale))), Image.Resampling.BILINEAR)
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(50, 80)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "crop":
        m = max(1, int(round(min(w, h) * rng.uniform(0.01, 0.025))))
        return image.crop((m, m, w - m, h - m))
    if kind == "brighten":
        return ImageEnhance.Brightness(image).enhance(float(rng.uniform(1.05, 1.15)))
    if kind == "resize+jpeg":
        return augment(augment(image, "resize", rng), "jpeg", rng)
    raise ValueError(f"unknown augmentation {kind!r}; one of {', '.join(AUGMENTATIONS)}")


# ---------------------------------------------------------------- the detector-training pipeline

# Every resize picks one of these at random (the CLIP paper's detector had to survive "the same fur or
# stripe texture resized with different interpolation").
INTERPOLATIONS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
                  Image.Resampling.BOX, Image.Resampling.HAMMING, Image.Resampling.LANCZOS)
FAMILIES = ("crop", "aspect", "rescale", "rotate", "jpeg", "color")
# Copies that differ by their canvas, as clip art, icons, product shots and letterboxed frames do; not part of
# the App. C pipeline (``augment_all``), measured beside it: "pad" places the image at a fraction of a
# uniform canvas (white, black, grey or a random colour) at a random position, "letterbox" adds black bars
# on two opposite sides. Similarity is symmetric, so "pad" also stands for a padded corpus image queried
# with its tight crop.
MARGIN_FAMILIES = ("pad", "letterbox")

# Per strength: (min crop area, max aspect distortion, min downscale, max rotation degrees, JPEG quality
# range, hue shift, saturation and value scale spread)
STRENGTHS = {
    "mild": dict(area=0.85, aspect=0.05, scale=0.6, rotate=2.0, quality=(70, 95), hue=0.01, sat=0.05, val=0.05,
                 pad=0.7, bars=0.06),
    "medium": dict(area=0.6, aspect=0.15, scale=0.35, rotate=5.0, quality=(40, 90), hue=0.03, sat=0.15, val=0.12,
                   pad=0.4, bars=0.12),
    "strong": dict(area=0.35, aspect=0.3, scale=0.2, rotate=10.0, quality=(15, 80), hue=0.06, sat=0.3, val=0.25,
                   pad=0.1, bars=0.2),
}
# pad: the image's side is at least this fraction of the canvas's; bars: each bar's share of the side, at most


def _resize(image: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    return image.resize((max(1, size[0]), max(1, size[1])), INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))])


def _family(image: Image.Image, family: str, p: dict, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    if family == "crop":  # random crop, zoomed back to the original size
        area = rng.uniform(p["area"], 1.0)
        ratio = np.exp(rng.uniform(-0.2, 0.2))
        cw = int(round(min(w, w * np.sqrt(area * ratio))))
        ch = int(round(min(h, h * np.sqrt(area / ratio))))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return _resize(image.crop((x, y, x + cw, y + ch)), (w, h), rng)
    if family == "aspect":
        f = np.exp(rng.uniform(-p["aspect"], p["aspect"]))
        return _resize(image, (int(round(w * f)), int(round(h / f))), rng)
    if family == "rescale":  # down to a lower resolution and back up to another one
        s = rng.uniform(p["scale"], 1.0)
        small = _resize(image, (int(round(w * s)), int(round(h * s))), rng)
        t = rng.uniform(0.8, 1.25)
        return _resize(small, (int(round(w * t)), int(round(h * t))), rng)
    if family == "rotate":
        angle = float(rng.uniform(-p["rotate"], p["rotate"]))
        return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(255, 255, 255))
    if family == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(p["quality"][0], p["quality"][1] + 1)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if family == "color":  # HSV jitter
        hsv = np.asarray(image.convert("HSV"), dtype=np.float32)
        hsv[..., 0] = (hsv[..., 0] + 255 * rng.uniform(-p["hue"], p["hue"])) % 256
        hsv[..., 1] *= 1 + rng.uniform(-p["sat"], p["sat"])
        hsv[..., 2] *= 1 + rng.uniform(-p["val"], p["val"])
        return Image.fromarray(np.clip(hsv, 0, 255).astype(np.uint8), mode="HSV").convert("RGB")
    if family == "pad":
        s = rng.uniform(p["pad"], 1.0)
        fill = [(255, 255, 255), (0, 0, 0), (128, 128, 128), tuple(int(c) for c in rng.integers(0, 256, 3))][
            int(rng.integers(4))]
        inner = _resize(image, (max(1, int(round(w * s))), max(1, int(round(h * s)))), rng)
        canvas = Image.new("RGB", (w, h), fill)
        canvas.paste(inner, (int(rng.integers(0, w - inner.width + 1)), int(rng.integers(0, h - inner.height + 1))))
        return canvas
    if family == "letterbox":
        f = rng.uniform(0.5, 1.0) * p["bars"]
        if rng.random() < 0.5:  # bars above and below
            bar = int(round(h * f))
            inner, at = _resize(image, (w, max(1, h - 2 * bar)), rng), (0, bar)
        else:  # pillarbox: bars left and right
            bar = int(round(w * f))
            inner, at = _resize(image, (max(1, w - 2 * bar), h), rng), (bar, 0)
        canvas = Image.new("RGB", (w, h), (0, 0, 0))
        canvas.paste(inner, at)
        return canvas
    raise ValueError(f"unknown augmentation family {family!r}; one of {', '.join(FAMILIES + MARGIN_FAMILIES)}")


def augment_family(image: Image.Image, family: str, strength: str = "medium",
                   rng: np.random.Generator | None = None) -> Image.Image:
    """One augmentation family at a strength (for benchmarks that test families separately)."""
    if strength not in STRENGTHS:
        raise ValueError(f"strength must be one of {', '.join(STRENGTHS)}, got {strength!r}")
    return _family(image.convert("RGB"), family, STRENGTHS[strength], rng or np.random.default_rng(0))


def augment_all(image: Image.Image, strength: str = "medium", rng: np.random.Generator | None = None,
                p_each: float = 0.7) -> Image.Image:
    """The full pipeline: each family applied with probability ``p_each``, in random order; at least one."""
    rng = rng or np.random.default_rng(0)
    if strength not in STRENGTHS:
        raise ValueError(f"strength must be one of {', '.join(STRENGTHS)}, got {strength!r}")
    chosen = [f for f in FAMILIES if rng.random() < p_each] or [FAMILIES[int(rng.integers(len(FAMILIES)))]]
    out = image.convert("RGB")
    for family in rng.permutation(chosen):
        out = _family(out, str(family), STRENGTHS[strength], rng)
    return out
