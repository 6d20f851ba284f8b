"""Content boxes on generated images: margins of every kind are trimmed, content and photographs are not."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from overlap_audit.content import MIN_SIDE, ContentBox, content_box, trim
from overlap_audit.imaging import to_rgb

# where drawing() puts its content inside a 120 x 90 drawing
DRAWING_SIZE = (120, 90)


def drawing(size=DRAWING_SIZE) -> Image.Image:
    """A small clip-art drawing that fills its own box edge to edge (an outlined ellipse, a bar, a stroke)."""
    w, h = size
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((0, 0, w - 1, h - 1), fill=(230, 60, 40, 255), outline=(20, 20, 120, 255), width=3)
    d.rectangle((w // 4, h // 3, 3 * w // 4, 2 * h // 3), fill=(40, 90, 210, 255))
    d.line((w // 2, 0, w // 2, h - 1), fill=(90, 40, 140, 255), width=2)
    return im


def on_canvas(content: Image.Image, canvas_size, at, colour) -> Image.Image:
    mode = "RGBA" if len(colour) == 4 else "RGB"
    canvas = Image.new(mode, canvas_size, colour)
    canvas.paste(content, at, content if content.mode == "RGBA" else None)
    return canvas


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def expected(at, size=DRAWING_SIZE) -> tuple[int, int, int, int]:
    return at[0], at[1], at[0] + size[0], at[1] + size[1]


def assert_box_near(box: ContentBox, want, tol: int) -> None:
    assert box.trimmed, box
    assert np.abs(np.array(box.box) - np.array(want)).max() <= tol, (box.box, want)


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (128, 128, 128), (40, 160, 90)],
                         ids=["white", "black", "grey", "green"])
def test_uniform_margins_of_any_colour_are_trimmed_exactly(colour):
    at = (37, 51)
    im = on_canvas(drawing(), (300, 200), at, colour)
    box = content_box(im)
    assert box == ContentBox(*expected(at), 300, 200, True)
    assert box.area_fraction == pytest.approx(120 * 90 / (300 * 200))
    view, same = trim(im)
    assert same == box and view.size == DRAWING_SIZE and view.mode == "RGB"


def test_transparent_margins_are_trimmed_and_the_view_is_composited_on_white():
    at = (20, 64)
    im = on_canvas(drawing(), (256, 256), at, (0, 0, 0, 0))
    # transparent pixels whose hidden colour is not white must not matter
    arr = np.asarray(im).copy()
    arr[arr[:, :, 3] == 0, :3] = (0, 255, 0)
    im = Image.fromarray(arr, "RGBA")
    view, box = trim(im)
    assert box.box == expected(at) and box.trimmed
    assert view.mode == "RGB" and view.size == DRAWING_SIZE
    # the drawing's own transparent corners (outside its ellipse) come out white
    assert np.asarray(view)[0, 0].tolist() == [255, 255, 255]


def test_black_letterbox_and_pillarbox_bars_are_trimmed_on_their_sides_only():
    photo = Image.fromarray(np.asarray(_astronaut().resize((200, 120))))
    letterbox = on_canvas(photo, (200, 180), (0, 30), (0, 0, 0))
    assert content_box(letterbox).box == (0, 30, 200, 150)
    pillarbox = on_canvas(photo, (260, 120), (30, 0), (0, 0, 0))
    assert content_box(pillarbox).box == (30, 0, 230, 120)


def test_noisy_jpeg_margins_are_trimmed_close_to_the_drawing():
    rng = np.random.default_rng(0)
    at = (60, 45)
    clean = np.asarray(on_canvas(drawing(), (320, 240), at, (250, 250, 250)).convert("RGB")).astype(np.float64)
    noisy = Image.fromarray(np.clip(clean + rng.normal(0, 3, clean.shape), 0, 255).astype(np.uint8))
    box = content_box(jpeg(noisy, 50))
    # JPEG ringing next to the drawing may widen the box by up to a JPEG block; it never cuts into it
    assert_box_near(box, expected(at), 8)
    assert box.left <= at[0] and box.top <= at[1]
    assert box.right >= at[0] + DRAWING_SIZE[0] and box.bottom >= at[1] + DRAWING_SIZE[1]


def test_a_soft_drop_shadow_keeps_the_box_close_to_the_object():
    at, size = (80, 60), (100, 80)
    canvas = Image.new("RGB", (300, 240), "white")
    shadow = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(shadow).rectangle((at[0] + 6, at[1] + 6, at[0] + size[0] + 5, at[1] + size[1] + 5), fill=70)
    shadow = shadow.filter(ImageFilter.GaussianBlur(4))
    canvas = Image.composite(Image.new("RGB", canvas.size, (0, 0, 0)), canvas, shadow)
    ImageDraw.Draw(canvas).rectangle((at[0], at[1], at[0] + size[0] - 1, at[1] + size[1] - 1),
                                     fill=(200, 120, 30), outline="black")
    box = content_box(canvas)
    want = expected(at, size)
    # the object is inside; the darker part of the shadow may be, its faint tail is not
    assert box.left <= want[0] and box.top <= want[1] and box.right >= want[2] and box.bottom >= want[3]
    assert_box_near(box, want, 12)
    assert box.left == want[0] and box.top == want[1]  # the shadow falls to the bottom right only


def test_a_gradient_backdrop_is_not_a_canvas_but_the_same_drawing_on_a_flat_one_is():
    """A backdrop 20 grey levels from top to bottom is within the margin tolerance, but it is not flat: it is
    a sky's kind of background, not a canvas, so the image stays whole; on a flat canvas of its top colour,
    JPEG-compressed, the drawing is trimmed."""
    at = (70, 50)
    ramp = np.linspace(255, 235, 260)[:, None, None]  # top to bottom
    canvas = Image.fromarray(np.broadcast_to(ramp, (260, 300, 3)).astype(np.uint8))
    canvas.paste(drawing(), at, drawing())
    assert content_box(canvas) == ContentBox.whole(300, 260)
    flat = on_canvas(drawing(), (300, 260), at, (255, 255, 255))
    assert_box_near(content_box(jpeg(flat, 40)), expected(at), 8)


def test_an_image_without_margin_stays_whole():
    im = drawing().convert("RGB")
    im = Image.fromarray(np.asarray(im)[5:-5, 5:-5].copy())  # the ellipse touches every side
    box = content_box(im)
    assert box == ContentBox.whole(*im.size) and not box.trimmed and box.area_fraction == 1.0
    view, _ = trim(im)
    assert view.size == im.size


@pytest.mark.parametrize("colour", ["white", "black", (0, 0, 0, 0)], ids=["white", "black", "transparent"])
def test_a_blank_image_is_not_trimmed_to_nothing(colour):
    mode = "RGBA" if isinstance(colour, tuple) else "RGB"
    im = Image.new(mode, (128, 96), colour)
    assert content_box(im) == ContentBox.whole(128, 96)
    rng = np.random.default_rng(1)
    faint = Image.fromarray((200 + rng.normal(0, 1.5, (96, 128, 3))).clip(0, 255).astype(np.uint8))
    assert not content_box(faint).trimmed


def test_a_speck_on_a_blank_page_is_too_small_to_trim_to():
    im = Image.new("RGB", (400, 400), "white")
    ImageDraw.Draw(im).rectangle((200, 200, 200 + MIN_SIDE - 2, 220), fill="black")
    assert not content_box(im).trimmed
    im = Image.new("RGB", (400, 400), "white")
    ImageDraw.Draw(im).rectangle((200, 200, 220, 220), fill="black")  # 21 px: 0.28% of the area
    assert not content_box(im).trimmed


def test_a_one_sided_or_adjacent_margin_is_not_trimmed():
    # a plain band on one side only (the sky of a photograph) is not a canvas
    photo = _astronaut().resize((200, 150))
    assert not content_box(on_canvas(photo, (200, 200), (0, 50), (120, 170, 230))).trimmed
    # content in a corner of its canvas: margins on two adjacent sides only
    assert not content_box(on_canvas(drawing(), (200, 150), (80, 60), (255, 255, 255))).trimmed


def _astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera", "brick"])
def test_photographs_stay_whole(name):
    from skimage import data

    im = Image.fromarray(getattr(data, name)())
    assert not content_box(im).trimmed, name
    crop = im.crop((40, 30, im.width - 60, im.height - 20))
    assert not content_box(crop).trimmed, name
    assert not content_box(jpeg(crop.convert("RGB"), 60)).trimmed, name


def test_the_same_drawing_on_different_canvases_trims_to_the_same_view():
    """Round trip: the drawing at 30%, 60% and 100% of its size, on padded canvases of other colours and
    shapes, and tightly cropped: every trimmed view, resized to 64 px, matches the drawing's own."""
    base = drawing((400, 300))
    views = []
    for scale, canvas_size, at, colour in ((0.3, (500, 400), (210, 40), (255, 255, 255)),
                                           (0.6, (260, 400), (10, 100), (255, 255, 255, 0)),
                                           (1.0, (700, 330), (150, 15), (0, 0, 0)),
                                           (1.0, (400, 300), (0, 0), (255, 255, 255))):
        content = base.resize((round(400 * scale), round(300 * scale)), Image.Resampling.LANCZOS)
        im = on_canvas(content, canvas_size, at, colour)
        view, box = trim(im)
        # the drawing's transparent corners take the canvas colour, so compare against a view on the same
        # colour; the tight crop (last) has no margin and keeps its white corners
        flat = Image.new("RGB", content.size, colour[:3])
        flat.paste(content, (0, 0), content)
        reference = np.asarray(flat.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float64)
        small = np.asarray(view.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float64)
        assert box.area_fraction == pytest.approx(content.width * content.height / (canvas_size[0] * canvas_size[1]),
                                                  rel=0.05)
        assert np.abs(small - reference).mean() < 2.0, (scale, colour)
        views.append(small)
    on_white = [views[0], views[1], views[3]]  # white or transparent canvases: the same picture
    for v in on_white[1:]:
        assert np.abs(v - on_white[0]).mean() < 3.0


