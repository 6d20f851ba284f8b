"""How verification's pairs are judged over worker processes (``rule._judge_all``'s pool)."""

from __future__ import annotations


def _blas_threads(_: int) -> list[int]:
    from threadpoolctl import threadpool_info

    return [d["num_threads"] for d in threadpool_info() if d.get("user_api") == "blas"]


def test_the_verification_workers_run_blas_on_one_thread():
    """A pair's matrices are small: BLAS threads in a worker only wait for each other. The workers keep to
    one thread whether they inherit the limit (fork) or set it themselves; the caller keeps its own."""
    from threadpoolctl import threadpool_info

    from overlap_audit.decide.rule import _pool

    before = [d["num_threads"] for d in threadpool_info() if d.get("user_api") == "blas"]
    with _pool(2) as pool:
        found = list(pool.map(_blas_threads, range(4)))
    assert found and all(n == [1] * len(n) and n for n in found)
    assert [d["num_threads"] for d in threadpool_info() if d.get("user_api") == "blas"] == before
