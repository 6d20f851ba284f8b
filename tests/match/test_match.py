"""The matching step report and pairs share: open the index with its detector, embed and search each set."""

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest

from overlap_audit import api, match
from overlap_audit.api import ReportSettings, build_index, run_report
from overlap_audit.calibrate import lowest_threshold
from overlap_audit.decide.rule import VerifySettings, first_stage_threshold, relax_for
from overlap_audit.detectors import get_detector
from overlap_audit.settings import IndexSettings, MatchSettings, StatsSettings
from overlap_audit.errors import IndexDirError, IndexMismatchError, SettingsError, SourceError
from overlap_audit.match import check_eval_sets, match_eval_sets, open_corpus
from overlap_audit.report import SPLITS
from overlap_audit.review import review_pairs

from ..helpers import write_predictions


@pytest.fixture(scope="module")
def index_dir(corpus_index):
    return corpus_index

@pytest.fixture(scope="module")
def predictions(tmp_path_factory, eval_set):
    root, planted, clean = eval_set
    ids = planted + clean
    return write_predictions(tmp_path_factory.mktemp("preds") / "p.csv", "val", ids,
                             [1] * len(planted) + [i % 2 for i in range(len(clean))])


def test_report_and_pairs_go_through_the_shared_step_and_agree(tmp_path, index_dir, eval_set, predictions,
                                                               monkeypatch):
    root, planted, _ = eval_set
    real = match.match_eval_sets
    calls = []

    def spy(corpus, evals, settings=None, **kwargs):
        out = real(corpus, evals, settings, **kwargs)
        calls.append((settings, out))
        return out

    monkeypatch.setattr(match, "match_eval_sets", spy)
    monkeypatch.setattr(api, "match_eval_sets", spy)
    review_pairs(index_dir, [("val", str(root))], tmp_path / "rev", around=0.8, n=10, match=MatchSettings(workers=0))
    # calibration searches its own turned images through the same step: off here, to count the sets' calls
    report = run_report(index_dir, [("val", str(root))],
                        ReportSettings(tmp_path / "rep", predictions=predictions, match=MatchSettings(workers=0),
                                       calibrate=None))
    assert len(calls) == 2
    (pairs_settings, pairs_match), (report_settings, report_match) = calls
    # pairs searches the neighbours the rule may verify (``VerifySettings.neighbours``), the report its k
    assert (pairs_settings.k, report_settings.k) == (VerifySettings().neighbours, 5)
    a, b = pairs_match["val"], report_match["val"]
    assert a.embeddings.ids == b.embeddings.ids and len(a.embeddings.ids) > 0
    np.testing.assert_array_equal(a.neighbors.ids[:, 0], b.neighbors.ids[:, 0])
    np.testing.assert_array_equal(a.neighbors.similarities[:, 0], b.neighbors.similarities[:, 0])
    assert [s.id for s in a.skipped] == [s.id for s in b.skipped]

    # what each command wrote comes from those neighbours
    nearest = dict(zip(b.embeddings.ids, b.neighbors.ids[:, 0]))
    with open(tmp_path / "rev" / "pairs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(nearest[r["eval_id"]] == r["corpus_id"] for r in rows)
    splits = pq.read_table(tmp_path / "rep" / SPLITS, columns=["id", "neighbor_ids"]).to_pylist()
    assert all(r["neighbor_ids"] == list(b.neighbors.ids[b.embeddings.ids.index(r["id"])]) for r in splits)
    assert report.k == 5 and report.dataset("val").stats.n_overlap >= 0.9 * len(planted)


def test_open_corpus_and_match(index_dir, eval_set):
    root, planted, clean = eval_set
    corpus = open_corpus(index_dir, MatchSettings(device="cpu"))
    assert corpus.path == str(index_dir) and corpus.detector.info.name == corpus.manifest.detector.name
    matches = match_eval_sets(corpus, [("val", str(root))], MatchSettings(k=3, workers=0, device="cpu"))
    m = matches["val"]
    assert m.name == "val" and m.neighbors.k == 3 and m.neighbors.query_ids == m.embeddings.ids
    assert set(m.embeddings.ids) == set(planted + clean)


def test_the_shared_step_refuses_what_it_cannot_compare(tmp_path, index_dir):
    with pytest.raises(IndexMismatchError):
        open_corpus(index_dir, MatchSettings(detector="phash256"))
    from PIL import Image

    (tmp_path / "blank").mkdir()
    Image.new("RGB", (64, 64), "white").save(tmp_path / "blank" / "white.png")
    build_index([str(tmp_path / "blank")], tmp_path / "empty", IndexSettings(workers=0))
    with pytest.raises(IndexDirError, match="holds no items"):
        open_corpus(tmp_path / "empty")
    with pytest.raises(SourceError, match="at least one"):
        check_eval_sets([])
    with pytest.raises(SourceError, match="repeated: a"):
        check_eval_sets([("a", "x"), ("a", "y"), ("b", "z")])


def test_ray_address_needs_exact():
    with pytest.raises(SettingsError, match="exact=True"):
        MatchSettings(ray_address="local")
    assert MatchSettings(ray_address="local", exact=True).exact


def test_settings_are_checked_when_made(tmp_path):
    with pytest.raises(SourceError, match="exactly one of predictions .* and zero_shot"):
        ReportSettings(tmp_path)
    with pytest.raises(SettingsError, match="correction must be one of bonferroni, holm"):
        StatsSettings(correction="sidak")


def test_merge_views_keeps_each_item_once_at_its_best_similarity_over_the_views():
    import numpy as np

    from overlap_audit.match import merge_views
    from overlap_audit.values import Neighbors

    ids = ["a", "b", "c", "d"]
    trimmed = Neighbors(ids, np.array([["k1", "k2"], ["k3", "k4"], ["k5", "k6"], [None, None]], dtype=object),
                        np.array([[0.9, 0.8], [0.5, 0.4], [0.7, 0.6], [np.nan, np.nan]], np.float32))
    # whole views of the queries whose content box was trimmed: b (better), c (a tie), d (no trimmed match)
    rows = np.array([1, 2, 3])
    whole = Neighbors(["b", "c", "d"], np.array([["k9", "k4"], ["k7", "k6"], ["k2", "k1"]], dtype=object),
                      np.array([[0.95, 0.45], [0.7, 0.65], [0.6, 0.5]], np.float32))
    got = merge_views(trimmed, whole, rows)
    assert got.views == ["trimmed", "whole", "trimmed", "whole"]
    # b: k9 from the whole view first, then k3 (0.5) before k4 (0.45 at best)
    assert list(got.ids[1]) == ["k9", "k3"] and list(got.similarities[1]) == [np.float32(0.95), np.float32(0.5)]
    # c: a tie at the top keeps the trimmed view's item first; k6 once, at the whole view's 0.65
    assert list(got.ids[2]) == ["k5", "k7"] and list(got.similarities[2]) == [np.float32(0.7), np.float32(0.7)]
    assert list(got.ids[3]) == ["k2", "k1"] and got.similarities[3, 0] == np.float32(0.6)
    assert list(got.ids[0]) == ["k1", "k2"] and got.query_ids == ids
    assert list(trimmed.ids[1]) == ["k3", "k4"]  # the inputs are not changed


def test_merge_views_finds_a_source_second_in_one_view_and_first_in_none():
    import numpy as np

    from overlap_audit.match import merge_views
    from overlap_audit.values import Neighbors

    trimmed = Neighbors(["q"], np.array([["x", "src", "y"]], dtype=object), np.array([[0.80, 0.78, 0.6]], np.float32))
    crop = Neighbors(["q"], np.array([["z", "w", "src"]], dtype=object), np.array([[0.82, 0.7, 0.79]], np.float32))
    got = merge_views(trimmed, crop, np.array([0]), "view80")
    assert got.views == ["view80"]
    assert list(got.ids[0]) == ["z", "x", "src"]
    assert got.similarities[0, 2] == np.float32(0.79)  # its best view's similarity
    # and where the corpus has fewer items than k, the empty places stay empty
    short = Neighbors(["q"], np.array([["x", None]], dtype=object), np.array([[0.8, np.nan]], np.float32))
    got = merge_views(short, Neighbors(["q"], np.array([["x", None]], dtype=object),
                                       np.array([[0.9, np.nan]], np.float32)), np.array([0]), "view80")
    assert list(got.ids[0]) == ["x", None] and np.isnan(got.similarities[0, 1]) and got.views == ["view80"]


def test_a_mih_index_answers_the_decisions_floor_by_radius_as_flat_search_does(tmp_path, corpus_dir, index_dir,
                                                                              eval_set, predictions, monkeypatch):
    """A mih index built through the library is searched from the decision's floor (the report passes each
    set's first stage) and answers it from its tables (radius search) with the neighbours of the flat index
    cut at that floor; a flat index keeps every neighbour."""
    import importlib

    from overlap_audit.index import mih
    from overlap_audit.index.ann import hash_radius

    search_module = importlib.import_module("overlap_audit.index.search")  # the package exports search()
    root, planted, _ = eval_set
    build_index([str(corpus_dir)], tmp_path / "mih", IndexSettings(workers=0, shard_size=50, index_type="mih",
                                                                    views=()))
    # 120 items: the flat scan costs less than the tables; made dearer so that the tables answer here
    monkeypatch.setattr(mih, "SCAN_COST", 1e6)
    radii = []
    real = search_module.radius_search

    def counted(tables, queries, k, radius, **kw):
        radii.append(radius)
        return real(tables, queries, k, radius, **kw)

    monkeypatch.setattr(search_module, "radius_search", counted)
    settings = MatchSettings(workers=0, device="cpu")
    tables, flat = open_corpus(tmp_path / "mih", settings), open_corpus(index_dir, settings)
    assert tables.manifest.index_type == "mih" and flat.manifest.index_type == "flat"
    evals = [("val", str(root))]
    whole = match_eval_sets(flat, evals, settings)["val"]
    for floor in (1 - 9 / 64, 1 - 18 / 64):
        got = match_eval_sets(tables, evals, settings, min_similarity={"val": floor})["val"]
        assert radii[-1] == hash_radius(floor, 64)
        want = match.at_least(whole.neighbors, floor)
        np.testing.assert_array_equal(got.neighbors.ids, want.ids)
        np.testing.assert_array_equal(got.neighbors.similarities, want.similarities)
        found = ~np.isnan(got.neighbors.similarities)
        assert found[:, 0].sum() >= len(planted) // 2 and not found.all()
        # the flat index is not cut: its scan costs the same either way
        kept = match_eval_sets(flat, evals, settings, min_similarity={"val": floor})["val"]
        np.testing.assert_array_equal(kept.neighbors.ids, whole.neighbors.ids)
    # without a floor nothing is cut: the flat scan answers
    n_radius = len(radii)
    full = match_eval_sets(tables, evals, settings)["val"]
    assert len(radii) == n_radius and all(x is not None for x in full.neighbors.ids.ravel())
    # a report searches from each set's first stage, and decides as it does on the flat index
    rep = {}
    for name, index in (("mih", tmp_path / "mih"), ("flat", index_dir)):
        rep[name] = run_report(index, evals, ReportSettings(tmp_path / f"rep-{name}", predictions=predictions,
                                                            match=settings, cache_dir=None))
    # calibrated (the default): searched from the first stage of the lowest threshold calibration may choose
    # (with verification, the default's)
    phash = get_detector("phash")
    lowest = lowest_threshold(phash.default_threshold, verifying=True)
    assert radii[-1] == hash_radius(first_stage_threshold(lowest, relax_for(phash)), 64) and len(radii) > n_radius
    assert rep["mih"].dataset("val").stats == rep["flat"].dataset("val").stats


def test_query_views_are_searched_only_for_queries_without_a_margin(tmp_path):
    """A drawing with a margin is searched by its content box (and whole image), never by crops or turns; a
    photograph without one by all its views."""
    import numpy as np
    from PIL import Image

    from overlap_audit.demos.synthetic import bundled_photos
    from overlap_audit.index import build_index
    from overlap_audit.match import match_eval_sets, open_corpus, viewed_rows
    from overlap_audit.settings import IndexSettings, MatchSettings

    photos = bundled_photos()
    (tmp_path / "c").mkdir()
    (tmp_path / "q").mkdir()
    names = sorted(photos)[:4]
    for name in names:
        photos[name].convert("RGB").save(tmp_path / "c" / f"{name}.png")
    photo = photos[names[0]].convert("RGB")
    photo.rotate(4, resample=Image.Resampling.BICUBIC).save(tmp_path / "q" / "photo.png")
    canvas = Image.new("RGB", (photo.width + 80, photo.height + 80), "white")
    canvas.paste(photos[names[1]].convert("RGB").rotate(4, resample=Image.Resampling.BICUBIC, fillcolor="white"),
                 (40, 40))
    canvas.save(tmp_path / "q" / "margin.png")
    build_index([str(tmp_path / "c")], tmp_path / "i", IndexSettings(workers=0))
    settings = MatchSettings(workers=0)
    m = match_eval_sets(open_corpus(tmp_path / "i", settings), [("q", str(tmp_path / "q"))], settings)["q"]
    row = {ident: r for r, ident in enumerate(m.embeddings.ids)}
    assert m.embeddings.boxes[row["margin.png"]].trimmed and not m.embeddings.boxes[row["photo.png"]].trimmed
    assert list(viewed_rows(m.embeddings)) == [row["photo.png"]]
    assert m.neighbors.views[row["margin.png"]] in {"trimmed", "whole"}
    assert m.embeddings.crop_vectors.shape[1] == len(settings.query_crops())
    # the drawing's turns are not taken (never searched): its own vector stands in for them
    turns = [c for c, view in enumerate(settings.query_crops()) if not isinstance(view, float)]
    margin = m.embeddings.crop_vectors[row["margin.png"]]
    assert all((margin[c] == m.embeddings.vectors[row["margin.png"]]).all() for c in turns)
    assert not all((m.embeddings.crop_vectors[row["photo.png"]][c] == m.embeddings.vectors[row["photo.png"]]).all()
                   for c in turns)
    assert m.neighbors.ids[row["photo.png"], 0] == f"{names[0]}.png"
    assert np.isfinite(m.neighbors.similarities[:, :len(names)]).all()  # k = 5 over a corpus of 4


def test_view_cut_scales_the_gap_to_the_detectors_threshold():
    from types import SimpleNamespace

    from overlap_audit.match import view_cut
    from overlap_audit.settings import MatchSettings

    def det(t):
        return SimpleNamespace(info=SimpleNamespace(default_threshold=t))

    from overlap_audit.detectors import get_detector

    assert view_cut(MatchSettings(), get_detector("phash")) == np.float32(0.12 * 9 / 64)  # phash: 9 of 64 bits
    assert view_cut(MatchSettings(view_discount=0.5), det(0.98)) == np.float32(0.5 * (1 - 0.98))
    assert view_cut(MatchSettings(), det(None)) == 0  # an uncalibrated checkpoint: nothing to scale
