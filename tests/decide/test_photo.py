"""Photo verification: App. C copies of photographs accepted, other regions of the same photograph and a
clip-art look-alike rejected, and the decision never drops a confident match without evidence against it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from benchmarks.photos import MEDIUM, STRONG, appc_copy, quadrants
from overlap_audit.decide.photo import (ACCEPT, GRADE, PhotoVerification, prepare_photo, verify_photo,
                                        verify_photo_pair)
from overlap_audit.decide.verify import VERIFY_THRESHOLD, verify_pair


@pytest.fixture(scope="module")
def photos():
    from overlap_audit.demos.synthetic import bundled_photos

    all_photos = bundled_photos()
    return {name: all_photos[name] for name in ("astronaut", "coffee", "motorcycle_left", "chelsea")}


@pytest.mark.parametrize("name", ["astronaut", "coffee", "motorcycle_left", "chelsea"])
@pytest.mark.parametrize("params", [MEDIUM, STRONG], ids=["medium", "strong"])
def test_app_c_copies_of_a_photograph_are_accepted(photos, name, params):
    quad = quadrants(photos[name])[0]
    copy = appc_copy(quad, params, np.random.default_rng(0))
    v = verify_photo_pair(copy, quad)
    assert v.verdict is True, v
    assert verify_photo_pair(quad, copy).verdict is True  # either side may be the copy


def test_a_squashed_rotated_copy_is_accepted(photos):
    quad = quadrants(photos["astronaut"])[0]  # 256 x 256
    copy = quad.crop((10, 6, 250, 246)).resize((360, 150), Image.Resampling.BILINEAR)  # 2.4x the aspect
    copy = copy.rotate(-5.5, Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    assert verify_pair(copy, quad).score < VERIFY_THRESHOLD  # the box-shape gate of verify_pair refuses it
    v = verify_photo_pair(copy, quad)
    assert v.verdict is True and abs(v.angle + 5.5) <= 1.5, v


@pytest.mark.parametrize("name", ["astronaut", "coffee", "motorcycle_left"])
def test_the_opposite_quadrant_of_the_same_photograph_is_rejected(photos, name):
    quads = quadrants(photos[name])
    other = appc_copy(quads[3], MEDIUM, np.random.default_rng(0))
    v = verify_photo_pair(other, quads[0])
    assert v.verdict is False, v


def _strong_copy(image: Image.Image, size: tuple[int, int], angle: float) -> Image.Image:
    """70% of the area (off centre), squashed to ``size``, turned by ``angle`` degrees, JPEG quality 40."""
    import io

    w, h = image.size
    cw, ch = round(w * 0.84), round(h * 0.84)
    copy = image.crop((w - cw - 5, 7, w - 5, 7 + ch)).resize(size, Image.Resampling.BILINEAR)
    copy = copy.rotate(angle, Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    buf = io.BytesIO()
    copy.save(buf, format="JPEG", quality=40)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def skimage_photos():
    from overlap_audit.demos.synthetic import bundled_photos

    return bundled_photos()


@pytest.mark.parametrize("name", ["page", "text"])
def test_a_strong_copy_is_verified_at_the_strictest_accept(skimage_photos, name):
    """Far below the detector's threshold a pair needs ACCEPT + GRADE: the refined alignment lifts a strong
    copy over it (without the refinement these score 0.86-0.89)."""
    quad = quadrants(skimage_photos[name])[1]
    v = verify_photo_pair(_strong_copy(quad, (240, 130), 5.0), quad)
    assert v.verdict_at(VERIFY_THRESHOLD, ACCEPT + GRADE) is True, v
    assert v.score >= v.grid_score


@pytest.mark.parametrize("name, first, second", [("brick", 9, 13), ("coins", 9, 5)])
def test_two_tiles_of_one_repetitive_texture_are_not_verified(skimage_photos, name, first, second):
    """Two tiles of one brick wall line up almost perfectly once refined (the wall repeats); two coins of one
    tray line up on their outlines but not in their detail: neither is verified far below the threshold."""
    from overlap_audit.demos.synthetic import tiles

    parts = tiles(skimage_photos[name], 4, 128)
    v = verify_photo_pair(parts[first], parts[second])
    assert v.verdict_at(VERIFY_THRESHOLD, ACCEPT + GRADE) is not True, v


def test_a_squashed_copy_of_a_flat_photograph_is_verified(skimage_photos):
    """The Shepp-Logan phantom is flat fills without a margin: a squashed copy is refused by the drawing
    comparison's box-shape gate and accepted by the photo comparison's near-perfect match."""
    quad = quadrants(skimage_photos["phantom"])[0]
    copy = _strong_copy(quad, (240, 130), 5.0)
    assert verify_pair(copy, quad).score < VERIFY_THRESHOLD
    v = verify_photo_pair(copy, quad)
    assert v.flat_match and v.verdict is True, v


def _drawing(kind: str, size: int = 200) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    if kind == "ball":
        d.ellipse((30, 30, 170, 170), fill=(200, 40, 40), outline="black", width=4)
        d.line((60, 100, 140, 100), fill="black", width=4)
    else:  # an apple: nearly the same outline, another drawing
        d.ellipse((30, 40, 170, 175), fill=(200, 40, 40), outline="black", width=4)
        d.line((100, 20, 100, 50), fill="black", width=6)
        d.ellipse((70, 70, 90, 90), fill="white")
    return im


def test_a_clip_art_look_alike_is_rejected():
    v = verify_photo_pair(_drawing("ball"), _drawing("apple"))
    assert v.verdict is False, v
    assert verify_photo_pair(_drawing("apple"), _drawing("apple").resize((150, 150))).verdict is True


def test_flat_images_say_nothing():
    rng = np.random.default_rng(0)
    sky = np.linspace(120, 200, 240)[:, None, None] + rng.normal(0, 0.4, (240, 320, 3))
    a = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    b = Image.fromarray(np.clip(sky[::-1] - 30, 0, 255).astype(np.uint8))
    v = verify_photo(prepare_photo(a), prepare_photo(b))
    assert not v.informative and v.verdict is not False  # no evidence against a match


def _v(score: float, texture: float = 0.05, pair: float = 0.0) -> PhotoVerification:
    return PhotoVerification(score, texture, pair, cells=score)


def test_the_rule_keeps_a_confident_match_without_evidence_against_it():
    """The one rule (``rule.DecisionRule.overlap``) on known verdicts: a confident match stays Overlap unless
    verification holds evidence against it; below the threshold only a verified pair at or above the first
    stage is Overlap."""
    from overlap_audit.decide.rule import DecisionRule, VerifySettings

    rule = DecisionRule({"s": 0.9}, VerifySettings(first_stage=0.7))
    sims = [0.99, 0.99, 0.80, 0.80, 0.99, 0.60]
    verdicts = [_v(0.5, texture=0.001).verdict,  # confident, nothing to say: Overlap
                _v(0.1).verdict,  # confident, evidence against: Clean
                _v(0.95).verdict,  # below the threshold, verified: Overlap
                _v(0.5, texture=0.001).verdict,  # below the threshold, nothing verified: Clean
                None,  # confident, not verified: Overlap
                True]  # below the first stage: never verified, Clean
    assert verdicts[:4] == [None, False, True, None]
    assert rule.overlap("s", sims, verdicts).tolist() == [True, False, True, False, True, False]


def test_a_drawing_score_between_reject_and_accept_keeps_a_confident_match():
    """A drawing pair (the photo comparison does not apply) is the same picture from the pair threshold and
    evidence against only under ``VERIFY_REJECT``; in between it says nothing, so a confident detector match
    stays Overlap and a pair below the threshold stays Clean."""
    from overlap_audit.decide.rule import DecisionRule, VerifySettings
    from overlap_audit.decide.verify import VERIFY_REJECT

    def drawing(pair: float) -> PhotoVerification:
        return PhotoVerification(float("nan"), 0.05, pair)

    between = (VERIFY_REJECT + VERIFY_THRESHOLD) / 2
    assert not drawing(between).applies
    verdicts = [drawing(VERIFY_THRESHOLD).verdict, drawing(between).verdict, drawing(VERIFY_REJECT - 0.01).verdict,
                drawing(between).verdict]
    assert verdicts == [True, None, False, None]
    # a lower pair threshold than the reject level asked for (``threshold`` may choose one) rejects only under it
    assert drawing(VERIFY_REJECT - 0.01).verdict_at(VERIFY_REJECT - 0.05) is True
    assert drawing(VERIFY_REJECT - 0.06).verdict_at(VERIFY_REJECT - 0.05) is False
    rule = DecisionRule({"s": 0.9}, VerifySettings(first_stage=0.7))
    assert rule.overlap("s", [0.95, 0.95, 0.95, 0.85], verdicts).tolist() == [True, True, False, False]


def test_an_extreme_strip_says_nothing_so_a_confident_match_stands():
    """A 3000 x 10 strip and its re-encoded copy: no grid holds their content, so verification has no verdict
    (the detector's decision stands); byte-identical strips are the same picture."""
    import io

    from overlap_audit.decide.rule import _judge, _Pair

    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 255, (10, 3000, 3), dtype=np.uint8))
    png, jpg = io.BytesIO(), io.BytesIO()
    strip.save(png, format="PNG")
    strip.save(jpg, format="JPEG", quality=90)
    v = verify_photo(prepare_photo(strip), prepare_photo(Image.open(io.BytesIO(jpg.getvalue())).convert("RGB")))
    assert v.degenerate and v.verdict is None
    assert _judge(_Pair(png.getvalue(), None, png.getvalue(), None, 10 ** 8, 0.8, 0.83))[1] is True
    assert _judge(_Pair(png.getvalue(), None, jpg.getvalue(), None, 10 ** 8, 0.8, 0.83))[1] is None


