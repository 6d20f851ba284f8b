"""Verification of a matched pair: a dense comparison of the two content-trimmed views.

A near-duplicate detector's similarity ranks well but decides poorly on edited copies: a copy with other
shading, a thicker outline, other colours or another drop shadow can score below a different drawing that
looks alike. Verification is a second stage: the index proposes pairs at a relaxed threshold and
``verify_pair`` decides each (``rule.DecisionRule`` applies it to a report's matches).

How a pair is compared. Both images are trimmed to their content box (``content.trim``). Very different
aspect ratios of the boxes lower the score (a copy's box keeps its shape up to a shadow or a margin edit).
Each box is stretched to one common grid (the mean aspect ratio; ``GRID`` px on its long side, or the
smaller view's long side when that is less, not under ``MIN_GRID``: a sharp original and its downscaled copy
are compared at the copy's resolution, where they agree); on it, the greyscale image and an edge map
(gradient magnitude of the grid blurred by half a pixel, ``GRADIENT_SIGMA``, so that JPEG's blocks and noise
fade; compressed so that faint and strong lines weigh alike, then blurred by about a pixel so that a
thickened or shifted outline still overlaps). One side is rescaled on each axis and shifted by a few
per cent of the box (``SCALES``, up to 10% and a bit more: a few per cent cropped off each side of a
photograph; ``MAX_SHIFT``): circular cross-correlation (FFT) of the edge maps gives the correlation at every
shift of each rescaling, first for the coarse rescalings on maps of half the resolution, then around the
best one at full resolution in ``REFINE`` rounds of half the step; the best shift is refined to a fraction
of a pixel (a parabola through the correlation peak). The image that is enlarged is the one that needs it
(a bilinear shrink would alias fine texture), so the score does not depend on the order of the pair. That
image is resampled once at the best alignment (one bilinear rescale and shift), and the pair is scored over
what both images show (a copy cropped by a few per cent lacks a strip of the original's border, and that
strip says nothing either way):

- ``edges``: the normalised cross-correlation of the edge maps;
- ``cells``: consistency over the whole box: the box is cut into ``CELLS`` x ``CELLS`` cells and the edge
  maps are correlated cell by cell; the score is a low quantile of the cells that hold drawing in both
  images, and of those that hold clear drawing (``EMPTY_FACTOR`` times the busy level) in one image only,
  which count 0 (a look-alike may match in outline, e.g. two round shapes, but not everywhere inside); a
  cell with faint texture in one image only (JPEG noise on a flat region) counts neither way;
- ``grey``: the normalised cross-correlation of the greyscale images (its absolute value: an inverted or
  recoloured copy keeps its structure);
- ``structure``: how much of each image's edges stands above the noise floor: the share of its gradient
  energy from pixels whose gradient is at least ``NOISE_FLOOR`` (3 grey levels per pixel: what JPEG's error
  and 8-bit steps on a smooth shading reach), the less structured image's. Drawings and textured photographs
  have about 1; a sky, a blurred or flat photograph about 0, and their edge maps are noise against noise;
- ``coarse``: the |normalised cross-correlation| of the greyscale images blurred by ``COARSE_SIGMA`` pixels
  (the low-frequency structure, which JPEG and resampling keep).

The same noise floor applies cell by cell: a cell whose edges lie mostly under it in both images
(``CELL_STRUCTURE``) counts neither way in ``cells``.

``score = aspect_factor * (structure * (W_EDGES * edges + W_CELLS * cells + W_GREY * grey) + (1 - structure)
* coarse)``, clipped to [0, 1]: a structured pair (every drawing, so the clip-art look-alikes too) is scored on
its edges, a pair with little structure leans on what it does carry, its coarse greyscale. The weights and
``VERIFY_THRESHOLD`` were tuned on the development set's labelled pairs (benchmarks/devset/: Tux Paint
SVG-only stamps against Open Clip Art): 0.8144 is what ``thresholds.threshold_at_precision`` at a target
precision of 0.99 gave over all 5,783 labelled pairs with an earlier alignment. With the comparison as it is
now, the same rule over the pairs the first stage passes gives 0.8159; the threshold is kept at 0.8144
(benchmarks/devset/README.md).
``NOISE_FLOOR``, ``CELL_STRUCTURE`` and ``COARSE_SIGMA`` were checked on the development side of
benchmarks/bench_planted.py (planted copies of 96-px tiles of the bundled photos) and on that set; one
threshold serves both.

numpy, scipy's FFT and Pillow; a pair costs a median 6.3 ms on one core once both images are decoded
(BENCHMARKS.md; ``prepare`` each image once and call ``verify_prepared`` when one image meets several
others). Which pairs are compared, and what their scores decide, is ``rule.DecisionRule``'s part.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..content import ContentBox, trim
from ..imaging import to_rgb

GRID = 96  # long side of the common grid, pixels (at most: see MIN_GRID)
MIN_GRID = 48  # a pair whose smaller view is under GRID px is compared on a grid of that size, not under this
KEEP = 256  # long side of the trimmed greyscale view kept per image (the grid is drawn from it)
MAX_SHIFT = 0.04  # shifts searched, as a share of the grid's sides
SCALES = (0.9, 0.95, 1.0, 1.05, 1.1)  # per-axis rescalings of one side searched (then refined, REFINE rounds)
REFINE = 2  # rounds of refinement around the best rescaling, each at half the previous step
CELLS = 4  # the box is cut into CELLS x CELLS cells for the consistency score
CELL_QUANTILE = 0.1  # the cells' score: this quantile of their correlations
EMPTY_FACTOR = 3.0  # a cell with drawing in one image only scores 0 when that one is this many times busy
EDGE_SOFT = 0.08  # edge strength compression m / (m + EDGE_SOFT), grey levels in [0, 1]
BLUR_SIGMA = 1.0  # blur of the edge map, grid pixels
GRADIENT_SIGMA = 0.5  # blur of the greyscale grid before its gradient, grid pixels (JPEG blocks and noise fade)
ASPECT_FREE = math.log(1.15)  # aspect ratios differing by up to this (log) cost nothing
ASPECT_ZERO = math.log(1.8)  # ... and from this on the score is 0
W_EDGES, W_CELLS, W_GREY = 0.4, 0.4, 0.2
NOISE_FLOOR = 3 / 255  # gradient magnitude (grey levels per pixel) under which an edge is noise (JPEG, 8-bit steps)
CELL_STRUCTURE = 0.5  # a cell whose edges lie this much (energy share) under the floor in both images says nothing
COARSE_SIGMA = 2.0  # blur of the greyscale grids for the coarse correlation, grid pixels
VERIFY_THRESHOLD = 0.8144  # from the development set (see the module docstring)
# The score under which a pair is evidence that the two are not the same drawing. Between it and the pair
# threshold a score accepts nothing and rejects nothing: on the development set's 5,708 labelled pairs
# (rendered as a report compares them) 2 of the 75 duplicates and 7 of the 5,633 different pairs score in
# [0.75, 0.8144), a likelihood ratio of about 21 for a duplicate; under 0.75 lie 4 duplicates and 5,626
# different pairs. A drawing the detector matches confidently (at or above its threshold) with a score in
# between stays Overlap (``rule.DecisionRule``): a Tux Paint stamp and its Open Clip Art source at 58 of 64
# phash bits scored 0.775. Not lower: two pictograms on one sign (tests/detectors' fixtures) score 0.73
VERIFY_REJECT = 0.75


# grey levels 0-255 as [0, 1]: the table PIL would make from ``lambda v: v / 255.0`` on every call
_UNIT = [v / 255.0 for v in range(256)]


@dataclass(frozen=True)
class Verification:
    """The verdict on one pair: its score in [0, 1] and the parts it is made of."""

    score: float
    edges: float  # edge-map correlation over the whole box at the best alignment
    cells: float  # low quantile of the per-cell edge correlations
    grey: float  # |greyscale correlation| at the best alignment
    aspect: float  # the aspect-ratio factor (1: same shape of box)
    shift: tuple[float, float]  # the best shift (x, y) of the second image on the grid, pixels
    scale: tuple[float, float]  # the best per-axis rescaling of the second image about its centre
    structure: float = 1.0  # share of the edges above the noise floor, the less structured image's (1: all)
    coarse: float = 0.0  # |greyscale correlation| at a coarse scale (blurred by COARSE_SIGMA)

    def verified(self, threshold: float = VERIFY_THRESHOLD) -> bool:
        return self.score >= threshold


@dataclass(frozen=True, eq=False)
class Prepared:
    """One image ready to compare: its trimmed greyscale view (float32, [0, 1], at most KEEP px)."""

    grey: Image.Image  # mode "F"
    aspect: float  # width / height of the content box
    trimmed: bool = False  # ``content.trim`` found a margin

    @property
    def blank(self) -> bool:
        lo, hi = self.grey.getextrema()
        return hi - lo < 1e-3


def prepare(image: Image.Image, box: ContentBox | None = None) -> Prepared:
    """Trim ``image`` to its content box and keep a greyscale view of at most ``KEEP`` px on the long side.
    ``box``: the box ``content.trim`` found for this image as decoded at this size (the index's record of a
    corpus item, the evaluation embeddings' of an example), used instead of searching again; one recorded for
    another size is not used."""
    if box is not None and (box.width, box.height) == image.size:
        rgb = to_rgb(image)  # as ``trim`` gives it
        view = rgb.crop(box.box) if box.trimmed else rgb
    else:
        view, box = trim(image)
    w, h = view.size
    aspect = w / max(h, 1)
    if max(w, h) > KEEP:
        view = view.resize((max(1, round(w * KEEP / max(w, h))), max(1, round(h * KEEP / max(w, h)))),
                           Image.Resampling.BOX)
    grey = view.convert("L").point(_UNIT, "F")
    return Prepared(grey, aspect, box.trimmed)


def _grid_size(aspect: float, grid: int = GRID) -> tuple[int, int]:
    if aspect >= 1:
        return grid, max(8, round(grid / aspect))
    return max(8, round(grid * aspect)), grid


def _on_grid(p: Prepared, size: tuple[int, int]) -> np.ndarray:
    """``p``'s greyscale view stretched to ``size`` (w, h)."""
    return np.asarray(p.grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0), np.float32)


