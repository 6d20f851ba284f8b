"""The indexing loop's cheaper paths give the same pixels and content boxes as the plain ones, on real photographs
(the bundled ones, on canvases and letterboxes, as PNG and JPEG) and drawings."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from overlap_audit import content
from overlap_audit.content import content_box
from overlap_audit.imaging import ALPHA_INFO, decode_image, to_rgb


def reference_on_white(im: Image.Image) -> Image.Image:
    """Transparency composited on white the plain way: PIL's alpha_composite of the RGBA image."""
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def test_the_paste_through_alpha_equals_alpha_composite_for_every_colour_and_alpha():
    value, alpha = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([value, (value * 7) % 256, 255 - value, alpha], axis=-1).astype(np.uint8)
    im = Image.fromarray(rgba, "RGBA")
    out = to_rgb(im)
    assert np.array_equal(np.asarray(out), np.asarray(reference_on_white(im)))
    assert np.array_equal(np.asarray(out.info[ALPHA_INFO]), rgba[..., 3])


@pytest.mark.parametrize("transparency", ["one index", "alpha per entry"])
def test_a_palette_image_composited_through_its_palette_equals_the_rgba_path(transparency):
    rng = np.random.default_rng(3)
    im = Image.frombytes("P", (50, 40), rng.integers(0, 200, 2000, dtype=np.uint8).tobytes())
    im.putpalette(rng.integers(0, 256, 600, dtype=np.uint8).tobytes())  # 200 entries: the rest unset
    im.info["transparency"] = 7 if transparency == "one index" else rng.integers(0, 256, 180, dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    decoded = Image.open(io.BytesIO(buf.getvalue()))
    assert decoded.mode == "P" and "transparency" in decoded.info
    out = decode_image(buf.getvalue())
    assert np.array_equal(np.asarray(out), np.asarray(reference_on_white(decoded)))
    assert np.array_equal(np.asarray(out.info[ALPHA_INFO]), np.asarray(decoded.convert("RGBA").getchannel("A")))


def test_grey_with_alpha_equals_the_rgba_path():
    rng = np.random.default_rng(4)
    im = Image.fromarray(rng.integers(0, 256, (30, 20, 2), dtype=np.uint8), "LA")
    assert np.array_equal(np.asarray(to_rgb(im)), np.asarray(reference_on_white(im)))


def test_the_median_of_the_outer_lines_is_numpys():
    rng = np.random.default_rng(5)
    for n in (3, 4, 17, 64):
        a = rng.integers(0, 256, (2, 3, n), dtype=np.uint8)
        assert np.array_equal(content._median(a), np.median(a, axis=-1))
        b = rng.integers(-300, 300, n).astype(np.int16)
        assert content._median(b) == np.median(b)


def _on_canvas(picture: Image.Image, size, at, colour) -> Image.Image:
    canvas = Image.new("RGBA" if len(colour) == 4 else "RGB", size, colour)
    canvas.paste(picture, at, picture if picture.mode == "RGBA" else None)
    return canvas


def _jpeg(im: Image.Image, quality: int = 85) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return decode_image(buf.getvalue())


def _png(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return decode_image(buf.getvalue())


def _drawing(size) -> Image.Image:
    w, h = size
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((0, 0, w - 1, h - 1), fill=(230, 60, 40, 255), outline=(20, 20, 120, 255), width=3)
    d.rectangle((w // 4, h // 3, 3 * w // 4, 2 * h // 3), fill=(40, 90, 210, 255))
    return im


def _fixtures(photos) -> list[tuple[str, Image.Image]]:
    """Real photographs whole, padded (white, black, transparent), letterboxed, as PNG and as JPEG; drawings
    on canvases, small (one array) and large (crops of the outer lines)."""
    out = []
    for name, photo in sorted(photos.items())[:4]:
        photo = photo.convert("RGB")
        w, h = photo.size
        out.append((f"{name} whole", _png(photo)))
        out.append((f"{name} on white", _png(_on_canvas(photo, (w + 90, h + 40), (30, 25), (255, 255, 255)))))
        out.append((f"{name} on transparent", _png(_on_canvas(photo.convert("RGBA"), (w + 60, h + 60), (20, 35),
                                                               (0, 0, 0, 0)))))
        out.append((f"{name} letterboxed jpeg", _jpeg(_on_canvas(photo, (w, h + 80), (0, 40), (0, 0, 0)))))
    for size, canvas in (((60, 40), (90, 70)), ((400, 300), (700, 520))):
        drawing = _drawing(size)
        out.append((f"drawing {size} transparent", _png(_on_canvas(drawing, canvas, (13, 9), (0, 0, 0, 0)))))
        out.append((f"drawing {size} white jpeg", _jpeg(_on_canvas(drawing, canvas, (13, 9), (255, 255, 255)))))
        # a picture with its own flat frame inside the canvas: the second pass trims again
        framed = _on_canvas(drawing, (size[0] + 40, size[1] + 40), (20, 20), (200, 200, 200))
        out.append((f"drawing {size} framed", _png(_on_canvas(framed, (canvas[0] + 60, canvas[1] + 60), (30, 30),
                                                              (255, 255, 255)))))
    return out


def _plain_box(image: Image.Image) -> content.ContentBox:
    """The rule's passes with nothing carried from one pass to the next: each pass maps its own view, and
    its alpha band is the image's cropped to the pass's view; then step 5 (``_without_faint``)."""
    width, height = image.size
    view = content._analysis_view(image)
    box = content._one_pass(content._pixels(view), lambda: view, lambda: content._alpha(image))
    for _ in range(content.MAX_PASSES - 1):
        if not box.trimmed:
            break
        crop = image.crop(box.box)
        crop_view = content._analysis_view(crop)
        alpha = content._alpha(image)
        crop_alpha = None if alpha is None else alpha.crop(box.box)
        inner = content._one_pass(content._pixels(crop_view), lambda: crop_view, lambda: crop_alpha)
        if not inner.trimmed:
            break
        box = content.ContentBox(box.left + inner.left, box.top + inner.top, box.left + inner.right,
                                 box.top + inner.bottom, width, height, True)
    return content._without_faint(image, box)


def test_content_boxes_equal_the_plain_passes_on_real_images(photos, monkeypatch):
    fixtures = _fixtures(photos)
    boxes = {name: content_box(im) for name, im in fixtures}
    assert sum(b.trimmed for b in boxes.values()) >= len(fixtures) // 2  # the fixtures exercise trimming
    assert any(boxes[n].trimmed and "framed" in n for n in boxes)
    for name, im in fixtures:
        assert boxes[name] == _plain_box(im), name
    # read from the sides inwards (large images) as on the whole map at once (small ones)
    monkeypatch.setattr(content, "WHOLE_MAP_PIXELS", 0)
    for name, im in fixtures:
        assert content_box(im) == boxes[name], name
