"""The clip-art development set through the whole default pipeline: ``index`` of a corpus (every image
pairs.csv names plus ``--distractors`` random other openclipart-png images, seed 0) with the default settings
(phash, content trimming, its corpus views), ``report`` of the rendered stamps with the default decision
(calibration, verification), and each stamp's decision scored against pairs.csv.

    python -m benchmarks.devset.report_devset --data DIR --work WORK [--distractors 1000] [--detector phash]

Per stamp (not per pair, unlike score_devset): a stamp with a labelled duplicate in the corpus is a positive;
an Overlap stamp whose match (the corpus item the decision names) is a labelled duplicate is a true positive,
one whose match is labelled different or not labelled is a false one (a look-alike); a match labelled unsure
counts as neither.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.devset.report_devset", *sys.argv[1:]])

import argparse
import json
import shutil
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    import pandas as pd
    import pyarrow.parquet as pq

    from benchmarks.devset.make_devset import eval_png
    from benchmarks.devset.score_devset import PAIRS, devset_corpus
    from overlap_audit.api import ReportSettings, build_index, run_report
    from overlap_audit.settings import IndexSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="make_devset.py's --out folder")
    ap.add_argument("--work", required=True, type=Path, help="folder for the corpus, index and report")
    ap.add_argument("--detector", default="phash")
    ap.add_argument("--distractors", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=Path, default=PAIRS)
    ap.add_argument("--no-views", action="store_true", help="index without corpus views")
    args = ap.parse_args(argv)

    labels, stamps, named, rest, corpus_pkg, skipped = devset_corpus(args.data, args.pairs, args.distractors,
                                                                     args.seed)
    corpus = [c for c in named if c not in skipped] + rest
    names = {}
    for folder, files, path in (("corpus", corpus, lambda c: corpus_pkg / c), ("stamps", stamps, lambda s: eval_png(args.data, s))):
        (args.work / folder).mkdir(parents=True, exist_ok=True)
        for n, f in enumerate(files):
            name = f"{n:05d}.png"
            names[(folder, name)] = f
            if not (args.work / folder / name).exists():
                shutil.copyfile(path(f), args.work / folder / name)
    tag = args.detector + ("-noviews" if args.no_views else "")
    index = args.work / f"index-{tag}"
    t = time.perf_counter()
    if not (index / "manifest.json").exists():
        build_index([str(args.work / "corpus")], index,
                    IndexSettings(detector=args.detector, views=() if args.no_views else None))
    index_s = time.perf_counter() - t
    preds = pd.DataFrame({"dataset": "stamps", "id": [f"{n:05d}.png" for n in range(len(stamps))], "correct": 1})
    out_dir = args.work / f"report-{tag}"
    shutil.rmtree(out_dir, ignore_errors=True)
    t = time.perf_counter()
    run_report(index, [("stamps", str(args.work / "stamps"))], ReportSettings(out_dir=out_dir, predictions=preds))
    report_s = time.perf_counter() - t
    tab = pq.read_table(out_dir / "splits.parquet").to_pydict()
    dups = {s: {c for (s2, c), (lab, uns) in labels.items() if s2 == s and lab and not uns} for s in stamps}
    unsure = {s: {c for (s2, c), (_, uns) in labels.items() if s2 == s and uns} for s in stamps}
    in_corpus = set(corpus)
    tp = fp = neither = 0
    positives = sum(1 for s in stamps if dups[s] & in_corpus)
    looks, missed = [], []
    for i, ident in enumerate(tab["id"]):
        stamp = names[("stamps", ident)]
        if not tab["overlap"][i]:
            if dups[stamp] & in_corpus:
                missed.append(stamp)
            continue
        match = names[("corpus", Path(tab["neighbor_ids"][i][(tab["match_rank"][i] or 1) - 1]).name)]
        if match in dups[stamp]:
            tp += 1
        elif match in unsure[stamp]:
            neither += 1
        else:
            fp += 1
            looks.append((stamp, match))
    result = {"detector": args.detector, "stamps": len(stamps), "corpus": len(corpus), "positives": positives,
              "tp": tp, "fp": fp, "unsure": neither, "recall": tp / max(1, positives),
              "precision": tp / (tp + fp) if tp + fp else 1.0, "look_alikes": looks, "missed": missed,
              "index_seconds": index_s, "report_seconds": report_s}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
