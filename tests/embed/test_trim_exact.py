"""The content box's fast paths (pixels read in place, margins read from each side inwards as far as they go,
the lines without a faint pixel skipped) find the same box as the rule computed plainly on every pixel, on
real photographs and drawings: padded, letterboxed, pillarboxed, on transparent canvases, with flat and graded
skies, thin strokes, JPEG noise and grey images."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from overlap_audit import content
from overlap_audit.imaging import decode_image, to_rgb


def plain_margin(view: Image.Image):
    """``content._margin``'s answer computed the plain way, one outer line at a time with numpy's median."""
    pixels = np.asarray(view).reshape(view.height, view.width, -1).astype(np.int64)
    lines = [pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]  # [n, C] each
    medians = [np.median(line, axis=0) for line in lines]
    deviations = [np.abs(line - m).max(axis=1) for line, m in zip(lines, medians)]

    def uniform(limit):
        return [s for s in range(4) if np.count_nonzero(deviations[s] > limit) / len(deviations[s])
                <= content.SIDE_OUTLIERS]

    def opposite(sides):
        return {content._TOP, content._BOTTOM} <= set(sides) or {content._LEFT, content._RIGHT} <= set(sides)

    quiet = uniform(content.MAX_TOLERANCE)
    if not opposite(quiet):
        return None
    steps = np.concatenate([np.abs(np.diff(lines[s], axis=0)).max(axis=1) for s in quiet])
    noise = 1.4826 * float(np.median(steps)) / np.sqrt(2)
    tolerance = min(content.MAX_TOLERANCE, max(content.BASE_TOLERANCE, content.NOISE_FACTOR * noise))
    candidates = quiet if tolerance == content.MAX_TOLERANCE else uniform(tolerance)
    if not candidates:
        return None
    border = np.median(np.stack([medians[s] for s in candidates]), axis=0)
    sides = [s for s in candidates if np.abs(medians[s] - border).max() <= tolerance]
    if not opposite(sides):
        return None
    fill = tuple(int(v) for v in np.rint(border))
    return content._Margin(fill[0] if len(fill) == 1 else fill, tolerance, frozenset(sides))


def plain_find_box(view: Image.Image):
    """``content._find_box``'s answer computed the plain way: every pixel's deviation from the border colour
    in every channel, the bounding boxes of the faint and strong pixels, and the lines between them counted."""
    pixels = np.asarray(view).reshape(view.height, view.width, -1)
    margin = plain_margin(view)
    if margin is None:
        return None
    fill = np.atleast_1d(np.asarray(margin.fill, dtype=np.int16))
    deviation = np.abs(pixels.astype(np.int16) - fill).max(axis=2)
    faint, strong = deviation > margin.tolerance, deviation > content.STRONG_FACTOR * margin.tolerance
    if not strong.any():
        return None
    height, width = faint.shape
    rows = faint.sum(axis=1) > content.FAINT_FRACTION * width
    cols = faint.sum(axis=0) > content.FAINT_FRACTION * height
    strong_rows, strong_cols = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    rows[strong_rows[0]:strong_rows[-1] + 1] = True  # between the first and last strong line: content
    cols[strong_cols[0]:strong_cols[-1] + 1] = True
    r, c = np.flatnonzero(rows), np.flatnonzero(cols)
    sides = margin.sides
    return (r[0] if content._TOP in sides else 0, r[-1] + 1 if content._BOTTOM in sides else height,
            c[0] if content._LEFT in sides else 0, c[-1] + 1 if content._RIGHT in sides else width), margin


def _canvas(picture: Image.Image, size, at, colour) -> Image.Image:
    canvas = Image.new("RGBA" if len(colour) == 4 else "RGB", size, colour)
    canvas.paste(picture, at, picture if picture.mode == "RGBA" else None)
    return canvas


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return decode_image(buf.getvalue())


def _drawing(size) -> Image.Image:
    w, h = size
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((2, 2, w - 3, h - 3), fill=(230, 60, 40, 200), outline=(20, 20, 120, 255), width=2)
    d.line((0, h // 2, w - 1, h // 2), fill=(90, 40, 140, 255), width=1)
    return im


def tricky(photos) -> list[tuple[str, Image.Image]]:
    """Views the rule reads differently near its limits, from real photographs and drawn clip art."""
    out = []
    rng = np.random.default_rng(11)
    for name, photo in sorted(photos.items())[:5]:
        photo = photo.convert("RGB")
        w, h = photo.size
        out.append((f"{name} whole", photo))
        out.append((f"{name} letterbox", _jpeg(_canvas(photo, (w, h + 120), (0, 70), (0, 0, 0)), 80)))
        out.append((f"{name} pillarbox", _jpeg(_canvas(photo, (w + 150, h), (60, 0), (16, 16, 16)), 90)))
        out.append((f"{name} padded grey", _jpeg(_canvas(photo, (w + 80, h + 60), (50, 20), (255, 255, 255)),
                                                  85).convert("L")))
        sky = np.asarray(photo).copy()
        sky[: h // 3] = np.linspace(170, 215, h // 3)[:, None, None].astype(np.uint8)  # a graded sky
        out.append((f"{name} graded sky", Image.fromarray(sky)))
        sky[: h // 3], sky[-h // 4:] = 225, 225  # flat bands at top and bottom, content between
        out.append((f"{name} flat bands", _jpeg(Image.fromarray(sky), 75)))
        noisy = np.clip(np.asarray(_canvas(photo, (w + 64, h + 64), (32, 32), (128, 128, 128)), dtype=np.int16)
                        + rng.normal(0, 4, (h + 64, w + 64, 3)).round().astype(np.int16), 0, 255)
        out.append((f"{name} noisy canvas", Image.fromarray(noisy.astype(np.uint8))))
    for size in ((40, 30), (300, 220), (700, 500)):
        drawing = _drawing(size)
        canvas = (size[0] * 2 + 7, size[1] * 2 + 3)
        out.append((f"drawing {size} transparent", to_rgb(_canvas(drawing, canvas, (size[0] // 3, 2), (0, 0, 0, 0)))))
        out.append((f"drawing {size} white jpeg", _jpeg(_canvas(drawing, canvas, (5, size[1] // 2), (255, 255, 255)),
                                                         70)))
        page = Image.new("RGB", canvas, (255, 255, 255))
        d = ImageDraw.Draw(page)
        d.line((3, canvas[1] // 3, canvas[0] - 4, canvas[1] // 3), fill=(0, 0, 0), width=1)  # one thin stroke
        d.line((canvas[0] // 2, 9, canvas[0] // 2, canvas[1] - 12), fill=(200, 200, 200), width=1)  # a faint one
        out.append((f"strokes {size}", page))
        specks = np.full((canvas[1], canvas[0], 3), 255, np.uint8)
        specks[rng.integers(0, canvas[1], 40), rng.integers(0, canvas[0], 40)] = 236  # faint specks only
        out.append((f"faint specks {size}", Image.fromarray(specks)))
        specks[canvas[1] // 2, canvas[0] // 3] = 0  # and one strong pixel
        out.append((f"faint specks and a dot {size}", Image.fromarray(specks)))
    return out


@pytest.fixture(scope="module")
def views(photos):
    return [(name, content._analysis_view(im)) for name, im in tricky(photos)]


def _box(found):
    return None if found is None else tuple(int(v) for v in found[0])


def test_the_margin_is_the_plain_rules(views):
    margins = [content._margin(content._pixels(view)) for _, view in views]
    assert sum(m is not None for m in margins) >= len(views) // 2
    for (name, view), margin in zip(views, margins):
        assert margin == plain_margin(view), name


@pytest.mark.parametrize("whole_map", [1 << 40, 0], ids=["whole map", "from the sides"])
@pytest.mark.parametrize("first_lines", [1, 3, 16])
def test_the_box_is_the_plain_rules(views, monkeypatch, whole_map, first_lines):
    monkeypatch.setattr(content, "WHOLE_MAP_PIXELS", whole_map)
    monkeypatch.setattr(content, "FIRST_LINES", first_lines)
    found = 0
    for name, view in views:
        expected = plain_find_box(view)
        assert _box(content._find_box(content._pixels(view))) == _box(expected), name
        # inside the image too, as a later pass reads it: a view of the box's pixels in place
        if expected is not None:
            found += 1
            top, bottom, left, right = expected[0]
            if min(bottom - top, right - left) < 3:  # no pass reads a view this small
                continue
            inner = content._pixels(view)[top:bottom, left:right]
            assert _box(content._find_box(inner)) == _box(plain_find_box(view.crop((left, top, right, bottom)))), name
    assert found >= len(views) // 2  # the cases exercise the box, not only its absence


def test_content_boxes_do_not_depend_on_the_path(views, monkeypatch):
    boxes = {name: content.content_box(view) for name, view in views}
    assert sum(b.trimmed for b in boxes.values()) >= 10
    monkeypatch.setattr(content, "WHOLE_MAP_PIXELS", 0)
    monkeypatch.setattr(content, "FIRST_LINES", 2)
    for name, view in views:
        assert content.content_box(view) == boxes[name], name


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_pixels_in_place_equal_numpys_copy(mode):
    rng = np.random.default_rng(2)
    im = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode)
    pixels = content._pixels(im)
    assert np.array_equal(pixels[:, :, :3], np.asarray(im).reshape(37, 53, -1))
    assert not pixels.flags.writeable


def test_a_large_image_in_several_blocks_is_copied():
    im = Image.new("RGB", (2400, 2400), (10, 20, 30))  # beyond one of PIL's blocks
    im.paste((200, 100, 50), (100, 200, 300, 400))
    pixels = content._pixels(im)
    assert pixels.shape == (2400, 2400, 4)
    assert np.array_equal(pixels[:, :, :3], np.asarray(im))
