"""Index types, recall measurement and exact streaming (corpus scale), on synthetic embeddings."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from overlap_audit.index.ann import choose_index, parse_bytes
from overlap_audit.errors import IndexDirError
from overlap_audit.index import index_from_vectors, load_index, search
from overlap_audit.values import DetectorInfo


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def float_corpus():
    rng = np.random.default_rng(0)
    corpus = unit(rng.standard_normal((6000, 64), dtype=np.float32))
    corpus[100:140] = corpus[7]  # exact duplicates: ties the flat and streamed searches must break alike
    rows = rng.choice(6000, 300, replace=False)
    queries = unit(corpus[rows] + 0.05 * rng.standard_normal((300, 64), dtype=np.float32))
    return corpus, rows, queries


@pytest.fixture(scope="module")
def built_float(tmp_path_factory, float_corpus):
    corpus, rows, queries = float_corpus
    root = tmp_path_factory.mktemp("ann")
    out = {}
    for kind in ("flat", "ivfpq", "hnsw"):
        out[kind] = index_from_vectors(root / kind, corpus, index_type=kind, shard_size=1000,
                                       recall_queries=(rows[:200], queries[:200]))
    return root, out


def test_each_index_type_builds_loads_and_searches(built_float, float_corpus):
    root, manifests = built_float
    corpus, rows, queries = float_corpus
    exact = load_index(root / "flat")
    truth = search(exact, [str(i) for i in range(300)], queries, k=5)
    for kind, m in manifests.items():
        data = json.loads((root / kind / "manifest.json").read_text())
        assert data["index_type"] == kind and data["extra"]["index_params"]["bytes_per_item"] > 0
        idx = load_index(root / kind)
        nb = search(idx, [str(i) for i in range(300)], queries, k=5)
        found = (nb.ids[:, 0] == truth.ids[:, 0]).mean()
        assert found >= 0.9, (kind, found)
        # whatever an approximate index returns, its similarity is the exact one
        for q in range(20):
            for j in range(5):
                row = int(nb.ids[q, j])
                assert nb.similarities[q, j] == pytest.approx(float(queries[q] @ corpus[row]), abs=1e-5)
    assert manifests["ivfpq"].extra["index_params"]["bytes_per_item"] < manifests["flat"].extra["index_params"][
        "bytes_per_item"] < manifests["hnsw"].extra["index_params"]["bytes_per_item"]


def test_recall_is_measured_and_recorded(built_float):
    _, manifests = built_float
    assert manifests["flat"].extra["recall"]["exact"] is True
    for kind, measured in (("ivfpq", 100), ("hnsw", 200)):  # ivfpq: the half not used to calibrate it
        r = manifests[kind].extra["recall"]
        assert r["n_queries"] == measured and 0.8 <= r["recall_at_1"] <= 1.0 and 0 < r["recall_at_k"] <= 1.0
        assert r["source_found_at_k_exact"] >= 0.99  # a few sources hide among 41 exact duplicates


@pytest.mark.parametrize("metric", ["cosine", "hamming"])
def test_streaming_equals_flat_exactly(tmp_path, metric):
    rng = np.random.default_rng(1)
    if metric == "hamming":
        corpus = rng.integers(0, 4, size=(4000, 8), dtype=np.uint8)  # few distinct codes: ties everywhere
        queries = rng.integers(0, 4, size=(150, 8), dtype=np.uint8)
    else:
        corpus = unit(rng.standard_normal((4000, 32), dtype=np.float32))
        corpus[500:600] = corpus[3]
        queries = np.concatenate([corpus[[3, 10, 2000]], unit(rng.standard_normal((147, 32), dtype=np.float32))])
    index_from_vectors(tmp_path / "i", corpus, metric=metric, index_type="flat", shard_size=333)
    idx = load_index(tmp_path / "i")
    ids = [str(i) for i in range(len(queries))]
    flat = search(idx, ids, queries, k=7)
    streamed = search(idx, ids, queries, k=7, exact_stream=True)
    assert (flat.ids == streamed.ids).all()
    np.testing.assert_array_equal(flat.similarities, streamed.similarities)
    # the tie rule: equal similarities in corpus order
    for q in range(len(queries)):
        sims, rows = flat.similarities[q], flat.ids[q].astype(int)
        for j in range(6):
            assert sims[j] > sims[j + 1] or (sims[j] == sims[j + 1] and rows[j] < rows[j + 1])


def test_binary_index_types(tmp_path):
    rng = np.random.default_rng(2)
    corpus = rng.integers(0, 256, size=(3000, 8), dtype=np.uint8)
    queries = corpus[:100].copy()
    queries[:, 0] ^= 1
    for kind in ("ivfpq", "hnsw"):
        m = index_from_vectors(tmp_path / kind, corpus, metric="hamming", index_type=kind,
                               recall_queries=(np.arange(100), queries))
        assert m.extra["faiss_index"] in ("IndexBinaryIVF", "IndexBinaryHNSW")
        nb = search(load_index(tmp_path / kind), [str(i) for i in range(100)], queries, k=3)
        assert (nb.ids[:, 0] == np.array([str(i) for i in range(100)])).mean() >= 0.9
        assert nb.similarities[0, 0] == pytest.approx(1 - 1 / 64)


def test_auto_choice_and_budget():
    info = DetectorInfo("x", "x", "1", 256, "cosine", 0.9)
    assert choose_index("auto", 10_000, info, "8GB").index_type == "flat"
    big = choose_index("auto", 10_000_000, info, "1GB")
    assert big.index_type == "ivfpq" and "over the budget" in big.reason and big.params["nlist"] > 1000
    assert choose_index("auto", 500, info, "1KB").index_type == "flat"  # too small to train: exact anyway
    with pytest.raises(IndexDirError, match="at least"):
        choose_index("ivfpq", 500, info, None)
    assert parse_bytes("8GB") == 8 * 1024 ** 3 and parse_bytes("512MiB") == 512 * 1024 ** 2
    with pytest.raises(IndexDirError, match="not a size"):
        parse_bytes("lots")


def test_streaming_memory_stays_bounded(tmp_path):
    """A corpus four times the memory budget streams with memory bounded by one shard (peak RSS measured)."""
    rng = np.random.default_rng(3)
    n, dim = 200_000, 128  # 100 MB of float32 vectors, in 10 MB shards
    index_from_vectors(tmp_path / "big", unit(rng.standard_normal((n, dim), dtype=np.float32)), index_type="flat",
                       shard_size=20_000)
    code = textwrap.dedent(f"""
        import resource, numpy as np
        from overlap_audit.index import load_index, search
        corpus = load_index({str(tmp_path / 'big')!r}, load_faiss=False)
        q = np.random.default_rng(0).standard_normal((1000, {dim}), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        search(corpus, [str(i) for i in range(1)], q[:1], k=5, exact_stream=True)  # warm imports and faiss
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        nb = search(corpus, [str(i) for i in range(1000)], q, k=10, exact_stream=True)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
    """)
    grown_mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown_mb < 25, f"streaming grew the process by {grown_mb:.1f} MB for a 100 MB corpus"
