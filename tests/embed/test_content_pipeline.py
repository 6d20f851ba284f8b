"""Content normalisation through the whole audit: a copy on a padded canvas is found when the detector
trims, the boxes and the matched view are recorded in splits.parquet and drawn in report.html."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from overlap_audit.cli import main
from overlap_audit.index import content_boxes, load_index

from ..helpers import write_folder, write_predictions


def padded(image: Image.Image, scale: float, canvas: int = 256, fill=(255, 255, 255)) -> Image.Image:
    """``image`` resized to ``scale`` of the canvas side and pasted off-centre on a uniform canvas."""
    side = int(canvas * scale)
    small = image.resize((side, side * image.height // image.width))
    out = Image.new("RGB", (canvas, canvas), fill)
    out.paste(small, (canvas // 8, canvas // 6))
    return out


@pytest.fixture(scope="module")
def audit(tmp_path_factory, tile_sets):
    corpus, other = tile_sets
    root = tmp_path_factory.mktemp("margins")
    corpus_dir = write_folder(root / "corpus", {f"{tid}.png": im for tid, im in corpus[:40]})
    evals = {f"seen/{tid}.png": padded(im, 0.5) for tid, im in corpus[:40:5]}  # 8 padded copies
    evals.update({f"seen/{corpus[1][0]}-black.png": padded(corpus[1][1], 0.6, fill=(0, 0, 0))})
    evals.update({f"new/{tid}.png": padded(im, 0.5) for tid, im in other[:8]})  # padded, not in the corpus
    eval_dir = write_folder(root / "eval", evals)
    ids = sorted(evals)
    preds = write_predictions(root / "preds.csv", "val", ids, [1] * len(ids))
    return root, corpus_dir, eval_dir, preds, ids


def run(root, corpus_dir, eval_dir, preds, content: str):
    runner = CliRunner()
    index_dir, out = root / f"index-{content}", root / f"report-{content}"
    if not index_dir.exists():
        r = runner.invoke(main, ["index", str(corpus_dir), "--out", str(index_dir), "--detector", "phash",
                                 "--content", content, "--workers", "0", "--quiet"])
        assert r.exit_code == 0, r.output
    if out.exists():
        import shutil

        shutil.rmtree(out)
    r = runner.invoke(main, ["report", str(index_dir), "--eval", f"val={eval_dir}", "--predictions", str(preds),
                             "--out", str(out), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    rows = pq.read_table(out / "splits.parquet").to_pylist()
    return index_dir, out, {row["id"]: row for row in rows}


def test_trimming_finds_copies_on_padded_canvases_and_whole_does_not(audit):
    root, corpus_dir, eval_dir, preds, ids = audit
    _, _, trimmed = run(root, corpus_dir, eval_dir, preds, "trim")
    _, _, whole = run(root, corpus_dir, eval_dir, preds, "whole")
    seen = [i for i in ids if i.startswith("seen/")]
    new = [i for i in ids if i.startswith("new/")]
    assert all(trimmed[i]["overlap"] for i in seen), [i for i in seen if not trimmed[i]["overlap"]]
    assert not any(trimmed[i]["overlap"] for i in new)
    assert sum(whole[i]["overlap"] for i in seen) <= 2  # the same copies, embedded with their margins


def test_boxes_and_views_are_recorded(audit):
    root, corpus_dir, eval_dir, preds, ids = audit
    index_dir, out, rows = run(root, corpus_dir, eval_dir, preds, "trim")
    for i in ids:
        box = rows[i]["content_box"]
        assert box["trimmed"] and (box["width"], box["height"]) == (256, 256)
        share = (box["right"] - box["left"]) * (box["bottom"] - box["top"]) / (256 * 256)
        assert 0.05 < share < 0.4, (i, box)  # at most half (or 0.6) of the side: a quarter (a third) of the area
        assert rows[i]["view"] in ("trimmed", "whole")
        if rows[i]["overlap"]:
            assert rows[i]["view"] == "trimmed"
            corpus_box = rows[i]["neighbor_content_box"]
            assert corpus_box is not None and (corpus_box["width"], corpus_box["height"]) == (96, 96)
            # photo tiles have no margin (one tile of the cell micrograph has flat background at two sides,
            # but it differs only faintly from the cells: not a canvas)
            assert not corpus_box["trimmed"], (i, corpus_box)
    keys = [rows[i]["neighbor_ids"][0] for i in ids]
    assert set(content_boxes(index_dir, keys)) == set(keys)
    assert load_index(index_dir, load_faiss=False).manifest.detector.content == "trim"
    page = (out / "report.html").read_text()
    assert "content box: eval trimmed to 128×128 of 256×256 (25.0% of its area)" in page
    assert "matched on the trimmed view" in page


def test_an_index_from_before_content_normalisation_is_refused(audit, tmp_path):
    import json

    root, corpus_dir, eval_dir, preds, ids = audit
    index_dir = root / "index-old"
    r = CliRunner().invoke(main, ["index", str(corpus_dir), "--out", str(index_dir), "--detector", "phash",
                                  "--content", "trim", "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["detector"]["version"] == "1+trim4"
    # the index as a manifest written before content normalisation existed describes its detector
    del manifest["detector"]["content"]
    manifest["detector"]["version"] = "1"
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    r = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={eval_dir}", "--predictions",
                                  str(preds), "--out", str(tmp_path / "r"), "--workers", "0", "--quiet"])
    assert r.exit_code == 2 and "version '1' (installed: '1+trim4', i.e. no content normalisation" in r.output, \
        r.output
