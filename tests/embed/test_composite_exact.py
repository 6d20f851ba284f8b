"""The cheaper compositing and margin paths give the plain paths' pixels and margins, on real photographs given
transparency (on transparent canvases, with soft alpha, as palette images) and on one-colour canvases."""

import io

import numpy as np
import pytest
from PIL import Image

from overlap_audit import content, imaging
from overlap_audit.imaging import ALPHA_INFO, decode_image, to_rgb
from tests.embed.test_trim_exact import plain_find_box, plain_margin


def whole_paste(im: Image.Image) -> Image.Image:
    """The plain path: the whole image converted to RGBA and pasted on white through its alpha band."""
    rgba = im.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, (0, 0), rgba)
    return out


def some(photos) -> list[tuple[str, Image.Image]]:
    """Every third bundled photograph, its long side at most 320 px (still above the whole-map size)."""
    out = []
    for name, photo in sorted(photos.items())[::3]:
        photo = photo.convert("RGB")
        photo.thumbnail((320, 320))
        out.append((name, photo))
    return out


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def with_alpha(photo: Image.Image, rng) -> list[tuple[str, Image.Image]]:
    """A photograph given transparency the ways drawings have it."""
    photo = photo.convert("RGB")
    w, h = photo.size
    grey = photo.convert("L")
    soft = photo.copy()
    soft.putalpha(grey)  # alpha from the picture itself: every value, zeros where it is black
    canvas = Image.new("RGBA", (w + 37, h + 21), (0, 0, 0, 0))
    canvas.paste(soft, (30, 4))  # a transparent canvas around it, uneven margins
    halo = Image.new("RGBA", (w + 20, h + 20), (255, 0, 0, 0))  # invisible colour under alpha 0
    halo.paste(photo.convert("RGBA"), (10, 10))
    corner = Image.new("RGBA", (w + 9, h + 9), (0, 0, 0, 0))
    corner.paste(soft, (9, 0))  # touches the top and right sides only
    cleared = soft.copy()
    cleared.putalpha(Image.new("L", (w, h), 0))
    opaque = photo.convert("RGBA")
    speck = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    speck.putpixel((int(rng.integers(w)), int(rng.integers(h))), (12, 200, 40, 77))
    out = [("soft", soft), ("transparent canvas", canvas), ("halo", halo), ("corner", corner),
           ("fully transparent", cleared), ("opaque", opaque), ("one speck", speck)]
    out += [(f"{name} grey", im.convert("LA")) for name, im in out[:4]]
    return out


def test_the_entries_on_white_equal_the_paste_for_every_colour_and_alpha():
    value, alpha = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([value, 255 - value, (value * 7) % 256, alpha], axis=-1).astype(np.uint8).reshape(-1, 4)
    pasted = whole_paste(Image.fromarray(rgba.reshape(256, 256, 4), "RGBA"))
    assert np.array_equal(imaging._on_white(rgba), np.asarray(pasted).reshape(-1, 3))


def test_compositing_within_the_alpha_box_equals_the_whole_paste(photos):
    rng = np.random.default_rng(21)
    for name, photo in some(photos):
        for kind, im in with_alpha(photo, rng):
            out = to_rgb(im)
            assert out.tobytes() == whole_paste(im).tobytes(), (name, kind)
            assert out.info[ALPHA_INFO].tobytes() == im.getchannel("A").tobytes(), (name, kind)
            # and through the decoder, from a PNG file
            decoded = decode_image(_png(im))
            assert decoded.tobytes() == out.tobytes(), (name, kind)


@pytest.mark.parametrize("transparency", ["one index", "alpha per entry"])
def test_a_palette_photograph_through_its_palette_equals_the_rgba_path(photos, transparency):
    rng = np.random.default_rng(22)
    for name, photo in some(photos):
        im = photo.convert("RGB").quantize(int(rng.integers(2, 257)))
        colours = len(im.getpalette()) // 3
        if transparency == "one index":
            im.info["transparency"] = int(rng.integers(colours))
        else:
            im.info["transparency"] = rng.integers(0, 256, int(rng.integers(1, colours + 1)), dtype=np.uint8).tobytes()
        data = _png(im)
        source = Image.open(io.BytesIO(data))
        source.load()
        assert source.mode == "P" and "transparency" in source.info, name
        out = decode_image(data)
        assert out.tobytes() == whole_paste(source).tobytes(), name
        assert out.info[ALPHA_INFO].tobytes() == source.convert("RGBA").getchannel("A").tobytes(), name


