"""The second `report` of the README's four-command loop against the first: the first embeds and searches
the evaluation set (and fills the evaluation cache), the second (with the thresholds the review gave) reads
them from the cache. The same second report without the cache (`--no-cache`) runs in the same process, so
the ratio separates the cache from the change of thresholds. Per detector; phases from report.json.

    python benchmarks/bench_report_cache.py [--n 1024] [--eval 256] [--workers 2] [--detectors phash,clipdup]

The images: tiles of the photos bundled in scikit-image and scikit-learn (benchmarks/bench_pipeline.py's
corpus and evaluation folders: half of the evaluation images are resized copies of corpus images).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/bench_report_cache.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_report_cache", *sys.argv[1:]])

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from .bench_pipeline import write_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1024, help="corpus images")
    ap.add_argument("--eval", type=int, default=256, help="evaluation images")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--detectors", default="phash,clipdup")
    args = ap.parse_args()

    from overlap_audit.api import ReportSettings, run_report
    from overlap_audit.index import build_index
    from overlap_audit.review import review_pairs
    from overlap_audit.settings import IndexSettings, MatchSettings, StatsSettings

    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        corpus, evals, preds = write_images(work / "data", args.n, args.eval)
        warm, _, _ = write_images(work / "warm", 8, 2)
        rows = []
        for detector in args.detectors.split(","):
            build_index([str(warm)], work / f"warm-{detector}", IndexSettings(detector=detector, workers=0))
            index = work / f"index-{detector}"
            build_index([str(corpus)], index, IndexSettings(detector=detector, workers=args.workers))
            match = MatchSettings(workers=args.workers)
            cache = work / f"cache-{detector}"
            sets = [("val", str(evals))]

            def timed(out: str, **kw) -> tuple[float, dict]:
                t = time.perf_counter()
                rep = run_report(index, sets, ReportSettings(work / out, predictions=preds, match=match, **kw))
                return time.perf_counter() - t, rep.timings

            first, t1 = timed(f"{detector}-1", cache_dir=cache)
            review_pairs(index, sets, work / f"review-{detector}", match=match)  # step 3 (not timed)
            thresholds = work / f"thresholds-{detector}.json"  # step 4's file, as `threshold` writes it
            thresholds.write_text(json.dumps({"val": 0.95 if detector == "clipdup" else 0.9}))
            stats = StatsSettings(thresholds=str(thresholds))
            second, t2 = timed(f"{detector}-2", cache_dir=cache, stats=stats)
            uncached, t3 = timed(f"{detector}-3", cache_dir=None, stats=stats)
            assert t2["sets"]["val"]["from_cache"] and not t3["sets"]["val"]["from_cache"]
            rows.append((detector, first, second, uncached))
            for label, t in (("first", t1), ("second, cached", t2), ("second, --no-cache", t3)):
                s = t["seconds"]
                print(f"  {detector} {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in s.items()), flush=True)
        print(f"\n# {args.n} corpus images, {args.eval} evaluation images, {args.workers} decoding workers")
        print("| detector | first report, s | second report (cache), s | second report (--no-cache), s "
              "| first / second | no-cache / cache |")
        print("|---|---|---|---|---|---|")
        for detector, first, second, uncached in rows:
            print(f"| {detector} | {first:.1f} | {second:.1f} | {uncached:.1f} | {first / second:.2f}x "
                  f"| {uncached / second:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
