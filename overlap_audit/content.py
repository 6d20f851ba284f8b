"""The content box of an image: where the picture is once the uniform margins of its canvas are left out.

The same drawing is often saved on canvases with different margins (a stamp filling a fifth of a padded
page in one place, cropped tightly in another), and every detector compares whole images, so it sees two
different pictures. ``trim`` gives the view both copies share: the image cropped to its content box.

How the box is found (on the image as the detectors see it: transparency composited on white, so a
transparent margin is a white one):

1. Each side's outer line (top row, bottom row, left and right columns) is a margin candidate when it is
   uniform: at most ``SIDE_OUTLIERS`` of its pixels differ from the line's median colour by more than the
   tolerance. The border colour is the median of the candidates' colours; a candidate whose colour is not
   within the tolerance of it is not a margin (a blue sky above and dark ground below are not one canvas).
2. Trimming needs margins on two opposite sides (a canvas, a letterbox's top and bottom bars, a
   pillarbox's left and right ones); then every margin side is trimmed. One uniform side alone — the plain
   sky at the top of a photograph — is not trimmed, nor are two adjacent sides (content in a corner of its
   canvas stays whole: a known limit).
3. From each margin side inwards, a row (column) is margin while at most ``FAINT_FRACTION`` of its pixels
   differ from the border colour by more than the tolerance and none by more than the strong tolerance.
   The tolerance (``BASE_TOLERANCE`` grey levels per channel, widened for a noisy margin to 4 noise standard
   deviations, at most ``MAX_TOLERANCE``) absorbs JPEG noise, faint gradients and the faint tail of a soft
   shadow; the allowed fraction absorbs isolated faint specks and JPEG ringing. A pixel beyond the strong
   tolerance (3x the tolerance) is content, however few there are: a thin stroke is never trimmed away.
   The darker part of a drop shadow counts as content in an opaque image (step 5 leaves it out on a
   transparent canvas).
4. The bands that would be cut must be a canvas, not part of the picture: steps 1-3 tolerate JPEG noise
   and so also take a photograph's flat sky, plain wall or studio backdrop for a margin. A canvas is flat:
   a drawing program, a padding step or a letterbox fills it with one colour, and JPEG and resampling
   leave it so away from the content's edge; a sky has a gradient and the sensor's noise. So each band's
   outer part (further than ``GUARD`` pixels from the box, beyond the reach of JPEG ringing) must be
   transparent or flat: every ``CELL`` x ``CELL`` mean within ``FLAT_TOLERANCE`` of the border colour
   and all but ``PIXEL_OUTLIERS`` of its pixels within ``PIXEL_TOLERANCE``. One band that fails keeps the
   whole image (it has the canvas's colour but is picture). An image whose outer lines are mostly
   transparent is a canvas outright, semi-transparent shadows and reflections included: a photograph has
   no transparency. A band too thin to have an outer part is
   never held against trimming, but is no evidence for it unless it is transparent, near white or near
   black (a canvas's or a letterbox's colour) or flat in its cell means; at least one band must be evidence.
   On the development photographs (benchmarks/bench_trim.py) this trims 9 of 900 photographs, crops and
   quadrants (the black surround of a fundus photograph, a synthetic phantom, a logo; 51 before: skies,
   walls, the moon's backdrop), while pad and letterbox copies and clip art are trimmed as before. A photograph that is exactly flat at its edge (a blown-out
   white sky, a night sky JPEG has flattened to black) is still taken for a canvas: a known limit.
5. On a transparent canvas the box is shrunk to the bounding box of its pixels at least ``SHADOW_ALPHA``
   (48 of 255) opaque. A pixel less opaque composites on white to within 48 grey levels of it, so it is never
   a strong pixel of step 3 (3 x 16 on a clean white margin), only a faint one; step 3 still counts rows where
   faint pixels are more than 2%, which is what a soft drop shadow or glow is: one copy of a drawing has it
   where another lacks it or draws it wider (the clip-art development set through the whole default audit:
   51 of 53 copies found against 50, no look-alike). What step 5 cuts is faint content only: a translucent
   fill or a thin stroke at least 48 opaque stays; a stroke thin enough to fade under 48 when the image is
   reduced (a 1-px line at a reduction of more than 5x) is cut, as step 3 would not count it strong either.
   An opaque image keeps its shadow in the box: composited copies of a shadowed drawing are trimmed alike, but
   a composited copy and a transparent one of it are not (a known limit; calibration's App. C copies are
   such composited copies).

Not trimmed (``trimmed=False``, the box is the whole image):
- an image with no margin (content touches the sides, or the border is not uniform: a photograph);
- an image whose uniform border is not flat (a sky, a wall, a gradient backdrop: step 4);
- an image in which nothing differs from the margin by more than the strong tolerance (a low-contrast
  photograph of a textured backdrop, a faint sketch): where content and margin differ only faintly, the box
  moves with JPEG noise and brightness changes, so two copies would be trimmed differently;
- a blank or uniform image: it has no content to find, and is low-information for every detector — the
  detectors' own ``low_information`` flags it, trimming would only blow noise up;
- a content box that would be too small to be a picture: a side under ``MIN_SIDE`` pixels or an area under
  ``MIN_AREA_FRACTION`` of the image (a speck on a blank page); the whole, near-blank image is kept and left
  to the detectors' low-information rules.

Cost: the pixels are read in place (PIL's Arrow export, no copy) with numpy. Without two opposite quiet
outer lines (most photographs), the outer lines only. With a margin, a small image (up to
``WHOLE_MAP_PIXELS``) is mapped whole at once; a larger one is read from each margin side inwards, in strips,
only as far as its margin goes, and the lines without a pixel beyond the tolerance are not counted: the cost
follows the margin, not the image; each band it would cut is judged (step 4) as soon as its depth is known,
so a sky ends the pass before the other sides are read. A repeated pass reads the box's pixels in place.
Outer lines of one colour (a drawing's white or transparent canvas) give the margin without its statistics,
and a drawing that ``imaging.to_rgb`` composited from a transparent canvas is read only inside the bounding box
of its pixels that were not fully transparent (``imaging.white_outside``): outside it every pixel is white, so
no line there is content or holds a faint pixel, and the box is the same; where that box lies strictly inside the
image, the white margin and the transparent border are known without reading the outer lines.
On openclipart-png drawings 0.4-0.65x the CPU time PIL takes to decode them, on JPEG photographs decoded
at a reduced scale about 0.3x (benchmarks/bench_index_speed.py, BENCHMARKS.md "Indexing against the
decoder").
Step 4 adds, where there is a margin, one box average and one lookup pass over the bands cut: on a photograph
padded to 512 px 12.7 ms against 5.2 ms without step 4, measured together on a busier 2-core machine; nothing
for an image without a margin. In the audit it runs on the image as decoded for the
detector, often a reduced JPEG decode.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .imaging import ALPHA_INFO, to_rgb, white_outside

BASE_TOLERANCE = 16  # grey levels per channel from the border colour that still count as margin
MAX_TOLERANCE = 48  # the tolerance never widens beyond this, however noisy the margin
NOISE_FACTOR = 4.0  # tolerance >= this many robust standard deviations of the margin's own noise
STRONG_FACTOR = 3.0  # a pixel beyond this multiple of the tolerance is always content
FAINT_FRACTION = 0.02  # share of a row/column that may deviate faintly and still be margin
SIDE_OUTLIERS = 0.05  # share of an outer line that may deviate and the side still be uniform
MIN_SIDE = 16  # pixels: a content box narrower or shorter than this is not a picture
MIN_AREA_FRACTION = 0.03  # a content box under this share of the image is not a picture (a speck, or a
# flat photograph region at its edge: real clip art fills 17-79% of a padded canvas)
# The rule's version, part of a trimming detector's version ("+trim" and this number): bumped whenever the box
# found for some image can change, so that an index built under another rule is refused, not mixed
RULE_VERSION = 4
MAX_PASSES = 3  # trimming is repeated on the trimmed view until it is stable, at most this many times
# Canvas evidence (step 4 of the module docstring). A band's pixels within GUARD of the content box are not
# judged: JPEG ringing of the content's edge reaches a 16-px chroma block, and resampling a few pixels more
GUARD = 16
CELL = 8  # pixels: the outer part's local means are taken over CELL x CELL cells
FLAT_TOLERANCE = 2  # grey levels: every cell mean of a canvas is this close to the border colour
PIXEL_TOLERANCE = 4  # grey levels: and all but PIXEL_OUTLIERS of its pixels are
PIXEL_OUTLIERS = 0.01
# a band too thin to judge (no outer part) is canvas when its cell means are this close to the border colour:
# JPEG ringing next to the content averages out over a cell, a pixel test would fail on it
THIN_FLAT_TOLERANCE = 5
# a band too thin to judge is canvas-coloured when every channel of its border colour is within this of 0 or 255
CANVAS_COLOUR_TOLERANCE = 24
ALPHA_CLEAR = 16  # a pixel with alpha at most this is transparent
# on a transparent canvas a pixel under this opacity is not content (step 5): it composites on white within the
# strong tolerance of a white margin (STRONG_FACTOR x BASE_TOLERANCE), as the faint part of a soft drop shadow does
SHADOW_ALPHA = 48

_TOP, _BOTTOM, _LEFT, _RIGHT = range(4)


@dataclass(frozen=True)
class ContentBox:
    """An image's content box in its own pixels: columns ``left:right``, rows ``top:bottom`` (PIL's crop
    box: right and bottom exclusive), within an image of ``width`` x ``height``. ``trimmed`` is False when
    the box is the whole image (no margin, or nothing trimmable: see the module docstring)."""

    left: int
    top: int
    right: int
    bottom: int
    width: int
    height: int
    trimmed: bool

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), as ``Image.crop`` takes it."""
        return self.left, self.top, self.right, self.bottom

    @property
    def area_fraction(self) -> float:
        """The share of the image's area inside the box (1.0 when not trimmed)."""
        return (self.right - self.left) * (self.bottom - self.top) / max(1, self.width * self.height)

    @classmethod
    def whole(cls, width: int, height: int) -> "ContentBox":
        """The untrimmed box of a ``width`` x ``height`` image."""
        return cls(0, 0, width, height, width, height, False)

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in BOX_FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> "ContentBox":
        return cls(**{f: d[f] for f in BOX_FIELDS})


