"""Corpus views: centre-crop vectors per item, searched beside the primary ones (max per item)."""

import json

import numpy as np
import pytest
from PIL import Image

from overlap_audit.demos.synthetic import bundled_photos
from overlap_audit.detectors import get_detector
from overlap_audit.detectors.base import prepare
from overlap_audit.errors import IndexDamagedError, IndexDirError
from overlap_audit.index import build_index, check_index, index_from_vectors, load_index, load_manifest, search
from overlap_audit.index.search import search_index
from overlap_audit.settings import IndexSettings

CORPUS = ("moon", "astronaut", "brick", "camera", "chelsea", "coffee", "grass", "rocket")


@pytest.fixture(scope="module")
def photo_indexes(tmp_path_factory):
    """The same eight real photographs indexed with phash's default views (a 70% centre crop) and without
    views."""
    root = tmp_path_factory.mktemp("views")
    photos = bundled_photos()
    (root / "corpus").mkdir()
    for name in CORPUS:
        photos[name].convert("RGB").save(root / "corpus" / f"{name}.png")
    with_views = build_index([str(root / "corpus")], root / "with", IndexSettings(workers=0))
    without = build_index([str(root / "corpus")], root / "without", IndexSettings(workers=0, views=()))
    return root, photos, with_views, without


def test_a_crop_far_from_the_whole_is_found_through_the_view(photo_indexes):
    root, photos, with_views, without = photo_indexes
    assert with_views.views == (0.7,) and without.views == ()
    det = get_detector("phash")
    moon = photos["moon"].convert("RGB")
    w, h = moon.size
    # 71% of the area, off centre, then downscaled: an App. C-style crop of the corpus photograph
    copy = moon.crop((int(w * .1), int(h * .06), int(w * .1) + int(w * .84), int(h * .06) + int(h * .84)))
    copy = copy.resize((int(w * .6), int(h * .6)))
    vector = det.embed(prepare(det, copy)[0][None])
    threshold = det.info.default_threshold
    found = search(load_index(root / "with"), ["copy"], vector, k=3)
    assert found.ids[0, 0] == "moon.png" and found.similarities[0, 0] >= threshold
    plain = search(load_index(root / "without"), ["copy"], vector, k=len(CORPUS))
    moon_sim = plain.similarities[0, list(plain.ids[0]).index("moon.png")]
    assert moon_sim < threshold - 0.15  # the whole photograph's hash is far from the crop's
    # the exact stream over the shards' view files answers the same
    streamed = search(load_index(root / "with", load_faiss=False), ["copy"], vector, k=3)
    assert list(streamed.ids[0]) == list(found.ids[0])
    np.testing.assert_array_equal(streamed.similarities, found.similarities)


