"""Ray: a local cluster on this machine gives exactly the single-process results."""

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from overlap_audit.index import build_index, index_from_vectors, load_index, search  # noqa: E402
from overlap_audit.settings import IndexSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from overlap_audit.index.ray import connect

    connect("local")
    yield
    ray.shutdown()


def shard_table(path):
    rows = []
    for shard in sorted((path / "shards").glob("shard-*.parquet")):
        t = pq.read_table(shard, columns=["key", "vector", "skip_reason", "query_vector"])
        rows += list(zip(*(t[c].to_pylist() for c in t.column_names)))
    return rows


def test_ray_index_equals_single_process_and_resumes(cluster, tmp_path, corpus_dir):
    single = build_index([str(corpus_dir)], tmp_path / "single", IndexSettings(workers=0, shard_size=40))
    seen = []

    class Stop(Exception):
        pass

    def stop_after_first(shard, _):
        seen.append(shard)
        raise Stop

    with pytest.raises(Stop):
        build_index([str(corpus_dir)], tmp_path / "ray", IndexSettings(shard_size=40, ray_address="local"),
                    on_shard=stop_after_first)
    finished = sorted(p.name for p in (tmp_path / "ray" / "shards").glob("shard-*.parquet"))
    assert finished and not (tmp_path / "ray" / "manifest.json").exists()
    # whichever actor finished first, the shards in the index are a run from 0 (later ones wait as pending)
    assert seen == [0] and finished == [f"shard-{i:06d}.parquet" for i in range(len(finished))]
    distributed = build_index([str(corpus_dir)], tmp_path / "ray",
                              IndexSettings(shard_size=40, ray_address="local", resume=True))
    assert shard_table(tmp_path / "single") == shard_table(tmp_path / "ray")
    assert distributed.n_indexed == single.n_indexed and distributed.n_skipped == single.n_skipped
    assert list(load_index(tmp_path / "single").keys) == list(load_index(tmp_path / "ray").keys)


def test_ray_streaming_equals_single_process(cluster, tmp_path):
    rng = np.random.default_rng(4)
    corpus = rng.standard_normal((3000, 32)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    corpus[200:260] = corpus[9]
    index_from_vectors(tmp_path / "i", corpus, index_type="flat", shard_size=700)
    idx = load_index(tmp_path / "i")
    queries = np.concatenate([corpus[[9, 1500]], corpus[:40] + 0.01])
    ids = [str(i) for i in range(len(queries))]
    local = search(idx, ids, queries, k=6, exact_stream=True)
    remote = search(idx, ids, queries, k=6, exact_stream=True, ray_address="local")
    assert (local.ids == remote.ids).all()
    # BLAS's sums may differ in the last bit between processes (their thread counts): the neighbours may not
    np.testing.assert_allclose(local.similarities, remote.similarities, rtol=0, atol=1e-6)
