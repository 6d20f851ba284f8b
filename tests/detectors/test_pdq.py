"""The PDQ detector: pdqhash's own bits, near copies near, blank images low-information, an audit end to end."""

import builtins
import json
import pickle
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from overlap_audit.detectors import Detector, get_detector, list_detectors
from overlap_audit.errors import DetectorError

from ..helpers import PLANTED, jpeg, write_predictions
from .test_detectors import hard_negatives, pictogram_signs

pdqhash = pytest.importorskip("pdqhash")


@pytest.fixture(scope="module")
def det():
    return get_detector("pdq")


def test_registered_lazily_with_its_identity(det):
    assert "pdq" in list_detectors()
    assert isinstance(det, Detector)
    info = det.info
    assert (info.name, info.dim, info.metric, info.version) == ("pdq", 256, "hamming", "1+trim4")  # trims by default
    assert info.default_threshold == pytest.approx(1 - 59 / 256)
    code = ("import sys, overlap_audit.detectors as d\n"
            "assert 'pdqhash' not in sys.modules and 'overlap_audit.detectors.pdq' not in sys.modules\n"
            "d.get_detector('pdq')\n"
            "assert 'pdqhash' in sys.modules and 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(DetectorError, match="no argument"):
        get_detector("pdq:64")


def test_a_missing_pdqhash_names_the_install(monkeypatch):
    from overlap_audit.detectors import pdq

    real_import = builtins.__import__

    def no_pdqhash(name, *args, **kwargs):
        if name == "pdqhash":
            raise ImportError("No module named 'pdqhash'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pdqhash)
    with pytest.raises(DetectorError, match=r"pip install overlap-audit\[pdq\]"):
        pdq.PDQ()


def test_bits_equal_pdqhash_own_hash(photos):
    det = get_detector("pdq", content="whole")  # the hash itself, on the images as pdqhash sees them
    images = list(photos.values())[:8]
    ours = np.unpackbits(det.embed_images(images), axis=1)
    assert ours.shape == (len(images), 256)
    for im, bits in zip(images, ours):
        theirs, quality = pdqhash.compute(np.asarray(im.convert("RGB")))
        assert np.array_equal(bits, np.asarray(theirs, dtype=np.uint8))
        assert det.quality(det.preprocess(im)[None])[0] == quality


def test_picklable_for_the_decode_workers(det, photos):
    im = next(iter(photos.values()))
    clone = pickle.loads(pickle.dumps(det))
    assert np.array_equal(clone.preprocess(im), det.preprocess(im))


def test_copies_are_near_and_unrelated_images_far(det, tile_sets):
    corpus, other = tile_sets
    originals = [im for _, im in corpus[:40]]
    base = det.embed_images(originals)
    for kind, fn in PLANTED.items():
        copies = det.embed_images([fn(im) for im in originals])
        sims = np.diag(det.similarity(copies, base))
        # a 2-pixel crop of a fine texture moves PDQ's low frequencies too (the crop family in BENCHMARKS.md)
        floor = 0.8 if kind == "crop" else 0.95
        assert (sims >= det.default_threshold).mean() >= floor, (kind, np.sort(sims)[:5])
    a = det.embed_images([im for _, im in corpus])
    b = det.embed_images([im for _, im in other])
    assert det.similarity(b, a).max() < det.default_threshold


def test_a_jpeg_and_resized_photo_is_near(det, photos):
    im = photos["astronaut"]
    copy = jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR), 60)
    v = det.embed_images([im, copy])
    assert det.similarity(v[:1], v[1:])[0, 0] >= 1 - 20 / 256


def test_blank_images_are_low_information_and_shapes_are_not(det):
    from overlap_audit.imaging import to_rgb

    names = list(hard_negatives())
    batch = np.stack([det.preprocess(to_rgb(im)) for im in hard_negatives().values()])
    low = det.low_information(batch)
    for n in ("white", "black", "grey", "faint-noise", "transparent"):
        assert low[names.index(n)], n
    for n in ("circle", "square", "letter-A", "letter-I"):
        assert not low[names.index(n)], n
    # every pair of distinct shapes/letters that is not flagged stays below the threshold
    sims = det.similarity(det.embed(batch), det.embed(batch))
    np.fill_diagonal(sims, -1)
    assert sims[np.ix_(~low, ~low)].max() < det.default_threshold
    signs = det.embed_images(list(pictogram_signs().values()))
    sims = det.similarity(signs, signs)
    np.fill_diagonal(sims, -1)
    assert sims.max() < det.default_threshold


def test_preprocessed_batches_are_checked(det):
    with pytest.raises(ValueError, match="33"):
        det.embed(np.zeros((2, 32), np.uint8))


@pytest.mark.slow
def test_index_and_report_with_pdq_through_the_cli(tmp_path, corpus_dir, eval_set):
    from overlap_audit.cli import main

    root, planted, clean = eval_set
    out = tmp_path / "index"
    r = CliRunner().invoke(main, ["index", str(corpus_dir), "--out", str(out), "--detector", "pdq",
                                  "--workers", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "indexed 120 of 124 items with pdq" in r.output
    ids = planted + clean
    correct = [1] * len(planted) + [i % 2 for i in range(len(clean))]
    preds = write_predictions(tmp_path / "preds.csv", "val", ids, correct)
    report = tmp_path / "report"
    r = CliRunner().invoke(main, ["report", str(out), "--eval", f"val={root}", "--predictions", str(preds),
                                  "--out", str(report), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    rows = pq.read_table(report / "splits.parquet").to_pylist()
    overlap = {row["id"] for row in rows if row["overlap"]}
    assert overlap <= set(planted)  # no unrelated tile is called a copy
    assert len(overlap) >= 0.8 * len(planted)
    data = json.loads((report / "report.json").read_text())
    assert data["detector"]["name"] == "pdq" and data["threshold"] == {"val": pytest.approx(1 - 59 / 256)}
