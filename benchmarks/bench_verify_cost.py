"""What verification costs a report on the real-data demo: the same report (the demo's index, evaluation set
and predictions) without and with verification, each with an empty cache (cold), then each again on its filled
cache (warm: the second report of the review loop: embeddings, search results, calibration's generated images'
embeddings and the verified pairs' comparisons read back). Both calibrate the set's threshold (the default), so
the one with verification also judges calibration's pairs. Seconds per phase from report.json; the ratios are
the goal's (with verification / without), each from the same run; the load average is printed with each report
(the machine may be shared), and so are the CPU seconds each report took (its process and worker processes),
which a busy machine changes far less than the wall time.

    overlap-audit demo-real DEMO --quiet   # once: the index and the predictions
    python benchmarks/bench_verify_cost.py --demo DEMO [--workers N] [--repeat 2] [--json FILE]

The predictions are the ones the demo's zero-shot run wrote (DEMO/report/predictions.parquet), so neither
report scores the model; the evaluation set is the one DEMO/report/report.json records. With ``--repeat``
the four reports run that many times, alternating, and the median of each is kept (the machine is shared).
The Overlap ids of the cached report must equal those of the first (checked).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/bench_verify_cost.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_verify_cost", *sys.argv[1:]])

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

RUNS = (("no_verify", False), ("verify", True))


def _cpu_seconds() -> float:
    """CPU seconds (user and system) of this process and of its finished worker processes: what a report costs
    whatever else the machine runs."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _report(demo: Path, out: Path, cache: Path, verify: bool, workers: int | None) -> dict:
    import pyarrow.parquet as pq

    from overlap_audit.api import ReportSettings, run_report
    from overlap_audit.settings import MatchSettings

    evals = [("tuxpaint", json.loads((demo / "report" / "report.json").read_text())["evals"]["tuxpaint"])]
    kw = {} if verify else {"verify": None}
    cpu = _cpu_seconds()
    t = time.perf_counter()
    rep = run_report(demo / "index", evals,
                     ReportSettings(out, predictions=str(demo / "report" / "predictions.parquet"), cache_dir=cache,
                                    match=MatchSettings(workers=workers), **kw))
    seconds = time.perf_counter() - t
    cpu = _cpu_seconds() - cpu
    table = pq.read_table(out / "splits.parquet", columns=["id", "overlap"]).to_pydict()
    v = (rep.verify or {}).get("datasets", {}).get("tuxpaint", {})
    return {"seconds": seconds, "cpu": cpu, "phases": rep.timings["seconds"], "n_verified": v.get("n_verified", 0),
            "load": os.getloadavg()[0], "threshold": rep.dataset("tuxpaint").threshold,
            "n_cached": v.get("n_cached", 0), "from_cache": rep.timings["sets"]["tuxpaint"]["from_cache"],
            "overlap": sorted(i for i, o in zip(table["id"], table["overlap"]) if o)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", required=True, type=Path, help="an `overlap-audit demo-real` output directory")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: the report's own)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-verify-cost-"))
    runs: dict[str, list[dict]] = {}
    try:
        for r in range(args.repeat):
            for name, verify in RUNS:
                cache = work / f"cache-{name}-{r}"
                for when in ("first", "second"):  # an empty cache, then the one the first report filled
                    out = work / f"{name}-{when}-{r}"
                    res = _report(args.demo, out, cache, verify, args.workers)
                    runs.setdefault(f"{name}:{when}", []).append(res)
                    print(f"{name:9s} {when:6s} {res['seconds']:6.1f} s (cpu {res['cpu']:6.1f} s)  "
                          f"verified {res['n_verified']} (cached {res['n_cached']})  overlap {len(res['overlap'])}  "
                          f"calibrate {res['phases'].get('calibrate', 0):.1f} s  "
                          f"decide {res['phases'].get('decide', 0):.1f} s  load {res['load']:.1f}", flush=True)
                    shutil.rmtree(out)
        for name, _ in RUNS:
            first, second = runs[f"{name}:first"], runs[f"{name}:second"]
            if any(a["overlap"] != b["overlap"] or a["threshold"] != b["threshold"] for a, b in zip(first, second)):
                raise SystemExit(f"{name}: the second report's Overlap differs from the first's")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    decide = {k: statistics.median(x["phases"].get("decide", 0.0) for x in v) for k, v in runs.items()}
    cpu = {k: statistics.median(x["cpu"] for x in v) for k, v in runs.items()}
    calib = {k: statistics.median(x["phases"].get("calibrate", 0.0) for x in v) for k, v in runs.items()}
    loads = [x["load"] for v in runs.values() for x in v]
    out = {"seconds": med, "cpu_seconds": cpu, "decide_seconds": decide,
           "cpu_ratio_first": cpu["verify:first"] / cpu["no_verify:first"],
           "cpu_ratio_second": cpu["verify:second"] / cpu["no_verify:second"], "calibrate_seconds": calib,
           "load": {"min": min(loads), "max": max(loads)},
           "ratios": {when: [b["seconds"] / a["seconds"]
                             for a, b in zip(runs[f"no_verify:{when}"], runs[f"verify:{when}"])]
                      for when in ("first", "second")},
           "thresholds": {"verify": runs["verify:first"][0]["threshold"],
                          "no_verify": runs["no_verify:first"][0]["threshold"]},
           "ratio_first": med["verify:first"] / med["no_verify:first"],
           "ratio_second": med["verify:second"] / med["no_verify:second"],
           "second_over_first": med["verify:second"] / med["verify:first"],
           "n_verified": runs["verify:first"][0]["n_verified"], "n_cached": runs["verify:second"][0]["n_cached"],
           "overlap_ids": {"verify": runs["verify:first"][0]["overlap"],
                           "no_verify": runs["no_verify:first"][0]["overlap"]},
           "repeat": args.repeat, "workers": args.workers}
    print("| report | without verification, s (calibrate) | with verification, s (calibrate, decide) | ratio |"
          "\n|---|---|---|---|")
    for when, label in (("first", "first (empty cache)"), ("second", "second (cache filled)")):
        print(f"| {label} | {med[f'no_verify:{when}']:.1f} ({calib[f'no_verify:{when}']:.1f}) | "
              f"{med[f'verify:{when}']:.1f} ({calib[f'verify:{when}']:.1f}, {decide[f'verify:{when}']:.1f}) | "
              f"{out[f'ratio_{when}']:.2f} |")
    print("ratios per round (same round, back to back): " + "; ".join(
        f"{when} " + ", ".join(f"{r:.2f}" for r in out["ratios"][when]) for when in ("first", "second"))
          + f"; load average {out['load']['min']:.1f}-{out['load']['max']:.1f}")
    print(f"CPU seconds (this process and its workers), medians: first {cpu['no_verify:first']:.1f} / "
          f"{cpu['verify:first']:.1f} ({out['cpu_ratio_first']:.2f}x), second {cpu['no_verify:second']:.1f} / "
          f"{cpu['verify:second']:.1f} ({out['cpu_ratio_second']:.2f}x)")
    print(f"{out['n_verified']} pairs verified; the second report took {out['n_cached']} comparisons from the cache "
          f"and ran in {out['second_over_first']:.2f}x the first's time")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
