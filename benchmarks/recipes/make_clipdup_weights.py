"""The recipe of the shipped clipdup weights (detectors/weights/clipdup-small.pt and MODEL_CARD.md).

1. Fetch Debian's openclipart-png (8,121 public-domain PNGs) and the photo wallpapers of mate-backgrounds and
   gnome-backgrounds with `apt-get download` + `dpkg -x` into a cache folder (no root). openclipart's
   231-megapixel file is skipped as a decompression bomb by the decoder. Each wallpaper is cut into a grid
   of non-overlapping tiles of about 256 px, stored at 128 px (the same kind of image as the benchmark's, but
   from other photos: the benchmark holds out the photos bundled in scikit-image and scikit-learn).
2. Train the small variant on the tiles and drawings (`overlap-audit train-detector`, self-supervised, CPU,
   one torch thread, one decoding worker): stage 1 from random weights with random batches; then each
   ``--finetune STEPS:LR:INPUT_SIZE:GROUP[:GLOBAL[:SAME[:MODE[:DATA[:EDIT[:VIEW]]]]]]`` stage fine-tunes the previous
   stage's weights (``--init``) on the ``--finetune-input-mode`` input (value-or-min) or MODE, with hard-negative
   batches when GROUP > 1 (groups of look-alike images mined with the network itself; SAME: the
   ``--same-picture`` rule, default mean16) and, when GLOBAL > 0, the batch-global ranking term beside
   InfoNCE with that weight (``--global-weight``). MODE maxmin after one-channel stages widens the first
   convolution (train-detector's widen_to_maxmin); MODE maxchroma after maxmin stages maps it to max and
   chroma (maxmin_to_maxchroma). DATA: ``first`` (default), the tiles and then openclipart
   in sorted order up to ``--max-images``; ``wide``, the tiles and every openclipart file that the drawings
   benchmark (benchmarks/bench_drawings.py) neither uses nor holds the same picture of (``training_drawings``);
   ``wide-nodev``, those without the corpus files that the development set of real overlap
   (benchmarks/devset/pairs.csv) labels as the sources of its copies (``training_drawings_without_devset_sources``).
   EDIT: the chance that a copy is an edited one first (``--edit-p``: outline, colour, shading, drop shadow,
   zoomed out on a canvas; overlap_audit.augment.EDIT_FAMILIES), default 0; VIEW: ``whole`` (default) or
   ``trim``, both the image and its copy cropped to their content box as the audit embeds them (``--trim``).
   ``--stage1 WEIGHTS`` skips stage 1 and fine-tunes the given weights (the shipped file started from stage 1
   of this recipe rounded to float16, an earlier shipped file: MODEL_CARD.md's Reproduce line says which).
   Finished stage runs in ``--run`` are reused (train-detector --resume on a finished run trains nothing).
3. Set the threshold as for every detector: the lowest with 99% precision on the detector benchmark's
   queries pooled (benchmarks/bench_detectors.py; held-out scikit-image / scikit-learn tiles, never trained on).
4. Write the weights (float16) with the threshold and the training facts, and the model card.

    OMP_NUM_THREADS=1 python benchmarks/recipes/make_clipdup_weights.py [--steps 1500] [--cache DIR]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/recipes/make_clipdup_weights.py
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.recipes.make_clipdup_weights", *sys.argv[1:]])

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import cache_dir, candidate_files, fetch_openclipart, read_drawing, thumbnail_z

ROOT = Path(__file__).resolve().parents[2]  # the repository
OUT = ROOT / "detectors" / "weights"


WALLPAPERS = ("mate-backgrounds", "gnome-backgrounds")
# a DATA=wide stage's --max-images: more than its 4,372 tiles and 5,845 drawings, so every one of them
WIDE_MAX_IMAGES = 11000
INPUT_WORDS = {
    "rgb": "RGB",
    "luma": "luma (grey), standardised per image at the network input (brightness and contrast do not reach it)",
    "value": "HSV value, max(R, G, B) — unchanged by hue rotation and saturation changes — standardised per\n"
             "  image at the network input (brightness and contrast do not reach it either)",
    "maxmin": "max(R, G, B) and min(R, G, B) — both unchanged by hue rotation — standardised per image at the\n"
              "  network input (brightness and contrast do not reach it either)",
    "value-or-min": "HSV value, max(R, G, B), or — where the value is nearly flat but min(R, G, B) is not, as for\n"
                    "  saturated colours on white — the min channel (blended in between); both unchanged by hue rotation;\n"
                    "  standardised per image at the network input (brightness and contrast do not reach it either)",
    "maxchroma": "max(R, G, B) and the chroma max - min — both unchanged by hue rotation — each standardised on its\n"
                 "  own at the network input (brightness, contrast and a saturation scale do not reach it)",
}


LIMITATIONS = {
    "value": "on value input a saturated colour on white is invisible (max(R, G, B) = 255 for both), so flat\n"
             "  graphics in pure colours lose their shapes and become low-information (never counted as Overlap). ",
    "maxmin": "a saturation change moves the min channel, min = V(1 - S), so strong desaturation of a colourful\n"
              "  picture moves its input more than a brightness change does. ",
    "value-or-min": "the min channel stands in for the value only where the value is nearly flat, so a graphic that\n"
                    "  is half saturated colours on white and half photo is seen mostly through its value. ",
    "maxchroma": "a saturation change that clips (S pushed past 1) or a brightening that turns faint lines white\n"
                 "  still moves the input; near-grey pictures carry their colour noise in the chroma channel, damped\n"
                 "  only by its std floor (0.05). ",
}


def training_drawings(cache: Path) -> Path:
    """openclipart minus the drawings benchmark: a folder of links, in the sorted order of the files.

    The first 4,000 files (the only drawings the earlier stages reached), then every later file that is
    neither one of the drawings benchmark's candidates (benchmarks/bench_drawings.py) nor the same picture as
    one (standardised 32-px thumbnails within SAME_PICTURE_Z: openclipart holds many copies and recolourings
    of a drawing)."""
    from overlap_audit.detectors.clipdup import SAME_PICTURE_Z

    out = cache / "openclipart-train-wide"
    if out.exists():
        return out
    files = sorted(fetch_openclipart(cache).rglob("*.png"))
    held_out = set(candidate_files(cache))
    held = np.stack([thumbnail_z(im) for im in (read_drawing(p) for p in sorted(held_out)) if im is not None])
    tmp = out.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        if path in held_out:
            continue
        if i >= 4000:
            im = read_drawing(path)
            if im is None or np.abs(held - thumbnail_z(im)).mean(axis=1).min() < SAME_PICTURE_Z:
                continue
        (tmp / f"{i:05d}-{path.name}").symlink_to(path)
    tmp.rename(out)
    return out


def training_drawings_without_devset_sources(cache: Path) -> Path:
    """``training_drawings`` without the corpus files that the development set (benchmarks/devset/pairs.csv)
    labels as, or is unsure whether they are, the source of a Tux Paint stamp: a stage trained on edited
    copies never sees the true sources of the development set's copies."""
    import csv

    out = cache / "openclipart-train-wide-nodev"
    if out.exists():
        return out
    pairs = ROOT / "benchmarks" / "devset" / "pairs.csv"
    with open(pairs, newline="") as fh:
        sources = {r["corpus"] for r in csv.DictReader(fh) if r["label"] == "1" or r["unsure"] == "1"}
    package = fetch_openclipart(cache).parents[3]  # pairs.csv names files from the package's root (usr/share/...)
    dev_files = {(package / name).resolve() for name in sources}
    tmp = out.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for link in sorted(training_drawings(cache).iterdir()):
        if link.resolve() not in dev_files:
            (tmp / link.name).symlink_to(link.resolve())
    tmp.rename(out)
    return out