BOX_FIELDS = ("left", "top", "right", "bottom", "width", "height", "trimmed")


def box_arrow_type():
    """The Arrow struct a ContentBox is stored as (in index shards and splits.parquet)."""
    import pyarrow as pa

    return pa.struct([(f, pa.bool_() if f == "trimmed" else pa.int32()) for f in BOX_FIELDS])


def content_box(image: Image.Image) -> ContentBox:
    """The content box of ``image`` (any mode; transparency counts as white).

    Trimming is repeated on the trimmed view until nothing more comes off (at most ``MAX_PASSES`` times), so
    it is idempotent: a picture whose own flat border was trimmed in one copy and which sits on a padded
    canvas in another comes to the same box in both."""
    width, height = image.size
    view = _analysis_view(image)
    pixels = _pixels(view)
    window = _white_outside(view)
    found: dict = {}
    box = _one_pass(pixels, lambda: view, lambda: _alpha(image), window, found)
    for _ in range(MAX_PASSES - 1):
        if not box.trimmed:
            break
        crop = pixels[box.top:box.bottom, box.left:box.right]
        if _settled(crop, found):
            break
        # the next pass reads the box's pixels in place; PIL crops its view only for the canvas test
        found = {}
        inner = _one_pass(crop, functools.partial(view.crop, box.box),
                          functools.partial(_cropped_alpha, image, box.box), found=found)
        if not inner.trimmed:
            break
        box = ContentBox(box.left + inner.left, box.top + inner.top, box.left + inner.right,
                         box.top + inner.bottom, width, height, True)
    return _without_faint(image, box, window is not None)