def _item(image: Image.Image, ident: str):
    import io

    from overlap_audit.values import RawItem

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return RawItem("s", ident, data=buf.getvalue())


def test_a_photograph_copy_far_below_the_threshold_is_verified(photos):
    """phash's rule verifies from 42 of 64 bits (an App. C copy of a photograph keeps little of its hash): a
    copy there is the same picture; another region of the same photograph there is not."""
    from overlap_audit.decide.rule import DecisionRule
    from overlap_audit.detectors import get_detector

    t = 1 - 9 / 64
    rule = DecisionRule.for_detector(get_detector("phash"), {"s": t})
    assert 1 - 23 / 64 < rule.first_stage("s") <= 1 - 22 / 64
    sim = 1 - 22 / 64  # below the earlier first stage, 1 - 2 (1 - t) = 46 of 64 bits
    quads = quadrants(photos["coffee"])
    copy = appc_copy(quads[0], STRONG, np.random.default_rng(1))
    other = appc_copy(quads[3], MEDIUM, np.random.default_rng(1))
    judged = rule.judge_pairs("s", [(_item(copy, "a"), _item(quads[0], "b"), sim),
                                    (_item(other, "c"), _item(quads[0], "d"), sim)], workers=0)
    assert [j.verdict for j in judged] == [True, False]
    assert [j.overlap for j in judged] == [True, False]