@functools.lru_cache(maxsize=1024)
def _resampling(n: int, scale: float, shift: float) -> np.ndarray:
    """The [n, n] bilinear resampling matrix of one axis rescaled about its centre by ``scale`` and moved by
    ``shift`` pixels: output pixel i shows input position (i + 0.5 - n/2 - shift) / scale + n/2 - 0.5; a row
    is zero where that position falls outside the input."""
    pos = (np.arange(n) + 0.5 - n / 2 - shift) / scale + n / 2 - 0.5
    lo = np.floor(pos).astype(int)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n, n + 2), np.float32)  # one spare column each side: the edge pixels' outer neighbours
    rows = np.arange(n)
    inside = (pos >= -0.5) & (pos <= n - 0.5)
    # one entry per row in each of the two adds (the rows' two columns coincide only beyond the edges, where
    # the second adds onto the first, as np.add.at would, at a tenth of its cost)
    m[rows, np.clip(lo, -1, n) + 1] += np.where(inside, 1 - frac, 0)
    m[rows, np.clip(lo + 1, -1, n) + 1] += np.where(inside, frac, 0)
    # beyond the outer pixel centres, within half a pixel, the edge pixel's value
    m[:, 1] += m[:, 0]
    m[:, n] += m[:, n + 1]
    out = np.ascontiguousarray(m[:, 1:n + 1])
    out.flags.writeable = False  # shared by every call with these arguments
    return out


