"""Verification of a matched pair (overlap_audit.decide.verify): copies pass, look-alikes do not; report --verify."""

import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from overlap_audit.decide.rule import VerifySettings, first_stage_threshold
from overlap_audit.decide.verify import VERIFY_THRESHOLD, prepare, verify_pair, verify_prepared

from ..helpers import write_predictions
from ..detectors.test_detectors import pictogram_signs


def photos() -> dict[str, Image.Image]:
    from skimage import data

    return {"astronaut": Image.fromarray(data.astronaut()), "coffee": Image.fromarray(data.coffee()),
            "chelsea": Image.fromarray(data.chelsea())}


def drawing(seed: int, size: int = 320) -> Image.Image:
    """A clip-art-like drawing on white: outlined filled shapes, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    for _ in range(7):
        x0, y0 = rng.integers(20, size - 120, 2)
        w, h = rng.integers(40, 110, 2)
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        shape = (d.ellipse, d.rectangle)[int(rng.integers(0, 2))]
        shape((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=fill, outline="black", width=3)
    return im


def jpeg(im: Image.Image, quality: int = 70) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def copies(im: Image.Image) -> dict[str, Image.Image]:
    w, h = im.size
    padded = Image.new("RGB", (w + 160, h + 90), "white")
    padded.paste(im, (110, 30))
    return {
        "rescaled": im.resize((int(w * 0.55), int(h * 0.55)), Image.Resampling.LANCZOS),
        # a few per cent off two sides (photos' fine texture is what limits this: 2% on every side scores near
        # the threshold)
        "cropped": im.crop((int(0.02 * w), int(0.015 * h), w, h)),
        "padded": padded,
        "jpeg": jpeg(im),
    }


def letter_s(size: int = 200) -> Image.Image:
    """A drawn letter "s": two opposite arcs of a thick stroke."""
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    d.arc((50, 20, 150, 104), 90, 360, fill="black", width=18)
    d.arc((50, 96, 150, 180), 270, 180, fill="black", width=18)
    return im


def round_button(size: int = 200) -> Image.Image:
    """A round button: a black ring with a grey face and a highlight."""
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((50, 20, 150, 180), fill=(90, 90, 90), outline="black", width=18)
    d.ellipse((75, 45, 105, 75), fill=(200, 200, 200))
    return im


def ring(size: int = 220) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse((20, 20, 200, 200), outline=(30, 110, 40), width=26)
    return im


def wreath(size: int = 220) -> Image.Image:
    """Leaves (small ellipses) around a circle, in the ring's colour."""
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    for k in range(18):
        t = 2 * math.pi * k / 18
        cx, cy = 110 + 77 * math.cos(t), 110 + 77 * math.sin(t)
        d.ellipse((cx - 16, cy - 9, cx + 16, cy + 9), fill=(30, 110, 40), outline=(10, 60, 20), width=2)
    d.ellipse((100, 8, 120, 28), fill=(200, 30, 30))  # a bow
    return im


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "drawing0", "drawing1", "drawing2"])
def test_copies_are_verified(name):
    im = photos()[name] if not name.startswith("drawing") else drawing(int(name[-1]))
    for kind, copy in copies(im).items():
        v = verify_pair(im, copy)
        assert v.score >= VERIFY_THRESHOLD, (name, kind, v)
        assert v.verified()


def planted(im: Image.Image, seed: int) -> Image.Image:
    """``im`` as benchmarks/bench_planted.py plants it: resized to 60-95%, up to 5% cropped off each side,
    brightness x0.9-1.1, JPEG quality 40-85."""
    from benchmarks.bench_planted import planted_copy

    return planted_copy(im, np.random.default_rng(seed))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_cropped_photos_are_verified(name):
    """2% off every side, and up to 5% off each side with a resize, a brightness change and JPEG: the same photo."""
    im = photos()[name]
    w, h = im.size
    assert verify_pair(im.crop((int(0.02 * w), int(0.02 * h), w - int(0.02 * w), h - int(0.02 * h))), im).verified()
    for seed in range(3):
        v = verify_pair(planted(im, seed), im)
        assert v.verified(), (name, seed, v)