def test_check_catches_a_changed_view_file(photo_indexes, tmp_path):
    import shutil

    root = photo_indexes[0]
    copy = tmp_path / "idx"
    shutil.copytree(root / "with", copy)
    check_index(copy)
    view_file = copy / "views" / "shard-000000.npy"
    data = bytearray(view_file.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last vector: same size, other content
    view_file.write_bytes(bytes(data))
    with pytest.raises(IndexDamagedError, match="views/shard-000000.npy"):
        check_index(copy)
    view_file.unlink()
    with pytest.raises(IndexDamagedError, match="views/shard-000000.npy is missing"):
        load_index(copy)


def _brute_force_max(queries, primary, views, k, metric):
    """Exact top-k by the best of each item's vectors, similarity descending then row ascending."""
    allv = [primary] + [views[:, v] for v in range(views.shape[1])]
    if metric == "hamming":
        def sims(a, b):
            bits = np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(axis=2)
            return 1.0 - bits / (8 * a.shape[1])
    else:
        def sims(a, b):
            return a @ b.T
    best = np.max(np.stack([sims(queries, v) for v in allv]), axis=0).astype(np.float32)
    rows = np.arange(best.shape[1])
    order = np.array([np.lexsort((rows, -row))[:k] for row in best])
    return np.take_along_axis(best, order, axis=1), order


@pytest.mark.parametrize("metric", ["hamming", "cosine"])
def test_search_with_views_is_brute_force_max_over_views(tmp_path, metric):
    rng = np.random.default_rng(7)
    n, k, n_views = 700, 6, 2
    if metric == "hamming":
        vectors = rng.integers(0, 256, (n, 8), dtype=np.uint8)
        views = rng.integers(0, 256, (n, n_views, 8), dtype=np.uint8)
        queries = rng.integers(0, 256, (40, 8), dtype=np.uint8)
        queries[:5] = views[:5, 1]  # some queries equal a view exactly
    else:
        def unit(x):
            return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
        vectors, views, queries = unit(rng.normal(size=(n, 16))), unit(rng.normal(size=(n, n_views, 16))), \
            unit(rng.normal(size=(40, 16)))
    index_from_vectors(tmp_path / "idx", vectors, metric=metric, shard_size=256, views=(0.7, 0.5),
                       view_vectors=views)
    want_sims, want_rows = _brute_force_max(queries, vectors, views, k, metric)
    ids = [f"q{i}" for i in range(len(queries))]
    tol = 0 if metric == "hamming" else 1e-5
    for corpus in (load_index(tmp_path / "idx"), load_index(tmp_path / "idx", load_faiss=False)):
        got = search(corpus, ids, queries, k=k)
        np.testing.assert_allclose(got.similarities, want_sims, atol=tol)
        if metric == "hamming":  # ties (common in Hamming) broken by row, lowest first
            np.testing.assert_array_equal(got.ids.astype(int), want_rows)
        floor = float(np.median(want_sims[:, 0]))
        cut = search(corpus, ids, queries, k=k, min_similarity=floor)
        keep = want_sims >= np.float32(floor) - tol
        np.testing.assert_allclose(np.where(keep, cut.similarities, 0), np.where(keep, want_sims, 0), atol=tol)
        assert np.isnan(cut.similarities[~keep]).all() if metric == "hamming" else True


def test_phash_indexes_a_centre_view_by_default_other_detectors_none(photo_indexes, tmp_path):
    _, photos, with_views, without = photo_indexes
    assert with_views.views == (0.7,) and without.views == ()
    (tmp_path / "c").mkdir()
    photos["moon"].convert("RGB").save(tmp_path / "c" / "moon.png")
    assert build_index([str(tmp_path / "c")], tmp_path / "i", IndexSettings(detector="tiny", workers=0)).views == ()


def test_an_index_without_views_loads_and_searches_as_before(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (20, 8), dtype=np.uint8)
    index_from_vectors(tmp_path / "idx", vectors, metric="hamming")
    # a manifest written before views existed has no "views" entry
    path = tmp_path / "idx" / "manifest.json"
    raw = json.loads(path.read_text())
    raw.pop("views")
    path.write_text(json.dumps(raw))
    corpus = load_index(tmp_path / "idx")
    assert load_manifest(tmp_path / "idx").views == () and corpus.view_indexes == ()
    assert not (tmp_path / "idx" / "views").exists()
    got = search(corpus, [str(i) for i in range(20)], queries, k=4)
    sims, rows = search_index(corpus.index, queries, 4, "hamming", 64)
    np.testing.assert_array_equal(got.similarities, sims)
    np.testing.assert_array_equal(got.ids.astype(int), rows)
    check_index(tmp_path / "idx")


def test_views_are_checked(tmp_path):
    with pytest.raises(IndexDirError, match="views"):
        index_from_vectors(tmp_path / "a", np.zeros((3, 8), np.uint8), metric="hamming", views=(0.7, 0.7),
                           view_vectors=np.zeros((3, 2, 8), np.uint8))
    with pytest.raises(IndexDirError, match="views"):
        build_index(["/nonexistent"], tmp_path / "b", IndexSettings(views=(1.5,)))


def test_queries_search_their_centre_view_against_an_index_with_views(photo_indexes, tmp_path):
    from overlap_audit.match import match_eval_sets, open_corpus
    from overlap_audit.settings import MatchSettings

    root, photos = photo_indexes[0], photo_indexes[1]
    (tmp_path / "ev").mkdir()
    for name in ("moon", "camera"):
        im = photos[name].convert("RGB")
        w, h = im.size
        im.crop((int(w * .1), int(h * .06), int(w * .94), int(h * .9))).save(tmp_path / "ev" / f"{name}.png")
    got = {}
    for which, settings in (("with", MatchSettings(workers=0)),
                            ("plain", MatchSettings(workers=0, query_views=(), query_turns=())),
                            ("without", MatchSettings(workers=0))):
        index = root / ("without" if which == "without" else "with")
        m = match_eval_sets(open_corpus(index, settings), [("ev", str(tmp_path / "ev"))], settings)["ev"]
        got[which] = m
    crops = MatchSettings().query_crops()
    assert got["with"].embeddings.crop_vectors.shape == (2, len(crops), 8)  # each query's centre crops and turns
    assert got["without"].embeddings.crop_vectors is None  # no query views without corpus views
    assert got["plain"].embeddings.crop_vectors is None
    for which in ("with", "plain"):
        assert list(got[which].neighbors.ids[:, 0]) == ["camera.png", "moon.png"]
    # the best of the views is kept, never a worse one
    assert (got["with"].neighbors.similarities[:, 0] >= got["plain"].neighbors.similarities[:, 0]).all()
    assert set(got["with"].neighbors.views) <= {"trimmed", "whole", "view90", "view80", "view70", "turn-3", "turn+3",
                                                "turn-5", "turn+5"}


def test_a_turned_copy_is_nearer_through_the_query_turned_back(photo_indexes, tmp_path):
    """A copy turned by 4 degrees: the query's turned views find its source more similar than its plain views
    do, and the report names the view it came through."""
    from overlap_audit.match import match_eval_sets, open_corpus
    from overlap_audit.settings import MatchSettings

    root, photos = photo_indexes[0], photo_indexes[1]
    (tmp_path / "ev").mkdir()
    for name in ("chelsea", "camera"):
        im = photos[name].convert("RGB")
        w, h = im.size
        turned = im.rotate(4, resample=Image.Resampling.BICUBIC, expand=False)
        turned.crop((int(w * .08), int(h * .08), int(w * .92), int(h * .92))).save(tmp_path / "ev" / f"{name}.png")
    got = {}
    for which, settings in (("turns", MatchSettings(workers=0)), ("none", MatchSettings(workers=0, query_turns=())),
                            ("raw", MatchSettings(workers=0, view_discount=0.0))):
        got[which] = match_eval_sets(open_corpus(root / "with", settings), [("ev", str(tmp_path / "ev"))],
                                     settings)["ev"].neighbors
    assert list(got["turns"].ids[:, 0]) == ["camera.png", "chelsea.png"]
    assert (got["turns"].similarities[:, 0] > got["none"].similarities[:, 0]).all()
    assert set(got["turns"].views) <= {"turn-3", "turn-5"}  # turned back: clockwise
    # a match through a view counts view_discount of the gap to phash's threshold (9 of 64 bits) less
    assert got["raw"].views == got["turns"].views
    np.testing.assert_allclose(got["raw"].similarities[:, 0] - got["turns"].similarities[:, 0], 0.12 * 9 / 64,
                               atol=1e-6)


def test_index_command_refuses_views_and_no_views(tmp_path):
    from click.testing import CliRunner

    from overlap_audit.cli import main

    result = CliRunner().invoke(main, ["index", str(tmp_path), "--out", str(tmp_path / "i"), "--views", "0.7",
                                       "--no-views"])
    assert result.exit_code != 0 and "--views or --no-views" in result.output


def test_a_rebuilt_index_keeps_its_views_in_the_next_generation(tmp_path):
    from overlap_audit.index import finish_from_shards

    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (200, 8), dtype=np.uint8)
    views = rng.integers(0, 256, (200, 1, 8), dtype=np.uint8)
    index_from_vectors(tmp_path / "idx", codes, metric="hamming", views=(0.7,), view_vectors=views)
    queries = views[:10, 0]
    before = search(load_index(tmp_path / "idx"), [str(i) for i in range(10)], queries, k=3)
    m = finish_from_shards(tmp_path / "idx", index_type="flat")
    assert m.generation == 2 and m.views == (0.7,) and "index.g2.view70.faiss" in m.files
    assert not (tmp_path / "idx" / "index.view70.faiss").exists()  # the replaced generation's view index
    check_index(tmp_path / "idx")
    after = search(load_index(tmp_path / "idx"), [str(i) for i in range(10)], queries, k=3)
    np.testing.assert_array_equal(after.similarities, before.similarities)
    assert (after.similarities[:, 0] == 1).all()  # each query is an item's view


