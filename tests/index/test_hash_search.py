"""Radius search over 64-bit hashes by multi-index hashing (index/mih.py) against brute force, and the mih
index type's choice and search path (index/ann.py, index/search.py)."""

import numpy as np
import pytest

from overlap_audit.errors import IndexDamagedError, IndexDirError
from overlap_audit.index.ann import MIH_MIN_ITEMS, choose_index, hash_radius, new_index
from overlap_audit.index.mih import (as_words, build_mih, choose_substrings, flat_codes, radius_search, read_mih, table_radii,
                                     tables_name, write_mih)
from overlap_audit.index.search import search_rows
from overlap_audit.values import DetectorInfo

PHASH = DetectorInfo(spec="phash", name="phash", version="1", dim=64, metric="hamming",
                     default_threshold=1 - 9 / 64)


def flip(words: np.ndarray, counts: np.ndarray, rng) -> np.ndarray:
    """Each word with ``counts[i]`` distinct random bits flipped."""
    out = words.copy()
    for i, c in enumerate(counts):
        for b in rng.choice(64, int(c), replace=False):
            out[i] ^= np.uint64(1) << np.uint64(int(b))
    return out


def as_codes(words: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(words).view(np.uint8).reshape(-1, 8)


def brute_force(queries: np.ndarray, corpus: np.ndarray, k: int, radius: int):
    """The k nearest within radius by distance then row, padded with −1: the contract, computed directly."""
    d = np.bitwise_count(queries[:, None] ^ corpus[None, :]).astype(np.int64)
    dist = np.full((len(queries), k), -1, np.int32)
    rows = np.full((len(queries), k), -1, np.int64)
    for i in range(len(queries)):
        cand = np.flatnonzero(d[i] <= radius)
        cand = cand[np.lexsort((cand, d[i][cand]))][:k]
        dist[i, :len(cand)], rows[i, :len(cand)] = d[i][cand], cand
    return dist, rows


@pytest.fixture(scope="module")
def uniform():
    rng = np.random.default_rng(0)
    corpus = rng.integers(0, 2 ** 64, 4000, dtype=np.uint64)
    picked = rng.choice(len(corpus), 150, replace=False)
    queries = np.concatenate([flip(corpus[picked], rng.integers(0, 20, 150), rng),
                              rng.integers(0, 2 ** 64, 50, dtype=np.uint64)])
    return corpus, queries


@pytest.fixture(scope="module")
def clustered():
    """Codes in 20 tight clusters (each member within 0–6 bits of its centre), exact duplicates among them,
    and queries at the centres: many items at equal distances, so the tie rule decides."""
    rng = np.random.default_rng(1)
    centres = rng.integers(0, 2 ** 64, 20, dtype=np.uint64)
    members = np.repeat(centres, 150)
    corpus = flip(members, rng.integers(0, 7, len(members)), rng)
    corpus[500:530] = corpus[3]
    queries = flip(centres, rng.integers(0, 4, 20), rng)
    return corpus, np.concatenate([queries, corpus[[3, 700, 2999]]])


@pytest.mark.parametrize("data", ["uniform", "clustered"])
@pytest.mark.parametrize("m", [3, 4, 7, 16])
def test_radius_search_equals_brute_force(request, data, m):
    corpus, queries = request.getfixturevalue(data)
    mih = build_mih(corpus, m)
    for radius in (0, 9, 18):
        for k in (1, 5, 40):
            got = radius_search(mih, queries, k, radius, batch=37)
            want = brute_force(queries, corpus, k, radius)
            np.testing.assert_array_equal(got[1], want[1], err_msg=f"rows, radius {radius}, k {k}")
            np.testing.assert_array_equal(got[0], want[0], err_msg=f"distances, radius {radius}, k {k}")


def test_every_item_within_radius_is_found_in_small_candidate_blocks(clustered, monkeypatch):
    # a cluster's run is longer than the block: the runs are split across passes and must still all be read
    import overlap_audit.index.mih as mih_module

    monkeypatch.setattr(mih_module, "CANDIDATE_BLOCK", 64)
    corpus, queries = clustered
    got = radius_search(build_mih(corpus, 3), queries, 100, 12)
    want = brute_force(queries, corpus, 100, 12)
    np.testing.assert_array_equal(got[1], want[1])
    assert (got[1][:20, -1] >= 0).all()  # the clusters hold more than k items within the radius


def test_table_radii_cover_the_radius():
    # the pigeonhole bound: one more than each table's radius, summed, exceeds the radius
    for m in range(1, 9):
        for radius in range(0, 30):
            assert sum(t + 1 for t in table_radii(m, radius)) == radius + 1


def test_choose_substrings_follows_corpus_size():
    # longer substrings (fewer tables) as the corpus grows, about log2(n) bits each at small radii
    ms = [choose_substrings(n, 9) for n in (10 ** 4, 10 ** 6, 10 ** 8)]
    assert ms == sorted(ms, reverse=True)
    assert ms[-1] == 3


def test_packed_codes_and_words_agree(uniform):
    corpus, queries = uniform
    a = radius_search(build_mih(as_codes(corpus), 3), as_codes(queries), 5, 9)
    b = radius_search(build_mih(corpus, 3), queries, 5, 9)
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(IndexDirError, match="64-bit"):
        as_words(np.zeros((3, 32), np.uint8))


def test_tables_round_trip_and_damage(tmp_path, uniform):
    corpus, queries = uniform
    mih = build_mih(corpus, 3)
    path = tmp_path / tables_name("index.g2.faiss")
    assert path.name == "index.g2.mih"
    write_mih(path, corpus, 3)  # built again, one table at a time, straight to the file
    back = read_mih(path)
    assert len(back) == len(corpus) and back.widths == mih.widths and back.shifts == mih.shifts
    for group in ("codes", "rows", "starts"):
        for got, want in zip(getattr(back, group), getattr(mih, group), strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(radius_search(back, queries, 5, 9)[1], radius_search(mih, queries, 5, 9)[1])
    data = path.read_bytes()
    (tmp_path / "short.mih").write_bytes(data[:len(data) // 2])
    with pytest.raises(IndexDamagedError):
        read_mih(tmp_path / "short.mih")
    (tmp_path / "other.mih").write_bytes(b"not tables" * 500)
    with pytest.raises(IndexDamagedError):
        read_mih(tmp_path / "other.mih")


@pytest.mark.parametrize("data", ["uniform", "clustered"])
def test_mih_search_rows_equals_flat_within_the_radius(tmp_path, request, data):
    corpus, queries = request.getfixturevalue(data)
    codes = as_codes(corpus)
    plan = choose_index("mih", len(corpus), PHASH, None)
    index = new_index(plan, PHASH)
    index.add(codes)
    write_mih(tmp_path / "index.mih", flat_codes(index), plan.params["substrings"])
    np.testing.assert_array_equal(flat_codes(index), codes)
    for min_similarity in (1 - 9 / 64, 1 - 18 / 64, 1.0):
        flat = search_rows(index, "flat", {}, as_codes(queries), 5, PHASH, tmp_path, min_similarity=min_similarity)
        mih = search_rows(index, "mih", plan.params, as_codes(queries), 5, PHASH, tmp_path,
                          min_similarity=min_similarity, tables_file="index.mih")
        np.testing.assert_array_equal(mih[1], flat[1])
        np.testing.assert_array_equal(mih[0], flat[0])
        found = flat[1] >= 0
        assert (flat[0][found] >= np.float32(min_similarity)).all()
        assert np.isneginf(flat[0][~found]).all()
    # without a radius a mih index is the flat index: every query gets k neighbours
    full = search_rows(index, "mih", plan.params, as_codes(queries), 5, PHASH, tmp_path)
    assert (full[1] >= 0).all()


def test_choose_index_picks_mih_for_large_hash_corpora():
    plan = choose_index("auto", MIH_MIN_ITEMS, PHASH, None)
    assert plan.index_type == "mih" and not plan.approximate
    assert plan.params["radius"] == 9 == hash_radius(PHASH.default_threshold, 64)
    assert plan.params["bytes_per_item"] == 8 + plan.params["substrings"] * 12
    assert choose_index("auto", MIH_MIN_ITEMS - 1, PHASH, None).index_type == "flat"
    # over the budget, auto falls back to the scan types
    assert choose_index("auto", 10 ** 8, PHASH, "1GB").index_type != "mih"
    wide = DetectorInfo(spec="phash256", name="phash", version="1", dim=256, metric="hamming",
                        default_threshold=1 - 43 / 256)
    assert choose_index("auto", 10 ** 7, wide, None).index_type == "flat"
    with pytest.raises(IndexDirError, match="64-bit"):
        choose_index("mih", 10, wide, None)


def test_substrings_too_wide_for_a_directory_are_refused(uniform):
    with pytest.raises(IndexDirError, match="directory"):
        build_mih(uniform[0], 2)


def test_an_index_built_as_mih_checks_and_answers_as_flat(tmp_path):
    """index_from_vectors(index_type="mih") writes the tables beside the flat index, records them in the
    manifest, checks as intact, and a search within the radius answers as the flat index does."""
    from overlap_audit.index import check_index, index_from_vectors, load_index, search

    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, size=(3000, 8), dtype=np.uint8)
    keys = [f"k{i}" for i in range(len(codes))]
    for name, kind in (("m", "mih"), ("f", "flat")):
        index_from_vectors(tmp_path / name, codes, keys=keys, metric="hamming", index_type=kind)
    mih = load_index(tmp_path / "m")
    assert mih.manifest.index_type == "mih" and any(f.endswith(".mih") for f in mih.manifest.files)
    assert check_index(tmp_path / "m").n_files == check_index(tmp_path / "f").n_files + 1
    queries = codes[:50].copy()
    queries[:, 0] ^= 0b101  # two bits flipped
    ids = [f"q{i}" for i in range(len(queries))]
    got = search(mih, ids, queries, k=5, device="cpu", min_similarity=1 - 9 / 64)
    want = search(load_index(tmp_path / "f"), ids, queries, k=5, device="cpu", min_similarity=1 - 9 / 64)
    assert np.array_equal(got.ids, want.ids) and got.ids[0, 0] == "k0"
    assert np.allclose(got.similarities, want.similarities, equal_nan=True)


def test_tables_of_an_empty_flat_index(tmp_path):
    """An index with nothing indexed (every item skipped) still gets its (empty) tables, which search finds
    nothing in."""
    import faiss

    empty = faiss.IndexBinaryFlat(64)
    codes = flat_codes(empty)
    assert codes.shape == (0, 8) and codes.dtype == np.uint8
    write_mih(tmp_path / "index.mih", codes, 3)
    back = read_mih(tmp_path / "index.mih")
    assert len(back) == 0
    dist, rows = radius_search(back, np.zeros((2, 8), np.uint8), 5, 9)
    assert (rows < 0).all()