def _warp(a: np.ndarray, scale: tuple[float, float], shift: tuple[float, float] = (0.0, 0.0),
          fill: float = 0.0) -> np.ndarray:
    """``a`` rescaled about its centre by ``scale`` (x, y) and moved by ``shift`` (x, y; fractions of a pixel
    too), same shape, bilinear, ``fill`` where nothing lands."""
    if scale == (1.0, 1.0) and shift == (0.0, 0.0):
        return a
    h, w = a.shape
    ry, rx = _resampling(h, scale[1], shift[1]), _resampling(w, scale[0], shift[0])
    out = ry @ a @ rx.T
    if fill:
        out += fill * (1.0 - np.outer(ry.sum(1), rx.sum(1)))
    return out.astype(np.float32, copy=False)


@functools.cache
def _blur_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    k.flags.writeable = False  # shared by every call with this sigma
    return k


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """``a`` blurred by a Gaussian of ``sigma`` (to 2.5 sigma, edges extended), in float64: the taps summed in
    order, into one buffer per pass."""
    k = _blur_kernel(float(sigma))
    r = len(k) // 2
    h, w = a.shape
    p = np.pad(a, r, mode="edge")
    tap = np.empty((h + 2 * r, w), np.float64)
    rows = np.multiply(p[:, 0:w], k[0], dtype=np.float64)
    for i in range(1, 2 * r + 1):
        rows += np.multiply(p[:, i:i + w], k[i], out=tap)
    tap = tap[:h]
    out = np.multiply(rows[0:h], k[0])
    for i in range(1, 2 * r + 1):
        out += np.multiply(rows[i:i + h], k[i], out=tap)
    return out


