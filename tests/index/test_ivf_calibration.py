"""IVF-PQ's nprobe and shortlist, calibrated at build time from the recall of near-duplicate copies."""

import json

import numpy as np
import pytest

from overlap_audit.index import index_from_vectors, load_index, search
from overlap_audit.index.ann import RECALL_TARGET, calibrate_probes


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n, dim, rng):
    """Unit vectors in 150 clusters of unequal sizes around a shared mean direction."""
    centres = 0.4 * unit(rng.standard_normal((1, dim))) + unit(rng.standard_normal((150, dim)))
    which = rng.choice(150, n, p=rng.dirichlet(np.ones(150)))
    return unit(centres[which] + 0.6 * unit(rng.standard_normal((n, dim))))


def copies(vectors, rng, cos):
    noise = rng.standard_normal(vectors.shape).astype(np.float32)
    noise = unit(noise - (noise * vectors).sum(axis=1, keepdims=True) * vectors)
    c = cos[:, None].astype(np.float32)
    return unit(c * vectors + np.sqrt(1 - c * c) * noise)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    rng = np.random.default_rng(5)
    corpus = clustered(30_000, 64, rng)
    rows = rng.choice(len(corpus), 1000, replace=False)
    recall_queries = copies(corpus[rows], rng, rng.uniform(0.85, 0.99, len(rows)))
    root = tmp_path_factory.mktemp("ivf")
    flat = index_from_vectors(root / "flat", corpus, index_type="flat", shard_size=5000)
    ivf = index_from_vectors(root / "ivf", corpus, index_type="ivfpq", shard_size=5000,
                             recall_queries=(rows, recall_queries))
    fresh_rows = rng.choice(len(corpus), 400, replace=False)  # other copies, not seen by the calibration
    fresh = copies(corpus[fresh_rows], np.random.default_rng(9), rng.uniform(0.85, 0.99, 400))
    return root, flat, ivf, corpus, fresh


def test_calibration_reaches_the_target_with_a_fraction_of_the_lists(built):
    _, _, m, _, _ = built
    cal = m.extra["recall"]["calibration"]
    params = m.extra["index_params"]
    assert cal["reached"] and cal["calibration_lower_bound"] >= RECALL_TARGET
    assert cal["n_calibration_queries"] == 500 and m.extra["recall"]["n_queries"] == 500
    assert 1 <= params["nprobe"] < params["nlist"]  # not the exhaustive scan
    # fewer lists at the chosen shortlist missed more copies
    tried = {(p, s): r for p, s, r in cal["trials"]}
    assert all(tried[(p, params["shortlist"])] < cal["calibration_recall_at_1"] for p in (1, 2, 4, 8)
               if p < params["nprobe"])
    # measured on the other half of the copies
    assert m.extra["recall"]["recall_at_1"] >= 0.98


def test_the_manifest_records_the_choice_and_search_uses_it(built):
    root, _, m, _, _ = built
    data = json.loads((root / "ivf" / "manifest.json").read_text())
    cal = data["extra"]["recall"]["calibration"]
    assert data["extra"]["index_params"]["nprobe"] == cal["nprobe"]
    assert data["extra"]["index_params"]["shortlist"] == cal["shortlist"]
    assert data["extra"]["index_params"]["calibrated"] is True
    assert load_index(root / "ivf").params["nprobe"] == cal["nprobe"]


def test_answers_on_fresh_planted_copies_equal_exact_search(built):
    root, _, _, corpus, fresh = built
    ids = [str(i) for i in range(len(fresh))]
    exact = search(load_index(root / "flat"), ids, fresh, k=5)
    approx = search(load_index(root / "ivf"), ids, fresh, k=5)
    same = approx.ids[:, 0] == exact.ids[:, 0]
    assert same.mean() >= 0.97
    # a returned similarity is always the exact one
    rows = approx.ids[:, 0].astype(int)
    np.testing.assert_allclose(approx.similarities[:, 0], (fresh * corpus[rows]).sum(axis=1), atol=1e-5)


def test_calibrate_probes_picks_the_cheapest_pair_that_reaches_the_target():
    best = np.ones(100, np.float32)

    def candidates(nprobe, shortlist):
        # query q's nearest item appears at position q % 8 of the candidates once nprobe >= 4 (q < 99 only)
        sims = np.zeros((100, shortlist), np.float32)
        if nprobe >= 4:
            for q in range(99):
                sims[q, q % 8] = 1.0
        return sims

    # 99 of 100 found: recall 0.99, its 95% lower bound 0.953
    got = calibrate_probes(candidates, best, n=10_000, nlist=64, shortlists=(1, 4, 8, 16), target=0.95)
    assert (got["nprobe"], got["shortlist"], got["reached"]) == (4, 8, True)
    assert got["calibration_recall_at_1"] == pytest.approx(0.99)
    assert got["calibration_lower_bound"] == pytest.approx(0.9534, abs=1e-3)
    missed = calibrate_probes(candidates, best, n=10_000, nlist=64, shortlists=(1, 4, 8, 16), target=0.99)
    assert not missed["reached"] and (missed["nprobe"], missed["shortlist"]) == (4, 8)
