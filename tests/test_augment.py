import numpy as np
import pytest

from overlap_audit.augment import FAMILIES, MARGIN_FAMILIES, STRENGTHS, augment_all, augment_family


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