def _without_faint(image: Image.Image, box: ContentBox, transparent_border: bool = False) -> ContentBox:
    """Step 5: on a transparent canvas, ``box`` shrunk to the bounding box of its pixels at least
    ``SHADOW_ALPHA`` opaque, unless that would be no picture (the size rules) or nothing is that opaque.
    ``transparent_border``: already known to be one (``_white_outside``)."""
    alpha = _alpha(image)
    if alpha is None or not (transparent_border or _transparent_border(alpha)):
        return box
    a = _pixels(alpha if alpha.mode == "L" else alpha.convert("L"))[box.top:box.bottom, box.left:box.right, 0]
    if min(a[0].max(), a[-1].max(), a[:, 0].max(), a[:, -1].max()) >= SHADOW_ALPHA:
        return box  # each outer line of the box holds an opaque enough pixel: the box is already their bounds
    opaque = a >= SHADOW_ALPHA
    rows, cols = np.flatnonzero(opaque.any(axis=1)), np.flatnonzero(opaque.any(axis=0))
    if not len(rows):
        return box
    left, top = box.left + int(cols[0]), box.top + int(rows[0])
    right, bottom = box.left + int(cols[-1]) + 1, box.top + int(rows[-1]) + 1
    if (left, top, right, bottom) == box.box:
        return box
    if (right - left < MIN_SIDE or bottom - top < MIN_SIDE
            or (right - left) * (bottom - top) < MIN_AREA_FRACTION * box.width * box.height):
        return box
    return ContentBox(left, top, right, bottom, box.width, box.height, True)


def _settled(crop: np.ndarray, found: dict) -> bool:
    """Whether another pass over ``crop`` (the box a pass found, its pixels) can only keep it whole, so need not
    run. It can when that pass's margin (from the box's outer lines) has the border colour and tolerance of the
    pass that found the box and each of its margin sides is an edge of the box whose line holds a strong pixel
    (``found["strong"]``): under the same colour and tolerance that line is content again, so no side moves; or
    when the box's outer lines are no margin at all."""
    if "margin" not in found or min(crop.shape[:2]) < 3:
        return False
    again = _margin(crop)
    if again is None:
        return True
    before = found["margin"]
    return (again.fill == before.fill and again.tolerance == before.tolerance
            and again.sides <= found["strong"])


