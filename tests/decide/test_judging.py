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


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _tile_pairs(tile_sets) -> list:
    """Pairs of real photo tiles: each corpus tile against a resized copy of itself and against 3 other tiles."""
    from PIL import Image

    from overlap_audit.decide.rule import _Pair

    corpus, other = tile_sets
    pairs = []
    for k, (_, im) in enumerate(corpus[:8]):
        data = _png(im)
        pairs.append(_Pair(_png(im.resize((80, 80), Image.Resampling.BICUBIC)), None, data, None, 10 ** 8,
                           0.8144, 0.83))
        for j in range(1, 4):
            pairs.append(_Pair(_png(other[(k * 3 + j) % len(other)][1]), None, data, None, 10 ** 8, 0.8144, 0.83))
    return pairs


def test_two_judging_runs_share_one_pool_from_two_threads(tile_sets):
    """A report's calibration and its own pairs are judged at once over one pool (``verification_pool``):
    each run, from its own thread, gets every pair's outcome as ``_judge`` gives it alone."""
    import threading

    from overlap_audit.decide.rule import _judge, _judge_all, verification_pool

    pairs = _tile_pairs(tile_sets)
    alone = [_judge(p) for p in pairs]
    assert sum(a[1] is True for a in alone) >= 8  # the resized copies are found
    first, second = pairs[:20], pairs[20:]
    found: dict = {}
    with verification_pool(2) as pool:
        beside = threading.Thread(target=lambda: found.setdefault("first", _judge_all(first, None, False, pool=pool)))
        beside.start()
        found["second"] = _judge_all(second, None, False, pool=pool)
        beside.join(timeout=300)
    assert found["first"][0] + found["second"][0] == alone
    assert not any(found["first"][1]) and not any(found["second"][1])


def test_a_cancelled_pool_stops_the_run_waiting_on_it(tile_sets):
    """When the report fails beside it (``VerifyPool.cancel``), a judging run in another thread stops with
    CancelledError instead of judging the rest."""
    import threading
    import time
    from concurrent.futures import CancelledError

    from overlap_audit.decide.rule import _judge_all, verification_pool

    pairs = _tile_pairs(tile_sets) * 4
    raised: list = []

    def run(pool) -> None:
        try:
            _judge_all(pairs, None, False, pool=pool)
        except CancelledError as exc:
            raised.append(exc)

    with verification_pool(2) as pool:
        beside = threading.Thread(target=run, args=(pool,))
        beside.start()
        time.sleep(0.5)  # most often mid-run; before its first task it stops as well
        pool.cancel()
        beside.join(timeout=300)
    assert not beside.is_alive() and len(raised) == 1


def test_no_pool_for_one_worker():
    from overlap_audit.decide.rule import verification_pool

    for workers in (0, 1):
        with verification_pool(workers) as pool:
            assert pool is None


def test_a_report_judges_its_pairs_beside_calibration_and_decides_as_one_process_does(
        tmp_path, corpus_index, eval_set):
    """With verification calibration cannot move the threshold (``fixed_threshold``), so the report's pairs
    are judged over the workers while calibration runs: every decision, score and calibration estimate is
    the one a report judging in one process (no workers, no thread) makes."""
    import json

    import pandas as pd
    import pyarrow.parquet as pq

    from overlap_audit.api import ReportSettings, run_report
    from overlap_audit.calibrate import fixed_threshold
    from overlap_audit.detectors import get_detector
    from overlap_audit.report import SPLITS
    from overlap_audit.settings import CalibrationSettings, MatchSettings

    default = get_detector("phash").default_threshold
    assert fixed_threshold(default, verifying=True) == default
    assert fixed_threshold(default, verifying=False) is None
    root, planted, clean = eval_set
    predictions = pd.DataFrame({"dataset": "val", "id": planted + clean, "correct": 1})
    out = {}
    for workers in (0, 2):
        run_report(corpus_index, [("val", str(root))],
                   ReportSettings(tmp_path / f"w{workers}", predictions=predictions, cache_dir=tmp_path / f"c{workers}",
                                  calibrate=CalibrationSettings(positives=8, negatives=12, seed=3),
                                  match=MatchSettings(workers=workers)))
        rep = json.loads((tmp_path / f"w{workers}" / "report.json").read_text())
        for d in rep["calibration"]["datasets"].values():
            d.pop("seconds")  # how long it took
        rows = pq.read_table(tmp_path / f"w{workers}" / SPLITS,
                             columns=["id", "overlap", "verify_score", "verified"]).to_pylist()
        out[workers] = (rep["calibration"], rep["verify"]["datasets"], rep["datasets"][0]["threshold"], rows)
    assert out[2] == out[0]
    calibration, verify, threshold, rows = out[2]
    assert calibration["datasets"]["val"]["used"] == threshold == default
    assert verify["val"]["n_pairs"] > 0 and sum(r["overlap"] for r in rows) > 0
