"""Score a near-duplicate detector on the real-overlap development set (pairs.csv).

    python benchmarks/devset/score_devset.py --data DIR --detector phash [--detector clipdup ...]
        [--trim no|yes|both] [--distractors 1000] [--full-size]

DIR is make_devset.py's --out (the rendered stamps and manifest.json). The stamps are embedded, and so is a
corpus made of every corpus image pairs.csv names plus ``--distractors`` other openclipart-png images drawn
at random (seed 0; ``--distractors -1``: the whole corpus). Images are reduced to 384 px on their long side
before the detector sees them, as make_devset.py does (``--full-size``: whole decoded images). With ``--trim
yes`` both sides are cropped to their content box first (make_devset.trim_to_content); ``both`` scores each
way. Each image is decoded once for every detector and view.

Positives are the labelled duplicate pairs (their scores whatever their rank); negatives are every other
(stamp, corpus) pair among each reviewed stamp's top k (default 10) in that corpus, labelled or not; pairs
marked unsure count as neither. Reported: recall and precision at the detector's default threshold, recall at
95% and 99% precision (overlap_audit.decide.thresholds.threshold_at_precision), and how many positives rank first,
in the top 5 and in the top 10 (rank = 1 + the corpus images that are not labelled duplicates of the stamp
and score at least as high: ties count against the true source).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/devset/score_devset.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.devset.score_devset", *sys.argv[1:]])

import argparse
import csv
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from overlap_audit.decide.thresholds import threshold_at_precision

HERE = Path(__file__).resolve().parent
PAIRS = HERE / "pairs.csv"


@dataclass(frozen=True)
class DevsetScore:
    """A detector's figures on the development set."""

    n_positive: int
    n_negative: int
    threshold: float | None
    recall_default: float | None
    precision_default: float | None
    recall_p95: float
    threshold_p95: float | None
    recall_p99: float
    threshold_p99: float | None
    rank1: int
    top5: int
    top10: int


def read_pairs(path: Path = PAIRS) -> dict[tuple[str, str], tuple[int, int]]:
    """{(stamp, corpus): (label, unsure)} from pairs.csv."""
    with open(path, newline="") as fh:
        return {(r["stamp"], r["corpus"]): (int(r["label"]), int(r["unsure"])) for r in csv.DictReader(fh)}


def score(sim: np.ndarray, stamps: list[str], corpus: list[str], labels: dict[tuple[str, str], tuple[int, int]],
          threshold: float | None, k: int = 10) -> DevsetScore:
    """Score a similarity matrix [stamps, corpus] against the labels (see the module docstring)."""
    col = {c: j for j, c in enumerate(corpus)}
    pos, neg = [], []
    ranks = []
    for i, stamp in enumerate(stamps):
        row = sim[i]
        dup_cols = {col[c] for (s, c), (lab, uns) in labels.items() if s == stamp and lab and not uns and c in col}
        unsure_cols = {col[c] for (s, c), (_, uns) in labels.items() if s == stamp and uns and c in col}
        others = np.ones(len(corpus), dtype=bool)
        others[list(dup_cols)] = False
        for j in dup_cols:
            pos.append(float(row[j]))
            ranks.append(1 + int((row[others] >= row[j]).sum()))
        for j in np.argsort(-row, kind="stable")[:k]:
            if int(j) not in dup_cols and int(j) not in unsure_cols:
                neg.append(float(row[j]))
    pos_a, neg_a = np.array(pos), np.array(neg)
    recall = precision = None
    if threshold is not None and len(pos_a):
        tp, fp = int((pos_a >= threshold).sum()), int((neg_a >= threshold).sum())
        recall = tp / len(pos_a)
        precision = tp / (tp + fp) if tp + fp else 1.0
    p95, p99 = (threshold_at_precision(pos_a, neg_a, t) for t in (0.95, 0.99))
    r = np.array(ranks)
    return DevsetScore(len(pos_a), len(neg_a), threshold, recall, precision,
                       p95.recall if p95 else 0.0, p95.threshold if p95 else None,
                       p99.recall if p99 else 0.0, p99.threshold if p99 else None,
                       int((r <= 1).sum()), int((r <= 5).sum()), int((r <= 10).sum()))


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def table_row(name: str, s: DevsetScore) -> str:
    return (f"| {name} | {s.n_positive} | {s.n_negative} | {_fmt(s.threshold, 4)} | {_fmt(s.recall_default)} | "
            f"{_fmt(s.precision_default)} | {s.recall_p95:.3f} ({_fmt(s.threshold_p95, 4)}) | "
            f"{s.recall_p99:.3f} ({_fmt(s.threshold_p99, 4)}) | {s.rank1} / {s.top5} / {s.top10} |")


