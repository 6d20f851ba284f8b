"""Where a cold report's verification spends its CPU, pair by pair, and whether another version of the code
compares the same pairs alike.

``capture`` runs one report with verification on an empty cache (as ``bench_verify_cost.py`` does: the
real-data demo's index, evaluation set and predictions; or the synthetic demo) and keeps every pair each
judging run was given (calibration's negatives and positives, the report's rounds), as plain values in a
pickle; or takes the photo development set's pairs (``bench_photo_cost.py``).

``profile`` judges the captured pairs again in this process (BLAS on one thread), run by run, the way
``rule._judge_all`` does without workers (files read once, fingerprints and cache keys, each task's images
prepared once), and times each stage with ``time.process_time``: reading, fingerprints, decoding at
``rule.DECODE_SIDE``, ``photo.prepare_photo`` (its greyscale view, ``verify.prepare``'s trimmed view, the
texture), ``photo.verify_photo`` split by the branch the pair takes, and what pickling a task for a worker
costs; with ``--cprofile N`` the N functions with the most cumulative time too.

``judge`` judges the captured pairs once the way ``rule._judge_all`` does without workers (each task's images
prepared once) and prints the CPU seconds: run it alternately with two versions of the code on ``PYTHONPATH``
(the file's ``FIELDS`` that a version's ``rule._Pair`` lacks are left out).

``dump`` writes each captured pair's comparison (every field of its ``PhotoVerification``, or ``identical``
/ ``None``) and outcome (``rule._outcome``), with ``--drawing`` also every field of the pair's drawing
comparison (``verify.verify_prepared``'s ``Verification``, whichever branch the pair took); ``compare``
checks that two dumps agree exactly. Run ``dump``
with two versions of the code (e.g. a ``git worktree`` of the older one on ``PYTHONPATH``) and ``compare``.

    python benchmarks/bench_verify_pairs.py capture --demo DEMO --out PAIRS.pkl
    python benchmarks/bench_verify_pairs.py capture --synthetic EMPTY_DIR --out PAIRS.pkl
    python benchmarks/bench_verify_pairs.py capture --photos medium strong tiles96 cifar32 --out PAIRS.pkl
    python benchmarks/bench_verify_pairs.py profile --pairs PAIRS.pkl [--cprofile 30]
    python benchmarks/bench_verify_pairs.py judge --pairs PAIRS.pkl
    python benchmarks/bench_verify_pairs.py dump --pairs PAIRS.pkl --out A.pkl [--drawing]
    python benchmarks/bench_verify_pairs.py compare A.pkl B.pkl

The demo is a held-out set: only timings and whether two versions agree are read, never its images or
per-item results.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_verify_pairs", *sys.argv[1:]])

import argparse
import json
import math
import pickle
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, is_dataclass
from pathlib import Path

# a captured pair: (eval bytes or None, eval path, corpus bytes or None, corpus path, max_pixels, pair threshold,
# photo accept, near, eval content box, corpus content box); a capture without the boxes reads as None
FIELDS = ("eval_data", "eval_path", "corpus_data", "corpus_path", "max_pixels", "pair_threshold", "accept", "near",
          "eval_box", "corpus_box")


def capture(out: Path, *, demo: Path | None = None, synthetic: Path | None = None, photos: list[str] | None = None,
            workers: int | None = None) -> None:
    """Keep the pairs of one cold report on ``demo`` (a ``demo-real`` directory), of the synthetic demo made
    in ``synthetic`` (``demos.synthetic.run_demo``), or the photo development set's pairs of ``photos``
    families (``bench_photo_cost``: each query against its source or its photo's first corpus item)."""
    from overlap_audit.decide import rule

    runs: list[tuple[str, list[tuple]]] = []
    if photos:
        from benchmarks.bench_photo_cost import _pairs as photo_pairs

        from overlap_audit.limits import DEFAULT_MAX_PIXELS

        by_family: dict[str, list[tuple]] = defaultdict(list)
        for family, query, source in photo_pairs(photos, None, 0):
            by_family[family].append((query, None, source, None, DEFAULT_MAX_PIXELS, rule.VERIFY_THRESHOLD,
                                      0.83, True))
        runs = list(by_family.items())
    else:
        judge_all = rule._judge_all

        def recording(pairs, workers, progress, cache_dir=None, desc="verify"):
            runs.append((desc, [tuple(getattr(p, f) for f in FIELDS) for p in pairs]))
            return judge_all(pairs, workers, progress, cache_dir, desc)

        rule._judge_all = recording
        work = Path(tempfile.mkdtemp(prefix="bench-verify-pairs-"))
        try:
            if synthetic is not None:
                from overlap_audit.demos.synthetic import run_demo

                result = run_demo(synthetic, workers=workers)
                print(f"synthetic demo: planted found {result.found}, others Overlap {result.false_overlap}")
            else:
                from overlap_audit.api import ReportSettings, run_report
                from overlap_audit.settings import MatchSettings

                evals = [("tuxpaint",
                          json.loads((demo / "report" / "report.json").read_text())["evals"]["tuxpaint"])]
                run_report(demo / "index", evals,
                           ReportSettings(work / "out", predictions=str(demo / "report" / "predictions.parquet"),
                                          cache_dir=work / "cache", match=MatchSettings(workers=workers)))
        finally:
            rule._judge_all = judge_all
            shutil.rmtree(work, ignore_errors=True)
    out.write_bytes(pickle.dumps(runs))
    for desc, pairs in runs:
        print(f"{desc}: {len(pairs)} pairs")


def _pairs(path: Path):
    from dataclasses import fields

    from overlap_audit.decide import rule

    known = {f.name for f in fields(rule._Pair)}
    runs = pickle.loads(path.read_bytes())
    return [(desc, [rule._Pair(**{k: v for k, v in zip(FIELDS, p) if k in known}) for p in pairs])
            for desc, pairs in runs]


def judge(path: Path) -> None:
    from threadpoolctl import threadpool_limits

    from overlap_audit.decide import rule
    from overlap_audit.decide.verdicts import fingerprint

    runs = []
    for _, pairs in _pairs(path):
        todo = []
        for i, pair in enumerate(pairs):
            read = rule._with_bytes(pair)
            if read is not None and read.eval_data != read.corpus_data:
                todo.append((i, read, fingerprint(read.eval_data), fingerprint(read.corpus_data)))
        runs.append(todo)
    n, t = 0, time.process_time()
    with threadpool_limits(limits=1):
        for todo in runs:
            for task in rule._tasks(todo):
                rule._compare_task([(p, e, c) for _, p, e, c in task])
                n += len(task)
    took = time.process_time() - t
    print(f"{n} pairs judged: {took:.2f} CPU s, {1000 * took / max(n, 1):.2f} ms per pair")


def _branch(a, b) -> str:
    """The branch of ``photo.verify_photo`` a pair of prepared views takes."""
    from overlap_audit.decide import photo

    if max(a.aspect, 1 / a.aspect, b.aspect, 1 / b.aspect) > photo.MAX_ASPECT:
        return "strip"
    if min(a.texture, b.texture) < photo.MIN_TEXTURE:
        return "featureless"
    flat = max(a.flat, b.flat) >= photo.MAX_FLAT
    if min(a.flat, b.flat) >= photo.MAX_FLAT or (flat and (a.trimmed or b.trimmed)):
        return "drawing" if (a.trimmed or b.trimmed) else "drawing, no margin"
    return "photograph"


def profile(path: Path, top: int) -> None:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from overlap_audit.decide import photo, rule, verify
    from overlap_audit.decide.verdicts import comparison_key, fingerprint
    from overlap_audit.imaging import decode_image

    clock = time.process_time
    runs = _pairs(path)
    total: dict[str, float] = defaultdict(float)
    branches: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    per_run = []

    def timed(name, f, *args, **kw):
        t = clock()
        out = f(*args, **kw)
        total[name] += clock() - t
        return out

    def prepare_photo(image, box):  # ``photo.prepare_photo``, its three parts timed
        t = clock()
        grey, flat = photo.grey_view(image)
        t1 = clock()
        pair = verify.prepare(image, box)
        t2 = clock()
        texture = photo.view_texture(grey)
        t3 = clock()
        total["prepare: greyscale view, flat share"] += t1 - t
        total["prepare: verify.prepare (trim, 256 px view)"] += t2 - t1
        total["prepare: texture"] += t3 - t2
        return photo.PhotoPrepared(grey, pair, pair.trimmed, flat, texture)

    with threadpool_limits(limits=1):
        for desc, pairs in runs:
            started = clock()
            todo = []
            for i, pair in enumerate(pairs):
                read = timed("read files", rule._with_bytes, pair)
                if read is None or read.eval_data == read.corpus_data:
                    counts["identical or unreadable"] += read is not None
                    continue
                e = timed("fingerprints", fingerprint, read.eval_data)
                c = timed("fingerprints", fingerprint, read.corpus_data)
                timed("cache keys", lambda: comparison_key(e, c, max_pixels=read.max_pixels,
                                                           long_side=rule.DECODE_SIDE,
                                                           decision_version=rule.DECISION_VERSION))
                todo.append((i, read, e, c))
            for task in rule._tasks(todo):
                timed("pickle a task for a worker", pickle.dumps, [(p, e, c) for _, p, e, c in task])
                views: dict = {}
                for _, pair, e, c in task:
                    for name, data, box in ((e, pair.eval_data, pair.eval_box),
                                            (c, pair.corpus_data, pair.corpus_box)):
                        if name in views:
                            counts["views reused within a task"] += 1
                            continue
                        image = timed("decode", decode_image, data, None, max_pixels=pair.max_pixels,
                                      long_side=rule.DECODE_SIDE) if data is not None else None
                        views[name] = prepare_photo(image, box)
                        counts["images prepared"] += 1
                    a, b = views[e], views[c]
                    kind = _branch(a, b)
                    t = clock()
                    v = photo.verify_photo(a, b)
                    took = clock() - t
                    total["verify_photo"] += took
                    branches[kind].append(took)
                    counts["pairs compared"] += 1
            per_run.append((desc, len(pairs), clock() - started))

    n = sum(len(p) for _, p in runs)
    print(f"{n} pairs in {len(runs)} judging runs; CPU per run: "
          + "; ".join(f"{d} {k} pairs {s:.2f} s" for d, k, s in per_run))
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    all_s = sum(total.values())
    print("| stage | CPU s | ms per pair | share |\n|---|---|---|---|")
    for k, v in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.2f} | {1000 * v / n:.2f} | {v / all_s:.0%} |")
    print(f"| all | {all_s:.2f} | {1000 * all_s / n:.2f} | |")
    print("| verify_photo branch | pairs | ms per pair (median) | CPU s |\n|---|---|---|---|")
    for k, v in sorted(branches.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {k} | {len(v)} | {1000 * float(np.median(v)):.2f} | {sum(v):.2f} |")
    if top:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        with threadpool_limits(limits=1):
            prof.enable()
            for _, pairs in runs:
                rule._judge_all(pairs, 0, False)
            prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def _plain(v):
    if v is None or isinstance(v, str):
        return v
    if is_dataclass(v):
        return {"type": type(v).__name__, **asdict(v)}
    return repr(v)


def dump(path: Path, out: Path, drawing: bool = False) -> None:
    from threadpoolctl import threadpool_limits

    from overlap_audit.decide import rule

    from overlap_audit.decide.verify import verify_prepared

    rows = []
    t = time.process_time()
    with threadpool_limits(limits=1):
        for desc, pairs in _pairs(path):
            for pair in pairs:
                read = rule._with_bytes(pair)
                comparison = None if read is None else rule._compare(read)
                row = (desc, _plain(comparison), rule._outcome(pair, comparison))
                if drawing and read is not None and comparison is not None:
                    views = [rule._prepared(d, read.max_pixels, box) for d, box in
                             ((read.eval_data, read.eval_box), (read.corpus_data, read.corpus_box))]
                    if None not in views:  # the drawing comparison's every field, whatever the branch
                        row += (_plain(verify_prepared(views[0].pair, views[1].pair)),)
                rows.append(row)
    out.write_bytes(pickle.dumps(rows))
    print(f"{len(rows)} pairs, {time.process_time() - t:.1f} CPU s")


def _same(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return x == y or (math.isnan(x) and math.isnan(y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    return x == y


def compare(a: Path, b: Path) -> int:
    ra, rb = pickle.loads(a.read_bytes()), pickle.loads(b.read_bytes())
    if len(ra) != len(rb):
        print(f"different numbers of pairs: {len(ra)} and {len(rb)}")
        return 1
    bad = [i for i, (x, y) in enumerate(zip(ra, rb)) if not _same(x, y)]
    kinds = defaultdict(int)
    for _, c, *_ in ra:
        kinds[c if c is None or isinstance(c, str) else ("photo" if not math.isnan(c["score"]) else "drawing")] += 1
    print(f"{len(ra)} pairs ({dict(kinds)}): {len(bad)} differ (every field compared exactly)")
    for i in bad[:10]:
        print(" ", i, ra[i], rb[i])
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("capture")
    what = c.add_mutually_exclusive_group(required=True)
    what.add_argument("--demo", type=Path, help="an `overlap-audit demo-real` output directory")
    what.add_argument("--synthetic", type=Path, help="an empty directory for the synthetic demo")
    what.add_argument("--photos", nargs="+", help="photo development set families (bench_photo_cost)")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--workers", type=int, default=None)
    p = sub.add_parser("profile")
    p.add_argument("--pairs", required=True, type=Path)
    p.add_argument("--cprofile", type=int, default=0)
    j = sub.add_parser("judge")
    j.add_argument("--pairs", required=True, type=Path)
    d = sub.add_parser("dump")
    d.add_argument("--pairs", required=True, type=Path)
    d.add_argument("--out", required=True, type=Path)
    d.add_argument("--drawing", action="store_true",
                   help="also every field of each pair's drawing comparison (verify.verify_prepared)")
    k = sub.add_parser("compare")
    k.add_argument("a", type=Path)
    k.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    if args.command == "capture":
        capture(args.out, demo=args.demo, synthetic=args.synthetic, photos=args.photos, workers=args.workers)
    elif args.command == "profile":
        profile(args.pairs, args.cprofile)
    elif args.command == "judge":
        judge(args.pairs)
    elif args.command == "dump":
        dump(args.pairs, args.out, args.drawing)
    else:
        return compare(args.a, args.b)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