def widened_words(stage: dict, previous: dict) -> str:
    """The model card's words for a stage whose input differs from the previous stage's (widen_to_maxmin,
    maxmin_to_maxchroma)."""
    if stage.get("input_mode") == "maxmin" and previous.get("input_mode", "rgb") not in ("rgb", "maxmin"):
        return " (the previous stage's first convolution widened to take both: the min channel's weights started at zero)"
    if stage.get("input_mode") == "maxchroma" and previous.get("input_mode") == "maxmin":
        return (" (the previous stage's first convolution mapped to max and chroma: a * max + b * min ="
                " (a + b) * max - b * chroma; then fine-tuned to the per-channel standardisation)")
    return ""


def fetch_wallpaper_tiles(cache: Path, tile_px: int = 256, size: int = 128) -> Path:
    """Cut Debian's wallpaper photos into non-overlapping tiles (a folder of PNGs); returns the folder."""
    from PIL import Image

    from overlap_audit.demos.synthetic import tiles
    from overlap_audit.demos.realdata import fetch_debian_package

    out = cache / f"wallpaper-tiles-{tile_px}-{size}"
    if out.exists():
        return out
    files = []
    for pkg in WALLPAPERS:
        root = fetch_debian_package(pkg, cache)
        files += sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    tmp = out.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    seen = set()
    for path in files:
        if path.stem.split("_")[0] in seen:  # the same picture at several resolutions (Elephants_3840x2160, ...)
            continue
        seen.add(path.stem.split("_")[0])
        image = Image.open(path).convert("RGB")
        grid = max(2, round(min(image.size) / tile_px))
        for i, tile in enumerate(tiles(image, grid, size)):
            tile.save(tmp / f"{path.parent.name}-{path.stem}-{i:03d}.png")
    tmp.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-images", type=int, default=8000, help="photo tiles first, then drawings up to this")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--input-mode", choices=["rgb", "luma", "value", "maxmin"], default="value")
    ap.add_argument("--stage1", default=None, help="weights to fine-tune instead of training stage 1")
    ap.add_argument("--finetune", action="append", default=[],
                    metavar="STEPS:LR:INPUT_SIZE:GROUP[:GLOBAL[:SAME[:MODE[:DATA[:EDIT[:VIEW]]]]]]",
                    help="a fine-tuning stage after stage 1 (repeatable); GROUP: --hard-negatives (0: random "
                         "batches); GLOBAL: --global-weight (default 0); SAME: --same-picture (default mean16); "
                         "MODE: --input-mode (default --finetune-input-mode); DATA: first, wide or wide-nodev; EDIT: --edit-p "
                         "(default 0); VIEW: whole or trim (--trim) (see the docstring)")
    ap.add_argument("--finetune-input-mode", choices=["rgb", "luma", "value", "maxmin", "value-or-min", "maxchroma"],
                    default="value-or-min")
    ap.add_argument("--mine-every", type=int, default=100)
    ap.add_argument("--card-note", default="", help="a sentence for the model card's Reproduce line (how this file "
                                                       "was actually made, where it differs from a clean run)")
    ap.add_argument("--cache", default=None, help="download cache (default: ~/.cache/overlap-audit, or under "
                                                  "$XDG_CACHE_HOME)")
    ap.add_argument("--run", default=None, help="training directory (default: a temporary one)")
    args = ap.parse_args()
    if args.stage1 and not args.finetune:
        ap.error("--stage1 gives the weights that --finetune stages start from; without one there is nothing to do")
    import torch

    from benchmarks.common import benchmark_threshold
    from overlap_audit.detectors import get_detector
    from overlap_audit.atomic import atomic_write

    cache = cache_dir(args.cache)
    photos = fetch_wallpaper_tiles(cache)
    data = fetch_openclipart(cache)
    work = Path(args.run or tempfile.mkdtemp(prefix="clipdup-"))

    def train(run: Path, *options: str, which: str = "first") -> None:
        drawings, most = {"first": (data, args.max_images), "wide": (training_drawings(cache), WIDE_MAX_IMAGES),
                          "wide-nodev": (training_drawings_without_devset_sources(cache), WIDE_MAX_IMAGES)}[which]
        cmd = [sys.executable, "-m", "overlap_audit.cli", "train-detector", str(photos), str(drawings), "--out",
               str(run), "--batch-size", str(args.batch_size), "--strength", "mixed",
               "--schedule", "cosine", "--max-images", str(most), "--workers", "1", "--device", "cpu",
               "--quiet", *options]
        if (run / "checkpoint.pt").exists():
            cmd.append("--resume")
        subprocess.run(cmd, check=True)

    stage1 = Path(args.stage1) if args.stage1 else work / "stage1" / "model.pt"
    if not args.stage1:
        train(work / "stage1", "--arch", "small", "--dim", str(args.dim), "--steps", str(args.steps), "--lr",
              str(args.lr), "--input-mode", args.input_mode, "--input-size", str(args.input_size))
    previous, runs = stage1, []
    for n, spec in enumerate(args.finetune, start=2):
        parts = spec.split(":")
        defaults = ["0", "mean16", args.finetune_input_mode, "first", "0", "whole"]  # GLOBAL, SAME, MODE, DATA, EDIT, VIEW
        if not 4 <= len(parts) <= 10:
            ap.error(f"--finetune {spec!r}: give STEPS:LR:INPUT_SIZE:GROUP[:GLOBAL[:SAME[:MODE[:DATA[:EDIT[:VIEW]]]]]]")
        steps, lr, size, group, global_weight, same, mode, which, edit, view = parts + defaults[len(parts) - 4:]
        if which not in ("first", "wide", "wide-nodev") or view not in ("whole", "trim"):
            ap.error(f"--finetune {spec!r}: DATA is first, wide or wide-nodev, VIEW whole or trim")
        run = work / f"stage{n}"
        train(run, "--init", str(previous), "--steps", steps, "--lr", lr, "--input-size", size,
              "--input-mode", mode, "--hard-negatives", group, "--mine-every", str(args.mine_every),
              "--global-weight", global_weight, "--same-picture", same, "--edit-p", edit,
              *(["--trim"] if view == "trim" else []), which=which)
        previous = run
        runs.append(run)
    first = torch.load(stage1, weights_only=True)["trained"]
    run = runs[-1] if runs else stage1.parent
    state = torch.load(run / "model.pt", weights_only=True)
    state["model"] = {k: v.half() for k, v in state["model"].items()}
    half = run / "model-fp16.pt"  # calibrate what ships: the float16 weights
    atomic_write(half, lambda tmp: torch.save(state, tmp))
    point = benchmark_threshold(get_detector(f"clipdup:{half}"))
    if point is None:
        raise SystemExit(f"{half}: no threshold reaches 99% precision on the detector benchmark; nothing written")
    threshold, recall = point.threshold, point.recall
    state["threshold"] = threshold
    state["calibration"] = {"target_precision": 0.99, "recall": recall, "queries": "bench_detectors.py, all "
                            "families and strengths pooled", "held_out": "scikit-image + scikit-learn photo tiles, 128 px"}
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write(OUT / "clipdup-small.pt", lambda tmp: torch.save(state, tmp))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    t = state["trained"]
    n_tiles = len(list(photos.glob("*.png")))
    finetune_args = "".join(f" --finetune {spec}" for spec in args.finetune) + (
        f" --finetune-input-mode {args.finetune_input_mode} --mine-every {args.mine_every}" if args.finetune else "")
    stage1_words = "" if not args.stage1 else (
        f" (this file was made with `--stage1 {Path(args.stage1).name}`, earlier float16 weights that the --finetune "
        "stages above continue; --card-note says which)")
    stages = [first]
    data_words = ("" if t["images"] <= args.max_images else
                  f" — the last stage's: the earlier stages saw the tiles and the first {args.max_images - n_tiles} "
                  "drawings in sorted order; the last adds every later file that the drawings benchmark "
                  "(benchmarks/bench_drawings.py) neither uses nor holds the same picture of")
    finetune_words = ""
    for n, r in enumerate(runs, start=2):
        s = torch.load(r / "model.pt", weights_only=True)["trained"]
        stages.append(s)
        batches = (f"hard-negative batches: groups of {s['hard_negatives']} look-alike images (an image and its nearest "
                   f"neighbours under the network itself, re-mined every {s['mine_every']} steps)"
                   if s.get("hard_negatives") else "random batches")
        if s.get("hard_negatives") and s.get("same_picture", "mean16") != "mean16":
            batches += (" — a neighbour counts as the same picture again (never a negative) only when its "
                        "standardised 32-px input is within 0.1 on average (--same-picture z32)")
        if s.get("global_weight"):
            batches += (f", InfoNCE plus {s['global_weight']:g} x the batch-global term (every true pair against every "
                        "pair of two different images in the batch)")
        if s.get("edit_p"):
            batches += (f"; {100 * s['edit_p']:g}% of the copies edited first (outline, colour, shading, drop "
                        "shadow or zoomed out on a canvas: EDIT_FAMILIES)")
        if s.get("trim"):
            batches += "; the image and its copy each cropped to its content box (--trim), as the audit embeds them"
        finetune_words += (f"\n  Stage {n}: {s['step']} steps fine-tuning stage {n - 1}'s weights (sha256 "
                         f"{s['init_sha256'][:12]}), lr {s['lr']} ({s['schedule']} schedule), input {s['input_size']} px "
                         f"{s['input_mode']}{widened_words(s, stages[-2])}, {batches}; {s['seconds'] / 60:.1f} minutes; proxy accuracy "
                         f"{s['proxy_accuracy']:.3f}.")
    card = f"""# clipdup-small: model card

The near-duplicate detector of the CLIP paper (Radford et al. 2021, Appendix C), small variant, as shipped
in `detectors/weights/clipdup-small.pt` ({(OUT / 'clipdup-small.pt').stat().st_size / 1e6:.1f} MB, float16).

- Architecture: anti-aliased (blur before every stride), weight-normalised (no batch norm), GELU
  bottleneck ResNet, depths {state['model_config']['depths']}, width {state['model_config']['width']},
  global pooling, projection to {state['model_config']['dim']}, L2 normalisation; input {t['input_size']}x{t['input_size']}
  {INPUT_WORDS[t.get('input_mode', 'rgb')]}.
- Data ({t['images']} images): {min(n_tiles, t['images'])} tiles (about 256 px, stored at 128 px) of the photo wallpapers
  in Debian's {' and '.join(WALLPAPERS)}, and {max(0, t['images'] - n_tiles)} of Debian's openclipart-png public-domain
  drawings (the 231-megapixel file is skipped as a decompression bomb){data_words}. No test or benchmark image is
  in it: the benchmark's photos are the ones bundled in scikit-image and scikit-learn.
- Training: self-supervised, CLIP's symmetric InfoNCE at temperature 0.07, each image against its
  augmented copy (`augment_all`: crop/zoom, aspect, rescale with random interpolation, rotation, JPEG, HSV
  jitter; strength {t['strength']}{' (mild, medium or strong drawn per copy)' if t['strength'] == 'mixed' else ''}), batch {t['batch_size']}, AdamW, seed {t['seed']}.
  Stage 1: {first['step']} steps from random weights, random batches, lr {first['lr']} ({first.get('schedule', 'constant')} schedule),
  input {first.get('input_mode', 'rgb')}; {first['seconds'] / 60:.1f} minutes; proxy accuracy {first['proxy_accuracy']:.3f}.{finetune_words}
- Hardware and time: {platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs, one torch
  thread per run ({t['device']}); training loops {sum(x['seconds'] for x in stages) / 60:.1f} minutes in all (decoding the images not included).
- Proxy task at the end (copy is the most similar item of its batch of {t['batch_size']}): accuracy
  {log[-1]['proxy_accuracy']:.3f}, loss {log[-1]['loss']:.3f}{' (on hard-negative batches, a harder task than random ones)' if t.get('hard_negatives') else ''}{f"; the loss includes {t['global_weight']:g} x the batch-global term, so it is not comparable with InfoNCE alone" if t.get('global_weight') else ''}.
- Threshold: {round(threshold, 4)} — the lowest with precision >= 0.99 on the detector benchmark's queries pooled
  (every augmentation family and all together, mild/medium/strong, on 384 held-out 128-px tiles against
  every other tile): recall {recall:.3f} there.
- Reproduce: `OMP_NUM_THREADS=1 python benchmarks/recipes/make_clipdup_weights.py --steps {args.steps} --batch-size {args.batch_size} --input-size {args.input_size} --dim {args.dim} --lr {args.lr} --max-images {args.max_images} --input-mode {args.input_mode}{finetune_args}`{stage1_words}{(" " + args.card_note) if args.card_note else ""}
- Limitations: {LIMITATIONS.get(t.get('input_mode', 'rgb'), '')}Trained for
  {sum(x['seconds'] for x in stages) / 60:.0f} minutes on a CPU, small (one bottleneck block per stage) and at a low
  resolution; the images it confuses most are structurally alike pictures of different things (a dark corner
  with a bright arc from two different round photos; two near-uniform skies; neighbouring tiles of one brick
  wall; on clip art, faint sunburst and outline variants of different files, and a white bar and a white
  arrow on one blue sign, which it matches above its threshold: on held-out drawings its precision at the
  threshold is about 87%, BENCHMARKS.md "on drawings" — calibrate a threshold on clip art of your own). It
  does not beat pHash everywhere: see BENCHMARKS.md, family by family.
- Quality against phash: BENCHMARKS.md, "Detector benchmark".
"""
    (OUT / "MODEL_CARD.md").write_text(card)
    print(card)


if __name__ == "__main__":
    main()