TABLE_HEAD = ("| detector | positives | negatives | default threshold | recall there | precision there | "
              "recall at 95% precision (threshold) | recall at 99% precision (threshold) | "
              "true sources ranked 1 / top 5 / top 10 |\n|---|---|---|---|---|---|---|---|---|")


def calibrated_thresholds(work: Path, stamp_files, corpus_files, detectors) -> dict[str, float]:
    """Per detector, the threshold ``run_report`` would use for the stamps as an evaluation set: the corpus
    files and the stamps copied into ``work``, the corpus indexed (``IndexSettings`` defaults but the detector),
    the stamps matched and calibrated as a report does (``calibrate.calibrate_sets``, default settings)."""
    import shutil

    from overlap_audit.calibrate import calibrate_sets
    from overlap_audit.decide.rule import DecisionRule
    from overlap_audit.index import build_index
    from overlap_audit.match import match_eval_sets, open_corpus
    from overlap_audit.settings import CalibrationSettings, IndexSettings, MatchSettings

    folders = {"corpus": corpus_files, "stamps": stamp_files}
    for name, files in folders.items():
        folder = work / name
        if not folder.exists():
            folder.mkdir(parents=True)
            for n, f in enumerate(files):
                shutil.copyfile(f, folder / f"{n:05d}{Path(f).suffix}")
    out = {}
    for spec in detectors:
        index = work / f"index-{spec}"
        if not (index / "manifest.json").exists():
            build_index([str(work / "corpus")], index, IndexSettings(detector=spec))
        settings = MatchSettings()
        corpus = open_corpus(index, settings)
        evals = {"stamps": str(work / "stamps")}
        matches = match_eval_sets(corpus, list(evals.items()), settings)
        cal = calibrate_sets(corpus, index, matches, evals,
                             lambda t: DecisionRule.for_detector(corpus.detector, t), CalibrationSettings(), settings)
        out[spec] = cal["stamps"].used
    return out


