"""Detector benchmark: recall at 99% precision, average precision and throughput, per augmentation family
and strength, on held-out images no detector trained on.

Images: checkerboard tiles (128 px) of the photos bundled in scikit-image and scikit-learn (the shipped
clipdup was trained on openclipart drawings only). For each family (and all together) at each strength,
every image gets one augmented copy; positives are (copy, its image), negatives (copy, every other image):
the other tiles of the same photos are the distractors of the same kind that must not match. Recall at
99% precision: the recall at the lowest threshold whose precision stays >= 0.99; AP: average precision of
all pairs ranked by similarity.

    python benchmarks/bench_detectors.py [--detectors phash phash256 tiny clipdup] [--size 128]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from overlap_audit.augment import FAMILIES, STRENGTHS, augment_all, augment_family
from overlap_audit.demo import bundled_photos, tiles
from overlap_audit.detector_calibration import precision_recall
from overlap_audit.detectors import get_detector


def average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.lexsort((labels, -scores))  # ties: negatives first (pessimistic)
    hits = labels[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / max(1, len(pos)))


def recall_at_precision(pos: np.ndarray, neg: np.ndarray, target: float = 0.99) -> float:
    t, p, r = precision_recall(pos, neg)
    bad = np.nonzero(p < target)[0]
    start = bad[-1] + 1 if len(bad) else 0
    return float(r[start]) if start < len(t) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detectors", nargs="+", default=["phash", "phash256", "tiny", "clipdup"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--strengths", nargs="+", default=list(STRENGTHS))
    args = ap.parse_args()
    images = [t for p in bundled_photos().values() for t in tiles(p, 4, args.size)]
    dets = {}
    for spec in args.detectors:
        try:
            dets[spec] = get_detector(spec)
        except Exception as exc:  # noqa: BLE001 - e.g. no clipdup weights: report and go on
            print(f"({spec} skipped: {exc})")
    print(f"# {len(images)} held-out tiles of {args.size}px; recall at 99% precision / average precision")
    header = "| family | strength | " + " | ".join(dets) + " |"
    print(header + "\n|" + "---|" * (2 + len(dets)))
    base = {name: d.embed_images(images) for name, d in dets.items()}
    for strength in args.strengths:
        for family in (*FAMILIES, "all"):
            rng = np.random.default_rng(hash((family, strength)) % 2**32)
            if family == "all":
                copies = [augment_all(im, strength, np.random.default_rng(int(rng.integers(2**32)))) for im in images]
            else:
                copies = [augment_family(im, family, strength, np.random.default_rng(int(rng.integers(2**32))))
                          for im in images]
            cells = []
            for name, d in dets.items():
                sims = d.similarity(d.embed_images(copies), base[name]).astype(np.float64)
                pos = np.diag(sims)
                neg = sims[~np.eye(len(images), dtype=bool)]
                cells.append(f"{100 * recall_at_precision(pos, neg):.1f} / {100 * average_precision(pos, neg):.1f}")
            print(f"| {family} | {strength} | " + " | ".join(cells) + " |", flush=True)
    print("\n| detector | images/s (preprocess + embed, this process) |\n|---|---|")
    for name, d in dets.items():
        t = time.perf_counter()
        d.embed_images(images)
        print(f"| {name} | {len(images) / (time.perf_counter() - t):,.0f} |")


if __name__ == "__main__":
    main()
