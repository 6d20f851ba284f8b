"""How verification's pairs are judged over worker processes (``rule._judge_all``'s pool)."""

from __future__ import annotations


def _blas_threads(_: int) -> list[int]:
    from threadpoolctl import threadpool_info

    return [d["num_threads"] for d in threadpool_info() if d.get("user_api") == "blas"]


def test_the_verification_workers_run_blas_on_one_thread():
    """A pair's matrices are small: BLAS threads in a worker only wait for each other. The workers keep to
    one thread whether they inherit the limit (fork) or set it themselves; the caller keeps its own."""
    from threadpoolctl import threadpool_info

    from overlap_audit.decide.rule import _comparison_imports, _start_workers

    _comparison_imports()  # as starting the workers does: scipy's BLAS is loaded before the count
    before = [d["num_threads"] for d in threadpool_info() if d.get("user_api") == "blas"]
    with _start_workers(2) as pool:
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


def _children() -> set[int]:
    """This process's child processes that are still running (not zombies waiting to be reaped)."""
    import psutil

    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


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
    before = _children()  # (processes of other tests' fixtures)
    with verification_pool(2) as pool:
        assert not pool.started and _children() == before  # the processes start with the first pair
        beside = threading.Thread(target=lambda: found.setdefault("first", _judge_all(first, None, False, pool=pool)))
        beside.start()
        found["second"] = _judge_all(second, None, False, pool=pool)
        beside.join(timeout=300)
        assert pool.started and len(_children() - before) == 2
    assert _children() == before  # the block ends when the workers have
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


def test_a_warm_report_starts_no_verification_workers(tmp_path, corpus_index, eval_set, caplog):
    """Run again with every comparison in the cache (``verdicts``), a report starts no verification worker
    process (``VerifyPool`` starts them at the first pair to compare: seen both in its debug line and in
    this process's children) and decides as the first run did."""
    import logging
    import threading
    import time

    import pandas as pd

    from overlap_audit.api import ReportSettings, run_report
    from overlap_audit.settings import CalibrationSettings, MatchSettings

    from ..helpers import report_decisions

    root, planted, clean = eval_set
    predictions = pd.DataFrame({"dataset": "val", "id": planted + clean, "correct": 1})
    caplog.set_level(logging.DEBUG, logger="overlap_audit.decide.rule")

    def run(out: str) -> tuple[int, set, tuple]:
        caplog.clear()
        seen: set = set()
        done = threading.Event()
        before = _children()  # (processes of other tests' fixtures)

        def watch() -> None:  # the children alive at any moment of the run (a pool lives for all of it)
            while not done.is_set():
                seen.update(_children() - before)
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            run_report(corpus_index, [("val", str(root))],
                       ReportSettings(tmp_path / out, predictions=predictions, cache_dir=tmp_path / "cache",
                                      calibrate=CalibrationSettings(positives=8, negatives=12, seed=3),
                                      match=MatchSettings(workers=2)))
        finally:
            done.set()
            watcher.join()
        starts = sum("worker processes started" in r.getMessage() for r in caplog.records)
        return starts, seen, report_decisions(tmp_path / out)

    cold_starts, cold_children, cold = run("cold")
    warm_starts, warm_children, warm = run("warm")
    assert cold_starts == 1 and cold_children  # one pool, for the report's pairs and calibration's
    assert warm_starts == 0 and not warm_children
    assert warm == cold
    assert warm[0]["verify"]["datasets"]["val"]["n_pairs"] > 0


def test_the_workers_need_no_import_that_another_thread_may_hold(tmp_path, tile_sets):
    """Workers are forked while another thread may be importing (a report's pool starts at its first pair,
    beside calibration): once ``_comparison_imports`` has run, comparing pairs of every kind (a photograph
    and its resized copy, two photographs, a featureless image) imports no module, so no forked worker
    waits for an import lock another thread held at the fork. In a fresh interpreter, which has imported
    only the rule."""
    import json
    import subprocess
    import sys

    from PIL import Image

    corpus, other = tile_sets
    files = {"a.png": corpus[0][1], "a-small.png": corpus[0][1].resize((80, 80)), "b.jpg": other[0][1].convert("RGB"),
             "c.png": other[1][1], "white.png": Image.new("RGB", (50, 50), "white")}
    for name, im in files.items():
        im.save(tmp_path / name)
    code = f"""
import json, sys
from pathlib import Path
from overlap_audit.decide import rule
read = lambda name: (Path({str(tmp_path)!r}) / name).read_bytes()
pairs = [rule._Pair(read(a), None, read(b), None, 10 ** 8, 0.8144, 0.83)
         for a, b in [("a-small.png", "a.png"), ("b.jpg", "c.png"), ("white.png", "c.png")]]
rule._comparison_imports()
before = set(sys.modules)
outcomes = rule._compare_task([(p, str(i), "c" + str(i)) for i, p in enumerate(pairs)])
print(json.dumps([sorted(set(sys.modules) - before), [rule._outcome(p, o) for p, o in zip(pairs, outcomes)]]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imported, outcomes = json.loads(r.stdout)
    # each kind of comparison ran: the copy verified, both photographs compared as such, the featureless
    # image by the drawing comparison
    assert [o[1] for o in outcomes][0] is True and [(o[2], o[3]) for o in outcomes] == [(True, True)] * 2 + [(True, False)]
    assert imported == []


def test_an_interrupt_ends_the_workers_without_waiting_for_their_task():
    """Leaving the pool on an interrupt ends its worker processes at once, not after the task they are running
    (one task holds every pair of one corpus image: here 3,000 pairs, a minute or more of comparisons); leaving
    it normally waits for the task."""
    import io
    import time

    import numpy as np
    import psutil
    import pytest
    from PIL import Image

    from overlap_audit.decide.rule import _Pair, verification_pool

    def png(seed: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    pair = _Pair(png(1), None, png(2), None, 10**8, 0.5, 0.5)
    task = [(pair, f"e{i}", "c") for i in range(3000)]  # 3,000 queries whose nearest item is one corpus image
    started = None
    with pytest.raises(KeyboardInterrupt):
        with verification_pool(2) as pool:
            future = pool.submit(task)
            workers = psutil.Process().children()
            assert workers  # the processes started with the first task
            time.sleep(1.0)  # the task is running
            assert not future.done()
            started = time.monotonic()
            raise KeyboardInterrupt
    assert time.monotonic() - started < 30  # a bound on a hang only: the task alone takes a minute or more
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
