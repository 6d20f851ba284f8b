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
