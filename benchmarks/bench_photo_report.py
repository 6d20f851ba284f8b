"""The default decision end to end on the photograph families of ``benchmarks.photos``: the corpus and the
evaluation images are written to folders, indexed with ``build_index`` (``IndexSettings`` defaults but the
detector) and audited with ``run_report`` (default ``ReportSettings``: trimming, verification), then
``splits.parquet`` is read back and counted. Nothing of the decision is re-implemented here.

Per family: recall (true copies called Overlap / true copies) and precision (true copies called Overlap / all
called Overlap) of the report's decision, with verification (the default) and without
(``ReportSettings(verify=None)``); "wrong" counts true copies called Overlap through a corpus item other than
their source; the ranking's recall at 99% precision from the reported top-1 similarities (a low-information
example counts as similarity -inf); the wall time of each report (the same run, the same machine; the report
with verification runs first, so it alone pays for a cold file cache).

Each report calibrates its set's threshold as ``report`` does by default (``ReportSettings.calibrate``;
``--no-calibrate``: the detector's default); "threshold" is the one the report used.

Positives are the copies (``source >= 0``); negatives the distractors (other quadrants / tiles of the same
photos), which must be Clean. The predictions file says every example is correct (the statistics are not
what is measured here).

    python -m benchmarks.bench_photo_report [--photos dev|heldout] [--families ...] [--detector phash|clipdup]
        [--max-photos N] [--work DIR] [--json FILE] [--breakdown] [--no-calibrate] [--neighbours K]

``--neighbours K``: verify up to K of each example's nearest items (``VerifySettings.neighbours``; default the
rule's). "by neighbour" counts the Overlap examples whose match is not their nearest item.

``--breakdown`` says, for every true copy the default decision misses, where the decision lost it: its source
absent from the reported top-k; in the top-k but not the nearest item (at or above the first stage, or below
it); the nearest item but below the first stage; the nearest item judged with verdict False (evidence
against) or None (nothing to say). Each missed source pair is judged again (``DecisionRule.judge_pairs``, the
report's own rule, at the pair's similarity) to say what verification would have said had it been judged.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_photo_report", *sys.argv[1:]])

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

TARGET = 0.99
DATASET = "photos"


@dataclass(frozen=True)
class Counted:
    """One report's decision on one family."""

    recall: float
    precision: float
    tp: int
    fp: int
    wrong: int
    n_overlap: int
    seconds: float


def write_family(data, root: Path) -> tuple[Path, Path]:
    """The family's corpus and evaluation images as PNG folders under ``root`` (c00000.png, q00000.png)."""
    corpus, evals = root / "corpus", root / "eval"
    for folder, images, stem in ((corpus, data.corpus, "c"), (evals, data.queries, "q")):
        folder.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            im.save(folder / f"{stem}{i:05d}.png")
    return corpus, evals


def count(splits_file: Path, source: np.ndarray, seconds: float) -> tuple[Counted, np.ndarray, np.ndarray]:
    """The decision's counts from a report's splits.parquet, and each query's top-1 similarity and Overlap flag
    (query order)."""
    import pyarrow.parquet as pq

    t = pq.read_table(splits_file).to_pydict()
    row = {ident: n for n, ident in enumerate(t["id"])}
    n = len(source)
    missing = [f"q{i:05d}.png" for i in range(n) if f"q{i:05d}.png" not in row]
    if missing:
        raise SystemExit(f"{len(missing)} queries missing from {splits_file} (e.g. {missing[:3]}): skipped?")
    order = [row[f"q{i:05d}.png"] for i in range(n)]
    overlap = np.array([t["overlap"][r] for r in order], bool)
    sim = np.array([np.nan if t["similarity"][r] is None else t["similarity"][r] for r in order], np.float64)
    sim[np.array([t["low_information"][r] for r in order], bool)] = np.nan
    # the corpus item the decision names (match_rank: 1 the nearest, later where verification accepted it)
    near = [t["neighbor_ids"][r][(t["match_rank"][r] or 1) - 1] if t["neighbor_ids"][r] else "" for r in order]
    pos = source >= 0
    tp, fp = int((overlap & pos).sum()), int((overlap & ~pos).sum())
    wrong = sum(1 for i in np.flatnonzero(overlap & pos) if Path(near[i]).name != f"c{source[i]:05d}.png")
    return (Counted(tp / max(1, int(pos.sum())), tp / (tp + fp) if tp + fp else 1.0, tp, fp, int(wrong),
                    int(overlap.sum()), seconds), sim, overlap)


MISS_KINDS = ("low information", "absent from top-k", "top-k, not nearest, at or above first stage",
              "top-k, not nearest, below first stage", "nearest, below first stage", "nearest, judged: False",
              "nearest, judged: None")