def _gradient(grey: np.ndarray) -> np.ndarray:
    """Gradient magnitude of a greyscale grid blurred by ``GRADIENT_SIGMA`` (grey levels per pixel)."""
    if GRADIENT_SIGMA > 0:
        grey = _blur(grey, GRADIENT_SIGMA)
    p = np.pad(grey, 1, mode="edge")  # the box's border itself is no edge
    gx = (p[1:-1, 2:] - p[1:-1, :-2]) * 0.5
    gy = (p[2:, 1:-1] - p[:-2, 1:-1]) * 0.5
    return np.hypot(gx, gy)


def _edges(m: np.ndarray) -> np.ndarray:
    """The edge map of a gradient magnitude: compressed, blurred."""
    return _blur(m / (m + EDGE_SOFT), BLUR_SIGMA).astype(np.float32)


def _structure(m: np.ndarray, mask: np.ndarray) -> float:
    """The share of the gradient energy (sum of squared magnitudes ``m``) over ``mask`` that comes from pixels
    at or above the noise floor ``NOISE_FLOOR``: about 1 for drawings and textured photographs, about 0 for a
    flat or smoothly shaded region whose edges are JPEG noise and 8-bit steps (0 without any gradient)."""
    m = m[mask]
    return _share(m * m, m * m * (m >= NOISE_FLOOR))


def _share(energy: np.ndarray, above: np.ndarray) -> float:
    """``above``'s sum over ``energy``'s (0 without any energy)."""
    total = float(energy.sum())
    if total <= 1e-12:
        return 0.0
    return float(above.sum() / total)


def _mean(a: np.ndarray):
    """``a.mean()``, the same number (numpy's sum, divided as numpy divides it), without its per-call cost."""
    s = np.add.reduce(a, axis=None)
    return s.dtype.type(s / np.intp(a.size))