def test_featureless_tiles_say_nothing_far_below_the_threshold(skimage_photos):
    """Two grey tiles of one background (the synthetic demo's clock_motion 1 and 8) have no texture: the
    drawing comparison lines them up almost perfectly, which verifies nothing far below the detector's
    threshold; a close copy of one of them (downscaled, JPEG quality 95) is verified near it (at quality 80
    the drawing comparison no longer agrees: the pair then says nothing and the detector decides)."""
    import io

    from overlap_audit.demos.synthetic import tiles

    parts = tiles(skimage_photos["clock_motion"], 4, 128)
    v = verify_photo_pair(parts[1], parts[8])
    assert v.featureless and v.verdict_at(VERIFY_THRESHOLD, ACCEPT + GRADE, near=False) is None, v
    buf = io.BytesIO()
    parts[1].resize((100, 100), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=95)
    copy = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    w = verify_photo_pair(copy, parts[1])
    assert w.featureless and w.verdict_at(VERIFY_THRESHOLD, ACCEPT, near=True) is True, w


def test_a_crop_smaller_than_app_c_leaves_is_not_verified(photos):
    """The photo comparison finds a 40% crop inside its source, but App. C's strongest crop keeps 65% of the
    area: the pair says nothing (two tiles of one wall line up the same way); a 75% crop is verified."""
    quad = quadrants(photos["coffee"])[0]
    w, h = quad.size

    def centre(share: float) -> Image.Image:
        cw, ch = round(w * share ** 0.5), round(h * share ** 0.5)
        return quad.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)).resize((w, h))

    small = verify_photo_pair(centre(0.4), quad)
    assert small.score >= ACCEPT and small.verdict is None, small
    assert verify_photo_pair(centre(0.75), quad).verdict is True


