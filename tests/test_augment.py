import numpy as np
import pytest

from overlap_audit.augment import FAMILIES, STRENGTHS, augment_all, augment_family


@pytest.mark.parametrize("family", FAMILIES)
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