def test_large_images_are_analysed_reduced_and_never_cut_into():
    at = (1003, 517)
    content = drawing((1200, 900))
    im = on_canvas(content, (3000, 2000), at, (255, 255, 255))
    box = content_box(im)
    want = expected(at, content.size)
    assert box.left <= want[0] and box.top <= want[1] and box.right >= want[2] and box.bottom >= want[3]
    assert_box_near(box, want, 3)


def test_content_that_differs_only_faintly_from_the_margin_is_not_trimmed():
    """A band of texture 25 grey levels off a noisy grey backdrop (a low-contrast micrograph) has no canvas:
    its box would move with the noise, so it stays whole; the same band drawn dark is trimmed."""
    rng = np.random.default_rng(3)
    backdrop = 104 + rng.normal(0, 2.0, (128, 128))
    faint = backdrop.copy()
    faint[60:84, :] -= 25 + rng.normal(0, 2.0, (24, 128))  # within 3x the tolerance of the backdrop
    im = Image.fromarray(np.repeat(faint[..., None], 3, axis=2).clip(0, 255).astype(np.uint8))
    assert content_box(im) == ContentBox.whole(128, 128)
    # clearly content, on a flat backdrop (a noisy one is not a canvas: see the photographs below)
    strong = np.full((128, 128), 104.0)
    strong[60:84, :] -= 80
    box = content_box(Image.fromarray(np.repeat(strong[..., None], 3, axis=2).clip(0, 255).astype(np.uint8)))
    assert box.trimmed and (box.top, box.bottom) == (60, 84)
    assert not content_box(Image.fromarray(np.repeat(np.where(strong < 50, strong, backdrop)[..., None], 3,
                                                     axis=2).clip(0, 255).astype(np.uint8))).trimmed