def _standardise(a: np.ndarray) -> np.ndarray:
    a = a - _mean(a)
    n = float(np.sqrt((a * a).sum()))
    return a / n if n > 1e-9 else a


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` over the pixels of ``mask`` (all: None)."""
    if mask is not None:
        a, b = a[mask], b[mask]
    if a.size < 2:
        return 0.0
    a, b = a - _mean(a), b - _mean(b)
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 1e-12 else 0.0


def _peak_offset(left: np.ndarray, centre: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Where a parabola through three equally spaced samples peaks, relative to the centre one (in [-0.5, 0.5];
    0 where they hold no peak), element by element."""
    curve = left - 2 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):  # where there is no peak, the quotient is not used
        offset = np.clip(0.5 * (left - right) / curve, -0.5, 0.5)
    return np.where(curve < 0, offset, 0)


def _cells(ea: np.ndarray, eb: np.ndarray, mask: np.ndarray, ma: np.ndarray, mb: np.ndarray) -> float:
    """A low quantile of the per-cell edge correlations over ``mask`` (the pixels both images show), over
    the cells mostly inside it that hold drawing in either image above the noise floor (``ma``, ``mb``: the
    gradient magnitudes the edge maps ``ea``, ``eb`` come from)."""
    h, w = ea.shape
    ys = np.linspace(0, h, CELLS + 1).round().astype(int)
    xs = np.linspace(0, w, CELLS + 1).round().astype(int)
    level = 0.05 * max(float(ea[mask].max(initial=0.0)), float(eb[mask].max(initial=0.0)), 1e-6)
    # each cell's gradient energies (``_structure``) from the squared magnitudes made once for the whole box:
    # the same products, summed cell by cell in the same order
    energy = [(m * m, m * m * (m >= NOISE_FLOOR)) for m in (ma, mb)]
    scores = []
    for i in range(CELLS):
        for j in range(CELLS):
            cell = (slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1]))
            m = mask[cell]
            if 2 * np.count_nonzero(m) < m.size:  # mostly outside what both show (a cropped-off border)
                continue
            if max(_share(e[cell][m], f[cell][m]) for e, f in energy) < CELL_STRUCTURE:
                continue  # noise against noise (JPEG on a flat region): says nothing
            ca, cb = ea[cell], eb[cell]
            mean_a, mean_b = float(_mean(ca[m])), float(_mean(cb[m]))
            if min(mean_a, mean_b) > level:
                scores.append(_ncc(ca, cb, m))
            elif max(mean_a, mean_b) > EMPTY_FACTOR * level:
                scores.append(0.0)  # drawing in one image, (next to) none in the other
            # else: near-empty in both, or faint texture in one only (noise, JPEG): says nothing
    if not scores:
        return 0.0
    return float(np.quantile(np.asarray(scores), CELL_QUANTILE))


def _aspect_factor(a: float, b: float) -> float:
    d = abs(math.log(max(a, 1e-6) / max(b, 1e-6)))
    return float(min(1.0, max(0.0, (ASPECT_ZERO - d) / (ASPECT_ZERO - ASPECT_FREE))))


def _halve(a: np.ndarray) -> np.ndarray:
    """``a`` at half the resolution (means of 2x2 blocks)."""
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return a[:2 * h, :2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))


def _spectrum(ea: np.ndarray) -> np.ndarray:
    """The transform ``_correlate`` correlates against: ``ea`` standardised."""
    from scipy import fft  # float32 transforms, several times numpy's speed on these small grids

    return fft.rfft2(_standardise(ea))


def _standardised_stack(eb: np.ndarray, scales: list[tuple[float, float]]) -> np.ndarray:
    """``_standardise(_warp(eb, sc))`` for each rescaling, stacked, the same numbers: each row resampling
    (``_resampling(h, sy) @ eb``) made once for the rescalings that share it, and the standardisation done for
    the whole stack at once (per-slice sums over the same contiguous pixels, in the same order)."""
    h, w = eb.shape
    stack = np.empty((len(scales), h, w), np.float32)
    rows: dict[float, np.ndarray] = {}
    for i, (sx, sy) in enumerate(scales):
        if (sx, sy) == (1.0, 1.0):
            stack[i] = eb
            continue
        if sy not in rows:
            rows[sy] = _resampling(h, sy, 0.0) @ eb
        np.matmul(rows[sy], _resampling(w, sx, 0.0).T, out=stack[i])
    flat = stack.reshape(len(scales), -1)
    # as ``_mean``: numpy's sum of each slice, divided in float64 as numpy divides a float32 sum by an intp
    flat -= (np.add.reduce(flat, axis=1).astype(np.float64) / flat.shape[1]).astype(np.float32)[:, None]
    norm = np.sqrt(np.add.reduce(flat * flat, axis=1))
    scaled = norm > 1e-9
    flat[scaled] /= norm[scaled, None]
    return stack


def _correlate(ea: np.ndarray, eb: np.ndarray, scales: list[tuple[float, float]], rx: int, ry: int,
               spectrum: np.ndarray | None = None) -> dict:
    """For each rescaling of ``eb``, the best shift onto ``ea`` within (rx, ry) pixels: {scale: (correlation,
    dx, dy)}, the shift to a fraction of a pixel. ``spectrum``: ``_spectrum(ea)`` when the caller has it."""
    from scipy import fft

    if not scales:
        return {}
    h, w = ea.shape
    stack = _standardised_stack(eb, scales)
    fa = _spectrum(ea) if spectrum is None else spectrum
    # circular cross-correlation, all rescalings at once: corr[dy, dx] = sum a[y, x] * b[y - dy, x - dx]
    corr = fft.irfft2(fa[None] * np.conj(fft.rfft2(stack)), s=(h, w))
    window = np.concatenate([corr[:, -ry:], corr[:, :ry + 1]], axis=1)
    window = np.concatenate([window[:, :, -rx:], window[:, :, :rx + 1]], axis=2)
    # each rescaling's peak in its window (the first where several tie, as np.argmax finds it)
    n = np.arange(len(scales))
    best = window.reshape(len(scales), -1).argmax(axis=1)
    iy, ix = np.unravel_index(best, window.shape[1:])
    dy, dx = iy - ry, ix - rx
    y, x = dy % h, dx % w
    # the shift to a fraction of a pixel: a parabola through the peak and its neighbours
    fx = _peak_offset(corr[n, y, (dx - 1) % w], corr[n, y, x], corr[n, y, (dx + 1) % w])
    fy = _peak_offset(corr[n, (dy - 1) % h, x], corr[n, y, x], corr[n, (dy + 1) % h, x])
    peak = window[n, iy, ix]
    return {sc: (float(peak[i]), int(dx[i]) + float(fx[i]), int(dy[i]) + float(fy[i]))
            for i, sc in enumerate(scales)}


def verify_prepared(a: Prepared, b: Prepared) -> Verification:
    """``verify_pair`` on images already ``prepare``d."""
    aspect = _aspect_factor(a.aspect, b.aspect)
    if aspect == 0.0 or a.blank or b.blank:
        return Verification(0.0, 0.0, 0.0, 0.0, aspect, (0, 0), (1.0, 1.0))
    # the common resolution: the smaller view's (a sharp original and its downscaled copy compare alike)
    grid = max(MIN_GRID, min(GRID, max(a.grey.size), max(b.grey.size)))
    size = _grid_size(math.exp(0.5 * (math.log(a.aspect) + math.log(b.aspect))), grid)
    w, h = size
    ga, gb0 = _on_grid(a, size), _on_grid(b, size)
    ma, mb0 = _gradient(ga), _gradient(gb0)
    ea, eb0 = _edges(ma), _edges(mb0)
    # the rescaling: the coarse candidates on maps of half the resolution, then refined at full resolution
    rx, ry = max(1, round(MAX_SHIFT * w)), max(1, round(MAX_SHIFT * h))
    # enlarging only (a bilinear shrink aliases fine texture): each image onto the other, the better way kept
    candidates = [(sx, sy) for sx in SCALES for sy in SCALES if sx * sy >= 1.0]
    half_a, half_b, half_r = _halve(ea), _halve(eb0), (max(1, rx // 2), max(1, ry // 2))
    forward = _correlate(half_a, half_b, candidates, *half_r)
    backward = _correlate(half_b, half_a, candidates, *half_r)
    scale, scale_back = (max(candidates, key=lambda sc: found[sc][0]) for found in (forward, backward))
    swapped = backward[scale_back][0] > forward[scale][0]
    if swapped:  # the first image is the one to enlarge
        ga, gb0, ea, eb0, ma, mb0 = gb0, ga, eb0, ea, mb0, ma
        scale = scale_back
    tried: dict[tuple[float, float], tuple[float, float, float]] = {}
    step = SCALES[1] - SCALES[0]
    fa = _spectrum(ea)  # every round correlates against the same map
    for _ in range(REFINE):  # around the best one, at half the step each round
        step /= 2
        around = [(round(scale[0] + i * step, 5), round(scale[1] + j * step, 5))
                  for i in (-1, 0, 1) for j in (-1, 0, 1)]
        tried.update(_correlate(ea, eb0, [sc for sc in around if sc not in tried], rx, ry, fa))
        scale = max(around, key=lambda sc: tried[sc][0])
    _, dx, dy = tried[scale]
    best = (scale, (dx, dy)) if not swapped else ((1 / scale[0], 1 / scale[1]), (-dx / scale[0], -dy / scale[1]))
    # at the best alignment, compare without wrapping around, over what both images show: a copy cropped by a
    # few per cent lacks a border strip of the original, and that strip says nothing about either
    gb, eb = _warp(gb0, scale, (dx, dy), 1.0), _warp(eb0, scale, (dx, dy), 0.0)
    mask = _warp(np.ones((h, w), np.float32), scale, (dx, dy), 0.0) > 0.999
    mb = _warp(mb0, scale, (dx, dy), 0.0)
    edges = max(0.0, _ncc(ea, eb, mask))
    cells = max(0.0, _cells(ea, eb, mask, ma, mb))
    grey = abs(_ncc(ga, gb, mask))
    # how much of the pair's edges stand above the noise floor; what they lack, the coarse greyscale decides
    structure = min(_structure(ma, mask), _structure(mb, mask))
    coarse = abs(_ncc(_blur(ga, COARSE_SIGMA), _blur(gb, COARSE_SIGMA), mask))
    raw = structure * (W_EDGES * edges + W_CELLS * cells + W_GREY * grey) + (1.0 - structure) * coarse
    (sx, sy), (bx, by) = best
    return Verification(float(min(1.0, max(0.0, aspect * raw))), edges, cells, grey, aspect,
                        (round(bx, 2), round(by, 2)), (round(sx, 4), round(sy, 4)), structure, coarse)


def verify_pair(a: Image.Image, b: Image.Image) -> Verification:
    """Compare two images densely on their content-trimmed views (see the module docstring); ``score >=
    VERIFY_THRESHOLD`` says they are the same picture."""
    return verify_prepared(prepare(a), prepare(b))