def breakdown(splits_file: Path, source: np.ndarray, corpus: Path, evals: Path, detector: str,
              threshold: float, verify) -> dict:
    """Where the report's decision lost each missed true copy (``MISS_KINDS``), and per kind the verdicts that
    judging the copy with its source (at their similarity, or the first stage's where the source is not in the
    top-k) would give, with the median photo score. A nearest pair judged again is the pair the report judged,
    at the same similarity: its verdict is the report's (True never occurs: it would be Overlap)."""
    import pyarrow.parquet as pq

    from overlap_audit.decide.rule import DecisionRule
    from overlap_audit.detectors import get_detector
    from overlap_audit.values import RawItem

    rule = DecisionRule.for_detector(get_detector(detector), {DATASET: threshold}, verify)
    stage = rule.first_stage(DATASET)
    t = pq.read_table(splits_file).to_pydict()
    row = {ident: n for n, ident in enumerate(t["id"])}
    kinds, pairs = [], []
    for q in np.flatnonzero(source >= 0):
        r = row[f"q{q:05d}.png"]
        if t["overlap"][r]:
            continue
        ids = [Path(x).name for x in (t["neighbor_ids"][r] or [])]
        sims = list(t["neighbor_similarities"][r] or [])
        want = f"c{source[q]:05d}.png"
        rank = ids.index(want) if want in ids else None
        sim = float(sims[rank]) if rank is not None else stage
        if t["low_information"][r]:
            kind = MISS_KINDS[0]
        elif rank is None:
            kind = MISS_KINDS[1]
        elif rank > 0:
            kind = MISS_KINDS[2] if sim >= stage else MISS_KINDS[3]
        elif sim < stage:
            kind = MISS_KINDS[4]
        else:
            kind = "judged"  # the same pair at the same similarity as the report judged it: its verdict below
        kinds.append(kind)
        pairs.append((RawItem(DATASET, want, path=str(evals / f"q{q:05d}.png")),
                      RawItem("corpus", want, path=str(corpus / want)), sim))
    judged = rule.judge_pairs(DATASET, pairs, workers=0)
    out: dict = {}
    for kind, j in zip(kinds, judged):
        if kind == "judged":
            kind = MISS_KINDS[5] if j.verdict is False else MISS_KINDS[6]
        o = out.setdefault(kind, {"n": 0, "would be True": 0, "would be False": 0, "would be None": 0, "scores": []})
        o["n"] += 1
        o[f"would be {j.verdict}"] += 1
        o["scores"].append(j.verify_score)
    for o in out.values():
        o["median score"] = float(np.nanmedian(o.pop("scores"))) if o["n"] else float("nan")
    return {k: out[k] for k in MISS_KINDS if k in out}


def run_family(data, family: str, detector: str, work: Path, with_breakdown: bool = False,
               calibrate: bool = True, views: tuple[float, ...] | None = None,
               query_views: tuple[float, ...] | None = None, neighbours: int | None = None) -> dict:
    """Index, report with and without verification, count. ``calibrate`` False: the detector's default
    threshold (``ReportSettings(calibrate=None)``) instead of each report's calibrated one. ``views``: the
    index's corpus views (None: the detector's default); ``query_views``: each query's (None: the default)."""
    import pandas as pd

    from overlap_audit.api import ReportSettings, build_index, run_report
    from overlap_audit.decide.rule import VerifySettings
    from overlap_audit.decide.thresholds import recall_at_precision
    from overlap_audit.settings import IndexSettings, MatchSettings

    root = work / family
    shutil.rmtree(root, ignore_errors=True)
    corpus, evals = write_family(data, root)
    t = time.perf_counter()
    build_index([str(corpus)], root / "index", IndexSettings(detector=detector, views=views))
    index_s = time.perf_counter() - t
    preds = pd.DataFrame({"dataset": DATASET, "id": [f"q{i:05d}.png" for i in range(len(data.queries))],
                          "correct": 1})
    out: dict = {"family": family, "detector": detector, "n_true": data.n_true,
                 "n_distractors": int((data.source < 0).sum()), "n_corpus": len(data.corpus),
                 "index_seconds": index_s}
    sims = None
    for name, verify in (("verify", "default"), ("no_verify", None)):
        cal = {} if calibrate else {"calibrate": None}
        if query_views is not None:
            cal["match"] = MatchSettings(query_views=query_views)
        given = VerifySettings() if neighbours is None else VerifySettings(neighbours=neighbours)
        settings = (ReportSettings(out_dir=root / f"report-{name}", predictions=preds, verify=given, **cal)
                    if verify else
                    ReportSettings(out_dir=root / f"report-{name}", predictions=preds, verify=None, **cal))
        t = time.perf_counter()
        report = run_report(root / "index", [(DATASET, str(evals))], settings)
        seconds = time.perf_counter() - t
        counted, sim, _ = count(root / f"report-{name}" / "splits.parquet", data.source, seconds)
        out[name] = asdict(counted)
        out[name]["threshold"] = report.datasets[0].threshold
        out[name]["calibration"] = (report.calibration or {}).get("datasets", {}).get(DATASET)
        out[name]["calibrate_seconds"] = report.timings.get("seconds", {}).get("calibrate")
        if verify:
            out["threshold"] = report.datasets[0].threshold
            if with_breakdown:
                out["breakdown"] = breakdown(root / f"report-{name}" / "splits.parquet", data.source, corpus, evals,
                                             detector, out["threshold"], given)
            v = (report.verify or {}).get("datasets", {}).get(DATASET, {})
            out["first_stage"], out["n_verified_pairs"] = v.get("first_stage"), v.get("n_pairs")
            out["n_by_neighbour"] = v.get("n_by_neighbour")
        sims = sim
    pos = data.source >= 0
    top = np.nan_to_num(sims, nan=-np.inf)
    out["ranking_recall_p99"] = recall_at_precision(top[pos], top[~pos], TARGET)
    return out


