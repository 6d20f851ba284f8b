"""The detector benchmark on drawings instead of photo tiles.

Images: 384 openclipart PNGs that clipdup's training never saw: a seeded sample of 900 candidate files past
the 4,000th in sorted order (the earlier training stages read only the first 3,628 drawings; the last
stage's extra drawings, recipes/make_clipdup_weights.py ``training_drawings``, leave out these candidates and
every file that is the same picture as one), taken as 128-px thumbnails on white, without near-uniform images
(grey std < 2 at 64 px), and deduplicated with phash (a file within 10 of 64 bits of one already kept is
dropped — openclipart holds many copies and recolourings of one drawing, which would count as false
matches), then with the pixels themselves (``thumbnail_z``): a file whose 32-px thumbnail, hue-free and
standardised, differs from a kept one's by less than SAME_PICTURE_Z on average is dropped too — phash misses
many such pairs among faint outlines, where its median bit flips with noise. Images that a detector flags as
low-information stay in: that detector misses their copies, as it would in an audit (phash flags about a
third of these drawings — symmetric ones whose DCT coefficients tie with the median — so dropping them would
measure phash only on the drawings it can read).

Same query sets (every augmentation family alone and all together, at every strength), cells and pooled
threshold as bench_detectors.py; also each detector's precision and recall at its shipped default threshold.
Nothing is trained on these images, but the shipped clipdup weights were chosen among training runs partly
on them (BENCHMARKS.md, "clipdup: max-and-min input"): they are held out from training, not from that
choice. ``--bootstrap N``: as in bench_detectors.py, with the drawing as the unit (each is its own file).

    OMP_NUM_THREADS=2 python benchmarks/bench_drawings.py [--detectors phash clipdup clipdup:RUN ...]
        [--bootstrap 1000 --versus phash]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/bench_drawings.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_drawings", *sys.argv[1:]])

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import (TARGET, at_shipped_threshold, average_precision, cache_dir, candidate_files,
                               low_information, print_bootstrap, print_family_table, query_sets, read_drawing,
                               recall_and_ap, similarity_matrix, thumbnail_z)
from overlap_audit.detectors import get_detector
from overlap_audit.detectors.clipdup import SAME_PICTURE_Z
from overlap_audit.decide.thresholds import threshold_at_precision


def held_out_drawings(cache: Path, n: int = 384, first_unused: int = 4000, size: int = 128, seed: int = 1,
                      candidates: int = 900) -> list:
    """The benchmark's drawings: the candidates read, near-uniform ones and duplicates dropped, the first n."""
    images = [im for im in (read_drawing(p, size) for p in candidate_files(cache, first_unused, seed, candidates))
              if im is not None]
    phash = get_detector("phash")
    hashes, hashable = phash.embed_images(images), ~low_information(phash, images)
    flat = np.array([np.asarray(im.convert("L").resize((64, 64)), np.float32).std() < 2.0 for im in images])
    z = np.stack([thumbnail_z(im) for im in images])
    keep: list[int] = []
    by_phash = by_pixels = 0
    for i in range(len(images)):
        if flat[i]:
            continue
        kept_hashable = [k for k in keep if hashable[k]]
        if hashable[i] and kept_hashable and phash.similarity(hashes[i:i + 1], hashes[kept_hashable]).max() >= 0.84:
            by_phash += 1
        elif keep and np.abs(z[keep] - z[i]).mean(axis=1).min() < SAME_PICTURE_Z:
            by_pixels += 1
        else:
            keep.append(i)
    print(f"(drawings: {len(images)} read, {int(flat.sum())} near-uniform dropped (grey std < 2 at 64 px), "
          f"{by_phash} duplicates by phash and {by_pixels} more by their pixels dropped, {len(keep)} left, "
          f"{int((~hashable[keep]).sum())} of them low-information for phash; the first {n} used)")
    return [images[i] for i in keep[:n]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detectors", nargs="+", default=["phash", "clipdup"])
    ap.add_argument("--cache", default=None, help="download cache (default: ~/.cache/overlap-audit, or under "
                                                  "$XDG_CACHE_HOME)")
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N",
                    help="also compare each detector with --versus per cell: N paired resamples of the drawings")
    ap.add_argument("--versus", default="phash")
    args = ap.parse_args()
    images = held_out_drawings(cache_dir(args.cache))
    dets = {spec: get_detector(spec) for spec in args.detectors}
    base = {s: d.embed_images(images) for s, d in dets.items()}
    base_low = {s: low_information(d, images) for s, d in dets.items()}
    pooled = {s: ([], []) for s in dets}
    print(f"\n# {len(images)} held-out drawings; recall at 99% precision / average precision")
    print("| family | strength | " + " | ".join(dets) + " |\n|" + "---|" * (2 + len(dets)))
    compared, by_family = [], {}
    for family, strength, copies in query_sets(images):
        cells, matrices = [], {}
        for s, d in dets.items():
            sims = similarity_matrix(d, base[s], copies, base_low[s])
            if args.bootstrap:
                matrices[s] = sims
            pos, neg = np.diag(sims), sims[~np.eye(len(images), dtype=bool)]
            pooled[s][0].append(pos)
            pooled[s][1].append(neg)
            by_family.setdefault(family, {}).setdefault(s, ([], []))
            by_family[family][s][0].append(pos)
            by_family[family][s][1].append(neg)
            cells.append(recall_and_ap(pos, neg))
        print(f"| {family} | {strength} | " + " | ".join(cells) + " |", flush=True)
        compared.append((family, strength, matrices))
    print_family_table(by_family)
    if args.bootstrap:  # every drawing is its own file: the drawing is the unit
        print_bootstrap(compared, args.versus, args.bootstrap, np.arange(len(images)), unit="drawings")
    print("\n| detector | pooled threshold at 99% precision | its recall | pooled AP | shipped default | its "
          "precision / recall |\n|---|---|---|---|---|---|")
    for s, d in dets.items():
        pos, neg = (np.concatenate(x) for x in pooled[s])
        point = threshold_at_precision(pos, neg, TARGET)
        found = "none | –" if point is None else f"{point.threshold:.4f} | {100 * point.recall:.1f}%"
        print(f"| {s} | {found} | {100 * average_precision(pos, neg):.1f} | {at_shipped_threshold(d, pos, neg)} |")


if __name__ == "__main__":
    main()