def devset_corpus(data: Path, pairs: Path, distractors: int, seed: int):
    """(labels, stamps, the corpus images pairs.csv names, ``distractors`` other openclipart-png images drawn
    with ``seed`` (-1: all), the corpus package's root, the corpus images make_devset skipped) of the
    development set rendered into ``data``; corpus images as paths relative to the package's root."""
    manifest = json.loads((data / "manifest.json").read_text())
    labels = read_pairs(pairs)
    stamps = sorted({s for s, _ in labels})
    named = sorted({c for _, c in labels})
    corpus_pkg = Path(manifest["corpus_root"])
    skipped = {c for c, _ in manifest["corpus_skipped"]}
    named_set = set(named)
    every = sorted(str(p.relative_to(corpus_pkg)) for p in (corpus_pkg / "usr/share/openclipart/png").rglob("*.png"))
    rest = [c for c in every if c not in named_set and c not in skipped]
    if 0 <= distractors < len(rest):
        rest = sorted(random.Random(seed).sample(rest, distractors))
    return labels, stamps, named, rest, corpus_pkg, skipped


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="make_devset.py's --out folder")
    ap.add_argument("--detector", action="append", required=True, help="a detector spec (repeat for several)")
    ap.add_argument("--trim", choices=("no", "yes", "both"), default="no",
                    help="crop both sides to their content box (both: a row each way)")
    ap.add_argument("--distractors", type=int, default=1000, help="random other corpus images (-1: all)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--full-size", action="store_true",
                    help="give the detectors whole decoded images (default: reduced to 384 px on the long side)")
    ap.add_argument("--pairs", type=Path, default=PAIRS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trim-rule", choices=("library", "simple"), default="library",
                    help="library: overlap_audit.content.trim, the audit's own; simple: make_devset's "
                         "crop to pixels darker than 245 (the rule the candidates were found with)")
    ap.add_argument("--verify", action="store_true",
                    help="also score the relaxed first stage + overlap_audit.decide.verify.verify_pair (a second table)")
    ap.add_argument("--calibrate", type=Path, default=None, metavar="WORK",
                    help="score at the threshold a report calibrates for the stamps (calibrate.calibrate_sets, "
                         "default CalibrationSettings) against an index of this corpus, built in WORK")
    args = ap.parse_args(argv)
    from benchmarks.devset.make_devset import WORK_SIZE, embed_views, eval_png

    from overlap_audit.detectors import get_detector

    labels, stamps, named, rest, corpus_pkg, _ = devset_corpus(args.data, args.pairs, args.distractors, args.seed)
    named_set = set(named)
    corpus = named + rest
    detectors = {spec: get_detector(spec) for spec in args.detector}
    size = None if args.full_size else WORK_SIZE
    library = args.trim_rule == "library"
    s_emb, s_keep, s_bad = embed_views([str(eval_png(args.data, s)) for s in stamps], detectors, work_size=size,
                                       library_trim=library)
    if s_bad:
        raise SystemExit(f"rendered stamps that do not decode: {s_bad}; rerun make_devset.py")
    c_emb, c_keep, _ = embed_views([str(corpus_pkg / c) for c in corpus], detectors, work_size=size,
                                   library_trim=library)
    corpus = [corpus[j] for j in c_keep]
    n_named = sum(c in named_set for c in corpus)
    print(f"{len(stamps)} stamps; {len(corpus)} corpus images: {n_named} named in pairs.csv and "
          f"{len(corpus) - n_named} random distractors; top {args.k}; "
          f"{'whole images' if size is None else f'images reduced to {size} px'}")
    cut = {}
    if args.calibrate is not None:
        cut = calibrated_thresholds(args.calibrate, [eval_png(args.data, s) for s in stamps],
                                    [corpus_pkg / c for c in corpus], detectors)
        print("calibrated thresholds: " + "; ".join(f"{spec} {t:.4f}" for spec, t in cut.items()), flush=True)
    print(TABLE_HEAD)
    trims = {"no": (False,), "yes": (True,), "both": (False, True)}[args.trim]
    sims = {}
    for spec, det in detectors.items():
        for trim in trims:
            sim = sims[(spec, trim)] = det.similarity(s_emb[(spec, trim)], c_emb[(spec, trim)])
            result = score(sim, stamps, corpus, labels, cut.get(spec, det.default_threshold), args.k)
            print(table_row(spec + (f", trimmed ({args.trim_rule})" if trim else ""), result), flush=True)
            if trim:  # the audit's two query views: the better of the trimmed and the whole stamp
                both = np.maximum(sim, det.similarity(s_emb[(spec, False)], c_emb[(spec, True)]))
                result = score(both, stamps, corpus, labels, cut.get(spec, det.default_threshold), args.k)
                print(table_row(spec + f", trimmed ({args.trim_rule}), 2 query views", result), flush=True)
    if args.verify:
        from benchmarks.devset.verify_devset import verify_table

        verify_table(sims, detectors, stamps, corpus, labels, k=args.k,
                     stamp_path=lambda s: eval_png(args.data, s), corpus_path=lambda c: corpus_pkg / c,
                     work_size=size, thresholds=cut)


if __name__ == "__main__":
    main()
