import numpy as np
import pytest

from PIL import Image

from overlap_audit.augment import (EDIT_FAMILIES, FAMILIES, MARGIN_FAMILIES, STRENGTHS, augment_all, augment_family,
                                   augment_training)


@pytest.mark.parametrize("family", FAMILIES + MARGIN_FAMILIES)
@pytest.mark.parametrize("strength", list(STRENGTHS))
def test_each_family_is_deterministic_under_a_seed(photos, family, strength):
    im = photos["coffee"].resize((96, 64))
    a = augment_family(im, family, strength, np.random.default_rng(7))
    b = augment_family(im, family, strength, np.random.default_rng(7))
    assert a.mode == "RGB" and a.tobytes() == b.tobytes() and a.size == b.size
    c = augment_family(im, family, strength, np.random.default_rng(8))
    if family != "aspect" or strength != "mild":
        assert c.tobytes() != a.tobytes() or c.size != a.size  # the seed matters


def test_pipeline_is_deterministic_and_stronger_changes_more(photos):
    im = photos["astronaut"].resize((128, 128))
    a = augment_all(im, "medium", np.random.default_rng(1))
    assert a.tobytes() == augment_all(im, "medium", np.random.default_rng(1)).tobytes()

    def change(strength):
        diffs = []
        for s in range(12):
            out = augment_all(im, strength, np.random.default_rng(s)).resize((64, 64))
            diffs.append(np.abs(np.asarray(out, float) - np.asarray(im.resize((64, 64)), float)).mean())
        return np.mean(diffs)

    assert change("mild") < change("medium") < change("strong")
    with pytest.raises(ValueError):
        augment_all(im, "extreme")


@pytest.mark.parametrize("strength", list(STRENGTHS))
def test_margin_families_put_the_whole_image_on_a_canvas_that_trimming_undoes(photos, strength):
    """pad and letterbox keep the whole picture (scaled) inside a uniform canvas of the same size; the
    content box finds it again, within a pixel or two of where it was pasted."""
    from overlap_audit.content import content_box

    im = photos["astronaut"].resize((160, 120))
    lowest = {"pad": STRENGTHS[strength]["pad"], "letterbox": 1 - 2 * STRENGTHS[strength]["bars"]}
    for family in MARGIN_FAMILIES:
        for seed in range(6):
            out = augment_family(im, family, strength, np.random.default_rng(seed))
            assert out.size == im.size
            box = content_box(out)
            w, h = box.right - box.left, box.bottom - box.top
            if box.trimmed:
                assert min(w / im.width, h / im.height) >= lowest[family] - 0.03, (family, seed, box)
                inner = np.asarray(out.crop(box.box).resize((32, 24)), float)
                assert np.abs(inner - np.asarray(im.resize((32, 24)), float)).mean() < 12, (family, seed)
            else:  # nothing to trim: the canvas was all but covered (scale close to 1)
                assert np.abs(np.asarray(out, float) - np.asarray(im, float)).mean() < 40
    with pytest.raises(ValueError, match="pad"):
        augment_family(im, "nope", strength)


def _drawing(size=(120, 96)):
    """Clip art: a saturated disc with a dark outline and a gradient-filled box on a white canvas."""
    from PIL import ImageDraw

    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    d.ellipse((14, 12, 70, 68), fill=(220, 40, 30), outline=(10, 10, 10), width=3)
    for x in range(66, 104):
        d.line((x, 40, x, 84), fill=(30, 60 + 4 * (x - 66), 200))
    d.rectangle((66, 40, 104, 84), outline=(10, 10, 10), width=2)
    return im


@pytest.mark.parametrize("family", EDIT_FAMILIES)
@pytest.mark.parametrize("strength", list(STRENGTHS))
def test_edit_families_are_deterministic_keep_the_size_and_change_pixels(family, strength):
    im = _drawing()
    a = augment_family(im, family, strength, np.random.default_rng(3))
    b = augment_family(im, family, strength, np.random.default_rng(3))
    assert a.mode == "RGB" and a.size == im.size and a.tobytes() == b.tobytes()
    # the share of pixels that moved by more than 8 grey levels in some channel
    moved = [(np.abs(np.asarray(augment_family(im, family, strength, np.random.default_rng(s)), float)
                     - np.asarray(im, float)).max(axis=2) > 8).mean() for s in range(4)]
    assert min(moved) > 0.02, (family, strength, moved)  # every copy is visibly edited
    assert len({augment_family(im, family, strength, np.random.default_rng(s)).tobytes() for s in range(4)}) > 1


def test_stroke_thickens_or_thins_the_dark_outline():
    im = _drawing()
    dark = lambda x: int((np.asarray(x).max(axis=2) < 60).sum())  # noqa: E731
    counts = [dark(augment_family(im, "stroke", "medium", np.random.default_rng(s))) for s in range(10)]
    assert any(c > 1.3 * dark(im) for c in counts) and any(c < 0.7 * dark(im) for c in counts)


def test_recolor_changes_the_colours_and_keeps_white_and_black():
    im = _drawing()
    src = np.asarray(im)
    grey = np.ptp(src.astype(int), axis=2) < 10  # the canvas and the outline
    for s in range(6):
        out = np.asarray(augment_family(im, "recolor", "strong", np.random.default_rng(s)))
        assert np.abs(out[grey].astype(int) - src[grey]).max() <= 3
        assert np.abs(out[~grey].astype(int) - src[~grey]).mean() > 10


def test_shade_and_shadow_touch_only_their_own_pixels():
    from overlap_audit.augment import foreground_mask

    im = _drawing()
    fg, fill = foreground_mask(im)
    assert fg.mean() > 0.2 and tuple(fill) == (255, 255, 255)
    src = np.asarray(im).astype(int)
    for s in range(4):
        shaded = np.asarray(augment_family(im, "shade", "strong", np.random.default_rng(s))).astype(int)
        assert (shaded[~fg] == src[~fg]).all()  # the canvas is not shaded
        shadow = np.asarray(augment_family(im, "shadow", "strong", np.random.default_rng(s))).astype(int)
        assert (shadow[fg] == src[fg]).all() and (shadow <= src).all()  # only the canvas darkens
        assert (shadow[~fg] < src[~fg] - 20).sum() > 50


def test_zoomout_keeps_the_whole_picture_small_on_its_canvas():
    im = _drawing((128, 128))
    for s in range(6):
        out = augment_family(im, "zoomout", "strong", np.random.default_rng(s))
        assert out.size == im.size
        assert np.abs(np.asarray(out, float) - np.asarray(im, float)).mean() > 5


def test_training_copies_mix_in_edits_and_keep_app_c_without_them(photos):
    im = _drawing()
    for s in range(3):  # no edits: exactly the App. C pipeline under the same seed
        assert (augment_training(im, "medium", np.random.default_rng(s), p_edit=0.0).tobytes()
                == augment_all(im, "medium", np.random.default_rng(s)).tobytes())
    a = augment_training(im, "medium", np.random.default_rng(5), p_edit=1.0)
    assert a.tobytes() == augment_training(im, "medium", np.random.default_rng(5), p_edit=1.0).tobytes()
    assert a.tobytes() != augment_all(im, "medium", np.random.default_rng(5)).tobytes()
    with pytest.raises(ValueError, match="strength"):
        augment_training(im, "extreme")
