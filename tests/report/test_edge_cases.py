"""Overlap pairs under the detector's measured size or nearly uniform are shown apart, with the statistics
with and without them, in a real report (phash index, image folders, predictions file)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from overlap_audit.api import ReportSettings, build_index, run_report
from overlap_audit.decide.edge import UNIFORM_STD, image_condition
from overlap_audit.report import load_report
from overlap_audit.settings import IndexSettings, MatchSettings
from overlap_audit.stats.edge import edge_cases
from overlap_audit.stats.overlap import overlap_stats

from ..helpers import write_folder, write_predictions


def faint_blocks(seed: int, side: int = 96, spread: float = 5.0) -> Image.Image:
    """A grey field with faint random blocks: above the detectors' low-information cut, under UNIFORM_STD."""
    rng = np.random.default_rng(seed)
    blocks = 128 + rng.normal(0, spread, (8, 8))
    grey = np.kron(blocks, np.ones((side // 8, side // 8)))
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")


@pytest.fixture(scope="module")
def audited(tmp_path_factory, tile_sets):
    corpus_tiles, other = tile_sets
    tmp = tmp_path_factory.mktemp("edge")
    corpus = {f"{tid}.png": im for tid, im in corpus_tiles[:24]}
    corpus["faint.png"] = faint_blocks(1)
    corpus_dir = write_folder(tmp / "corpus", corpus)
    evals: dict[str, Image.Image | bytes] = {}
    # ordinary copies, a nearly uniform copy (the same file) and a copy under 32 px, all in one class
    for tid, im in corpus_tiles[:12]:
        evals[f"seen/{tid}.png"] = im
    evals["seen/faint.png"] = (corpus_dir / "faint.png").read_bytes()
    evals["seen/tiny.png"] = corpus_tiles[12][1].resize((24, 24), Image.LANCZOS)
    # Clean examples, one of them small too: only Overlap pairs are flagged
    for tid, im in other[:30]:
        evals[f"new/{tid}.png"] = im
    evals["new/tiny-clean.png"] = other[30][1].resize((20, 20), Image.LANCZOS)
    eval_dir = write_folder(tmp / "eval", evals)
    index = tmp / "index"
    build_index([str(corpus_dir)], index, IndexSettings(workers=0, device="cpu"))
    ids = sorted(evals)
    # the two edge cases are right, the ordinary copies mostly wrong: leaving them out changes the gap
    correct = [int(i in ("seen/faint.png", "seen/tiny.png") or (i.startswith("new/") and n % 2 == 0)
                   or i == ids[0]) for n, i in enumerate(ids)]
    preds = write_predictions(tmp / "p.csv", "val", ids, correct)
    report = run_report(index, [("val", str(eval_dir))],
                        ReportSettings(tmp / "rep", predictions=preds, match=MatchSettings(workers=0, device="cpu"),
                                       cache_dir=None))
    return report, dict(zip(ids, correct))


def test_image_condition_measures_side_and_grey_spread():
    side, std = image_condition(faint_blocks(1))
    assert side == 96 and 2.0 < std < UNIFORM_STD
    side, std = image_condition(faint_blocks(1, side=48, spread=40.0))
    assert side == 48 and std > UNIFORM_STD


def test_the_tiny_and_the_uniform_overlap_pair_are_flagged_and_left_out(audited):
    report, correct = audited
    d = report.dataset("val")
    splits = report.splits_table().to_pylist()
    overlap = {r["id"] for r in splits if r["overlap"]}
    assert {"seen/faint.png", "seen/tiny.png"} <= overlap  # both are Overlap to begin with
    e = d.edge
    assert set(e.ids) == {"seen/faint.png", "seen/tiny.png"}
    assert (e.n_small, e.n_uniform, e.n_flagged, e.n_unread) == (1, 1, 2, 0)
    assert e.measured_min_side == 32 and "new/tiny-clean.png" not in e.ids
    # the statistics without them are the paper's over the rest of the set, by hand
    ids = [r["id"] for r in splits]
    keep = [i for i in ids if i not in e.ids]
    expect = overlap_stats(sum(correct[i] for i in keep), len(keep), sum(correct[i] for i in keep if i in overlap),
                           sum(i in overlap for i in keep), ci_level=report.ci_level)
    assert e.without == expect
    assert e.without.n_all == d.stats.n_all - 2 and e.without.n_overlap == d.stats.n_overlap - 2
    assert e.without.delta < d.stats.delta  # the two right edge cases had lifted Overlap


def test_report_json_md_and_html_show_them_apart(audited):
    report, _ = audited
    d = report.dataset("val")
    raw = json.loads((Path(report.directory) / "report.json").read_text())
    j = raw["datasets"][0]["edge_cases"]
    assert (j["n_small"], j["n_uniform"], sorted(j["ids"])) == (1, 1, ["seen/faint.png", "seen/tiny.png"])
    assert j["without"]["delta"] == pytest.approx(d.edge.without.delta)
    assert load_report(report.directory).dataset("val").edge == d.edge
    md = (Path(report.directory) / "report.md").read_text()
    assert "## Overlap at the detector's limits" in md and "Overlap under 32 px" in md
    row = next(line for line in md.splitlines() if line.startswith("| val | 1 | 1 | 2 | 0 |"))
    assert f"{100 * d.stats.delta:+.1f} / {100 * d.edge.without.delta:+.1f}" in row
    assert "seen/faint.png" in md and "seen/tiny.png" in md
    page = (Path(report.directory) / "report.html").read_text()
    assert 'id="edge-table"' in page and f"{100 * d.edge.without.delta:+.1f}" in page


def test_edge_cases_count_only_overlap_examples():
    ids = ["a", "b", "c", "d", "e"]
    overlap = [True, True, False, False, True]
    correct = [True, False, True, False, True]
    e = edge_cases(ids, overlap, correct, small=[True, False, True, False, False],
                   uniform=[True, False, False, False, True], unread=[False, True, False, False, False],
                   measured_min_side=32, uniform_std=UNIFORM_STD)
    assert (e.n_small, e.n_uniform, e.n_flagged, e.n_unread, e.ids) == (1, 2, 2, 1, ("a", "e"))
    assert e.without == overlap_stats(1, 3, 0, 1)


def test_a_sentence_says_so_when_the_conclusion_rests_on_the_edge_cases(audited):
    from dataclasses import replace

    from overlap_audit.report import format_markdown

    report, _ = audited
    d = report.dataset("val")
    assert d.significant is False and d.edge.significant_without is False
    assert "edge-case Overlap pair" not in format_markdown(report)
    flipped = replace(report, datasets=[replace(d, significant=True)])
    md = format_markdown(flipped)
    assert "val: significant with its 2 edge-case Overlap pair(s), not significant without them" in md