# Crops of bundled photographs that are mostly sky, with a little of the picture at the bottom: the sky's
# colour is uniform within the margin tolerance along three sides, and rule 2 of the content box cut each to
# the strip of picture at its bottom (26% and 19% of the crop).
SKY_CROPS = {"rocket": (192, 42, 384, 170), "camera": (307, 0, 460, 153)}


@pytest.mark.parametrize("name", list(SKY_CROPS))
def test_a_photograph_with_a_flat_sky_stays_whole(name):
    from skimage import data

    photo = Image.fromarray(getattr(data, name)()).crop(SKY_CROPS[name])
    for im in (photo, photo.resize((photo.width * 2, photo.height * 2), Image.Resampling.BICUBIC),
               jpeg(photo.convert("RGB"), 70)):
        assert content_box(im) == ContentBox.whole(*im.size), name
        view, _ = trim(im)
        assert view.size == im.size


def test_a_photograph_under_a_smooth_gradient_sky_stays_whole_and_the_same_on_a_canvas_is_trimmed():
    """A real photograph (the bottom of skimage's astronaut) under a sky that darkens by 24 grey levels
    towards the top, with a sensor's noise: three sides are sky of one colour within the tolerance. The same
    photograph pasted on a flat canvas of the sky's colour at the top is trimmed to it, also JPEG-compressed."""
    rng = np.random.default_rng(5)
    photo = _astronaut().resize((160, 100))
    top, horizon = np.array([96.0, 142, 204]), np.array([120.0, 166, 222])
    t = np.linspace(0, 1, 300)[:, None, None]
    sky = top + (horizon - top) * t + rng.normal(0, 1.2, (300, 400, 3))
    sky = Image.fromarray(sky.clip(0, 255).astype(np.uint8))
    sky.paste(photo, (120, 200))  # the photograph stands on the bottom edge
    for im in (sky, jpeg(sky, 75)):
        assert content_box(im) == ContentBox.whole(400, 300)
    canvas = on_canvas(photo, (400, 300), (120, 200), (96, 142, 204))
    assert content_box(canvas).box == (120, 200, 280, 300)
    assert_box_near(content_box(jpeg(canvas, 75)), (120, 200, 280, 300), 8)


