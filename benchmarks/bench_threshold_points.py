"""What `threshold` choosing the whole operating point (threshold, first stage, photo accept) pays, measured on
photographs it was not chosen on.

The photo development set (``benchmarks.photos.dev_photos``: bundled photos and mate-backgrounds), split in two
halves by photo (names sorted, alternate ones): ``quadrant_set`` copies of each half (two corpus quadrants per
photo, ``--copies`` App. C copies of each quadrant; the copies of the other two quadrants are distractors). One
index holds both halves' corpus quadrants. ``review_pairs`` writes the sheet of every query (at the detector's
threshold, verified), labelled from the truth (a pair is a duplicate when the query is a copy of that corpus
item); ``pick_thresholds`` chooses on half A's labels (1) the whole point and (2) the threshold alone (first
stage and accept held at the sheet's: ``MIN_GAIN`` set out of reach), and ``run_report --thresholds`` measures
each on half B, beside the default report (each set's threshold calibrated). Development data throughout.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_threshold_points --strength strong --out /tmp/points
"""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import re
import time
from pathlib import Path



def _write_half(root: Path, name: str, ps, first_row: int) -> tuple[list[str], dict[str, int]]:
    """The half's queries as an image folder (``name``/): ids and, per id, the corpus row it copies (-1: none)."""
    folder = root / name
    folder.mkdir(parents=True)
    ids, truth = [], {}
    for i, (im, src) in enumerate(zip(ps.queries, ps.source)):
        row = first_row + int(src) if src >= 0 else -1
        rel = f"q{i:04d}_{row}.png"
        im.convert("RGB").save(folder / rel)
        ids.append(rel)
        truth[rel] = row
    return ids, truth


def _row(corpus_id: str) -> int:
    return int(re.search(r"c(\d+)\.png", corpus_id).group(1))


def _measure(report_dir: Path, truth: dict[str, int]) -> dict:
    import pyarrow.parquet as pq

    rows = pq.read_table(report_dir / "splits.parquet").to_pylist()
    n_true = sum(r >= 0 for r in truth.values())
    hit = [r for r in rows if r["overlap"]]
    good = sum(truth[r["id"].split("/")[-1]] == _row(r["neighbor_ids"][0]) for r in hit)
    return {"n_copies": n_true, "n_overlap": len(hit), "true_overlap": good, "recall": good / n_true,
            "precision": good / len(hit) if hit else None}


def main() -> None:
    from benchmarks.photos import dev_photos, quadrant_set
    from overlap_audit import review
    from overlap_audit.api import ReportSettings, build_index, run_report
    from overlap_audit.settings import IndexSettings, MatchSettings

    ap = argparse.ArgumentParser()
    ap.add_argument("--strength", default="strong")
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--precision", type=float, default=0.99)
    ap.add_argument("--photos", default=None, help="a pickle of dev_photos() (else read from the packages)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True)
    photos = pickle.load(open(args.photos, "rb")) if args.photos else dev_photos()
    names = sorted(photos)
    halves = {"a": {n: photos[n] for n in names[0::2]}, "b": {n: photos[n] for n in names[1::2]}}
    sets = {h: quadrant_set(p, args.strength, seed=0, copies=args.copies) for h, p in halves.items()}
    (out / "corpus").mkdir()
    truth, ids, first = {}, {}, 0
    for h, ps in sets.items():
        for j, im in enumerate(ps.corpus):
            im.convert("RGB").save(out / "corpus" / f"c{first + j:04d}.png")
        ids[h], truth[h] = _write_half(out / "evals", h, ps, first)
        first += len(ps.corpus)
    match = MatchSettings(workers=args.workers, progress=False)
    build_index([str(out / "corpus")], out / "index", IndexSettings(workers=args.workers))
    evals = [(h, str(out / "evals" / h)) for h in sets]
    cache = out / "cache"
    t0 = time.perf_counter()
    sheet = review.review_pairs(out / "index", evals, out / "rev", n=10_000, match=match, cache_dir=cache)
    seconds = {"pairs": time.perf_counter() - t0}
    with open(sheet.csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:  # half A labelled from the truth; half B left for the measurement
        if r["dataset"] == "a":
            r["is_duplicate"] = "1" if truth["a"][r["eval_id"].split("/")[-1]] == _row(r["corpus_id"]) else "0"
    labels = out / "rev" / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    preds = out / "preds.csv"
    preds.write_text("dataset,id,correct\n" + "".join(f"b,{i},1\n" for i in ids["b"]))

    results = {}
    for variant in ("point", "threshold_alone"):
        if variant == "threshold_alone":
            review.MIN_GAIN = 10**9  # no knob but the threshold can move: the command before it chose the point
        t0 = time.perf_counter()
        choice = review.pick_thresholds(labels, target_precision=args.precision)["a"]
        seconds[f"threshold:{variant}"] = time.perf_counter() - t0
        point = {k: v for k, v in choice.point().items() if v is not None}
        file = out / f"{variant}.json"
        file.write_text(json.dumps({"decision_version": choice.decision["decision_version"],
                                    "datasets": {"b": point}}))
        run_report(out / "index", [evals[1]], ReportSettings(out_dir=out / f"rep-{variant}", predictions=preds,
                                                             match=match, cache_dir=cache,
                                                             stats=_stats(file)))
        results[variant] = {"point": point, "chosen_on_a": {"tp": choice.tp, "fp": choice.fp,
                                                            "n_positive": choice.n_positive,
                                                            "n_negative": choice.n_negative},
                            "knobs": [(k.name, k.moved, k.reason) for k in choice.knobs],
                            "on_b": _measure(out / f"rep-{variant}", truth["b"])}
    run_report(out / "index", [evals[1]], ReportSettings(out_dir=out / "rep-default", predictions=preds, match=match,
                                                         cache_dir=cache))
    results["default_report"] = {"on_b": _measure(out / "rep-default", truth["b"])}
    results["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    results["photos"] = {h: len(p) for h, p in halves.items()}
    print(json.dumps(results, indent=1, default=float))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))


def _stats(file: Path):
    from overlap_audit.settings import StatsSettings

    return StatsSettings(thresholds=str(file))


if __name__ == "__main__":
    main()
