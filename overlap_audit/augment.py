"""Near-duplicate augmentations: the copies the demo plants and the queries that measure an approximate
index's recall. Deterministic under a seeded generator."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

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
# Edited copies, as the same clip-art drawing is republished: not part of the App. C pipeline either, mixed
# into training copies by ``augment_training``. "stroke" thickens (grey-morphology min filter) or thins (max
# filter) the dark strokes; "recolor" rotates the hue of the saturated regions or permutes the colour
# channels; "shade" multiplies a soft gradient or blotches of light and dark over the drawing (the pixels
# that differ from its border colour), or flattens its gradients into a few flat colours; "shadow" puts a
# blurred, offset dark copy of the drawing's mask behind it; "zoomout" places the image at a fraction of its
# canvas, which is uniform (as "pad") or textured (noise, a gradient or stripes), so trimming cannot undo it.
EDIT_FAMILIES = ("stroke", "recolor", "shade", "shadow", "zoomout")

# Per strength: (min crop area, max aspect distortion, min downscale, max rotation degrees, JPEG quality
# range, hue shift, saturation and value scale spread)
STRENGTHS = {
    "mild": dict(area=0.85, aspect=0.05, scale=0.6, rotate=2.0, quality=(70, 95), hue=0.01, sat=0.05, val=0.05,
                 pad=0.7, bars=0.06, stroke=(0.5, 1), recolor=0.1, shade=0.15, shadow=(0.02, 0.35), zoom=0.7),
    "medium": dict(area=0.6, aspect=0.15, scale=0.35, rotate=5.0, quality=(40, 90), hue=0.03, sat=0.15, val=0.12,
                   pad=0.4, bars=0.12, stroke=(1, 1.5), recolor=0.3, shade=0.3, shadow=(0.04, 0.5), zoom=0.35),
    "strong": dict(area=0.35, aspect=0.3, scale=0.2, rotate=10.0, quality=(15, 80), hue=0.06, sat=0.3, val=0.25,
                   pad=0.1, bars=0.2, stroke=(1.5, 2.5), recolor=0.5, shade=0.5, shadow=(0.07, 0.7), zoom=0.1),
}
# pad: the image's side is at least this fraction of the canvas's; bars: each bar's share of the side, at most;
# stroke: the range of the filter's radius in pixels per 100 px of the image's shorter side (at least 1 pixel);
# recolor: the largest hue rotation (a fraction of the colour circle), and the chance of a channel permutation
# instead; shade: the largest factor by which light or dark is multiplied in (1 - shade .. 1 + shade);
# shadow: (offset as a fraction of the side, darkness at most); zoom: the smallest scale of "zoomout"


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
    if family in EDIT_FAMILIES:
        return _edit(image, family, p, rng)
    raise ValueError(f"unknown augmentation family {family!r}; one of "
                     f"{', '.join(FAMILIES + MARGIN_FAMILIES + EDIT_FAMILIES)}")


# a pixel further than this (grey levels, any channel) from the border colour belongs to the drawing
FOREGROUND_TOLERANCE = 24


def foreground_mask(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The drawing's pixels (a bool [H, W] array) and the border colour (the median of the outer lines)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    fill = np.median(border, axis=0)
    return np.abs(rgb - fill).max(axis=2) > FOREGROUND_TOLERANCE, fill


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, cells: int) -> np.ndarray:
    """A smooth random field in -1..1 of ``shape`` [H, W]: a cells x cells grid of noise, upsampled bicubically."""
    grid = (rng.uniform(0, 255, (cells, cells))).astype(np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((shape[1], shape[0]), Image.Resampling.BICUBIC), np.float32)
    return field / 127.5 - 1


def _texture(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A textured canvas: coloured noise, a soft two-colour gradient or stripes."""
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    kind = int(rng.integers(3))
    if kind == 0:  # noise around one colour
        arr = a + rng.normal(0, rng.uniform(8, 40), (h, w, 3))
    elif kind == 1:  # a linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = (np.cos(angle) * xx / max(1, w - 1) + np.sin(angle) * yy / max(1, h - 1))
        t = ((t - t.min()) / max(np.ptp(t), 1e-6))[..., None]
        arr = a * (1 - t) + b * t
    else:  # stripes
        period = int(rng.integers(4, max(5, min(w, h) // 4)))
        yy, xx = np.mgrid[0:h, 0:w]
        on = (((xx + yy) if rng.random() < 0.5 else xx) // max(1, period // 2)) % 2
        arr = np.where(on[..., None] == 1, a, b)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _edit(image: Image.Image, family: str, p: dict, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    if family == "stroke":  # thicken (min filter: dark spreads) or thin (max filter) the dark strokes
        low, high = p["stroke"]
        radius = max(1, int(round(rng.uniform(low, high) * min(w, h) / 100)))
        thicken = rng.random() < 0.7
        size = 2 * radius + 1
        return image.filter(ImageFilter.MinFilter(size) if thicken else ImageFilter.MaxFilter(size))
    if family == "recolor":
        if rng.random() < p["recolor"]:  # a palette change: the colour channels permuted
            order = [(1, 0, 2), (2, 1, 0), (0, 2, 1), (1, 2, 0), (2, 0, 1)][int(rng.integers(5))]
            return Image.merge("RGB", [image.getchannel(c) for c in order])
        hsv = np.asarray(image.convert("HSV"), dtype=np.float32)
        shift = 255 * rng.uniform(p["recolor"] / 3, p["recolor"]) * (1 if rng.random() < 0.5 else -1)
        weight = np.clip((hsv[..., 1] - 40) / 60, 0, 1)  # saturated regions only; grey and white stay
        hsv[..., 0] = (hsv[..., 0] + shift * weight) % 256
        return Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")
    if family == "shade":
        fg, _ = foreground_mask(image)
        arr = np.asarray(image, dtype=np.float32)
        kind = int(rng.integers(3))
        if kind == 2:  # flatten: the drawing's gradients quantised to a few flat colours
            flat = np.asarray(image.quantize(int(rng.integers(4, 12)), method=Image.Quantize.MEDIANCUT)
                              .convert("RGB"), dtype=np.float32)
            return Image.fromarray(np.where(fg[..., None], flat, arr).astype(np.uint8), "RGB")
        if kind == 0:  # a soft linear gradient of light to dark
            angle = rng.uniform(0, 2 * np.pi)
            yy, xx = np.mgrid[0:h, 0:w]
            t = np.cos(angle) * (xx / max(1, w - 1) - 0.5) + np.sin(angle) * (yy / max(1, h - 1) - 0.5)
            field = t / max(np.abs(t).max(), 1e-6)
        else:  # blotches
            field = _smooth_field((h, w), rng, int(rng.integers(3, 7)))
        factor = 1 + rng.uniform(p["shade"] / 2, p["shade"]) * field
        shaded = np.where(fg[..., None], arr * factor[..., None], arr)
        return Image.fromarray(np.clip(shaded, 0, 255).astype(np.uint8), "RGB")
    if family == "shadow":  # a blurred, offset dark copy of the drawing's mask, behind it
        offset, dark = p["shadow"]
        fg, _ = foreground_mask(image)
        side = min(w, h)
        dx, dy = (int(round(rng.uniform(0.3, 1.0) * offset * side * rng.choice([-1, 1]))) for _ in range(2))
        mask = Image.fromarray((fg * 255).astype(np.uint8)).transform(
            (w, h), Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy))
        mask = mask.filter(ImageFilter.GaussianBlur(max(0.5, rng.uniform(0.005, 0.03) * side)))
        alpha = rng.uniform(dark / 2, dark) * np.asarray(mask, dtype=np.float32)[..., None] / 255
        arr = np.asarray(image, dtype=np.float32)
        shadowed = np.where(fg[..., None], arr, arr * (1 - alpha))
        return Image.fromarray(np.clip(shadowed, 0, 255).astype(np.uint8), "RGB")
    if family == "zoomout":  # the image at a fraction of a uniform or textured canvas
        s = rng.uniform(p["zoom"], 1.0)
        inner = _resize(image, (max(1, int(round(w * s))), max(1, int(round(h * s)))), rng)
        if rng.random() < 0.5:
            canvas = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
        else:
            canvas = _texture(w, h, rng)
        canvas.paste(inner, (int(rng.integers(0, w - inner.width + 1)), int(rng.integers(0, h - inner.height + 1))))
        return canvas
    raise ValueError(f"unknown edit family {family!r}; one of {', '.join(EDIT_FAMILIES)}")


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


def augment_training(image: Image.Image, strength: str = "medium", rng: np.random.Generator | None = None,
                     p_edit: float = 0.0) -> Image.Image:
    """A training copy: with probability ``p_edit`` one or two EDIT_FAMILIES first (an edited copy of the
    drawing), then the App. C pipeline (``augment_all``) at ``strength``."""
    rng = rng or np.random.default_rng(0)
    if strength not in STRENGTHS:
        raise ValueError(f"strength must be one of {', '.join(STRENGTHS)}, got {strength!r}")
    out = image.convert("RGB")
    if p_edit > 0 and rng.random() < p_edit:
        count = 1 if rng.random() < 0.7 else 2
        for family in rng.choice(EDIT_FAMILIES, size=count, replace=False):
            out = _family(out, str(family), STRENGTHS[strength], rng)
    return augment_all(out, strength, rng)


# ---------------------------------------------------------------- App. C copies of photographs

# one interpolation of these per resize of ``appc_copy``
_APPC_INTERPOLATIONS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
                        Image.Resampling.BOX, Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class CopyParams:
    """One strength of ``appc_copy``: the smallest crop area, the crop's aspect spread (+-share), the smallest
    downscale, the final width and height range (px), the largest rotation (degrees), the HSV jitter (hue as
    a share of the colour circle; saturation and value factors 1 +- share) and the JPEG quality range."""

    area: float
    aspect: float
    scale: float
    size: tuple[int, int]
    rotate: float
    hue: float
    sat: float
    val: float
    quality: tuple[int, int]


# a resize to an independent width and height of 160-400 px squashes the aspect ratio by up to 2.5x, as when a
# dataset stores its images at one fixed size
APPC_MEDIUM = CopyParams(area=0.79, aspect=0.12, scale=0.55, size=(160, 400), rotate=3.6, hue=0.02, sat=0.1,
                         val=0.1, quality=(54, 90))
APPC_STRONG = CopyParams(area=0.65, aspect=0.20, scale=0.25, size=(160, 400), rotate=6.0, hue=0.04, sat=0.2,
                         val=0.2, quality=(30, 90))
APPC_STRENGTHS = {"medium": APPC_MEDIUM, "strong": APPC_STRONG}


def _appc_resize(image: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    return image.resize((max(1, int(size[0])), max(1, int(size[1]))),
                        _APPC_INTERPOLATIONS[int(rng.integers(len(_APPC_INTERPOLATIONS)))])


def appc_copy(image: Image.Image, p: CopyParams, rng: np.random.Generator) -> Image.Image:
    """An App. C-style copy of ``image`` (RGB) under ``p``, drawn from ``rng``: crop, downscale, resize to an
    independent width and height, rotate, HSV jitter, JPEG."""
    w, h = image.size
    area = rng.uniform(p.area, 1.0)
    ratio = rng.uniform(1 - p.aspect, 1 + p.aspect)  # the crop's aspect relative to the image's
    cw = min(w, max(8, round(w * np.sqrt(area * ratio))))
    ch = min(h, max(8, round(h * np.sqrt(area / ratio))))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = image.crop((x, y, x + cw, y + ch))
    s = rng.uniform(p.scale, 1.0)
    im = _appc_resize(im, (round(cw * s), round(ch * s)), rng)
    im = _appc_resize(im, (rng.integers(p.size[0], p.size[1] + 1), rng.integers(p.size[0], p.size[1] + 1)), rng)
    angle = float(rng.uniform(-p.rotate, p.rotate))
    im = im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))
    hsv = np.asarray(im.convert("HSV"), dtype=np.float32)
    hsv[..., 0] = (hsv[..., 0] + 255 * rng.uniform(-p.hue, p.hue)) % 256
    hsv[..., 1] *= 1 + rng.uniform(-p.sat, p.sat)
    hsv[..., 2] *= 1 + rng.uniform(-p.val, p.val)
    im = Image.fromarray(np.clip(hsv, 0, 255).astype(np.uint8), mode="HSV").convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(p.quality[0], p.quality[1] + 1)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
