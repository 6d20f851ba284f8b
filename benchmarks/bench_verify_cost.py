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

    python benchmarks/bench_verify_cost.py --demo DEMO --baseline CHECKOUT [--repeat 3]

The predictions are the ones the demo's zero-shot run wrote (DEMO/report/predictions.parquet), so neither
report scores the model; the evaluation set is the one DEMO/report/report.json records. With ``--repeat``
the four reports run that many times, alternating, and the median of each is kept (the machine is shared).
The Overlap ids of the cached report must equal those of the first (checked).

With ``--baseline CHECKOUT`` (another version of the package, e.g. a detached ``git worktree`` of main) each
report runs in a process of its own, the baseline's code and this one's taking turns within each round
(baseline first, then this), so that both meet the same load; the ratios are printed for each code, and the
thresholds and Overlap ids of the two must be the same (checked). Each report also gets an estimate of what it
would take on idle cores (``_Demand``), in all and per phase: on a shared machine the wall time says how busy
the machine was more than how well the report's work overlaps.
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
    started = time.time()
    t = time.perf_counter()
    rep = run_report(demo / "index", evals,
                     ReportSettings(out, predictions=str(demo / "report" / "predictions.parquet"), cache_dir=cache,
                                    match=MatchSettings(workers=workers), **kw))
    seconds = time.perf_counter() - t
    cpu = _cpu_seconds() - cpu
    table = pq.read_table(out / "splits.parquet", columns=["id", "overlap"]).to_pydict()
    v = (rep.verify or {}).get("datasets", {}).get("tuxpaint", {})
    return {"seconds": seconds, "started": started, "cpu": cpu, "phases": rep.timings["seconds"], "n_verified": v.get("n_verified", 0),
            "load": os.getloadavg()[0], "threshold": rep.dataset("tuxpaint").threshold,
            "n_cached": v.get("n_cached", 0), "from_cache": rep.timings["sets"]["tuxpaint"]["from_cache"],
            "overlap": sorted(i for i, o in zip(table["id"], table["overlap"]) if o)}


CORES = 2  # the machine the idle estimate is for (``_Demand``)


