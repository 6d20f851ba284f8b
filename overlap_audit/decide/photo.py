"""Verification that knows photographs: is one image a crop, squash, small rotation, colour jitter and JPEG
re-encoding of the other (what App. C does to a photograph)?

``verify_pair`` (``verify.py``) compares two content boxes on one grid of their mean aspect ratio and gives 0 to
boxes whose shapes differ by 1.8x: right for clip art, whose look-alikes it must reject, wrong for a
photograph squashed to a fixed size and cropped. Here the pair is compared as one image found *inside* the
other:

1. Both whole images (not trimmed: a flat sky is not a margin) are reduced to greyscale. The one taken as the
   copy (``T``) defines a grid of its own aspect ratio (``COARSE`` px, then ``FINE`` px, as area); the other
   (``R``) is stretched per axis onto the same grid. A copy that shows most of its source differs from it by
   an anisotropic scale, which that stretch undoes; what is left is the crop (a per-axis zoom ``SCALES`` of
   ``R`` by 1-1.6, the axes within ``MAX_AXIS_RATIO`` of each other), where it sits (any shift that keeps the
   copy inside the source) and the rotation (``ANGLES``, +-6 degrees).
2. Both are band-passed (a difference of Gaussians: a sky's gradient and the colour jitter's global shifts
   fall out, edges and texture stay) and the inner part of the copy (``MARGIN`` trimmed per side: a rotated
   copy's filled corners) is the template. For every rotation and zoom, the normalised cross-correlation of the
   template with every placement inside ``R`` comes from FFTs (all hypotheses in one batch); the best is refined
   on the finer grid: the angle in steps of 1.25 degrees, then the zoom of each axis by 5%, then a full affine
   warp to sub-pixel precision (``_refine``: the enhanced correlation coefficient's iteration). A true copy
   loses up to 0.1 of its correlation to a placement half a pixel off; a different part of a scene does not
   line up better with precision.
3. Both directions are tried (either image may be the crop of the other); the better one is kept.
4. Where the correlation could accept, the aligned pair is compared again at ``DETAIL`` times the fine grid in
   a finer band (``detail``): a copy keeps its source's detail, two coins of one tray that line up on their
   outlines do not.

``PhotoVerification.score`` is that correlation (clipped to [0, 1]); ``cells`` the second lowest correlation of
the aligned pair's ``CELLS`` x ``CELLS`` cells; ``texture`` the band-passed standard deviation of the less
textured of the two aligned parts: under ``MIN_TEXTURE`` (or with under ``MIN_CELLS`` textured cells) the
comparison is noise against noise and says nothing (a flat sky, a blank wall). A placement whose window has
no texture is not considered (it correlates with anything by chance).

The verdict (``PhotoVerification.verdict``):

- drawings (both mostly flat fills, ``MAX_FLAT``; or one, and either trimmed by ``content.trim``) are decided by
  ``verify.verify_prepared`` alone: the same picture from the pair threshold, evidence against under
  ``verify.VERIFY_REJECT``, nothing to say in between (the clip-art look-alikes it rejects stay rejected: a ball
  and an apple line up under this wider geometric search; ``verify_prepared``'s box-shape gate and cells do not);
- a photograph pair with texture is the same picture from a photo score of ``ACCEPT`` (and ``ACCEPT_CELLS``:
  the aligned pair correlates cell by cell too), and evidence against under ``REJECT``; below the detector's
  threshold the score needed grows (``GRADE``) and a second piece of evidence must agree
  (``PhotoVerification._second_evidence``: the detail level, and for a texture that repeats itself the score
  before the refinement);
- drawings by their flat fills that have no margin in either image (an illustration, a phantom or a logo on a
  plain ground; ``PhotoVerification.frame``) and that the drawing comparison does not accept are judged by the
  photo comparison as photographs, and are the same picture where it is near perfect whatever the photo accept
  (``FLAT_ACCEPT``, ``FLAT_CELLS``, ``FLAT_DETAIL``). Their boxes are the frames, whose shape a dataset's resize
  sets: the drawing comparison's content agreement (its score without the box-shape factor) under
  ``verify.VERIFY_REJECT`` is evidence against, its box-shape gate is not;
- in between, or without texture, ``verify_prepared``'s score is computed and accepts at its threshold
  (it adds small tiles whose alignment is within its few per cent); otherwise the pair says nothing (None);
- a pair in which either image has no texture at all on the fine grid (``MIN_TEXTURE``: a clear sky, a blank
  wall, a grey card) looks like any other such image of its tone: it is the same picture only where the
  drawing comparison agrees almost perfectly (``FEATURELESS_ACCEPT``) and the detector's similarity lies above
  the low end of the photo grade; otherwise it says nothing;
- a photo score verifies nothing where the copy would show less of its source than App. C's strongest crop
  leaves (``MAX_ZOOM_AREA``): two tiles of one brick wall, or two regions of one photograph, line up under a
  large zoom.

The decision is ``rule.DecisionRule``'s (the one rule; see its module): Overlap when a verified item (at or above the
relaxed first stage) is the same picture; a confident detector match (at or above the detector's threshold)
stays Overlap unless its verdict is False (evidence against it).

``ACCEPT``, ``ACCEPT_CELLS`` and ``REJECT`` were chosen on the photo development set
(``benchmarks.photos``: bundled photos and mate-backgrounds, medium/strong/tiles96/cifar32 families) with the
clip-art development set's labelled pairs as a constraint (no look-alike accepted); see
``benchmarks/bench_photo_decision.py``. ``ACCEPT_DETAIL``, ``REPEATS`` and the ``FLAT_*`` limits were chosen on
the same photo development set's saved pairs with the synthetic demo's tile look-alikes (two tiles of one brick
wall, of one tray of coins) as a constraint; see BENCHMARKS.md.

numpy and scipy (FFT, ``map_coordinates``), Pillow for the resampling. A photograph pair costs about 1.5x
``verify_prepared`` (both directions at the coarse grid, then three refinements; ``verify_prepared`` only in the
middle band).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from ..content import ContentBox
from .verify import VERIFY_REJECT, VERIFY_THRESHOLD, Prepared, prepare, verify_prepared

KEEP = 160  # long side of the greyscale view kept per image, px
COARSE = 32  # the coarse grid's size (sqrt of its area), px
FINE = 64  # the fine grid's size, px
SCALES = (1.0, 1.12, 1.25, 1.4, 1.57)  # per-axis zooms of R searched on the coarse grid
MAX_AXIS_RATIO = 1.3  # the two axes' zooms differ by at most this factor (a crop's own aspect change)
ANGLES = (-5.0, 0.0, 5.0)  # rotations searched on the coarse grid, degrees (then refined by 1-degree steps)
FINE_ANGLES = (-2.5, -1.25, 0.0, 1.25, 2.5)  # around the coarse angle on the fine grid (at the coarse zoom)
FINE_ZOOMS = (0.95, 1.0, 1.05)  # then around the coarse zoom (per axis) at the best fine angle
CELLS = 3  # the aligned pair is cut into CELLS x CELLS cells for the consistency score
MIN_CELLS = 3  # fewer textured cells than this: the aligned pair has too little texture to say anything
MARGIN = 0.08  # share of each side of the copy left out of the template (a rotated copy's filled corners)
BAND = (0.7, 4.0)  # the difference of Gaussians' sigmas, fine-grid pixels (scaled on the coarse grid)
MIN_TEXTURE = 1.5 / 255  # band-passed standard deviation (grey levels in [0, 1]) under which a view says nothing
MAX_FLAT = 0.3  # share of flat pixels from which an image is drawn (see verify_photo's drawing rule)
ACCEPT = 0.83  # photo score from which a pair is the same picture (chosen on the photo development set: see below)
# below the detector's threshold the photo score needed grows linearly to ACCEPT + GRADE at
# 1 - GRADE_SPAN (1 - threshold) (phash: 46 of 64 bits) and stays there further down, to the first stage
# (``rule.VerifySettings.accept_for``): two tiles of one brick wall or one tray of coins correlate about as
# well as a strongly edited copy (0.90 in the synthetic demo, at 46 of 64 bits). On the photo development
# set's saved verdicts (phash, first stage 42 of 64 bits) 0.08 gives medium / strong / tiles96 recall 0.771 /
# 0.510 / 0.944; 0.04 gave 0.806 / 0.542 / 0.951 but let those two tile pairs of the demo through
GRADE = 0.08
GRADE_SPAN = 2.0
ACCEPT_CELLS = 0.2  # ... and whose textured cells (all but the worst) correlate at least this much
REJECT = 0.4  # photo score under which an informative pair is evidence against a detector's match
REJECT_TEXTURE = 4 / 255  # ... where its texture stands this far above the noise (a flat retina scan does not)
MAX_ASPECT = 12.0  # an image longer than this many times its width is a strip: no grid keeps its content
REFINE_STEPS = 6  # iterations of the fine alignment's affine refinement (``_refine``)
LEASH = 3.0  # px of the fine grid the refinement may move the template's centre
DETAIL = 2  # the detail level's grid, times the fine grid's
DETAIL_BAND = (0.7, 2.5)  # its difference of Gaussians' sigmas, px of that grid
DETAIL_STEPS = 3
ACCEPT_DETAIL = 0.75  # below the detector's threshold (accept above ACCEPT) the detail level must agree this much
REPEATS = 0.75  # ``elsewhere`` from which the copy's texture repeats itself (see ``_second_evidence``)
FLAT_ACCEPT = 0.95  # a drawing without a margin is the same picture from this photo score ...
FLAT_CELLS = 0.85  # ... with its cells
FLAT_DETAIL = 0.9  # ... and its detail level agreeing this much
# The most two frames' shapes (aspect ratios) may differ for a frame pair to be judged as photographs: App. C's
# resize to an independent width and height of 160-400 px turns a source of aspect 1.6 into a copy of aspect
# 0.4-2.5, up to 4x apart (on the photo development sets 99% of the copies lie within 3.8x). Frames further apart
# are judged by the drawing comparison alone, as drawings: a letter "i" is not a squashed flag
MAX_FRAME_SQUASH = 4.0
UNIQUE = 0.05  # an accepted copy matches its source this much better than itself a quarter-side away
REPEAT_MARGIN = 0.02  # below the threshold a repeating texture's grid score must clear the photo accept by this
# The largest area zoom (zoom x * zoom y) at which a photo score verifies a pair: the copy shows at least 1/1.75
# (57%) of its source. App. C's strongest crop keeps 65% of the area; on the photo development set the true
# copies verified below the detector's threshold reach 1.58, while two tiles of one brick wall lined up at 1.96
# and other regions of one photograph at 1.96-2.59
MAX_ZOOM_AREA = 1.75
# A featureless pair (``MIN_TEXTURE``: a clear sky, a blank wall) is the same picture only where the drawing
# comparison agrees this much and the detector's similarity lies above the grade's low end: on the photo
# development set the true featureless tile copies scored 0.96-1.00, their sibling tiles 0.82-0.93 (and one
# 0.99, two grey tiles of one background, at 44 of 64 bits)
FEATURELESS_ACCEPT = 0.95


@dataclass(frozen=True, eq=False)
class PhotoPrepared:
    """One image ready to compare: its whole greyscale view (float32 [0, 1], at most KEEP px) and the
    trimmed view ``verify.prepare`` gives."""

    grey: np.ndarray
    pair: Prepared
    trimmed: bool  # content.trim found a margin (with flat fills: a drawing on a canvas)
    flat: float  # share of pixels with no grey-level change to any 4-neighbour (a drawing's fills: most)
    texture: float = float("inf")  # band-passed standard deviation of the whole view on the fine grid

    @property
    def aspect(self) -> float:
        return self.grey.shape[1] / self.grey.shape[0]


@dataclass(frozen=True)
class PhotoVerification:
    """The verdict on one pair: the photo score (best correlation of the copy inside the other image), the
    texture it rests on, ``verify_prepared``'s score, and the alignment found."""

    score: float  # NaN where the photo comparison does not apply (a drawing: see verify_photo)
    texture: float  # band-passed std of the less textured image, grey levels in [0, 1]
    # (of the aligned parts: the copy's template and the window of the other image it was found in)
    pair_score: float  # verify.verify_prepared's score of the trimmed views (NaN: not needed, not computed)
    cells: float = float("nan")  # the lowest per-cell correlation at the best alignment
    angle: float = 0.0  # the copy's rotation found, degrees counter-clockwise (as PIL's rotate)
    zoom: tuple[float, float] = (1.0, 1.0)
    copy_is_first: bool = True  # the first image was found inside the second (else the other way round)
    degenerate: bool = False  # a shape neither comparison can judge (a strip beyond MAX_ASPECT): says nothing
    featureless: bool = False  # an image without texture (a blank wall, a clear sky): says nothing
    flat_match: bool = False  # a drawing by its flat fills, without a margin, that the photo comparison matches
    # flat fills up to the edges in both images (no margin): the drawing comparison's boxes are the frames, whose
    # shape a dataset's resize sets, so its box-shape factor is no evidence against, only its content agreement
    frame: bool = False
    pair_aspect: float = float("nan")  # the drawing comparison's box-shape factor (1: the same shape; 0: gated)
    grid_score: float = float("nan")  # the correlation before the refinement (the search's grid alone)
    detail: float = float("nan")  # the correlation at DETAIL times the fine grid (``_detail``; NaN: not computed)
    elsewhere: float = -1.0  # how well the copy matches itself a quarter of its side or more away (``_repeats``)

    @property
    def applies(self) -> bool:
        return not math.isnan(self.score)

    @property
    def informative(self) -> bool:
        return self.applies and self.texture >= MIN_TEXTURE and not math.isnan(self.cells)

    @property
    def unique(self) -> bool:
        """The pair matches clearly better than the copy matches itself elsewhere (``_repeats``, at least
        ``UNIQUE`` under the score): in a repetitive texture another part of the same wall lines up about as
        well as the copy's own part, so a match there says nothing."""
        return self.elsewhere < self.score - UNIQUE

    @property
    def verdict(self) -> bool | None:
        """True: the same picture; False: evidence that it is not; None: nothing to say either way."""
        return self.verdict_at(VERIFY_THRESHOLD)

    def _second_evidence(self, accept: float) -> bool:
        """Below the detector's threshold (``accept`` above ``ACCEPT``) a pair needs more than its correlation:
        the detail level must not disagree (``ACCEPT_DETAIL``; NaN: no texture there, no say), and a texture
        that repeats itself (``elsewhere`` from ``REPEATS``) must correlate as well before the refinement, since
        a sub-pixel fit lines up any two parts of a periodic pattern (two tiles of one brick wall: 0.90 before,
        0.98 after)."""
        if self.detail < ACCEPT_DETAIL:
            return False
        return self.elsewhere < REPEATS or self.grid_score >= accept + REPEAT_MARGIN

    def verdict_at(self, pair_threshold: float, accept: float = None, near: bool = True) -> bool | None:
        """``verdict`` with ``pair_threshold`` in place of ``verify.VERIFY_THRESHOLD`` for the drawing
        comparison's score, and ``accept`` in place of ``ACCEPT`` for the photo score. ``near``: the pair's
        similarity lies above the low end of the photo acceptance's grade (``rule.VerifySettings.near``),
        where a featureless pair may be verified."""
        accept = ACCEPT if accept is None else accept
        if self.degenerate:
            return None
        if self.frame:
            if self.pair_score >= pair_threshold or self.flat_match:
                return True
            photo = replace(self, frame=False, pair_score=float("nan")).verdict_at(pair_threshold, accept, near)
            if photo is not None:
                return photo
            # the drawing comparison's content agreement (its score without the box-shape factor) is evidence
            # against; where the shapes differ past its gate (factor 0) it compared nothing
            return False if self.pair_aspect > 0 and not (
                self.pair_score / self.pair_aspect >= min(VERIFY_REJECT, pair_threshold)) else None
        if self.featureless:
            return True if near and self.pair_score >= FEATURELESS_ACCEPT else None
        if self.applies and self.informative:
            if self.score < REJECT and self.texture < REJECT_TEXTURE:
                return None  # texture near the noise floor: a low correlation is JPEG noise, not evidence
            if self.score >= accept and self.cells >= ACCEPT_CELLS and self.unique and (
                    accept <= ACCEPT or self._second_evidence(accept)):
                # a copy showing less of its source than App. C's strongest crop leaves says nothing
                return True if self.zoom[0] * self.zoom[1] <= MAX_ZOOM_AREA else None
            if self.score < REJECT:
                return False
        if self.pair_score >= pair_threshold or self.flat_match:  # NaN (not computed) compares False
            return True
        if self.applies:
            return None
        # drawings: verify_prepared decides; a score between its reject level and the pair threshold says nothing
        return False if not self.pair_score >= min(VERIFY_REJECT, pair_threshold) else None