@pytest.mark.parametrize("seed", range(4))
def test_padded_and_letterboxed_jpeg_copies_are_trimmed_to_the_pasted_picture(seed):
    """augment's "pad" (a canvas of any colour) and "letterbox" (black bars) copies of a photograph, JPEG-
    compressed: the box is the pasted rectangle, found by running the same draws on black and white."""
    from overlap_audit.augment import augment_family

    photo = Image.fromarray(np.asarray(_astronaut().resize((256, 192))))
    for family in ("pad", "letterbox"):
        copy = jpeg(augment_family(photo, family, "strong", np.random.default_rng(seed)), 60)
        probes = [np.asarray(augment_family(Image.new("RGB", photo.size, c), family, "strong",
                                            np.random.default_rng(seed)), np.int16) for c in ("black", "white")]
        ys, xs = np.nonzero(np.abs(probes[1] - probes[0]).max(axis=2) > 128)
        assert_box_near(content_box(copy), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), 8)


def test_a_drawing_on_a_transparent_canvas_is_trimmed_despite_a_faint_reflection_beneath_it():
    """A semi-transparent grey reflection under the drawing composites to a faint gradient on white, which an
    opaque image would not be trimmed for; transparency says the band is canvas."""
    at = (60, 40)
    im = on_canvas(drawing(), (240, 260), at, (0, 0, 0, 0))
    arr = np.asarray(im).copy()
    fade = np.linspace(25, 0, 120).astype(np.uint8)  # alpha fading out downwards from under the drawing
    arr[at[1] + 90:at[1] + 210, at[0]:at[0] + 120] = np.concatenate(
        [np.full((120, 120, 3), 128, np.uint8), np.broadcast_to(fade[:, None, None], (120, 120, 1))], axis=2)
    reflected = Image.fromarray(arr, "RGBA")
    assert content_box(reflected).box == expected(at)
    # the same pixels made opaque: a faint gradient below the drawing, not a flat canvas
    assert not content_box(Image.fromarray(np.asarray(to_rgb(reflected)))).trimmed  # pixels only, no alpha kept
    assert content_box(to_rgb(reflected)).box == expected(at)  # decoded (composited), it keeps its alpha


@pytest.mark.parametrize("peak", [32, 44])
def test_a_soft_drop_shadow_on_a_transparent_canvas_is_not_content(peak):
    """The same drawing on a transparent canvas with and without a soft drop shadow (black, at most ``peak``
    of 255 opaque, wider than the drawing and falling below it) trims to the same box: the drawing's. The
    shadow composites on white to faint grey filling more than 2% of its rows, which step 3 counts as content."""
    at = (70, 50)
    bare = on_canvas(drawing(), (300, 260), at, (0, 0, 0, 0))
    shadow = Image.new("L", bare.size, 0)
    ImageDraw.Draw(shadow).ellipse((at[0] - 25, at[1] + 70, at[0] + 150, at[1] + 115), fill=peak)
    shadow = shadow.filter(ImageFilter.GaussianBlur(5))
    shadowed = Image.new("RGBA", bare.size, (0, 0, 0, 0))
    shadowed.putalpha(shadow)
    shadowed.alpha_composite(bare)
    grey = np.asarray(to_rgb(shadowed).convert("L")).astype(int)
    below = grey[at[1] + DRAWING_SIZE[1]:at[1] + DRAWING_SIZE[1] + 10]  # rows under the drawing
    assert ((255 - below) > 16).mean(axis=1).min() > 0.02  # faint pixels in more than 2% of each row
    assert content_box(bare).box == expected(at)
    assert content_box(shadowed).box == expected(at)
    assert content_box(to_rgb(shadowed)).box == expected(at)  # decoded (composited), it keeps its alpha
    # an opaque part of the drawing is never cut, however thin: a stroke reaching below the drawing
    ImageDraw.Draw(shadowed).line((at[0] + 60, at[1] + 90, at[0] + 60, at[1] + 120), fill=(0, 0, 0, 255), width=2)
    assert content_box(shadowed).box == (at[0], at[1], at[0] + DRAWING_SIZE[0], at[1] + 121)


