"""Indexing and report throughput of whole runs, per detector and content normalisation, on the same images
in the same run: `index` (decode in worker processes, trim, embed, write shards, build FAISS) and `report`
(embed the evaluation set, search, split, statistics, report.html), with verification (the default) and without (`--no-verify`).

    python benchmarks/bench_pipeline.py [--n 768] [--eval 128] [--workers 2] [--work-dir DIR]

The images: tiles of the photos bundled in scikit-image and scikit-learn (128 px, as PNG files), half of
them pasted on a larger white canvas (the margins content normalisation trims). Rates are images per second
of wall time; the ratio column is against clipdup without trimming, the learned detector as it ran before
content normalisation.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/bench_pipeline.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_pipeline", *sys.argv[1:]])

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

# (detector, content, verify): the report verifies by default; "--no-verify" rows leave it out
RUNS = (("clipdup", "whole", False), ("clipdup", "trim", False), ("clipdup", "trim", True), ("phash", "whole", False),
        ("phash", "trim", False), ("phash", "trim", True), ("pdq", "trim", False))


def write_images(root: Path, n: int, n_eval: int) -> tuple[Path, Path, Path]:
    """A corpus folder of ``n`` images, an evaluation folder of ``n_eval`` (half of them copies of corpus
    images on another canvas), and a predictions file for it."""
    from overlap_audit.demos.synthetic import bundled_photos, tiles

    pool = [t for photo in bundled_photos().values() for t in tiles(photo, 4, 128)]
    corpus, evals = root / "corpus", root / "eval" / "x"
    corpus.mkdir(parents=True)
    evals.mkdir(parents=True)
    for i in range(n):
        im = pool[i % len(pool)]
        if i % 2:  # on a padded canvas
            canvas = Image.new("RGB", (192, 192), "white")
            canvas.paste(im, (i % 48, (3 * i) % 48))
            im = canvas
        im.save(corpus / f"{i:05d}.png")
    ids = []
    for j in range(n_eval):
        im = pool[(7 * j) % len(pool)] if j % 2 else pool[(j + len(pool) // 2) % len(pool)]
        im.resize((100, 100)).save(evals / f"{j:05d}.png")
        ids.append(f"x/{j:05d}.png")
    preds = root / "preds.csv"
    preds.write_text("dataset,id,correct\n" + "".join(f"val,{i},1\n" for i in ids))
    return corpus, root / "eval", preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=768, help="corpus images")
    ap.add_argument("--eval", type=int, default=128, help="evaluation images")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder, removed after")
    args = ap.parse_args()

    from overlap_audit.api import ReportSettings, run_report
    from overlap_audit.index import build_index
    from overlap_audit.settings import IndexSettings, MatchSettings
    from overlap_audit.decide.rule import VerifySettings

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        corpus, evals, preds = write_images(work / "data", args.n, args.eval)
        warm, _, _ = write_images(work / "warm", 8, 2)
        for detector in sorted({d for d, _, _ in RUNS}):  # imports and model loading are not timed
            build_index([str(warm)], work / f"warm-{detector}", IndexSettings(detector=detector, workers=0))
        rows = []
        for detector, content, verify in RUNS:
            tag = f"{detector}{'@whole' if content == 'whole' else ''}{'' if verify else ' --no-verify'}"
            index = work / f"index-{detector}-{content}"
            if not index.exists():
                t = time.perf_counter()
                build_index([str(corpus)], index, IndexSettings(detector=detector, content=content,
                                                                workers=args.workers))
                index_rate = args.n / (time.perf_counter() - t)
            t = time.perf_counter()
            run_report(index, [("val", str(evals))], ReportSettings(
                work / f"report-{tag.replace(' ', '')}", predictions=preds,
                match=MatchSettings(workers=args.workers), verify=VerifySettings() if verify else None))
            report_rate = args.eval / (time.perf_counter() - t)
            rows.append((tag, index_rate, report_rate))
            print(f"  {tag}: index {index_rate:.0f} img/s, report {report_rate:.1f} img/s", flush=True)
        base = next(r for r in rows if r[0] == "clipdup@whole --no-verify")
        print(f"\n# {args.n} corpus images, {args.eval} evaluation images, {args.workers} decoding workers")
        print("| detector | index, images/s | vs clipdup@whole --no-verify | report, images/s | vs clipdup@whole --no-verify |")
        print("|---|---|---|---|---|")
        for tag, i_rate, r_rate in rows:
            print(f"| {tag} | {i_rate:,.0f} | {i_rate / base[1]:.2f}x | {r_rate:,.1f} | {r_rate / base[2]:.2f}x |")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