def one_colour_canvases(photos) -> list[tuple[str, Image.Image]]:
    rng = np.random.default_rng(23)
    out = []
    for name, photo in some(photos):
        w, h = photo.size
        for colour in ((255, 255, 255), (0, 0, 0), (128, 128, 128), tuple(int(c) for c in rng.integers(0, 256, 3))):
            canvas = Image.new("RGB", (w + int(rng.integers(2, 90)), h + int(rng.integers(2, 90))), colour)
            canvas.paste(photo, (int(rng.integers(1, canvas.width - w)), int(rng.integers(1, canvas.height - h))))
            out.append((f"{name} on {colour}", canvas))
            out.append((f"{name} on {colour} grey", canvas.convert("L")))
        small = photo.resize((48, 40))
        page = Image.new("RGB", (60, 60), (255, 255, 255))
        page.paste(small, (6, 9))
        out.append((f"{name} small", page))
        out.append((f"{name} on transparency", to_rgb(with_alpha(photo, rng)[1][1])))
    return out


def test_a_one_colour_border_gives_the_plain_rules_margin_and_box(photos):
    for name, view in one_colour_canvases(photos):
        pixels = content._pixels(view)
        margin = content._margin(pixels)
        assert margin is not None and margin.sides == frozenset(range(4)), name
        assert margin == plain_margin(view), name
        found = content._find_box(pixels)
        expected = plain_find_box(view)
        assert (found is None) == (expected is None), name
        if found is not None:
            assert found[0] == tuple(int(v) for v in expected[0]) and found[1] == expected[1], name


def transparent_canvases(photos) -> list[tuple[str, Image.Image]]:
    """Photographs and drawn shapes on transparent canvases, large and small, as RGBA and grey with alpha."""
    rng = np.random.default_rng(24)
    out = []
    for name, photo in some(photos):
        for kind, im in with_alpha(photo, rng):
            out.append((f"{name} {kind}", im))
        small = photo.resize((40, 30))
        canvas = Image.new("RGBA", (60, 50), (0, 0, 0, 0))
        canvas.paste(small, (int(rng.integers(1, 20)), int(rng.integers(1, 20))))
        out.append((f"{name} small on transparency", canvas))
        faint = Image.new("RGBA", photo.size, (0, 0, 0, 0))
        faint.paste(Image.new("RGBA", (photo.width // 2, 3), (250, 250, 250, 255)), (photo.width // 4, 9))
        faint.paste(photo.resize((photo.width // 3, photo.height // 3)), (5, photo.height // 2))
        out.append((f"{name} a faint line above", faint))  # a faint band the box must not stop at
    return out


def as_palette(canvases: list[tuple[str, Image.Image]]) -> list[tuple[str, Image.Image]]:
    """The RGBA canvases as palette images with an alpha per entry (PNG's tRNS), as drawings are often saved."""
    out = []
    for name, im in canvases:
        if im.mode == "RGBA":
            palette = im.quantize(64, method=Image.Quantize.FASTOCTREE)
            out.append((f"{name} palette", Image.open(io.BytesIO(_png(palette)))))  # read back: P with tRNS
    return out


def test_a_box_read_inside_the_white_outside_equals_the_whole_read_and_the_plain_rule(photos):
    used = 0
    canvases = transparent_canvases(photos)
    for name, im in canvases + as_palette(canvases):
        view = to_rgb(im)
        window = content._white_outside(view)
        used += window is not None
        whole = view.copy()  # a copy keeps the pixels and info, not the box outside which it is white
        assert imaging.white_outside(whole) is None
        assert content.content_box(view) == content.content_box(whole), name
        if window is not None:  # the margin and the transparent border taken without reading them: as read
            assert content._margin(content._pixels(whole)) == content._WHITE_MARGIN, name
            assert content._transparent_border(view.info[ALPHA_INFO]), name
        found, expected = content._find_box(content._pixels(view), None, window), plain_find_box(view)
        assert (found is None) == (expected is None), name
        if found is not None:
            assert found[0] == tuple(int(v) for v in expected[0]), name
        # and through the decoder, from a PNG file, as the index reads it
        assert content.content_box(decode_image(_png(im))) == content.content_box(whole), name
    assert used >= 20  # most of these are read inside their window, palette images too


def test_only_the_composite_itself_claims_a_white_outside(photos):
    name, photo = some(photos)[0]
    canvas = Image.new("RGBA", (photo.width + 40, photo.height + 40), (0, 0, 0, 0))
    canvas.paste(photo.convert("RGBA"), (20, 20))
    view = to_rgb(canvas)
    assert imaging.white_outside(view) == (20, 20, 20 + photo.width, 20 + photo.height)
    turned = view.rotate(90)  # same size, same info, other pixels
    for derived in (turned, view.crop((0, 0, *view.size)), view.copy(), view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)):
        assert imaging.white_outside(derived) is None
    assert imaging.white_outside(to_rgb(photo.convert("RGB"))) is None