def test_planted_photo_tiles_are_verified():
    """96-px tiles of textured photos, planted as the benchmark plants them, against their tile (either order)."""
    from overlap_audit.demos.synthetic import tiles

    for k, (name, im) in enumerate(photos().items()):
        for t, tile in enumerate(tiles(im, 4, 96)[5:7]):  # inner tiles: texture, not a flat background
            copy = planted(tile, 10 * k + t)
            assert verify_pair(copy, tile).verified(), (name, t, verify_pair(copy, tile))
            assert verify_pair(tile, copy).verified(), (name, t, verify_pair(tile, copy))


def test_planted_low_texture_tiles_are_verified():
    """Nearly textureless photo tiles (scikit-image's clock face, coins on a flat background), planted as the
    benchmark plants them: their edge maps are mostly JPEG noise, so the coarse greyscale decides."""
    from skimage import data

    from overlap_audit.demos.synthetic import tiles

    clock, coins = (Image.fromarray(im).convert("RGB") for im in (data.clock(), data.coins()))
    for tile in (tiles(clock, 4, 96)[14], tiles(coins, 4, 96)[1]):
        for seed in range(2):
            v = verify_pair(planted(tile, seed), tile)
            assert v.verified(), (seed, v)
    flat = verify_pair(planted(tiles(clock, 4, 96)[14], 0), tiles(clock, 4, 96)[14])
    assert flat.structure < 0.5 and flat.coarse > 0.9  # little above the noise floor: the coarse grey decides


def test_a_copy_aligns_to_a_fraction_of_a_pixel():
    """The best alignment is found between the searched rescalings and integer shifts."""
    im = photos()["chelsea"].resize((200, 130))
    w, h = im.size
    crop = im.crop((5, 3, w - 2, h - 4))  # other amounts off each side: a shift and a rescaling per axis
    v = verify_pair(crop, im)
    coarse = (0.9, 0.95, 1.0, 1.05, 1.1)
    assert v.score > 0.9 and v.scale not in {(a, b) for a in coarse for b in coarse}


def test_different_pictures_are_rejected():
    pics = {**photos(), **{f"drawing{i}": drawing(i) for i in range(3)}}
    prepared = {n: prepare(im) for n, im in pics.items()}
    names = list(pics)
    for i, a in enumerate(names):
        for b in names[:i]:
            v = verify_prepared(prepared[a], prepared[b])
            assert v.score < VERIFY_THRESHOLD, (a, b, v)