@pytest.mark.parametrize("alpha", [50, 60])
def test_translucent_content_on_a_transparent_canvas_stays_in_the_box(alpha):
    """A translucent fill and a thin stroke at least ``SHADOW_ALPHA`` opaque are content (they composite on
    white beyond a clean margin's strong tolerance), not shadow."""
    im = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rectangle((40, 40, 159, 159), fill=(30, 60, 200, alpha))  # a translucent panel
    d.rectangle((40, 40, 79, 79), fill=(200, 40, 40, 255))  # an opaque corner on it
    assert content_box(im).box == (40, 40, 160, 160)
    stroke = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    d = ImageDraw.Draw(stroke)
    d.rectangle((50, 50, 149, 149), fill=(20, 120, 40, 255))
    d.line((100, 150, 100, 179), fill=(0, 0, 0, alpha), width=1)  # a 1-px translucent stroke below it
    assert content_box(stroke).box == (50, 50, 150, 180)


def test_trimming_a_trimmed_view_cuts_nothing():
    """``trim``'s view carries its own (cropped) alpha band, so trimming it again finds nothing to cut, even
    where the view has the canvas's shape (a square drawing on a square transparent canvas)."""
    from overlap_audit.imaging import decode_image

    im = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse((90, 90, 209, 209), fill=(40, 90, 210, 255), outline=(0, 0, 0, 255), width=3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    view, box = trim(decode_image(buf.getvalue()))
    assert box.box == (90, 90, 210, 210)
    again = content_box(view)
    assert not again.trimmed and again.box == (0, 0, *view.size)
    assert content_box(view) == content_box(Image.fromarray(np.asarray(view)))


def test_a_later_pass_reads_the_alpha_of_its_own_crop():
    """A drawing on a noisy grey backdrop (a photograph's kind of border: uniform within the tolerance, not
    flat) pasted on a transparent canvas: the first pass cuts the transparent canvas; the second finds the
    backdrop's border but must keep it, since the backdrop is opaque and not flat. It reads the alpha band
    cropped to the first box; a band resized to the crop would put transparency into the backdrop's outer part
    and cut it. Decoded (composited on white, its alpha kept) or not, the box is the backdrop's."""
    at = (40, 30)
    rng = np.random.default_rng(0)
    noise = np.clip(128 + rng.normal(0, 3, (150, 200, 3)), 0, 255).astype(np.uint8)
    backdrop = Image.fromarray(np.concatenate([noise, np.full((150, 200, 1), 255, np.uint8)], axis=2), "RGBA")
    backdrop.alpha_composite(drawing(), at)
    im = Image.new("RGBA", (400, 300), (0, 0, 0, 0))
    im.paste(backdrop, (120, 90))
    assert content_box(im).box == (120, 90, 320, 240)
    assert content_box(to_rgb(im)).box == (120, 90, 320, 240)


def test_a_crop_of_a_composited_drawing_does_not_take_its_transparency():
    """PIL copies an image's info into a crop, the kept alpha band of a composited drawing included; a crop of
    another shape is judged by its pixels alone, like the same pixels in a fresh image."""
    im = on_canvas(drawing(), (300, 220), (70, 50), (0, 0, 0, 0))
    shadow = Image.new("L", im.size, 0)
    ImageDraw.Draw(shadow).ellipse((40, 120, 240, 170), fill=60)
    shadowed = Image.new("RGBA", im.size, (0, 0, 0, 0))
    shadowed.putalpha(shadow.filter(ImageFilter.GaussianBlur(4)))
    shadowed.alpha_composite(im)
    crop = to_rgb(shadowed).crop((30, 0, 300, 220))
    fresh = Image.fromarray(np.asarray(crop))
    assert content_box(crop) == content_box(fresh)
