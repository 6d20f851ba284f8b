"""Verification of a matched pair: a dense comparison of the two content-trimmed views.

A near-duplicate detector's similarity ranks well but decides poorly on edited copies: a copy with other
shading, a thicker outline, other colours or another drop shadow can score below a different drawing that
looks alike. Verification is a second stage: the index proposes pairs at a relaxed threshold and
``verify_pair`` decides each.

How a pair is compared. Both images are trimmed to their content box (``content.trim``). Very different
aspect ratios of the boxes lower the score (a copy's box keeps its shape up to a shadow or a margin edit).
Each box is stretched to one common grid (``GRID`` px on its long side, the mean aspect ratio); on it, the
greyscale image and an edge map (gradient magnitude, compressed so that faint and strong lines weigh alike,
then blurred by about a pixel so that a thickened or shifted outline still overlaps). One side is
rescaled by a few per cent on each axis and shifted by a few per cent of the box (``SCALES``, ``MAX_SHIFT``);
for each rescaling, circular cross-correlation (FFT) gives the correlation at every shift, and the best
alignment is kept. At that alignment the pair is scored by:

- ``edges``: the normalised cross-correlation of the edge maps over the whole box;
- ``cells``: consistency over the whole box: the box is cut into ``CELLS`` x ``CELLS`` cells and the edge
  maps are correlated cell by cell; the score is a low quantile of the cells that hold drawing in either
  image (a look-alike may match in outline, e.g. two round shapes, but not everywhere inside);
- ``grey``: the normalised cross-correlation of the greyscale images (its absolute value: an inverted or
  recoloured copy keeps its structure).

``score = aspect_factor * (W_EDGES * edges + W_CELLS * cells + W_GREY * grey)``, clipped to [0, 1]. The
weights and ``VERIFY_THRESHOLD`` were chosen on the development set's labelled pairs
(benchmarks/devset/: Tux Paint SVG-only stamps against Open Clip Art) with
``thresholds.threshold_at_precision`` at a target precision of 0.99; see benchmarks/devset/README.md.

Only numpy and Pillow; a pair costs about 10 ms on one core once both images are decoded
(``prepare`` each image once and call ``verify_prepared`` when one image meets several others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .content import trim

GRID = 96  # long side of the common grid, pixels
KEEP = 256  # long side of the trimmed greyscale view kept per image (the grid is drawn from it)
MAX_SHIFT = 0.04  # shifts searched, as a share of the grid's sides
SCALES = (0.95, 1.0, 1.05)  # per-axis rescalings of one side searched (then refined by half a step)
CELLS = 4  # the box is cut into CELLS x CELLS cells for the consistency score
CELL_QUANTILE = 0.1  # the cells' score: this quantile of their correlations
EDGE_SOFT = 0.08  # edge strength compression m / (m + EDGE_SOFT), grey levels in [0, 1]
BLUR_SIGMA = 1.0  # blur of the edge map, grid pixels
ASPECT_FREE = math.log(1.15)  # aspect ratios differing by up to this (log) cost nothing
ASPECT_ZERO = math.log(1.8)  # ... and from this on the score is 0
W_EDGES, W_CELLS, W_GREY = 0.4, 0.4, 0.2
VERIFY_THRESHOLD = 0.8144  # chosen on the development set (see the module docstring)


@dataclass(frozen=True)
class Verification:
    """The verdict on one pair: its score in [0, 1] and the parts it is made of."""

    score: float
    edges: float  # edge-map correlation over the whole box at the best alignment
    cells: float  # low quantile of the per-cell edge correlations
    grey: float  # |greyscale correlation| at the best alignment
    aspect: float  # the aspect-ratio factor (1: same shape of box)
    shift: tuple[int, int]  # the best shift (x, y) on the grid, pixels
    scale: tuple[float, float]  # the best per-axis rescaling of the second image

    def verified(self, threshold: float = VERIFY_THRESHOLD) -> bool:
        return self.score >= threshold


@dataclass(frozen=True, eq=False)
class Prepared:
    """One image ready to compare: its trimmed greyscale view (float32, [0, 1], at most KEEP px)."""

    grey: Image.Image  # mode "F"
    aspect: float  # width / height of the content box

    @property
    def blank(self) -> bool:
        lo, hi = self.grey.getextrema()
        return hi - lo < 1e-3


def prepare(image: Image.Image) -> Prepared:
    """Trim ``image`` to its content box and keep a greyscale view of at most ``KEEP`` px on the long side."""
    view, box = trim(image)
    w, h = view.size
    aspect = w / max(h, 1)
    if max(w, h) > KEEP:
        view = view.resize((max(1, round(w * KEEP / max(w, h))), max(1, round(h * KEEP / max(w, h)))),
                           Image.Resampling.BOX)
    grey = view.convert("L").point(lambda v: v / 255.0, "F")
    return Prepared(grey, aspect)


def _grid_size(aspect: float) -> tuple[int, int]:
    if aspect >= 1:
        return GRID, max(8, round(GRID / aspect))
    return max(8, round(GRID * aspect)), GRID


def _on_grid(p: Prepared, size: tuple[int, int]) -> np.ndarray:
    """``p``'s greyscale view stretched to ``size`` (w, h)."""
    return np.asarray(p.grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0), np.float32)