@pytest.mark.parametrize("pair", [(letter_s, round_button), (wreath, ring)], ids=["s-button", "wreath-ring"])
def test_look_alike_shapes_are_rejected(pair):
    a, b = (f() for f in pair)
    v = verify_pair(a, b)
    assert v.score < VERIFY_THRESHOLD, v
    # while each passes against its own edited copy (recoloured, outline shifted by a pixel, padded)
    for f in pair:
        im = f()
        edited = Image.eval(im, lambda x: 255 - (255 - x) * 3 // 4)  # lighter
        assert verify_pair(im, copies(edited)["padded"]).verified()


def test_different_pictograms_on_one_sign_are_rejected():
    signs = pictogram_signs()
    names = list(signs)
    for i, a in enumerate(names):
        for b in names[:i]:
            v = verify_pair(signs[a], signs[b])
            assert v.score < VERIFY_THRESHOLD, (a, b, v)
        assert verify_pair(signs[a], jpeg(signs[a])).verified()


def test_very_different_aspect_ratios_are_refused():
    im = drawing(4)
    squeezed = im.resize((im.width, im.height // 2))
    v = verify_pair(im, squeezed)
    assert v.aspect == 0.0 and v.score == 0.0


def test_blank_images_are_not_verified():
    blank = Image.new("RGB", (64, 64), "white")
    assert verify_pair(blank, blank).score == 0.0


def test_first_stage_is_a_relaxation():
    assert first_stage_threshold(0.9) == pytest.approx(0.75)
    assert VerifySettings().first_stage_for(0.95) == pytest.approx(0.875)
    assert VerifySettings(first_stage=0.5).first_stage_for(0.95) == 0.5
    assert VerifySettings(relax=5).first_stage_for(0.98) == pytest.approx(0.9)
    assert VerifySettings(relax=5).to_dict()["relax"] == 5 and VerifySettings().to_dict()["relax"] == 2.5


def test_verification_is_on_by_default_and_no_verify_turns_it_off(tmp_path):
    """A report verifies unless told not to; the first-stage options do not go with --no-verify."""
    from overlap_audit.cli import main

    corpus, evals = tmp_path / "corpus", tmp_path / "evals" / "x"
    corpus.mkdir()
    evals.mkdir(parents=True)
    for i in range(20, 24):
        drawing(i).save(corpus / f"d{i}.png")
    copies(drawing(20))["padded"].save(evals / "copy.png")
    drawing(30).save(evals / "new.png")
    preds = write_predictions(tmp_path / "preds.csv", "val", ["x/copy.png", "x/new.png"], [1, 0])
    runner = CliRunner()
    index = tmp_path / "index"
    assert runner.invoke(main, ["index", str(corpus), "--out", str(index), "--workers", "0", "--quiet"]).exit_code == 0
    base = ["report", str(index), "--eval", f"val={tmp_path / 'evals'}", "--predictions", str(preds), "--workers",
            "0", "--quiet", "--out"]
    r = runner.invoke(main, base + [str(tmp_path / "on")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "on" / "report.json").read_text())
    assert rep["verify"]["relax"] == 2.5 and rep["verify"]["datasets"]["val"]["n_accepted"] == 1
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "on" / "splits.parquet").to_pylist()}
    assert rows["x/copy.png"]["verified"] is True and rows["x/copy.png"]["overlap"]
    r = runner.invoke(main, base + [str(tmp_path / "off"), "--no-verify"])
    assert r.exit_code == 0, r.output
    assert "verify" not in json.loads((tmp_path / "off" / "report.json").read_text())
    off = pq.read_table(tmp_path / "off" / "splits.parquet").to_pylist()
    assert all(r["verify_score"] is None and r["verified"] is None for r in off)
    r = runner.invoke(main, base + [str(tmp_path / "bad"), "--no-verify", "--verify-from", "0.6"])
    assert r.exit_code == 2 and "do not go with --no-verify" in r.output



def test_report_verify_end_to_end(tmp_path):
    """A look-alike above the first stage is rejected; a padded copy is accepted; splits.parquet says so."""
    from overlap_audit.cli import main

    corpus, evals = tmp_path / "corpus", tmp_path / "evals" / "x"
    corpus.mkdir()
    evals.mkdir(parents=True)
    signs = pictogram_signs()
    # the corpus: one sign, one drawing and filler drawings
    signs["bar"].save(corpus / "sign_bar.png")
    drawing(10).save(corpus / "drawing10.png")
    for i in range(20, 26):
        drawing(i).save(corpus / f"filler{i}.png")
    # the evaluation set: another pictogram on the same sign (a look-alike), a padded copy, a new drawing
    signs["arrow"].save(evals / "sign_arrow.png")
    copies(drawing(10))["padded"].save(evals / "drawing10_padded.png")
    drawing(11).save(evals / "new.png")
    ids = ["x/sign_arrow.png", "x/drawing10_padded.png", "x/new.png"]
    preds = write_predictions(tmp_path / "preds.csv", "val", ids, [1, 1, 0])
    runner = CliRunner()
    index = tmp_path / "index"
    # whole images: the hash then ranks the look-alike sign first (trimmed, the two discs fill the hash and a
    # filler drawing can come first); verification trims both sides itself either way
    r = runner.invoke(main, ["index", str(corpus), "--out", str(index), "--workers", "0", "--quiet",
                             "--content", "whole"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "report"
    r = runner.invoke(main, ["report", str(index), "--eval", f"val={tmp_path / 'evals'}", "--predictions", str(preds),
                             "--out", str(out), "--workers", "0", "--quiet", "--verify", "--verify-from", "0.6"])
    assert r.exit_code == 0, r.output
    rows = {r["id"]: r for r in pq.read_table(out / "splits.parquet").to_pylist()}
    look_alike, copy, new = rows["x/sign_arrow.png"], rows["x/drawing10_padded.png"], rows["x/new.png"]
    assert look_alike["neighbor_ids"][0].endswith("sign_bar.png") and look_alike["similarity"] >= 0.6
    assert look_alike["verified"] is False and look_alike["verify_score"] < VERIFY_THRESHOLD
    assert not look_alike["overlap"]
    assert copy["verified"] is True and copy["overlap"] and copy["verify_score"] >= VERIFY_THRESHOLD
    if new["similarity"] < 0.6:
        assert new["verified"] is None and new["verify_score"] is None and not new["overlap"]
    import json

    rep = json.loads((out / "report.json").read_text())
    assert rep["verify"]["threshold"] == VERIFY_THRESHOLD and rep["verify"]["first_stage"] == 0.6
    assert rep["verify"]["datasets"]["val"]["n_accepted"] == 1
    html = (out / "report.html").read_text()
    assert "verification:" in html and "rejected (a different picture)" in html and "verified (same picture)" in html
    md = (out / "report.md").read_text()
    assert "Verification: every example whose nearest corpus item scores at least the first stage (0.6" in md
    assert "Verification: every example whose nearest corpus item" in html
    n = rep["verify"]["datasets"]["val"]["n_verified"]
    assert n >= 2 and "| val | " in md and f" | {n} | 1 | 0 |" in md  # pairs verified, accepted, unreadable


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_blur_sums_its_taps_in_order(dtype):
    """``verify._blur`` (one buffer per pass) gives the plain formula's numbers to the last bit: the taps'
    products summed one after the other, rows then columns."""
    from overlap_audit.decide.verify import _blur

    rng = np.random.default_rng(3)
    for sigma in (0.5, 1.0, 2.0):
        r = max(1, math.ceil(2.5 * sigma))
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        k /= k.sum()
        for shape in [(9, 8), (48, 61), (96, 80)]:
            a = rng.random(shape).astype(dtype)
            p = np.pad(a, r, mode="edge")
            p = sum(k[i] * p[:, i:i + shape[1]] for i in range(2 * r + 1))
            plain = sum(k[i] * p[i:i + shape[0], :] for i in range(2 * r + 1))
            ours = _blur(a, sigma)
            assert ours.dtype == plain.dtype and np.array_equal(ours, plain)


def test_the_mean_is_numpys():
    """``verify._mean`` is ``ndarray.mean`` to the last bit, float32 and float64, whole arrays and masked
    selections."""
    from overlap_audit.decide.verify import _mean

    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        for n in (2, 7, 255, 4096, 9216):
            a = (rng.random(n) * rng.choice([1e-3, 1.0, 300.0])).astype(dtype)
            for x in (a, a.reshape(-1, 1), a[::2], a[a > 0.5 * a.max()]):
                assert type(_mean(x)) is type(x.mean()) and _mean(x) == x.mean()


def test_the_resampling_matrix_is_the_scatter_of_its_weights():
    """``verify._resampling`` holds each row's two bilinear weights where ``np.add.at`` would put them
    (summed where both fall beyond an edge), the edges folded in, to the last bit."""
    from overlap_audit.decide.verify import _resampling

    for n, scale, shift in [(8, 1.0, 0.0), (48, 1.1, 0.0), (96, 0.9, 2.37), (61, 1.25, -3.5), (20, 0.5, 9.0)]:
        pos = (np.arange(n) + 0.5 - n / 2 - shift) / scale + n / 2 - 0.5
        lo = np.floor(pos).astype(int)
        frac = (pos - lo).astype(np.float32)
        m = np.zeros((n, n + 2), np.float32)
        inside = (pos >= -0.5) & (pos <= n - 0.5)
        np.add.at(m, (np.arange(n), np.clip(lo, -1, n) + 1), np.where(inside, 1 - frac, 0))
        np.add.at(m, (np.arange(n), np.clip(lo + 1, -1, n) + 1), np.where(inside, frac, 0))
        m[:, 1] += m[:, 0]
        m[:, n] += m[:, n + 1]
        assert np.array_equal(_resampling(n, scale, shift), m[:, 1:n + 1])


def test_the_rescalings_peaks_are_found_as_one_by_one():
    """``verify._correlate`` finds every rescaling's peak and its sub-pixel shift at once; the same numbers as
    taking the rescalings one at a time (the first of tied maxima, a parabola through each axis's
    neighbours, none where they hold no peak)."""
    from scipy import fft

    from overlap_audit.decide.verify import _correlate, _standardise, _warp

    rng = np.random.default_rng(5)
    scales = [(1.0, 1.0), (1.05, 0.95), (1.1, 1.1), (0.9, 1.05)]
    for h, w in [(48, 40), (61, 96)]:
        a = rng.random((h, w)).astype(np.float32)
        b = np.roll(a, (2, -1), axis=(0, 1)) + 0.1 * rng.random((h, w)).astype(np.float32)
        for ea, eb in [(a, b), (a, np.zeros_like(a))]:  # a flat map: every shift ties
            rx, ry = max(1, round(0.04 * w)), max(1, round(0.04 * h))
            found = _correlate(ea, eb, scales, rx, ry)
            stack = np.stack([_standardise(_warp(eb, sc)) for sc in scales])
            corr = fft.irfft2(fft.rfft2(_standardise(ea))[None] * np.conj(fft.rfft2(stack)), s=(h, w))
            for sc, c in zip(scales, corr):
                win = np.concatenate([c[-ry:], c[:ry + 1]], axis=0)
                win = np.concatenate([win[:, -rx:], win[:, :rx + 1]], axis=1)
                iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
                dy, dx = int(iy) - ry, int(ix) - rx

                def offset(left, centre, right):
                    curve = left - 2 * centre + right
                    return float(np.clip(0.5 * (left - right) / curve, -0.5, 0.5)) if curve < 0 else 0.0

                fx = offset(c[dy % h, (dx - 1) % w], c[dy % h, dx % w], c[dy % h, (dx + 1) % w])
                fy = offset(c[(dy - 1) % h, dx % w], c[dy % h, dx % w], c[(dy + 1) % h, dx % w])
                assert found[sc] == (float(win[iy, ix]), dx + fx, dy + fy)


def test_the_rescalings_are_standardised_as_one_by_one():
    """``verify._standardised_stack`` gives ``_standardise(_warp(eb, sc))`` of each rescaling to the last bit
    (rescalings that share a row resampling, the identity, a flat map that cannot be standardised)."""
    from overlap_audit.decide.verify import _standardise, _standardised_stack, _warp

    rng = np.random.default_rng(6)
    scales = [(1.0, 1.0), (1.05, 0.95), (1.1, 0.95), (0.9, 1.05), (1.025, 1.0)]
    for h, w in [(48, 40), (61, 96)]:
        for eb in (rng.random((h, w)).astype(np.float32), np.zeros((h, w), np.float32)):
            plain = np.stack([_standardise(_warp(eb, sc)) for sc in scales])
            assert np.array_equal(_standardised_stack(eb, scales), plain)


def test_a_recorded_content_box_prepares_the_same_view():
    """``prepare`` with the box ``content.trim`` found for the image gives the view it finds itself (a
    padded drawing, a photograph with nothing to trim); a box recorded at another size is not used."""
    from overlap_audit.content import trim

    padded = copies(drawing(11))["padded"]
    for im in (padded, photos()["coffee"]):
        _, box = trim(im)
        found, given = prepare(im), prepare(im, box)
        assert given.trimmed == found.trimmed and given.aspect == found.aspect
        assert np.array_equal(np.asarray(given.grey), np.asarray(found.grey))
    _, box = trim(padded)
    small = padded.resize((padded.width // 2, padded.height // 2))
    assert np.array_equal(np.asarray(prepare(small, box).grey), np.asarray(prepare(small).grey))
    assert box.trimmed  # the padded drawing's box is a real crop