def _one_pass(pixels: np.ndarray, view: Callable[[], Image.Image], alpha: Callable[[], Image.Image | None],
              window: tuple[int, int, int, int] | None = None, found: dict | None = None) -> ContentBox:
    """One pass of the rule on a view's ``pixels`` (``_pixels``); ``view`` and ``alpha`` give the view and its
    alpha band, for the canvas test (made only when a box is found); ``window``: ``_white_outside``. Where it
    trims, ``found`` (if given) gets the margin the box was found against and the sides whose edge line holds a
    strong pixel (``_settled``)."""
    height, width = pixels.shape[:2]
    judged: dict[tuple[int, int, int, int], bool] = {}  # outer parts of bands: canvas or not
    judge = None
    view, alpha = functools.cache(view), functools.cache(alpha)
    # a window strictly inside the view is the bounding box of the alpha band's non-zero pixels: every pixel on
    # the outer lines is fully transparent, and the border transparent without reading it (its columns are a
    # cache line per pixel)
    transparent_border = functools.cache(
        lambda: window is not None or (alpha() is not None and _transparent_border(alpha())))
    if height * width > WHOLE_MAP_PIXELS:  # read from the sides: each band is judged as soon as it is known

        def picture(margin: _Margin, side: int, depth: int) -> bool:
            """Whether the band cut on ``side`` is picture (the canvas test, step 4, then keeps the image
            whole)."""
            if depth <= GUARD or transparent_border():
                return False  # a thin band is never held against trimming; a transparent canvas is a canvas
            outer = _outer_part(side, depth, width, height)
            judged[outer] = (_transparent(alpha(), outer)
                             or _flat(view(), outer, margin.fill, FLAT_TOLERANCE, pixels=True))
            return not judged[outer]

        judge = picture
    box_found = _find_box(pixels, judge, window) if min(width, height) >= 3 else None
    if box_found is None:
        return ContentBox.whole(width, height)
    (top, bottom, left, right), margin, strong_edges = box_found
    # the cheap reasons to keep the image whole first: the canvas test (and the alpha band it reads) is then
    # needed only for a box that would be used
    if (right - left < MIN_SIDE or bottom - top < MIN_SIDE
            or (right - left) * (bottom - top) < MIN_AREA_FRACTION * width * height):
        return ContentBox.whole(width, height)
    if (left, top, right, bottom) == (0, 0, width, height):
        return ContentBox.whole(width, height)
    if not _is_canvas(view(), alpha(), margin, (left, top, right, bottom), judged, transparent_border()):
        return ContentBox.whole(width, height)
    if found is not None:
        found.update(margin=margin, strong=strong_edges)
    return ContentBox(left, top, right, bottom, width, height, True)


def _outer_part(side: int, depth: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The outer part of the band ``depth`` lines deep on ``side`` (further than ``GUARD`` from the box), as
    a PIL crop box."""
    if side == _TOP:
        return 0, 0, width, depth - GUARD
    if side == _BOTTOM:
        return 0, height - depth + GUARD, width, height
    if side == _LEFT:
        return 0, 0, depth - GUARD, height
    return width - depth + GUARD, 0, width, height


def trim(image: Image.Image) -> tuple[Image.Image, ContentBox]:
    """The RGB view of ``image`` (transparency composited on white) cropped to its content box, and the
    box. An image with nothing to trim comes back whole (converted to RGB)."""
    box = content_box(image)
    rgb = to_rgb(image)
    if not box.trimmed:
        return rgb, box
    view = rgb.crop(box.box)
    alpha = _alpha(rgb)
    if alpha is not None:  # the crop keeps the image's info; its kept alpha band is the crop's own
        view.info[ALPHA_INFO] = alpha.crop(box.box)
    return view, box


def _analysis_view(image: Image.Image) -> Image.Image:
    # grey images stay one channel (a third of the work); everything else as the detectors see it
    if image.mode == "L":
        return image
    return to_rgb(image)


def _pixels(image: Image.Image) -> np.ndarray:
    """The pixels of an L or RGB image as a read-only array [H, W, K]: K 1 for L, 4 for RGB (PIL's own layout,
    the fourth byte unused). In place where PIL keeps the image in one block (through its Arrow export:
    ``np.asarray`` copies every pixel, which cost as much as the rule itself), else copied."""
    import pyarrow as pa

    width, height = image.size
    k = 1 if image.mode == "L" else 4
    flat = None
    if hasattr(image, "__arrow_c_array__"):  # Pillow 11.2 and later
        try:
            flat = np.frombuffer(pa.array(image).buffers()[-1], dtype=np.uint8)
        except ValueError:  # a large image, kept by PIL in several blocks
            pass
    if flat is not None:
        return flat[:height * width * k].reshape(height, width, k)
    if k == 1:
        return np.asarray(image).reshape(height, width, 1)
    out = np.zeros((height, width, 4), dtype=np.uint8)
    out[:, :, :3] = np.asarray(image)
    return out


@dataclass(frozen=True)
class _Margin:
    """What the outer lines say: the border colour, the tolerance and the sides that are margin."""

    fill: int | tuple[int, ...]
    tolerance: float
    sides: frozenset[int]


def _median(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=-1)`` (the same values) without its per-call cost."""
    n = a.shape[-1]
    k = n // 2
    if n % 2:
        return np.partition(a, k, axis=-1)[..., k].astype(np.float64)
    part = np.partition(a, (k - 1, k), axis=-1)
    return (part[..., k - 1].astype(np.float64) + part[..., k]) / 2


def _outer_lines(pixels: np.ndarray) -> np.ndarray:
    """The four outer lines of ``pixels`` ([H, W, K]: ``_pixels``) one after the other (top, bottom, left,
    right), channels first: int16 [C, 2W + 2H]. An RGB pixel's four bytes are gathered as one number."""
    if pixels.shape[2] == 4:
        whole = pixels.view(np.uint32)[:, :, 0]
        lines = np.concatenate([whole[0], whole[-1], whole[:, 0], whole[:, -1]])
        return lines.view(np.uint8).reshape(-1, 4)[:, :3].T.astype(np.int16, order="C")
    grey = pixels[:, :, 0]
    return np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])[None].astype(np.int16)