def test_a_mih_index_answers_its_views_by_radius_search_as_flat_search_does(tmp_path, corpus_dir, monkeypatch):
    """A mih index with corpus views holds multi-index hash tables for each view too: a search from the
    decision's floor reads the views' tables (radius search), with the neighbours a flat index with the same
    views gives above that floor."""
    import importlib

    from overlap_audit.index import mih
    from overlap_audit.index.views import view_tables_name

    search_module = importlib.import_module("overlap_audit.index.search")
    tables = build_index([str(corpus_dir)], tmp_path / "mih", IndexSettings(workers=0, index_type="mih"))
    flat = build_index([str(corpus_dir)], tmp_path / "flat", IndexSettings(workers=0))
    assert tables.views == flat.views == (0.7,)
    assert view_tables_name(tables.index_file, 0.7) in tables.files
    monkeypatch.setattr(mih, "SCAN_COST", 1e6)  # 120 items: made dear so that the tables answer here
    answered = []
    real = search_module.radius_search

    def counted(t, queries, k, radius, **kw):
        answered.append(radius)
        return real(t, queries, k, radius, **kw)

    monkeypatch.setattr(search_module, "radius_search", counted)
    det = get_detector("phash")
    from overlap_audit.demos.synthetic import bundled_photos, tiles

    queries = det.embed_images([t.resize((100, 90)) for t in tiles(bundled_photos()["coffee"], 4, 128)[:8]])
    ids = [str(i) for i in range(len(queries))]
    for floor in (1 - 9 / 64, 1 - 22 / 64):
        got = search(load_index(tmp_path / "mih"), ids, queries, k=5, min_similarity=floor)
        want = search(load_index(tmp_path / "flat"), ids, queries, k=5, min_similarity=floor)
        np.testing.assert_array_equal(got.similarities, want.similarities)
        np.testing.assert_array_equal(got.ids, want.ids)
    assert len(answered) == 4  # the primary tables and the view's, at each floor
    check_index(tmp_path / "mih")


