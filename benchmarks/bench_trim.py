"""Trimming benchmark: does the content box leave photographs whole and still undo canvases?

Development data only: the photos bundled in scikit-image and scikit-learn and the nature photographs of
Debian's mate-backgrounds package (``usr/share/backgrounds/mate/nature``), and a seeded sample of Debian's
openclipart-png drawings. (lomiri-wallpapers is a held-out set and is not read here.)

1. Photographs: each photo whole (longest side 1024), its four quadrants and 20 seeded random crops (20-70%
   of each side, aspect 0.6-1.6, longest side 400): the share whose content box is trimmed.
2. Canvases: every quadrant (longest side 256) through ``augment_family`` "pad" and "letterbox" at every
   strength, as made (clean) and JPEG-recompressed (quality 30-90): the share trimmed correctly (the box's
   IoU with the pasted rectangle >= 0.9; the rectangle is found by running the same seed on an all-black
   and an all-white image).
3. Clip art: ``--clipart N`` openclipart-png drawings (seed 0, longest side 384): the share trimmed.
4. Recall at 99% precision (``--detectors``): 4 strong App. C copies (``augment_all``) of every quadrant
   (longest side 256) against all quadrants; "whole" embeds the images as they are, "trim" the corpus
   quadrant's trimmed view and, for a copy, the better of its trimmed and whole views (as a report does).

``--save FILE`` writes every box; ``--baseline FILE`` (a file saved under another rule, e.g. by running this
script with PYTHONPATH at an older checkout) adds the share of boxes that differ.

    python benchmarks/bench_trim.py [--cache DIR] [--clipart 1000] [--detectors phash clipdup]
        [--save boxes.json] [--baseline old.json]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/bench_trim.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_trim", *sys.argv[1:]])

import argparse
import io
import json
import random
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from overlap_audit.augment import MARGIN_FAMILIES, STRENGTHS, augment_all, augment_family
from overlap_audit.content import RULE_VERSION, content_box, trim
from overlap_audit.demos.realdata import fetch_debian_package
from overlap_audit.demos.synthetic import bundled_photos
from overlap_audit.decide.thresholds import threshold_at_precision

MATE = ("mate-backgrounds", "usr/share/backgrounds/mate/nature")


def dev_photos(cache: str | None) -> dict:
    """The development photos by name, RGB, longest side 1024."""
    out = {f"bundled/{k}": v for k, v in bundled_photos().items()}
    root = fetch_debian_package(MATE[0], cache) / MATE[1]
    for path in sorted(root.glob("*.jpg")):
        with Image.open(path) as im:
            im.draft("RGB", (1024, 1024))
            image = im.convert("RGB")
        image.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
        out[f"mate/{path.stem}"] = image
    return out


def quadrants(image: Image.Image, longest: int) -> list:
    w, h = image.size
    out = []
    for r in range(2):
        for c in range(2):
            q = image.crop((c * w // 2, r * h // 2, (c + 1) * w // 2, (r + 1) * h // 2))
            q.thumbnail((longest, longest), Image.Resampling.LANCZOS)
            out.append(q)
    return out


def random_crops(image: Image.Image, n: int, rng: np.random.Generator) -> list:
    w, h = image.size
    out = []
    for _ in range(n):
        side, aspect = rng.uniform(0.2, 0.7), np.exp(rng.uniform(-0.5, 0.5))
        cw, ch = max(8, int(min(w, w * side * aspect))), max(8, int(min(h, h * side / aspect)))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((x, y, x + cw, y + ch))
        crop.thumbnail((400, 400), Image.Resampling.LANCZOS)
        out.append(crop)
    return out


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def pasted_box(image: Image.Image, family: str, strength: str, seed: int) -> tuple[int, int, int, int]:
    """Where ``augment_family`` pastes the image under this seed: the same draws on black and on white."""
    dark = np.asarray(augment_family(Image.new("RGB", image.size, "black"), family, strength,
                                     np.random.default_rng(seed)), np.int16)
    light = np.asarray(augment_family(Image.new("RGB", image.size, "white"), family, strength,
                                      np.random.default_rng(seed)), np.int16)
    ys, xs = np.nonzero(np.abs(light - dark).max(axis=2) > 128)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def clipart(cache: str | None, n: int) -> dict:
    root = fetch_debian_package("openclipart-png", cache) / "usr/share/openclipart/png"
    files = sorted(root.rglob("*.png"))
    random.Random(0).shuffle(files)
    out = {}
    for path in files:
        if len(out) >= n:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    if im.width * im.height > 40_000_000:
                        continue
                    im.load()
                    image = im.copy()
        except (Image.DecompressionBombError, OSError):
            continue
        image.thumbnail((384, 384), Image.Resampling.LANCZOS)
        out[str(path.relative_to(root))] = image
    return out


def recall_at_99(det, corpus: list, copies: list, source: np.ndarray, mode: str) -> float:
    """Recall at 99% precision of (copy, its quadrant) among every (copy, quadrant) pair."""
    if mode == "whole":
        sims = det.similarity(det.embed_images(copies), det.embed_images(corpus))
    else:
        base = det.embed_images([trim(im)[0] for im in corpus])
        sims = np.maximum(det.similarity(det.embed_images([trim(im)[0] for im in copies]), base),
                          det.similarity(det.embed_images(copies), base))
    mask = np.zeros(sims.shape, bool)
    mask[np.arange(len(copies)), source] = True
    point = threshold_at_precision(sims[mask], sims[~mask], 0.99)
    return 0.0 if point is None else point.recall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=None, help="where Debian packages are downloaded and unpacked")
    ap.add_argument("--clipart", type=int, default=1000)
    ap.add_argument("--detectors", nargs="*", default=["phash", "clipdup"])
    ap.add_argument("--save", type=Path)
    ap.add_argument("--baseline", type=Path)
    args = ap.parse_args()
    boxes: dict[str, list] = {}
    print(f"# trimming rule {RULE_VERSION}; development data only\n")
    photos = dev_photos(args.cache)
    rng = np.random.default_rng(0)
    kinds = {"whole": [], "quadrant": [], "crop": []}
    for name, image in photos.items():
        kinds["whole"].append((f"photo-whole/{name}", image))
        kinds["quadrant"] += [(f"photo-quadrant/{name}/{i}", q) for i, q in enumerate(quadrants(image, 1024))]
        kinds["crop"] += [(f"photo-crop/{name}/{i}", c) for i, c in enumerate(random_crops(image, 20, rng))]
    print(f"## photographs ({len(photos)}): share trimmed (lower is better)")
    for kind, items in kinds.items():
        trimmed = 0
        for key, image in items:
            box = content_box(image)
            boxes[key] = list(box.box) + [box.trimmed]
            trimmed += box.trimmed
        print(f"- {kind}: {trimmed} of {len(items)} ({trimmed / len(items):.1%})")

    print("\n## pad / letterbox copies of the quadrants: share trimmed to the pasted rectangle (IoU >= 0.9)")
    rng = np.random.default_rng(1)
    qs = [q for image in photos.values() for q in quadrants(image, 256)]
    for family in MARGIN_FAMILIES:
        for strength in STRENGTHS:
            for variant in ("clean", "jpeg"):
                right = 0
                for i, q in enumerate(qs):
                    seed = int(rng.integers(1 << 31))
                    copy = augment_family(q, family, strength, np.random.default_rng(seed))
                    if variant == "jpeg":
                        copy = jpeg(copy, int(rng.integers(30, 91)))
                    want = pasted_box(q, family, strength, seed)
                    box = content_box(copy)
                    boxes[f"{family}/{strength}/{variant}/{i}"] = list(box.box) + [box.trimmed]
                    right += box.trimmed and iou(box.box, want) >= 0.9
                print(f"- {family}, {strength}, {variant}: {right} of {len(qs)} ({right / len(qs):.1%})")

    if args.clipart:
        drawings = clipart(args.cache, args.clipart)
        trimmed = 0
        for key, image in drawings.items():
            box = content_box(image)
            boxes[f"clipart/{key}"] = list(box.box) + [box.trimmed]
            trimmed += box.trimmed
        print(f"\n## clip art: {trimmed} of {len(drawings)} openclipart-png drawings trimmed "
              f"({trimmed / len(drawings):.1%})")

    if args.baseline:
        old = json.loads(args.baseline.read_text())
        print(f"\n## boxes that differ from {args.baseline} (rule {old['rule']})")
        groups: dict[str, list] = {}
        for key, box in boxes.items():
            if key in old["boxes"]:
                groups.setdefault(key.split("/")[0], []).append(box != old["boxes"][key])
        for group, changed in groups.items():
            print(f"- {group}: {sum(changed)} of {len(changed)} ({np.mean(changed):.1%})")

    if args.detectors:
        from benchmarks.common import bench_detector

        rng = np.random.default_rng(2)
        corpus = qs
        copies, source = [], []
        for i, q in enumerate(corpus):
            for _ in range(4):
                copies.append(augment_all(q, "strong", rng))
                source.append(i)
        source = np.array(source)
        print(f"\n## recall at 99% precision, {len(copies)} strong App. C copies of {len(corpus)} quadrants")
        print("| detector | whole | trim (corpus trimmed; copy: best of trimmed and whole) |\n|---|---|---|")
        for spec in args.detectors:
            det = bench_detector(f"{spec}@whole")
            cells = [f"{recall_at_99(det, corpus, copies, source, mode):.3f}" for mode in ("whole", "trim")]
            print(f"| {spec} | " + " | ".join(cells) + " |", flush=True)

    if args.save:
        args.save.write_text(json.dumps({"rule": RULE_VERSION, "boxes": boxes}))


if __name__ == "__main__":
    main()