def _margin(pixels: np.ndarray) -> _Margin | None:
    """The border colour, tolerance and margin sides from the four outer lines of ``pixels`` ([H, W, K]:
    ``_pixels``), or None when the image has no margin on two opposite sides."""
    height, width = pixels.shape[:2]
    # numpy's per-call cost, and its reductions over a last axis of three, were most of the time: each
    # statistic comes from one call over the four lines, channels first
    lines = _outer_lines(pixels)
    channels = lines.shape[0]
    first = lines[:, :1]
    if (lines == first).all():
        # one colour all round (a drawing's white or transparent canvas): what the steps below come to when
        # every deviation and every step is zero, without their dozen numpy calls
        fill = tuple(int(v) for v in first[:, 0])
        return _Margin(fill[0] if channels == 1 else fill, BASE_TOLERANCE, frozenset(range(4)))
    lengths = (width, width, height, height)
    starts = (0, width, 2 * width, 2 * width + height)
    medians = np.concatenate([_median(lines[:, :2 * width].reshape(channels, 2, width)),
                              _median(lines[:, 2 * width:].reshape(channels, 2, height))], axis=1)  # [C, 4]
    colours = medians.T  # [4, C]: each side's colour
    # a pixel's deviation from its line's median, doubled: the median may be a half, and twice it is whole
    doubled = np.abs(2 * lines - np.repeat((2 * medians).astype(np.int16), lengths, axis=1)).max(axis=0)

    def uniform(limit: float) -> list[int]:  # the sides with at most SIDE_OUTLIERS of their pixels beyond limit
        beyond = np.add.reduceat(doubled > 2 * limit, starts, dtype=np.intp)
        return [s for s in range(4) if beyond[s] / lengths[s] <= SIDE_OUTLIERS]

    # a margin side is a candidate below, which needs (tolerance <= MAX_TOLERANCE) that it be quiet here: an
    # image without two opposite quiet sides has no margin, whatever the noise
    quiet_sides = uniform(MAX_TOLERANCE)
    if not ({_TOP, _BOTTOM} <= set(quiet_sides) or {_LEFT, _RIGHT} <= set(quiet_sides)):
        return None
    # the margin's own noise, from the lines that look like margin at all: neighbouring pixels' differences
    # (a gradient along the line is not noise), as a robust standard deviation
    steps = np.abs(np.diff(lines, axis=1)).max(axis=0)  # within each line, and one across each line's end
    quiet = np.concatenate([steps[starts[s]:starts[s] + lengths[s] - 1] for s in quiet_sides])
    noise = 1.4826 * float(_median(quiet)) / math.sqrt(2)
    tolerance = min(MAX_TOLERANCE, max(BASE_TOLERANCE, NOISE_FACTOR * noise))
    candidates = quiet_sides if tolerance == MAX_TOLERANCE else uniform(tolerance)
    if not candidates:
        return None
    border = _median(colours[candidates].T)
    near = np.abs(colours[candidates] - border).max(axis=1) <= tolerance
    sides = frozenset(s for s, ok in zip(candidates, near) if ok)
    if not ({_TOP, _BOTTOM} <= sides or {_LEFT, _RIGHT} <= sides):
        return None
    fill = tuple(int(v) for v in np.rint(border))
    return _Margin(fill[0] if channels == 1 else fill, tolerance, sides)


_WHITE_MARGIN = _Margin((255, 255, 255), BASE_TOLERANCE, frozenset(range(4)))  # outer lines all white (RGB)

# up to this many pixels the rule maps the whole image at once; a larger one is read from each margin side
# inwards, as far as its margin goes (numpy's per-call cost against its per-pixel cost)
WHOLE_MAP_PIXELS = 1 << 16
FIRST_LINES = 16  # the first strip read from a side, in lines; each next strip is twice as deep