def _rescaled(a: np.ndarray, scale: tuple[float, float], fill: float) -> np.ndarray:
    """``a`` rescaled about its centre by ``scale`` (x, y), same shape, ``fill`` where nothing lands."""
    if scale == (1.0, 1.0):
        return a
    h, w = a.shape
    sw, sh = max(1, round(w * scale[0])), max(1, round(h * scale[1]))
    scaled = np.asarray(Image.fromarray(a, "F").resize((sw, sh), Image.Resampling.BILINEAR), np.float32)
    out = np.full((h, w), fill, np.float32)
    # centred: cropped where larger, padded where smaller
    sy0, dy0 = max(0, (sh - h) // 2), max(0, (h - sh) // 2)
    sx0, dx0 = max(0, (sw - w) // 2), max(0, (w - sw) // 2)
    ny, nx = min(h - dy0, sh - sy0), min(w - dx0, sw - sx0)
    out[dy0:dy0 + ny, dx0:dx0 + nx] = scaled[sy0:sy0 + ny, sx0:sx0 + nx]
    return out


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(a, r, mode="edge")
    p = sum(k[i] * p[:, i:i + a.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * p[i:i + a.shape[0], :] for i in range(2 * r + 1))


def _edges(grey: np.ndarray) -> np.ndarray:
    """Compressed, blurred gradient magnitude of a greyscale grid (white outside the box)."""
    p = np.pad(grey, 1, mode="edge")  # the box's border itself is no edge
    gx = (p[1:-1, 2:] - p[1:-1, :-2]) * 0.5
    gy = (p[2:, 1:-1] - p[:-2, 1:-1]) * 0.5
    m = np.hypot(gx, gy)
    return _blur(m / (m + EDGE_SOFT), BLUR_SIGMA).astype(np.float32)


def _standardise(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    n = float(np.sqrt((a * a).sum()))
    return a / n if n > 1e-9 else a


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 1e-12 else 0.0


def _shift(a: np.ndarray, dx: int, dy: int, fill: float) -> np.ndarray:
    """``a`` moved by (dx, dy), ``fill`` where nothing moved in."""
    out = np.full_like(a, fill)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def _cells(ea: np.ndarray, eb: np.ndarray) -> float:
    """A low quantile of the per-cell edge correlations, over the cells with drawing in either image."""
    h, w = ea.shape
    ys = np.linspace(0, h, CELLS + 1).round().astype(int)
    xs = np.linspace(0, w, CELLS + 1).round().astype(int)
    level = 0.05 * max(float(ea.max()), float(eb.max()), 1e-6)
    scores = []
    for i in range(CELLS):
        for j in range(CELLS):
            ca, cb = ea[ys[i]:ys[i + 1], xs[j]:xs[j + 1]], eb[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            busy_a, busy_b = ca.mean() > level, cb.mean() > level
            if not (busy_a or busy_b):
                continue
            scores.append(_ncc(ca, cb) if busy_a and busy_b else 0.0)
    if not scores:
        return 0.0
    return float(np.quantile(np.asarray(scores), CELL_QUANTILE))


def _aspect_factor(a: float, b: float) -> float:
    d = abs(math.log(max(a, 1e-6) / max(b, 1e-6)))
    return float(min(1.0, max(0.0, (ASPECT_ZERO - d) / (ASPECT_ZERO - ASPECT_FREE))))


def verify_prepared(a: Prepared, b: Prepared) -> Verification:
    """``verify_pair`` on images already ``prepare``d."""
    aspect = _aspect_factor(a.aspect, b.aspect)
    if aspect == 0.0 or a.blank or b.blank:
        return Verification(0.0, 0.0, 0.0, 0.0, aspect, (0, 0), (1.0, 1.0))
    size = _grid_size(math.exp(0.5 * (math.log(a.aspect) + math.log(b.aspect))))
    w, h = size
    ga, gb0 = _on_grid(a, size), _on_grid(b, size)
    ea, eb0 = _edges(ga), _edges(gb0)
    fa = np.fft.rfft2(_standardise(ea))
    rx, ry = max(1, round(MAX_SHIFT * w)), max(1, round(MAX_SHIFT * h))
    tried: dict[tuple[float, float], tuple[float, int, int]] = {}

    def search(scales: list[tuple[float, float]]) -> tuple[float, float]:
        new = [sc for sc in scales if sc not in tried]
        if new:
            stack = np.stack([_standardise(_rescaled(eb0, sc, 0.0)) for sc in new])
            # circular cross-correlation, all rescalings at once: corr[dy, dx] = sum a[y, x] * b[y - dy, x - dx]
            corr = np.fft.irfft2(fa[None] * np.conj(np.fft.rfft2(stack)), s=(h, w))
            window = np.concatenate([corr[:, -ry:], corr[:, :ry + 1]], axis=1)
            window = np.concatenate([window[:, :, -rx:], window[:, :, :rx + 1]], axis=2)
            for sc, win in zip(new, window):
                iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
                tried[sc] = (float(win[iy, ix]), int(ix) - rx, int(iy) - ry)
        return max(scales, key=lambda sc: tried[sc][0])

    scale = search([(sx, sy) for sx in SCALES for sy in SCALES])
    step = 0.5 * (SCALES[1] - SCALES[0])
    scale = search([(round(scale[0] + i * step, 4), round(scale[1] + j * step, 4))
                    for i in (-1, 0, 1) for j in (-1, 0, 1)])
    _, dx, dy = tried[scale]
    gb, eb = _rescaled(gb0, scale, 1.0), _rescaled(eb0, scale, 0.0)
    # at the best alignment, compare without wrapping around
    gb, eb = _shift(gb, dx, dy, 1.0), _shift(eb, dx, dy, 0.0)
    edges = max(0.0, _ncc(ea, eb))
    cells = max(0.0, _cells(ea, eb))
    grey = abs(_ncc(ga, gb))
    raw = W_EDGES * edges + W_CELLS * cells + W_GREY * grey
    return Verification(float(min(1.0, max(0.0, aspect * raw))), edges, cells, grey, aspect, (dx, dy), scale)


def verify_pair(a: Image.Image, b: Image.Image) -> Verification:
    """Compare two images densely on their content-trimmed views (see the module docstring); ``score >=
    VERIFY_THRESHOLD`` says they are the same picture."""
    return verify_prepared(prepare(a), prepare(b))


# --------------------------------------------------------------------------------- the first stage

# the first stage proposes pairs at a relaxed threshold: a distance from 1 RELAX times the detector's,
# 1 - RELAX * (1 - t). On the development set (trimmed views) RELAX = 2 keeps 74 of the 75 true copies for
# phash (0.7188); for clipdup (0.9640) it keeps 60 of 75, and the copies clipdup misses lie far below its
# threshold (63 of 75 at RELAX = 3), so there verification adds precision, not recall
RELAX = 2.0


def first_stage_threshold(detector_threshold: float, relax: float = RELAX) -> float:
    """The relaxed first-stage threshold for a detector threshold: 1 - relax * (1 - t)."""
    return 1.0 - relax * (1.0 - float(detector_threshold))


# ----------------------------------------------------------------------------- verifying a report's splits


@dataclass(frozen=True)
class VerifySettings:
    """Verification of a report's matches: the examples whose nearest corpus item is at or above the first
    stage (``first_stage``; None: ``first_stage_threshold`` of each dataset's threshold) are verified, and
    Overlap is those whose pair scores at least ``threshold``; every other example is Clean."""

    threshold: float = VERIFY_THRESHOLD
    first_stage: float | None = None

    def first_stage_for(self, dataset_threshold: float) -> float:
        return first_stage_threshold(dataset_threshold) if self.first_stage is None else float(self.first_stage)

    def to_dict(self, splits: dict | None = None, unreadable: dict[str, int] | None = None) -> dict:
        """The settings, and per dataset of ``splits`` (verified ones) its first stage and counts."""
        d = {"threshold": self.threshold, "relax": RELAX if self.first_stage is None else None,
             "first_stage": self.first_stage}
        if splits:
            d["datasets"] = {n: {"first_stage": self.first_stage_for(sp.threshold),
                                 "n_verified": int(np.isfinite(sp.verify_scores).sum()),
                                 "n_accepted": int(np.asarray(sp.verified).sum()),
                                 "n_unreadable": int((unreadable or {}).get(n, 0))}
                             for n, sp in splits.items() if sp.verify_scores is not None}
        return d


def verify_splits(splits: dict, index_dir, eval_specs: dict[str, str], settings: VerifySettings, *,
                  max_pixels: int | None = None) -> tuple[dict, dict]:
    """Verify each split's candidate pairs (top similarity at or above the first stage, not low-information):
    returns the splits with ``verify_scores``, ``verified`` and ``overlap = verified``, and per dataset the
    number of candidate pairs whose images could not be read. Such a pair keeps the first decision (Overlap
    at or above the detector's threshold): an image that cannot be read back never hides overlap."""
    from dataclasses import replace

    from .imaging import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
    from .index import corpus_items
    from .sources import as_source, fetch_items

    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    wanted: dict[str, list[int]] = {}
    for name, sp in splits.items():
        top = np.nan_to_num(np.asarray(sp.top_similarity, np.float64), nan=-np.inf)
        ok = (top >= settings.first_stage_for(sp.threshold)) & ~np.asarray(sp.low_information, bool)
        wanted[name] = [int(i) for i in np.flatnonzero(ok)] if sp.neighbors.k else []
    keys = {splits[n].neighbors.ids[i, 0] for n, rows in wanted.items() for i in rows}
    corpus = corpus_items(index_dir, keys) if keys else {}
    prepared: dict[str, Prepared | None] = {}

    def load(item) -> Prepared | None:
        if item is None or item.skip_reason:
            return None
        try:
            return prepare(decode_image(item.data, item.path, max_pixels=max_pixels))
        except ImageRejected:
            return None

    out, unreadable = {}, {}
    for name, sp in splits.items():
        rows = wanted[name]
        evals = (fetch_items(as_source(eval_specs[name], name=name, labels_from_folders=True),
                             [sp.ids[i] for i in rows]) if rows else {})
        scores = np.full(len(sp.ids), np.nan, np.float32)
        unreadable[name] = 0
        for i in rows:
            key = str(sp.neighbors.ids[i, 0])
            if key not in prepared:
                prepared[key] = load(corpus.get(key))
            a, b = load(evals.get(sp.ids[i])), prepared[key]
            if a is None or b is None:
                unreadable[name] += 1
                continue
            scores[i] = verify_prepared(a, b).score
        with np.errstate(invalid="ignore"):
            verified = np.nan_to_num(scores, nan=-np.inf) >= settings.threshold
        unread = np.zeros(len(sp.ids), bool)
        unread[[i for i in rows if np.isnan(scores[i])]] = True
        overlap = np.where(unread, sp.overlap, verified) & ~np.asarray(sp.low_information, bool)
        out[name] = replace(sp, verify_scores=scores, verified=verified, overlap=overlap)
    return out, unreadable