class _Demand:
    """What a process tree's run would take on ``CORES`` idle cores, estimated on a busy machine: every
    ``interval`` seconds each of its threads' CPU time (``/proc/PID/task/TID/schedstat``) and how many of
    them want a core (state R: running or waiting for one); the CPU time of an interval in which n threads
    wanted a core would have taken 1 / min(n, CORES) of it on idle cores. On a shared machine the wall time
    follows the share of the CPU the kernel gives the run, whatever its threads could do at once; this
    follows what they could do at once (the report's pipelining). A model: it takes two busy cores to be
    twice as fast as one (BENCHMARKS.md)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        import threading

        self.pid, self.interval = pid, interval
        self.seconds = 0.0
        self.trace: list[tuple[float, float]] = []  # (time.time(), ``seconds`` then)
        self._cpu: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tasks(self) -> list[str]:
        import os

        found, stack = [], [self.pid]
        while stack:
            pid = stack.pop()
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                found.append(f"/proc/{pid}/task/{tid}")
                try:
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        stack.extend(int(c) for c in f.read().split())
                except OSError:
                    continue
        return found

    def _sample(self) -> tuple[int, int]:
        """(nanoseconds on a CPU since the last sample, threads wanting a core now)."""
        spent, wanting, cpu = 0, 0, {}
        for task in self._tasks():
            try:
                with open(f"{task}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                with open(f"{task}/schedstat") as f:
                    ns = int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                continue
            cpu[task] = ns
            spent += ns - self._cpu.get(task, 0)
            wanting += state == "R"
        self._cpu = cpu
        return spent, wanting

    def _run(self) -> None:
        before = 1
        while not self._stop.wait(self.interval):
            spent, wanting = self._sample()
            self.seconds += spent / 1e9 / min(CORES, max(1.0, (before + wanting) / 2))
            self.trace.append((time.time(), self.seconds))
            before = wanting

    def between(self, start: float, end: float) -> float:
        """The estimate from ``start`` to ``end`` (``time.time()``), to the nearest samples."""
        import bisect

        self._stop.set()
        self._thread.join()
        times = [t for t, _ in self.trace]

        def at(t: float) -> float:
            i = bisect.bisect_left(times, t)
            return self.trace[min(i, len(times) - 1)][1] if times else 0.0

        return at(end) - at(start)


def _report_in(checkout: Path | None, demo: Path, out: Path, cache: Path, verify: bool, workers: int | None) -> dict:
    """``_report`` in a process of its own, with the package of ``checkout`` (None: this one's), and
    ``idle_estimate``: the seconds it would have taken on idle cores (``_Demand``)."""
    import subprocess
    import sys

    code = ("import json, sys, importlib.util\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "spec = importlib.util.spec_from_file_location('bench_verify_cost_child', sys.argv[2])\n"
            "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)\n"
            "from pathlib import Path\n"
            "a = json.loads(sys.argv[3])\n"
            "print('RESULT ' + json.dumps(bench._report(Path(a['demo']), Path(a['out']), Path(a['cache']), "
            "a['verify'], a['workers'])))\n")
    here = Path(__file__).resolve()
    args = json.dumps({"demo": str(demo), "out": str(out), "cache": str(cache), "verify": verify, "workers": workers})
    child = subprocess.Popen([sys.executable, "-c", code, str(checkout or here.parent.parent), str(here), args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    demand = _Demand(child.pid)
    stdout, stderr = child.communicate()
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if child.returncode or not lines:
        raise SystemExit(f"a report with {checkout or 'this code'} failed:\n{stderr[-3000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    at, phases = res["started"], {}
    for phase, seconds in res["phases"].items():  # in the order the report ran them, each from the last
        if phase == "total" or ":" in phase:
            continue
        phases[phase] = demand.between(at, at + seconds)
        at += seconds
    return res | {"idle_estimate": demand.between(res["started"], res["started"] + res["seconds"]),
                  "idle_phases": phases}


def _summary(runs: dict[str, list[dict]]) -> dict:
    """Medians and ratios (with verification / without) of one code's reports."""
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    cpu = {k: statistics.median(x["cpu"] for x in v) for k, v in runs.items()}
    idle = {k: statistics.median(x["idle_estimate"] for x in v) for k, v in runs.items()}
    phases = {k: {p: statistics.median(x["idle_phases"].get(p, 0.0) for x in v) for p in v[0]["idle_phases"]}
              for k, v in runs.items()}
    return {"seconds": med, "cpu_seconds": cpu, "idle_estimate": idle, "idle_phases": phases,
            "idle_ratio": {when: idle[f"verify:{when}"] / idle[f"no_verify:{when}"] for when in ("first", "second")},
            "idle_ratios": {when: [b["idle_estimate"] / a["idle_estimate"]
                                   for a, b in zip(runs[f"no_verify:{when}"], runs[f"verify:{when}"])]
                            for when in ("first", "second")},
            "calibrate_seconds": {k: statistics.median(x["phases"].get("calibrate", 0.0) for x in v)
                                  for k, v in runs.items()},
            "decide_seconds": {k: statistics.median(x["phases"].get("decide", 0.0) for x in v)
                               for k, v in runs.items()},
            "ratio": {when: med[f"verify:{when}"] / med[f"no_verify:{when}"] for when in ("first", "second")},
            "cpu_ratio": {when: cpu[f"verify:{when}"] / cpu[f"no_verify:{when}"] for when in ("first", "second")},
            "ratios": {when: [b["seconds"] / a["seconds"]
                              for a, b in zip(runs[f"no_verify:{when}"], runs[f"verify:{when}"])]
                       for when in ("first", "second")},
            "cpu_ratios": {when: [b["cpu"] / a["cpu"]
                                  for a, b in zip(runs[f"no_verify:{when}"], runs[f"verify:{when}"])]
                           for when in ("first", "second")}}


def _against(args) -> dict:
    """``--baseline``: the four reports of each code in turn, round by round, each in its own process."""
    codes = (("baseline", args.baseline), ("this", None))
    work = Path(tempfile.mkdtemp(prefix="bench-verify-cost-"))
    runs: dict[str, dict[str, list[dict]]] = {c: {} for c, _ in codes}
    try:
        for r in range(args.repeat):
            for code, checkout in codes:
                for name, verify in RUNS:
                    cache = work / f"cache-{code}-{name}-{r}"
                    for when in ("first", "second"):
                        out = work / f"{code}-{name}-{when}-{r}"
                        res = _report_in(checkout, args.demo, out, cache, verify, args.workers)
                        runs[code].setdefault(f"{name}:{when}", []).append(res)
                        print(f"round {r} {code:8s} {name:9s} {when:6s} {res['seconds']:6.1f} s "
                              f"(cpu {res['cpu']:6.1f} s, idle estimate {res['idle_estimate']:5.1f} s)  verified {res['n_verified']} (cached {res['n_cached']})  "
                              f"overlap {len(res['overlap'])}  calibrate {res['phases'].get('calibrate', 0):.1f} s  "
                              f"decide {res['phases'].get('decide', 0):.1f} s  load {res['load']:.1f}", flush=True)
                        shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = {(k, x["threshold"], tuple(x["overlap"])) for v in runs.values() for k, xs in v.items() for x in xs}
    decided = {k.split(":")[0]: set() for k in runs["this"]}
    for k, threshold, ids in first:
        decided[k.split(":")[0]].add((threshold, ids))
    same = all(len(v) == 1 for v in decided.values())
    out = {code: _summary(v) for code, v in runs.items()}
    loads = [x["load"] for v in runs.values() for xs in v.values() for x in xs]
    out.update({"same_decisions": same, "load": {"min": min(loads), "max": max(loads)}, "repeat": args.repeat,
                "baseline_checkout": str(args.baseline), "workers": args.workers,
                "n_verified": runs["this"]["verify:first"][0]["n_verified"],
                "thresholds": {k: sorted(t for t, _ in v) for k, v in decided.items()},
                "n_overlap": {k: sorted(len(i) for _, i in v) for k, v in decided.items()}})
    print("| code | report | without verification: wall s (CPU s) [idle estimate] | with verification: wall s "
          "(CPU s) [idle estimate], calibrate, decide | ratio: wall (CPU) [idle estimate] | per round: wall (CPU) "
          "[idle estimate] |\n|---|---|---|---|---|---|")
    for code, _ in codes:
        o = out[code]
        for when, label in (("first", "cold"), ("second", "warm")):
            print(f"| {code} | {label} | {o['seconds'][f'no_verify:{when}']:.1f} "
                  f"({o['cpu_seconds'][f'no_verify:{when}']:.1f}) [{o['idle_estimate'][f'no_verify:{when}']:.1f}] | "
                  f"{o['seconds'][f'verify:{when}']:.1f} ({o['cpu_seconds'][f'verify:{when}']:.1f}) "
                  f"[{o['idle_estimate'][f'verify:{when}']:.1f}], {o['calibrate_seconds'][f'verify:{when}']:.1f}, "
                  f"{o['decide_seconds'][f'verify:{when}']:.1f} | {o['ratio'][when]:.2f} ({o['cpu_ratio'][when]:.2f}) "
                  f"[{o['idle_ratio'][when]:.2f}] | "
                  + ", ".join(f"{a:.2f} ({b:.2f}) [{c:.2f}]" for a, b, c in
                              zip(o["ratios"][when], o["cpu_ratios"][when], o["idle_ratios"][when])) + " |")
    for code, _ in codes:
        for key in ("no_verify:first", "verify:first"):
            print(f"idle estimate per phase, {code} {key} (medians): " + ", ".join(
                f"{p} {v:.1f}" for p, v in out[code]["idle_phases"][key].items()))
    print(f"load average {out['load']['min']:.1f}-{out['load']['max']:.1f}; {out['n_verified']} pairs verified; "
          f"thresholds {out['thresholds']}; Overlap {out['n_overlap']}; the same decisions in every report of "
          f"both codes: {same}")
    if not same:
        raise SystemExit("the two codes, or two rounds, decided differently")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", required=True, type=Path, help="an `overlap-audit demo-real` output directory")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: the report's own)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout of the package: its reports and this code's alternate")
    args = ap.parse_args(argv)
    if args.baseline is not None:
        return _against(args)

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