@pytest.mark.parametrize("size", [(300, 100), (100, 300), (64, 64), (2000, 1200)])
def test_a_turned_view_keeps_its_shape_and_no_filled_corner(size):
    from overlap_audit.detectors.base import turned_crop

    image = Image.new("L", size, 200)
    for angle in (-5.0, 3.0, 15.0):
        got = turned_crop(image, angle)
        a = np.asarray(got)
        assert a.min() == a.max() == 200  # nothing of the black the turn fills the corners with
        assert got.width / got.height == pytest.approx(size[0] / size[1], rel=0.05)
        assert got.width >= 0.5 * min(size[0], 512 * size[0] / max(size))  # the largest cut, not a sliver


def test_query_turns_are_checked():
    from overlap_audit.errors import SettingsError
    from overlap_audit.settings import MatchSettings, Turn

    for bad in ((0.0,), (20.0,), (-3.0,)):
        with pytest.raises(SettingsError, match="query_turns"):
            MatchSettings(query_turns=bad)
    with pytest.raises(SettingsError, match="view_discount"):
        MatchSettings(view_discount=1.5)
    assert MatchSettings(query_views=(0.8,), query_turns=(4.0,)).query_crops() == (0.8, Turn(-4.0), Turn(4.0))
    assert Turn(-3.0).tag == "turn-3" and Turn(2.5).tag == "turn+2.5"