def prepare_photo(image: Image.Image, box: ContentBox | None = None) -> PhotoPrepared:
    """The views ``verify_photo`` compares (``box``: the image's recorded content box, ``verify.prepare``)."""
    grey, flat = grey_view(image)
    pair = prepare(image, box)  # its content box is the one trimming found: not searched again
    return PhotoPrepared(grey, pair, pair.trimmed, flat, view_texture(grey))


def grey_view(image: Image.Image) -> tuple[np.ndarray, float]:
    """``prepare_photo``'s greyscale view (float32 in [0, 1], at most ``KEEP`` px) and its flat share."""
    w, h = image.size
    f = min(1.0, KEEP / max(w, h))
    grey = image.convert("L")
    if f < 1.0:
        grey = grey.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX)
    g = np.asarray(grey)
    # a pixel equal to each of its 4-neighbours (an edge pixel has none beyond the edge to differ from)
    still = np.ones(g.shape, bool)
    across, down = g[:, 1:] == g[:, :-1], g[1:] == g[:-1]
    still[:, 1:] &= across
    still[:, :-1] &= across
    still[1:] &= down
    still[:-1] &= down
    return g.astype(np.float32) / 255.0, float(still.mean())


def view_texture(grey: np.ndarray) -> float:
    """The band-passed standard deviation of a greyscale view on the fine grid (``PhotoPrepared.texture``)."""
    gw, gh = _grid(grey.shape[1] / grey.shape[0], FINE)
    return float(_band(_resize(grey, gw, gh), 1.0).std())


