"""The evaluation cache: a second report on the same index and sets reads embeddings and neighbours back
instead of embedding again; anything that changes the result changes the key."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from overlap_audit import evalcache, match
from overlap_audit.api import ReportSettings, run_report
from overlap_audit.content import ContentBox
from overlap_audit.evalcache import CacheKey, load_cached, save_cached
from overlap_audit.match import match_eval_sets, open_corpus
from overlap_audit.report import SPLITS, load_report
from overlap_audit.settings import MatchSettings, StatsSettings
from overlap_audit.values import Embeddings, Neighbors, Skipped

from ..helpers import write_predictions


@pytest.fixture(scope="module")
def predictions(tmp_path_factory, eval_set):
    root, planted, clean = eval_set
    return write_predictions(tmp_path_factory.mktemp("preds") / "p.csv", "val", planted + clean,
                             [1] * len(planted) + [i % 2 for i in range(len(clean))])


def _no_embedding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("embedded although the cache holds the set")

    monkeypatch.setattr(match, "embed_source", refuse)


def test_a_second_report_reads_the_cache_and_gives_the_same_report(tmp_path, corpus_index, eval_set, predictions,
                                                                   monkeypatch):
    root, _, _ = eval_set
    cache = tmp_path / "cache"
    # calibration embeds its own transposed images and copies on every run (not cached): off here
    settings = ReportSettings(tmp_path / "a", predictions=predictions, cache_dir=cache, match=MatchSettings(workers=0),
                              calibrate=None)
    first = run_report(corpus_index, [("val", str(root))], settings)
    assert first.timings["sets"]["val"]["from_cache"] is False and len(list(cache.glob("*.npz"))) == 1
    _no_embedding(monkeypatch)
    second = run_report(corpus_index, [("val", str(root))],
                        ReportSettings(tmp_path / "b", predictions=predictions, cache_dir=cache,
                                       match=MatchSettings(workers=0), stats=StatsSettings(threshold=0.9)))
    sets = second.timings["sets"]["val"]
    assert sets["from_cache"] is True and sets["n_items"] == first.timings["sets"]["val"]["n_items"] > 0
    assert load_report(tmp_path / "b").timings["sets"]["val"]["from_cache"] is True  # in report.json too
    a, b = (pq.read_table(tmp_path / d / SPLITS, columns=["id", "neighbor_ids", "similarity"]).to_pylist()
            for d in ("a", "b"))
    assert a == b
    # the default threshold again: the same statistics as the first run
    third = run_report(corpus_index, [("val", str(root))],
                       ReportSettings(tmp_path / "c", predictions=predictions, cache_dir=cache,
                                      match=MatchSettings(workers=0), calibrate=None))
    assert third.dataset("val").stats == first.dataset("val").stats


def test_what_changes_the_result_changes_the_key(tmp_path, corpus_index, eval_set):
    root, planted, _ = eval_set
    copy = tmp_path / "val"
    shutil.copytree(root, copy)
    corpus = open_corpus(corpus_index, MatchSettings(device="cpu"))
    cache = tmp_path / "cache"
    base = MatchSettings(workers=0, device="cpu", k=3)
    first = match_eval_sets(corpus, [("val", str(copy))], base, cache_dir=cache)["val"]
    assert not first.cached
    assert match_eval_sets(corpus, [("val", str(copy))], base, cache_dir=cache)["val"].cached
    assert not match_eval_sets(corpus, [("val", str(copy))], MatchSettings(workers=0, device="cpu", k=4),
                               cache_dir=cache)["val"].cached
    assert not match_eval_sets(corpus, [("other", str(copy))], base, cache_dir=cache)["other"].cached
    # one image's bytes changed (same name, same size class): embedded again, and its new neighbours found
    target = copy / planted[0]
    target.write_bytes((copy / planted[1]).read_bytes())
    again = match_eval_sets(corpus, [("val", str(copy))], base, cache_dir=cache)["val"]
    assert not again.cached
    row = again.embeddings.ids.index(planted[0])
    assert again.neighbors.ids[row, 0] == first.neighbors.ids[first.embeddings.ids.index(planted[1]), 0]


def test_a_damaged_or_foreign_file_is_a_miss_never_an_error(tmp_path, corpus_index, eval_set):
    root, _, _ = eval_set
    corpus = open_corpus(corpus_index, MatchSettings(device="cpu"))
    cache = tmp_path / "cache"
    settings = MatchSettings(workers=0, device="cpu")
    match_eval_sets(corpus, [("val", str(root))], settings, cache_dir=cache)
    (path,) = cache.glob("*.npz")
    path.write_bytes(path.read_bytes()[:100])  # truncated
    m = match_eval_sets(corpus, [("val", str(root))], settings, cache_dir=cache)["val"]
    assert not m.cached and len(m.embeddings) > 0
    # a valid file under this key's name but written for another key is not trusted
    other = tmp_path / "other"
    match_eval_sets(corpus, [("renamed", str(root))], settings, cache_dir=other)
    (foreign,) = other.glob("*.npz")
    shutil.copyfile(foreign, path)
    assert not match_eval_sets(corpus, [("val", str(root))], settings, cache_dir=cache)["val"].cached
    assert match_eval_sets(corpus, [("val", str(root))], settings, cache_dir=cache)["val"].cached  # rewritten


def test_no_cache_writes_nothing_and_an_unwritable_cache_is_only_a_warning(tmp_path, corpus_index, eval_set,
                                                                            monkeypatch, caplog):
    root, _, _ = eval_set
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    corpus = open_corpus(corpus_index, MatchSettings(device="cpu"))
    settings = MatchSettings(workers=0, device="cpu")
    assert not match_eval_sets(corpus, [("val", str(root))], settings, cache_dir=None)["val"].cached
    assert not (tmp_path / "xdg").exists()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    m = match_eval_sets(corpus, [("val", str(root))], settings, cache_dir=blocked / "cache")["val"]
    assert len(m.embeddings) > 0 and "cannot be written" in caplog.text
    assert evalcache.default_cache_dir() == tmp_path / "xdg" / "overlap-audit" / "eval"


def test_round_trip_keeps_boxes_views_skips_and_missing_neighbours(tmp_path):
    emb = Embeddings(ids=["a", "b"], vectors=np.eye(2, 4, dtype=np.float32), low_information=np.array([False, True]),
                     labels=["x", None], captions=[None, "c"], skipped=[Skipped("s", "z", "broken")],
                     boxes=[ContentBox(1, 2, 10, 12, 20, 20, True), None], whole_rows=np.array([0]),
                     whole_vectors=np.ones((1, 4), np.float32),
                     crop_vectors=np.arange(16, dtype=np.float32).reshape(2, 2, 4))
    ids = np.array([["k1", None], ["k2", "k3"]], dtype=object)
    sims = np.array([[0.9, np.nan], [0.5, 0.4]], dtype=np.float32)
    neighbors = Neighbors(["a", "b"], ids, sims, views=["whole", "trimmed"])
    key = CacheKey(json.dumps({"x": 1}), "d" * 32, 2)
    assert save_cached(tmp_path, key, emb, neighbors)
    got_emb, got_nb = load_cached(tmp_path, key)
    assert got_emb.ids == emb.ids and got_emb.labels == emb.labels and got_emb.captions == emb.captions
    assert got_emb.skipped == emb.skipped and got_emb.boxes == emb.boxes
    np.testing.assert_array_equal(got_emb.vectors, emb.vectors)
    np.testing.assert_array_equal(got_emb.low_information, emb.low_information)
    np.testing.assert_array_equal(got_emb.whole_rows, [0])
    np.testing.assert_array_equal(got_emb.whole_vectors, emb.whole_vectors)
    np.testing.assert_array_equal(got_emb.crop_vectors, emb.crop_vectors)  # the centre crops (query views)
    assert got_nb.ids.tolist() == ids.tolist() and got_nb.views == ["whole", "trimmed"]
    np.testing.assert_array_equal(got_nb.similarities, sims)
    assert load_cached(tmp_path, CacheKey(json.dumps({"x": 2}), "d" * 32, 2)) is None


def test_neighbours_searched_from_a_floor_serve_only_floors_as_high(tmp_path):
    """A result searched with a floor is used for that floor or a higher one (cut there, as a search with
    that floor answers), never for a lower floor or none."""
    emb = Embeddings(ids=["a", "b"], vectors=np.eye(2, 4, dtype=np.float32), low_information=np.zeros(2, bool),
                     labels=[None, None], captions=[None, None], skipped=[], boxes=[None, None],
                     whole_rows=np.array([1]), whole_vectors=np.ones((1, 4), np.float32))
    ids = np.array([["k1", "k2"], ["k3", None]], dtype=object)
    sims = np.array([[0.9, 0.75], [0.72, np.nan]], dtype=np.float32)
    key = CacheKey(json.dumps({"x": 1}), "e" * 32, 2)
    assert save_cached(tmp_path, key, emb, Neighbors(["a", "b"], ids, sims, views=["trimmed", "whole"]), 0.7)
    assert load_cached(tmp_path, key) is None and load_cached(tmp_path, key, 0.69) is None
    assert load_cached(tmp_path, key, 0.7) is not None
    _, nb = load_cached(tmp_path, key, 0.8)
    cut = match.at_least(nb, 0.8)
    assert cut.ids.tolist() == [["k1", None], [None, None]] and cut.views == ["trimmed", "trimmed"]
    np.testing.assert_array_equal(cut.similarities, np.array([[0.9, np.nan], [np.nan, np.nan]], np.float32))
    assert match.at_least(nb, None) is nb
