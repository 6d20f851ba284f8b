"""Detector quality on real photos: recall on planted near-duplicates and the most similar unrelated pair.

Corpus: checkerboard tiles (128x128) of every photo bundled in scikit-image and scikit-learn; unrelated
queries: the other tiles (same photos, disjoint regions: hard negatives for textures). Planted copies:
each corpus tile under one augmentation (the demo's seeded ranges). Hard negatives: blank, near-uniform,
padding-only, simple shapes and letters. This is how the default thresholds were chosen: above the most
similar unrelated pair, with a margin.

    python benchmarks/phash_quality.py [--size 128] [--exact]

--size sets the tile size (the photos are upscaled where needed); --exact hashes with PIL's plain Lanczos
resize (bit-identical to imagehash) instead of the default reduce-then-Lanczos.
"""

from __future__ import annotations

import argparse
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from overlap_audit.demos.synthetic import AUGMENTATIONS, augment, bundled_photos, tiles
from overlap_audit.detectors import get_detector


def hard_negatives() -> list[Image.Image]:
    def canvas():
        return Image.new("RGB", (128, 128), "white")

    out = [canvas(), Image.new("RGB", (128, 128), "black"), Image.new("RGB", (128, 128), (128, 128, 128))]
    im = canvas()
    ImageDraw.Draw(im).rectangle((0, 0, 127, 18), fill="black")
    ImageDraw.Draw(im).rectangle((0, 109, 127, 127), fill="black")
    out.append(im)
    for shape in ("ellipse", "rectangle"):
        im = canvas()
        getattr(ImageDraw.Draw(im), shape)((30, 30, 98, 98), fill="black")
        out.append(im)
    font = ImageFont.load_default(size=90)
    for ch in "ABOXIL":
        im = canvas()
        ImageDraw.Draw(im).text((30, 10), ch, fill="black", font=font)
        out.append(im)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--exact", action="store_true")
    args = ap.parse_args()
    corpus, other = [], []
    for photo in bundled_photos().values():
        for t, tile in enumerate(tiles(photo, 4, args.size)):
            (corpus if (t // 4 + t % 4) % 2 == 0 else other).append(tile)
    print(f"# {len(corpus)} corpus tiles of {args.size}px, {len(other)} unrelated tiles, {len(hard_negatives())} "
          f"hard negatives; {'exact Lanczos' if args.exact else 'default'} resize")
    print("| detector | threshold | max unrelated photo | max hard negative (not flagged) | "
          + " | ".join(f"recall {k}" for k in AUGMENTATIONS) + " |")
    print("|---|---|---|---|" + "---|" * len(AUGMENTATIONS))
    for spec in ("phash", "phash256", "tiny"):
        det = get_detector(spec)
        if args.exact and spec.startswith("phash"):
            det.reducing_gap = None
        c = det.embed_images(corpus)
        unrelated = det.similarity(det.embed_images(other), c).max()
        hn = hard_negatives()
        batch = np.stack([det.preprocess(im) for im in hn])
        keep = ~det.low_information(batch)
        hv = det.embed(batch)[keep]
        hs = det.similarity(hv, hv)
        np.fill_diagonal(hs, -1)
        recalls = []
        for kind in AUGMENTATIONS:
            rng = np.random.default_rng(1)
            a = det.embed_images([augment(t, kind, rng) for t in corpus])
            sims = np.array([det.similarity(a[i:i + 1], c[i:i + 1])[0, 0] for i in range(len(c))])
            recalls.append((sims >= det.default_threshold).mean())
        print(f"| {spec} | {det.default_threshold:.4f} | {unrelated:.4f} | {hs.max():.4f} | "
              + " | ".join(f"{100 * r:.1f}%" for r in recalls) + " |")


if __name__ == "__main__":
    main()