def _grid(aspect: float, size: int) -> tuple[int, int]:
    """(width, height) of a grid of ``aspect`` whose area is size**2."""
    return max(8, round(size * math.sqrt(aspect))), max(8, round(size / math.sqrt(aspect)))


def _resize(a: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a, "F").resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0),
                      np.float32)


@functools.cache
def _kernel(sigma: float) -> np.ndarray:
    """The normalised Gaussian of ``sigma`` to 2.5 sigma, as scipy's ``gaussian_filter(truncate=2.5)`` makes it."""
    r = int(2.5 * sigma + 0.5)
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    k /= k.sum()
    k.flags.writeable = False  # shared by every call with this sigma
    return k


def _gauss(a: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(a, sigma, mode="nearest", truncate=2.5)``, the same numbers: its two
    passes with the kernel made once (making it was half of each call's time on these small grids)."""
    from scipy.ndimage import correlate1d

    k = _kernel(float(sigma))
    out = correlate1d(a, k, 0, mode="nearest")
    return correlate1d(out, k, 1, output=out, mode="nearest")


def _band(a: np.ndarray, scale: float) -> np.ndarray:
    return _gauss(a, BAND[0] * scale) - _gauss(a, BAND[1] * scale)


def _rotated(a: np.ndarray, angle: float) -> np.ndarray:
    if angle == 0.0:
        return a
    return np.asarray(Image.fromarray(a, "F").rotate(angle, Image.Resampling.BILINEAR), np.float32)


def _template(t: np.ndarray, size: int) -> np.ndarray:
    """``t`` on the grid of its own aspect ratio of ``size`` px (as area), band-passed: the copy ``_search``
    looks for."""
    gw, gh = _grid(t.shape[1] / t.shape[0], size)
    return _band(_resize(t, gw, gh), size / FINE)


def _search(t: np.ndarray, r: np.ndarray, size: int, hypotheses: list[tuple[float, float, float]],
            tb: np.ndarray | None = None):
    """Best normalised cross-correlation of ``t`` (the copy) inside ``r`` over ``hypotheses`` (angle, zoom x,
    zoom y): (correlation, hypothesis). ``tb``: ``_template(t, size)`` when the caller has it already."""
    from scipy import fft

    gw, gh = _grid(t.shape[1] / t.shape[0], size)
    scale = size / FINE
    tb = _template(t, size) if tb is None else tb
    mx, my = max(1, round(MARGIN * gw)), max(1, round(MARGIN * gh))
    tw, th = gw - 2 * mx, gh - 2 * my
    zooms = sorted({(zx, zy) for _, zx, zy in hypotheses})
    angles = sorted({a for a, _, _ in hypotheses})
    sizes = [(round(gw * zx), round(gh * zy)) for zx, zy in zooms]
    # the FFTs' size: the largest zoom, rounded up to a size pocketfft transforms fast (zeros beyond)
    pw, ph = fft.next_fast_len(max(w for w, _ in sizes), True), fft.next_fast_len(max(h for _, h in sizes), True)
    # R band-passed once, at the middle of the zooms searched (the band moves by at most that factor)
    zm = math.sqrt(min(z for z, _ in zooms) * max(z for z, _ in zooms))
    zn = math.sqrt(min(z for _, z in zooms) * max(z for _, z in zooms))
    rb = Image.fromarray(_band(_resize(r, round(gw * zm), round(gh * zn)), scale), "F")
    canvas = np.zeros((len(zooms), ph, pw), np.float32)
    valid = np.zeros((len(zooms), ph, pw), bool)
    for i, (w, h) in enumerate(sizes):
        canvas[i, :h, :w] = np.asarray(rb.resize((w, h), Image.Resampling.BILINEAR), np.float32)
        valid[i, :h - th + 1, :w - tw + 1] = True
    tpad = np.zeros((len(angles), ph, pw), np.float32)
    for k, a in enumerate(angles):  # the copy turned back by the angle it was turned by, its inner part
        inner = _rotated(tb, -a)[my:my + th, mx:mx + tw]
        tpad[k, :th, :tw] = inner
    raw = tpad[:, :th, :tw].copy()
    inner = tpad[:, :th, :tw]
    inner -= inner.mean(axis=(1, 2), keepdims=True)
    inner /= np.maximum(np.sqrt((inner * inner).sum(axis=(1, 2), keepdims=True)), 1e-9)
    ones = np.zeros((1, ph, pw), np.float32)
    ones[0, :th, :tw] = 1.0
    cf = fft.rfft2(canvas)
    tf = np.conj(fft.rfft2(np.concatenate([tpad, ones])))
    num = fft.irfft2(cf[None] * tf[:-1, None], s=(ph, pw))
    s1 = fft.irfft2(cf * tf[-1], s=(ph, pw))
    s2 = fft.irfft2(fft.rfft2(canvas * canvas) * tf[-1], s=(ph, pw))
    n = th * tw
    # only placements inside R count: the normalisation is computed where any zoom has one (the rest of the
    # transform is zero padding, a quarter to a half of it)
    rows, cols = np.flatnonzero(valid.any(axis=(0, 2))), np.flatnonzero(valid.any(axis=(0, 1)))
    vh, vw = (int(rows[-1]) + 1 if len(rows) else 1), (int(cols[-1]) + 1 if len(cols) else 1)
    s1 = s1[:, :vh, :vw]
    var = s2[:, :vh, :vw] - s1 * s1 / n
    # a window with (next to) no texture correlates with anything by chance: it is no placement
    ok = valid[:, :vh, :vw] & (var >= n * MIN_TEXTURE ** 2)
    full = np.where(ok[None], num[:, :, :vh, :vw] / np.sqrt(np.maximum(var, 1e-12))[None],
                    -1.0).reshape(len(angles), len(zooms), -1)
    ncc = full.max(axis=2)
    wanted = np.zeros_like(ncc, bool)
    ai, zi = {a: i for i, a in enumerate(angles)}, {z: i for i, z in enumerate(zooms)}
    for a, zx, zy in hypotheses:
        wanted[ai[a], zi[(zx, zy)]] = True
    ncc = np.where(wanted, ncc, -1.0)
    k, j = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    y, x = np.unravel_index(int(np.argmax(full[k, j])), (vh, vw))
    h, w = sizes[j][1], sizes[j][0]
    return float(ncc[k, j]), (angles[k], *zooms[j]), raw[k], canvas[j, y:y + th, x:x + tw], (canvas[j, :h, :w], x, y)


def _refine(t: np.ndarray, image: np.ndarray, a: np.ndarray, steps: int) -> tuple[float, np.ndarray, np.ndarray]:
    """The affine warp ``a`` (2 x 3: a pixel (x, y) of the template ``t`` lies at ``a @ (x, y, 1)`` in
    ``image``) refined to maximise their normalised correlation by the enhanced correlation coefficient's
    iteration (Evangelidis and Psarakis 2008, forward additive); the integer shift and the 5% / 1.25 degree
    steps of the search leave up to half a pixel at the fine grid, enough to cost a true copy 0.05-0.1 of its
    correlation. Stops where the template's centre moves more than ``LEASH`` px or its area by 20% (another
    placement than the one found). (correlation, the window of ``image`` under the warp, the warp)."""
    from scipy.ndimage import map_coordinates

    th, tw = t.shape
    h, w = image.shape
    yy, xx = np.mgrid[:th, :tw]
    xs, ys = xx.ravel().astype(np.float64), yy.ravel().astype(np.float64)
    gy, gx = np.gradient(image.astype(np.float64))
    tz = t.astype(np.float64).ravel()
    tz = tz - tz.mean()
    tn = float(np.sqrt(tz @ tz))
    a = a.astype(np.float64).copy()
    cx, cy = (tw - 1) / 2, (th - 1) / 2
    centre = a @ np.array([cx, cy, 1.0])
    best = (-2.0, a.copy())
    for _ in range(steps):
        u, v = a[0, 0] * xs + a[0, 1] * ys + a[0, 2], a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
        coords = np.stack([v, u])
        inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
        if not inside.any():
            break
        iw = map_coordinates(image, coords, order=1, mode="constant")
        iz = np.where(inside, iw - iw[inside].mean(), 0.0)
        inorm = float(np.sqrt(iz @ iz))
        rho = float(tz @ iz) / max(tn * inorm, 1e-12)
        if rho < best[0] + 1e-4:  # no longer improving (or overshot): the last best stands
            break
        best = (rho, a.copy())
        wx = np.where(inside, map_coordinates(gx, coords, order=1, mode="constant"), 0.0)
        wy = np.where(inside, map_coordinates(gy, coords, order=1, mode="constant"), 0.0)
        jac = np.stack([wx * xs, wx * ys, wx, wy * xs, wy * ys, wy], axis=1)
        jac -= jac.mean(axis=0)
        hinv = np.linalg.pinv(jac.T @ jac)
        ip, tp = jac.T @ iz, jac.T @ tz
        den = float(tz @ iz) - float(tp @ hinv @ ip)
        if den <= 0:  # anti-correlated: no ascent direction
            break
        lam = (inorm * inorm - float(ip @ hinv @ ip)) / den
        dp = hinv @ (jac.T @ (lam * tz - iz))
        a += dp.reshape(2, 3)
        moved = a @ np.array([cx, cy, 1.0]) - centre
        if np.abs(moved).max() > LEASH or abs(np.linalg.det(a[:, :2]) - 1) > 0.2:
            break
    rho, a = best
    u, v = a[0, 0] * xs + a[0, 1] * ys + a[0, 2], a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
    win = map_coordinates(image, np.stack([v, u]), order=1, mode="nearest").reshape(th, tw).astype(np.float32)
    return rho, win, a


def _detail(t: np.ndarray, r: np.ndarray, angle: float, zoom: tuple[float, float], a: np.ndarray) -> float:
    """The aligned pair's correlation at ``DETAIL`` times the fine grid, in a band of ``DETAIL_BAND`` px there
    (finer than the fine grid's): the fine alignment ``a`` scaled up and refined again. A true copy keeps
    its source's detail up to what JPEG and downscaling took; a look-alike that lines up at the fine grid
    (one coin of a tray against another) does not at this one. NaN where either side has no texture there."""
    gw, gh = _grid(t.shape[1] / t.shape[0], FINE)
    mx, my = max(1, round(MARGIN * gw)), max(1, round(MARGIN * gh))
    f = DETAIL

    def band(x: np.ndarray) -> np.ndarray:
        return _gauss(x, DETAIL_BAND[0]) - _gauss(x, DETAIL_BAND[1])

    inner = _rotated(band(_resize(t, gw * f, gh * f)), -angle)[my * f:(gh - my) * f, mx * f:(gw - mx) * f]
    canvas = band(_resize(r, round(gw * zoom[0]) * f, round(gh * zoom[1]) * f))
    up = a.copy()  # pixel centres: x_f = f x + (f - 1) / 2 on both sides
    up[:, 2] = f * a[:, 2] + (f - 1) / 2 * (1 - a[:, 0] - a[:, 1])
    rho, win, _ = _refine(inner, canvas, up, DETAIL_STEPS)
    if min(float(inner.std()), float(win.std())) < MIN_TEXTURE:
        return float("nan")
    return float(rho)


def _repeats(t: np.ndarray) -> float:
    """How well the middle half of ``t`` (band-passed) matches ``t`` itself a quarter of its side or more
    away: the best normalised correlation there. A repetitive texture (a brick wall, blinds, a tiled floor)
    matches itself shifted by its period, so a copy of another part of it lines up as well as a copy of this
    part; a photograph's content does not repeat."""
    h, w = t.shape
    ph, pw = h // 2, w // 2
    if ph < 4 or pw < 4:
        return -1.0
    y0, x0 = (h - ph) // 2, (w - pw) // 2
    patch = t[y0:y0 + ph, x0:x0 + pw] - t[y0:y0 + ph, x0:x0 + pw].mean()
    pn = float(np.sqrt((patch * patch).sum()))
    if pn < 1e-9:
        return -1.0
    # every window's correlation with the patch without forming the windows: sums of (x - mean) p = sums of x p
    # - mean * sum p, of (x - mean)^2 = sums of x^2 - n mean^2; the sums of x and x^2 from integral images, those
    # of x p from FFTs (the windows wholly inside t never wrap around), in float64
    from scipy import fft

    a, p = t.astype(np.float64), patch.astype(np.float64)
    n = ph * pw

    def box(c: np.ndarray) -> np.ndarray:  # [h - ph + 1, w - pw + 1] window sums from an integral image
        c = np.pad(c.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        return c[ph:, pw:] - c[:-ph, pw:] - c[ph:, :-pw] + c[:-ph, :-pw]

    s1, s2 = box(a), box(a * a)
    cross = fft.irfft2(fft.rfft2(a) * np.conj(fft.rfft2(p, s=(h, w))), s=(h, w))[:h - ph + 1, :w - pw + 1]
    num = cross - s1 * (p.sum() / n)
    ncc = num / np.maximum(np.sqrt(np.maximum(s2 - s1 * s1 / n, 0.0)) * pn, 1e-9)
    yy, xx = np.mgrid[:ncc.shape[0], :ncc.shape[1]]
    far = (np.abs(yy - y0) >= max(1, h // 4)) | (np.abs(xx - x0) >= max(1, w // 4))
    return float(ncc[far].max()) if far.any() else -1.0


def _cells(t: np.ndarray, w: np.ndarray) -> float:
    """The second lowest correlation over the ``CELLS`` x ``CELLS`` cells of an aligned pair (band-passed) in
    which either image has texture (``MIN_TEXTURE``; one cell may fail: a JPEG-smeared or rotated-in corner);
    NaN when fewer than ``MIN_CELLS`` cells have any."""
    h, wd = t.shape
    ys, xs = np.linspace(0, h, CELLS + 1).round().astype(int), np.linspace(0, wd, CELLS + 1).round().astype(int)
    scores = []
    for i in range(CELLS):
        for j in range(CELLS):
            a, b = t[ys[i]:ys[i + 1], xs[j]:xs[j + 1]], w[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            if max(float(a.std()), float(b.std())) < MIN_TEXTURE:
                continue
            a, b = a - a.mean(), b - b.mean()
            d = float(np.sqrt((a * a).sum() * (b * b).sum()))
            scores.append(float((a * b).sum() / d) if d > 1e-12 else 0.0)
    return sorted(scores)[1] if len(scores) >= MIN_CELLS else float("nan")


def _coarse_hypotheses() -> list[tuple[float, float, float]]:
    return [(a, zx, zy) for a in ANGLES for zx in SCALES for zy in SCALES
            if max(zx, zy) / min(zx, zy) <= MAX_AXIS_RATIO + 1e-9]


def _compare(a: PhotoPrepared, b: PhotoPrepared) -> PhotoVerification:
    """The photo comparison of two images (steps 1-4 of the module docstring), without ``verify_prepared``."""
    hyps = _coarse_hypotheses()
    fwd = _search(a.grey, b.grey, COARSE, hyps)
    bwd = _search(b.grey, a.grey, COARSE, hyps)
    first = fwd[0] >= bwd[0]
    t, r = (a.grey, b.grey) if first else (b.grey, a.grey)
    angle, zx, zy = (fwd if first else bwd)[1]
    tb = _template(t, FINE)  # both fine searches look for the same copy
    angle = _search(t, r, FINE, [(angle + da, zx, zy) for da in FINE_ANGLES], tb)[1][0]
    score, (angle, zx, zy), tw, rw, (canvas, x, y) = _search(t, r, FINE, [(angle, zx * fx, zy * fy)
                                                                          for fx in FINE_ZOOMS for fy in FINE_ZOOMS],
                                                             tb)
    grid_score = score
    rho, win, aff = _refine(tw, canvas, np.array([[1.0, 0.0, x], [0.0, 1.0, y]]), REFINE_STEPS)
    if rho > score:
        score, rw = rho, win
    detail = _detail(t, r, angle, (zx, zy), aff) if score >= ACCEPT else float("nan")
    elsewhere = _repeats(tw)
    texture = min(float(tw.std()), float(rw.std())) if tw.size and rw.size else 0.0
    return PhotoVerification(float(min(1.0, max(0.0, score))), texture, float("nan"), _cells(tw, rw), angle,
                             (zx, zy), first, elsewhere=elsewhere, grid_score=grid_score, detail=detail)


def verify_photo(a: PhotoPrepared, b: PhotoPrepared) -> PhotoVerification:
    """Compare two images as a copy found inside its source (see the module docstring)."""
    if max(a.aspect, 1 / a.aspect, b.aspect, 1 / b.aspect) > MAX_ASPECT:  # a strip: neither grid holds it
        return PhotoVerification(float("nan"), 0.0, float("nan"), degenerate=True)
    if min(a.texture, b.texture) < MIN_TEXTURE:
        # an image with no texture on the fine grid (a blank wall, a clear sky, a grey card) looks like any
        # other such image of its tone: only the drawing comparison's near-perfect agreement counts, and only
        # near the detector's threshold (``verdict_at``'s ``near``)
        return PhotoVerification(float("nan"), min(a.texture, b.texture),
                                 float(verify_prepared(a.pair, b.pair).score), featureless=True)
    # drawings are verify_prepared's, as before: flat fills in both, or a margin in either and flat fills in
    # one (a copy alone may be flat, upscaled by the nearest pixel; a photograph with a black sky has a margin)
    flat = max(a.flat, b.flat) >= MAX_FLAT
    if min(a.flat, b.flat) >= MAX_FLAT or (flat and (a.trimmed or b.trimmed)):
        d = verify_prepared(a.pair, b.pair)
        v = PhotoVerification(float("nan"), 0.0, float(d.score))
        if v.pair_score >= VERIFY_THRESHOLD or a.trimmed or b.trimmed or max(a.aspect / b.aspect,
                                                                             b.aspect / a.aspect) > MAX_FRAME_SQUASH:
            return v
        # flat fills but no margin: an illustration, or a photograph of flat areas (a logo or a phantom on a plain
        # ground, a black sky), often squashed, which verify_prepared's box-shape gate refuses. The photo
        # comparison judges it as a photograph (its own verdict, ``verdict_at``); an almost perfect one, detail
        # included, is the same picture whatever the photo accept (``flat_match``)
        w = _compare(a, b)
        match = (w.informative and w.score >= FLAT_ACCEPT and w.cells >= FLAT_CELLS and w.detail >= FLAT_DETAIL
                 and w.unique)
        return replace(w, pair_score=v.pair_score, flat_match=bool(match), frame=True, pair_aspect=float(d.aspect))
    v = _compare(a, b)
    if v.verdict is None:  # only where the photo comparison says nothing does verify_prepared's score count
        v = replace(v, pair_score=float(verify_prepared(a.pair, b.pair).score))
    return v


def verify_photo_pair(a: Image.Image, b: Image.Image) -> PhotoVerification:
    """``verify_photo`` of two images."""
    return verify_photo(prepare_photo(a), prepare_photo(b))