class _Beyond:
    """Which pixels differ from the border colour by more than the tolerance (``faint``) and by more than the
    strong tolerance (``strong``), in any channel: a channel value differs by more than a tolerance ``t``
    from ``c`` exactly when it lies outside ``c - floor(t) .. c + floor(t)``."""

    def __init__(self, margin: _Margin, width: int, k: int):
        fill = (margin.fill,) if isinstance(margin.fill, int) else margin.fill
        self.k = k
        self.faint = self._range(fill, margin.tolerance, width, k)
        self.strong = self._range(fill, STRONG_FACTOR * margin.tolerance, width, k)

    @staticmethod
    def _range(fill: tuple[int, ...], limit: float, width: int, k: int) -> tuple:
        """How to find the values outside each channel's range ``c - floor(limit) .. c + floor(limit)``, along
        a row of ``width`` pixels of ``k`` bytes (RGB's fourth byte: the whole range, never outside): (a
        comparison and the range's low or high end) where the range reaches 255 or 0 in every channel (a
        white or black canvas), else (None, its low end, its width)."""
        reach = math.floor(limit)
        low, high = [max(0, c - reach) for c in fill], [min(255, c + reach) for c in fill]
        if k == 4:
            low, high = low + [0], high + [255]

        def row(values: list[int]) -> np.ndarray:
            return np.frombuffer(bytes(values) * width, dtype=np.uint8)

        if all(h == 255 for h in high):
            return np.less, row(low), None
        if all(lo == 0 for lo in low):
            return np.greater, row(high), None
        return None, row(low), row([h - lo for h, lo in zip(high, low)])

    def flags(self, pixels: np.ndarray, bounds: tuple) -> np.ndarray:
        """[H, W], non-zero where some channel lies outside the range, along whole rows (numpy's loops over
        a last axis of three or four are slow), RGB's four flags of a pixel read as one number. Outside a
        range open at neither end: one subtraction in uint8 (a value below the range wraps round above its
        width)."""
        height, width = pixels.shape[:2]
        n = width * self.k
        rows = pixels.reshape(height, n)
        compare, end, span = bounds
        out = compare(rows, end[:n]) if compare is not None else np.subtract(rows, end[:n], dtype=np.uint8) > span[:n]
        return out.view(np.uint32) if self.k == 4 else out

    def lines(self, pixels: np.ndarray, axis: int, limit: float, extra: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row (axis=1) or column (axis=0) of ``pixels``: whether it is content, i.e. holds a strong pixel
        or more than ``limit`` faint ones (``extra`` more per line, counted elsewhere), and whether it holds a
        strong pixel; and the map of faint pixels. Only the lines with a faint pixel are counted and looked
        at for strong ones (a strong pixel is faint too): in a margin, few or none."""
        faint = self.flags(pixels, self.faint)
        touched = faint.any(axis=axis)
        if extra is not None:
            touched |= extra > 0
        content, strong = np.zeros(len(touched), dtype=bool), np.zeros(len(touched), dtype=bool)
        at = np.flatnonzero(touched)
        if len(at) * 4 > len(touched):  # most lines: all of them at once
            counts = np.count_nonzero(faint, axis=axis)
            strong = self.flags(pixels, self.strong).any(axis=axis)
        elif len(at):
            picked = (lambda a: a[at]) if axis == 1 else (lambda a: a[:, at])
            counts = np.zeros(len(touched), dtype=np.intp)
            counts[at] = np.count_nonzero(picked(faint), axis=axis)
            strong[at] = self.flags(picked(pixels), self.strong).any(axis=axis)
        else:
            return content, strong, faint
        if extra is not None:
            counts += extra
        return strong | (counts > limit), strong, faint


def _white_outside(view: Image.Image) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the part of a composited view outside which every pixel is white
    (``imaging.white_outside``), where that part lies strictly inside the view (its four outer lines white)."""
    box = white_outside(view)
    if box is None:
        return None
    left, top, right, bottom = box
    width, height = view.size
    return (top, bottom, left, right) if 0 < left < right < width and 0 < top < bottom < height else None


def _find_box(pixels: np.ndarray, picture: Callable[[_Margin, int, int], bool] | None = None,
              window: tuple[int, int, int, int] | None = None
              ) -> tuple[tuple[int, int, int, int], _Margin, frozenset[int]] | None:
    """(top, bottom, left, right) of the content of ``pixels`` ([H, W, K]: ``_pixels``), the margin it was
    found against and the margin sides whose edge line (the box's outer line there) holds a strong pixel, or
    None when there is no margin to trim or no content at all.

    A line (row or column) is content when it holds a pixel beyond the strong tolerance, or more than
    ``FAINT_FRACTION`` of its pixels beyond the tolerance; a margin side's edge of the box is its first
    content line, and there is content only where some pixel is strong (a faint box moves with noise and
    brightness). A large image is read from each margin side inwards, so the cost follows the margin: first
    the rows, then the columns between the box's top and bottom (the faint pixels of the rows above and below
    are counted while those are read). ``picture(margin, side, depth)`` is asked about each band of a large
    image as soon as its depth is known: a band that is picture (a sky) ends the pass there, None.

    ``window`` (top, bottom, left, right): outside it every pixel is white (``_white_outside``); on a white
    margin those lines are neither content nor hold a faint pixel, so only the window is read (the same box).
    """
    # outside a window every pixel is white, the outer lines too: what ``_margin`` finds for them, unread
    margin = _WHITE_MARGIN if window is not None else _margin(pixels)
    if margin is None:
        return None
    height, width = pixels.shape[:2]
    sides = margin.sides
    beyond = _Beyond(margin, width, pixels.shape[2])
    col_limit, row_limit = FAINT_FRACTION * height, FAINT_FRACTION * width
    top, bottom, left, right = 0, height, 0, width  # the part read
    if window is not None and margin.fill == (255, 255, 255):
        top, bottom, left, right = window
    inner = pixels[top:bottom, left:right]
    if height * width <= WHOLE_MAP_PIXELS:
        strong = beyond.flags(inner, beyond.strong)
        strong_rows = strong.any(axis=1)
        if not strong_rows.any():
            return None  # nothing stands out clearly from the margin (or nothing at all): blank
        faint = beyond.flags(inner, beyond.faint)
        strong_cols = strong.any(axis=0)
        rows = strong_rows | (np.count_nonzero(faint, axis=1) > row_limit)
        cols = strong_cols | (np.count_nonzero(faint, axis=0) > col_limit)
        first_row, last_row = int(np.argmax(rows)), len(rows) - 1 - int(np.argmax(rows[::-1]))
        first_col, last_col = int(np.argmax(cols)), len(cols) - 1 - int(np.argmax(cols[::-1]))
        # a strong pixel lies in a content row and column, so within the box: the edge lines' flags are the box's
        edge_strong = {_TOP: strong_rows[first_row], _BOTTOM: strong_rows[last_row],
                       _LEFT: strong_cols[first_col], _RIGHT: strong_cols[last_col]}
        return ((top + first_row if _TOP in sides else 0,
                 top + last_row + 1 if _BOTTOM in sides else height,
                 left + first_col if _LEFT in sides else 0,
                 left + last_col + 1 if _RIGHT in sides else width), margin,
                frozenset(side for side in sides if edge_strong[side]))
    edges = {_TOP: 0, _BOTTOM: height, _LEFT: 0, _RIGHT: width}
    extra = np.zeros(width, dtype=np.intp)  # per column: faint pixels in the rows above and below the box
    strong = False
    strong_edges = set()
    for side in (_TOP, _BOTTOM, _LEFT, _RIGHT):
        if side not in sides:
            continue
        if side in (_TOP, _BOTTOM):
            found = _scan(inner, side, beyond, row_limit, extra[left:right])
            offset = top
        else:
            found = _scan(pixels[edges[_TOP]:edges[_BOTTOM], left:right], side, beyond, col_limit, extra[left:right])
            offset = left
        if found is None:
            return None  # no content line at all: nothing strong anywhere
        edges[side], strong_here = found
        edges[side] += offset
        strong = strong or strong_here
        if strong_here:
            strong_edges.add(side)
        depth = edges[side] if side in (_TOP, _LEFT) else (height if side == _BOTTOM else width) - edges[side]
        if picture is not None and picture(margin, side, depth):
            return None  # the canvas test would keep the image whole whatever the other sides
    if not strong and not beyond.flags(inner, beyond.strong).any():
        return None  # the first content lines held only faint pixels, and nothing anywhere is strong
    return (edges[_TOP], edges[_BOTTOM], edges[_LEFT], edges[_RIGHT]), margin, frozenset(strong_edges)


def _scan(pixels: np.ndarray, side: int, beyond: _Beyond, limit: float, extra: np.ndarray
          ) -> tuple[int, bool] | None:
    """From ``side`` inwards, in strips of lines twice as deep each time: the box's edge on that side (its first
    content line; for the bottom and right sides the index after it) and whether that line holds a strong
    pixel, or None when no line is content. Reading rows adds each column's faint pixels in the rows that are
    not content to ``extra``; reading columns counts them in."""
    rows = side in (_TOP, _BOTTOM)
    size = pixels.shape[0 if rows else 1]
    forwards = side in (_TOP, _LEFT)
    done, depth = 0, FIRST_LINES
    while done < size:
        depth = min(depth, size - done)
        lo, hi = (done, done + depth) if forwards else (size - done - depth, size - done)
        if rows:
            content, strong, faint = beyond.lines(pixels[lo:hi], 1, limit)
        else:
            content, strong, faint = beyond.lines(pixels[:, lo:hi], 0, limit, extra[lo:hi])
        if not forwards:  # inwards is backwards
            content, strong = content[::-1], strong[::-1]
        at = int(np.argmax(content)) if content.any() else depth
        if rows:  # the rows passed over, in the strip's own order
            passed = faint[:at] if forwards else faint[depth - at:]
            if passed.any():
                extra += np.count_nonzero(passed, axis=0)
        if at < depth:
            edge = done + at
            return (edge if forwards else size - edge), bool(strong[at])
        done += depth
        depth *= 2
    return None


def _alpha(image: Image.Image) -> Image.Image | None:
    """The alpha band of an image with transparency (or of the transparent image it was composited from:
    ``imaging.ALPHA_INFO``), else None."""
    kept = image.info.get(ALPHA_INFO)
    if isinstance(kept, Image.Image):
        if kept.size == image.size:
            return kept
        (kw, kh), (w, h) = kept.size, image.size
        if abs(kw * h - kh * w) <= kw + kh:  # resized with the image (a thumbnail keeps its info): resized too
            return kept.resize(image.size, Image.Resampling.BOX)
        # a crop (or another image made from the composited one) keeps its info too, but not its alpha: the band
        # is another shape's, so its pixels say all there is
        return None
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return image.getchannel("A")
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").getchannel("A")
    return None


def _cropped_alpha(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image | None:
    """The alpha band of ``image`` (``_alpha``: a kept band included) cropped to ``box``: the alpha of the
    view a later pass reads, without cropping the image."""
    alpha = _alpha(image)
    return None if alpha is None else alpha.crop(box)


def _is_canvas(view: Image.Image, alpha: Image.Image | None, margin: _Margin,
               box: tuple[int, int, int, int], judged: dict[tuple[int, int, int, int], bool] | None = None,
               transparent_border: bool | None = None) -> bool:
    """Whether the bands between the image's sides and ``box`` are a canvas (see the module docstring, step 4).

    Each band that is cut is judged on its outer part, the pixels further than ``GUARD`` from the box: it is
    canvas when it is transparent, or flat (every ``CELL`` x ``CELL`` mean within ``FLAT_TOLERANCE`` of the
    border colour, all but ``PIXEL_OUTLIERS`` of its pixels within ``PIXEL_TOLERANCE``), and picture when it
    is neither. A band with no outer part is never judged picture; it is canvas when it is transparent, its
    colour near white or near black, or its cell means are within ``THIN_FLAT_TOLERANCE``. The image is a
    canvas when no band is picture and at least one is canvas. ``judged``: outer parts already judged
    (canvas or not); ``transparent_border``: ``_transparent_border(alpha)`` where already known."""
    width, height = view.size
    left, top, right, bottom = box
    if transparent_border is None:
        transparent_border = alpha is not None and _transparent_border(alpha)
    if transparent_border:
        return True  # a drawing on a transparent canvas; its semi-transparent shadows and glows are not a sky
    evidence = False
    # (the band cut, its outer part) per side, as PIL crop boxes
    for depth, band, outer in ((top, (0, 0, width, top), (0, 0, width, top - GUARD)),
                               (height - bottom, (0, bottom, width, height), (0, bottom + GUARD, width, height)),
                               (left, (0, 0, left, height), (0, 0, left - GUARD, height)),
                               (width - right, (right, 0, width, height), (right + GUARD, 0, width, height))):
        if depth <= 0:
            continue
        if depth <= GUARD:  # nothing far enough from the content to judge flatness on
            evidence = (evidence or _transparent(alpha, band) or _canvas_colour(margin.fill)
                        or _flat(view, band, margin.fill, THIN_FLAT_TOLERANCE, pixels=False))
            continue
        canvas = judged.get(outer) if judged else None
        if canvas is None:
            canvas = _transparent(alpha, outer) or _flat(view, outer, margin.fill, FLAT_TOLERANCE, pixels=True)
        if not canvas:
            return False  # this band has the border's colour but not a canvas's flatness: a sky, a wall
        evidence = True
    return evidence


def _transparent_border(alpha: Image.Image) -> bool:
    """Whether at least half of the pixels on the image's four outer lines are transparent."""
    a = _pixels(alpha)[:, :, 0] if alpha.mode == "L" else np.asarray(alpha.convert("L"))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return bool((border <= ALPHA_CLEAR).mean() >= 0.5)


def _transparent(alpha: Image.Image | None, box: tuple[int, int, int, int]) -> bool:
    return alpha is not None and alpha.crop(box).getextrema()[1] <= ALPHA_CLEAR


def _canvas_colour(fill: int | tuple[int, ...]) -> bool:
    channels = np.atleast_1d(fill)
    return bool((channels <= CANVAS_COLOUR_TOLERANCE).all() or (channels >= 255 - CANVAS_COLOUR_TOLERANCE).all())


def _flat(view: Image.Image, box: tuple[int, int, int, int], fill: int | tuple[int, ...], tolerance: float,
          pixels: bool) -> bool:
    """Whether the region ``box`` of ``view`` is flat at ``fill``: no gradient in its local means (each cell's
    mean within ``tolerance``) and, with ``pixels``, no texture or sensor noise in its pixels (JPEG leaves a
    flat canvas flat away from the content's edges)."""
    region = view.crop(box)
    means = np.asarray(region.reduce(CELL), dtype=np.int16)  # PIL's box average per cell, partial cells too
    if np.abs(means - np.asarray(fill, dtype=np.int16)).max() > tolerance:
        return False
    if not pixels:
        return True
    off = _any_band(region.point(_beyond(fill, PIXEL_TOLERANCE)))
    return (region.width * region.height - off.histogram()[0]) / (region.width * region.height) <= PIXEL_OUTLIERS


@functools.lru_cache(maxsize=256)
def _beyond(fill: int | tuple[int, ...], limit: float) -> tuple[int, ...]:
    """A lookup table for ``Image.point``: 255 where a channel value differs from the border colour's by
    more than ``limit``, else 0 (one table per band)."""
    values = np.arange(256)
    return tuple(int(v) for c in np.atleast_1d(fill) for v in np.where(np.abs(values - int(c)) > limit, 255, 0))


def _any_band(flags: Image.Image) -> Image.Image:
    """One band, non-zero where any band of ``flags`` (0 or 255 per band, ``_beyond``'s output) is.

    PIL's grey conversion in one C pass instead of numpy's ``any`` over a last axis of three (several times
    slower): 255 in any one channel gives at least 29 grey levels, so nothing non-zero becomes zero."""
    return flags if flags.mode == "L" else flags.convert("L")