def _print(line: dict) -> None:
    v, nv = line["verify"], line["no_verify"]
    print(f"| {line['photos']} | {line['family']} | {line['detector']} | {line['n_true']} / {line['n_distractors']} "
          f"| {v['recall']:.3f} / {v['precision']:.3f} ({v['wrong']}) | {nv['recall']:.3f} / {nv['precision']:.3f} "
          f"({nv['wrong']}) | {line['ranking_recall_p99']:.3f} | {line['threshold']:.4f} / {line['first_stage']:.4f} "
          f"(no verification {nv['threshold']:.4f}) "
          f"| {line['n_verified_pairs']} ({line.get('n_by_neighbour')} by neighbour) "
          f"| {v['seconds']:.1f} / {nv['seconds']:.1f} "
          f"({v['seconds'] / nv['seconds']:.2f}x) |", flush=True)


def _print_breakdown(line: dict) -> None:
    missed = line["n_true"] - line["verify"]["tp"]
    print(f"  missed {missed} of {line['n_true']} ({line['family']}, {line['detector']}):", flush=True)
    for kind, o in line["breakdown"].items():
        print(f"    {kind}: {o['n']} (judged with the source: True {o['would be True']}, False "
              f"{o['would be False']}, None {o['would be None']}; median photo score {o['median score']:.2f})",
              flush=True)


HEAD = ("| photos | family | detector | copies / distractors | default decision: recall / precision (wrong) "
        "| no verification: recall / precision (wrong) | ranking recall@99%P | threshold / first stage "
        "| pairs verified | report s: verify / none (ratio) |\n|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> list[dict]:
    from benchmarks.photos import FAMILIES, art_photos, dev_photos, family_set, heldout_photos

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", choices=("dev", "art", "heldout"), default="dev",
                    help="dev: photographs; art: illustrations and abstract wallpapers (development); heldout")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--detector", default="phash")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-photos", type=int, default=None, help="a seeded sample of this many photos")
    ap.add_argument("--work", default=None, help="keep the folders, indexes and reports here (default: temporary)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-calibrate", action="store_true", help="the detector's default threshold in every report")
    ap.add_argument("--breakdown", action="store_true", help="where the decision lost each missed true copy")
    ap.add_argument("--views", type=float, nargs="*", default=None,
                    help="the index's corpus views (areas; none given: no views; default: the detector's)")
    ap.add_argument("--query-views", type=float, nargs="*", default=None,
                    help="each query's centre-crop views against an index with views (none given: none)")
    ap.add_argument("--neighbours", type=int, default=None, help="verify up to this many nearest items")
    args = ap.parse_args(argv)
    photos = {"dev": dev_photos, "art": art_photos, "heldout": heldout_photos}[args.photos]()
    if args.max_photos is not None and args.max_photos < len(photos):
        keep = sorted(np.random.default_rng(args.seed).choice(sorted(photos), args.max_photos, replace=False))
        photos = {k: photos[k] for k in keep}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_photo_report-"))
    print(f"{args.photos} photos: {len(photos)}; detector {args.detector}; work {work}")
    print(HEAD, flush=True)
    results = []
    try:
        for family in args.families:
            line = {"photos": args.photos, "n_photos": len(photos), **run_family(
                family_set(photos, family, args.seed), family, args.detector, work / args.detector, args.breakdown,
                not args.no_calibrate, None if args.views is None else tuple(args.views),
                None if args.query_views is None else tuple(args.query_views), args.neighbours)}
            results.append(line)
            _print(line)
            if args.breakdown:
                _print_breakdown(line)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