@pytest.mark.parametrize("sigma", [0.35, 0.7, 1.4, 2.0, 2.5, 4.0])
def test_the_band_pass_blurs_as_scipy_does(sigma):
    """``photo._gauss`` (its kernel made once) gives scipy's ``gaussian_filter`` to the last bit, so the photo
    comparison's numbers do not depend on which of the two computed them."""
    from scipy.ndimage import gaussian_filter

    from overlap_audit.decide.photo import _gauss

    rng = np.random.default_rng(int(sigma * 10))
    for shape in [(9, 31), (64, 64), (101, 57)]:
        a = rng.random(shape).astype(np.float32)
        ours = _gauss(a, sigma)
        assert ours.dtype == np.float32
        assert np.array_equal(ours, gaussian_filter(a, sigma, mode="nearest", truncate=2.5))


def _repeats_by_windows(t: np.ndarray) -> float:
    """``photo._repeats`` as its docstring defines it, window by window."""
    h, w = t.shape
    ph, pw = h // 2, w // 2
    y0, x0 = (h - ph) // 2, (w - pw) // 2
    patch = t[y0:y0 + ph, x0:x0 + pw].astype(np.float64)
    patch -= patch.mean()
    best = -1.0
    for y in range(h - ph + 1):
        for x in range(w - pw + 1):
            if abs(y - y0) < max(1, h // 4) and abs(x - x0) < max(1, w // 4):
                continue
            win = t[y:y + ph, x:x + pw].astype(np.float64)
            win -= win.mean()
            d = np.sqrt((win * win).sum()) * np.sqrt((patch * patch).sum())
            best = max(best, float((win * patch).sum() / max(d, 1e-9)))
    return best


def test_how_well_a_texture_repeats_itself_matches_the_window_by_window_definition(skimage_photos):
    """``photo._repeats`` (integral images and FFTs) against the plain sum over every window: a brick wall
    repeats itself, a photograph's detail does not, and both numbers agree to float precision."""
    from overlap_audit.decide.photo import _band, _repeats, _resize
    from overlap_audit.demos.synthetic import tiles

    brick = tiles(skimage_photos["brick"], 4, 128)[9]
    face = quadrants(skimage_photos["astronaut"])[0]
    found = {}
    for name, im in (("brick", brick), ("face", face)):
        grey = np.asarray(im.convert("L"), np.float32) / 255.0
        t = _band(_resize(grey, 54, 50), 1.0)
        found[name] = _repeats(t)
        assert abs(found[name] - _repeats_by_windows(t)) < 1e-6
    assert found["brick"] > found["face"]


def test_a_comparison_cut_short_below_the_acceptance_is_the_full_ones_refusal(photos):
    """``photo._compare`` with ``accept_from`` stops only where the refined score lies under it (the flat
    drawing's acceptance asks no more); at or under the full comparison's score it gives the full result."""
    from overlap_audit.decide.photo import _compare

    quad = quadrants(photos["astronaut"])[0]
    a, b = prepare_photo(appc_copy(quad, MEDIUM, np.random.default_rng(0))), prepare_photo(quad)
    full = _compare(a, b)
    assert _compare(a, b, accept_from=full.score + 1e-3) is None
    assert repr(_compare(a, b, accept_from=full.score - 1e-3)) == repr(full)  # NaN fields compare by text
