"""The recipe of the shipped small CLIP (overlap_audit/weights/smallclip-openclipart.pt and
SMALLCLIP_MODEL_CARD.md).

1. Fetch Debian's openclipart-png (pretraining pairs; captions from each file's path) and
   tuxpaint-stamps-default (zero-shot evaluation: its 16 top-level categories) with `apt-get download` +
   `dpkg -x` into a cache folder (no root).
2. Pretrain with `overlap-audit pretrain-clip` (CPU, one thread); an existing run in --run is resumed
   (a finished one is not retrained).
3. Store the weights as float16, load them back through `overlap_audit.zeroshot.smallclip.load` and measure the
   zero-shot top-1 accuracy on the Tux Paint categories with `scoring.build_classifier` (the paper's 80
   templates, "a drawing of a {}." and "{}"), beside chance and the majority-class rate.
4. Write the model card.

    python benchmarks/recipes/make_smallclip_weights.py [--steps 600] [--run DIR] [--cache DIR]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/recipes/make_smallclip_weights.py
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.recipes.make_smallclip_weights", *sys.argv[1:]])

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.common import cache_dir, fetch_deb

ROOT = Path(__file__).resolve().parents[2]  # the repository
OUT = ROOT / "overlap_audit" / "weights"
NAME = "smallclip-openclipart.pt"


def deb_version(package: str, cache: Path) -> str:
    """The file name of the .deb a package was unpacked from (its version), as realdata records it."""
    done = cache / "extracted" / package / ".complete"  # realdata writes the .deb's name there
    if done.exists():
        return done.read_text(encoding="utf-8").strip()
    debs = sorted((cache / "debs").glob(f"{package}_*.deb"))  # where realdata downloads them
    return debs[-1].name if debs else "unknown version"


def evaluate(model, tux_root: Path, workers: int = 0) -> dict:
    """Zero-shot top-1 on the Tux Paint stamps' top-level categories, three prompt sets."""
    import numpy as np

    from overlap_audit.zeroshot.smallclip import load_pairs, zero_shot
    from overlap_audit.stats.overlap import clopper_pearson

    pairs = load_pairs([str(tux_root)], model.image_size, caption_from="auto", workers=workers)
    labels = [i.split(":", 1)[1].split("/")[0] for i in pairs.ids]
    out = {"n": len(labels), "classes": sorted(set(labels)), "skipped": pairs.skipped}
    for key, templates in (("imagenet80", None), ("drawing", ["a drawing of a {}."]), ("plain", ["{}"])):
        z = zero_shot(model, pairs.images, labels, ids=pairs.ids, templates=templates)
        k = int(z.correct.sum())
        out[key] = {"accuracy": z.accuracy, "correct": k, "ci95": clopper_pearson(k, len(labels), 0.95)}
        out["majority_rate"] = z.majority_rate
        out.setdefault("per_class", {})[key] = {
            c: float(np.mean([p == t for p, t in zip(z.predicted, z.labels) if t == c])) for c in z.classes}
    out["chance"] = 1 / len(out["classes"])
    out["majority_class"] = max(out["classes"], key=labels.count)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=None, help="download cache (default: ~/.cache/overlap-audit, or under "
                                                  "$XDG_CACHE_HOME)")
    ap.add_argument("--openclipart", default=None, help="openclipart png folder (default: fetched into --cache)")
    ap.add_argument("--tuxpaint", default=None, help="tux paint stamps folder (default: fetched into --cache)")
    ap.add_argument("--run", default=None, help="training directory (default: a temporary one)")
    args = ap.parse_args()
    import torch

    from overlap_audit.atomic import atomic_write, atomic_write_json
    from overlap_audit.zeroshot.smallclip import load

    cache = cache_dir(args.cache)
    data = Path(args.openclipart or fetch_deb("openclipart-png", cache, "usr/share/openclipart/png"))
    tux = Path(args.tuxpaint or fetch_deb("tuxpaint-stamps-default", cache, "usr/share/tuxpaint/stamps"))
    run = Path(args.run or tempfile.mkdtemp(prefix="smallclip-"))
    cmd = ["overlap-audit", "pretrain-clip", str(data), "--out", str(run), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--workers", "1", "--device", "cpu",
           "--seed", "0", "--quiet"]
    if (run / "checkpoint.pt").exists():
        cmd.append("--resume")
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "overlap_audit.cli", *cmd[1:]], check=True)
    call_s = time.time() - t0
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    state = torch.load(run / "model.pt", weights_only=True)
    state["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write(OUT / NAME, lambda tmp: torch.save(state, tmp))
    torch.set_num_threads(args.threads)
    model = load(str(OUT / NAME))
    ev = evaluate(model, tux)
    t, mc = state["trained"], state["model_config"]
    size_mb = (OUT / NAME).stat().st_size / 1e6
    n_params = sum(v.numel() for v in state["model"].values())
    atomic_write_json(run / "zero_shot.json", {k: v for k, v in ev.items() if k != "skipped"})

    def acc(key: str) -> str:
        e = ev[key]
        return (f"{100 * e['accuracy']:.1f}% ({e['correct']}/{ev['n']}; 95% Clopper–Pearson "
                f"[{100 * e['ci95'][0]:.1f}, {100 * e['ci95'][1]:.1f}])")

    per_class = ", ".join(f"{c} {100 * a:.0f}%" for c, a in ev["per_class"]["imagenet80"].items())
    card = f"""# smallclip openclipart-small: model card

The project's own small CLIP, shipped as `overlap_audit/weights/{NAME}` ({size_mb:.1f} MB, float16,
{n_params / 1e6:.2f} M parameters). Load it with `overlap_audit.zeroshot.smallclip.load("openclipart-small")`.
It exists so that the whole audit runs offline with a model whose accuracy is real; it is a toy next
to the paper's models.

- Architecture (`overlap_audit/zeroshot/smallclip_net.py`): image tower = strided 4x4 conv stem then conv-BN-ReLU
  stages of widths {mc['widths']} with 2x2 max-pooling, global average pooling, projection to
  {mc['embed_dim']}, L2 normalisation, input {mc['image_size']}x{mc['image_size']} RGB (padded square on
  white); text tower = lowercase words plus character {mc['ngrams']}-grams hashed (CRC-32) into
  {mc['buckets']} buckets, mean of {mc['token_dim']}-dim bucket embeddings, LayerNorm, GELU MLP
  ({mc['text_hidden']} hidden), projection to {mc['embed_dim']}, L2 normalisation. No vocabulary file;
  unseen words share n-grams with seen ones.
- Loss: the CLIP paper's symmetric cross-entropy over the image–text similarity matrix with a learned
  temperature (logit scale initialised to log(1/0.07), clipped at 100). Final temperature {t['temperature']:.4f}.
- Data: Debian's openclipart-png ({deb_version('openclipart-png', cache)}): {t['pairs']} image–caption pairs
  (the 16 images above 89.5 megapixels are skipped as decompression bombs). Captions from each file's
  path (`--caption-from auto`, the files have no caption files): file-name words, then the folders from
  the innermost out, numbers dropped, e.g. `science/astronomy/full_moon_dan_gerhards_01.png` -> "full
  moon dan gerhards, astronomy, science" (the file names carry author names; kept as they are). During
  training a caption keeps a random subset of its comma-separated parts 30% of the time and is put into
  a generic wrapper ("a picture of {{}}.", "clip art of {{}}." ...) 30% of the time; images get a random
  resized crop (60–100% side) and a horizontal flip.
- Training: {t['step']} steps, batch {t['batch_size']}, AdamW (lr {t['lr']}, weight decay
  {t['weight_decay']}, {t['warmup']} warm-up steps, cosine decay to a tenth), seed {t['seed']}; final
  training loss {t['loss']:.3f} (in-batch image->text top-1 {t['accuracy']:.3f}, batch of {t['batch_size']};
  chance {1 / t['batch_size']:.3f}).
- Hardware and time: {platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs, torch
  {torch.__version__} with {t['threads']} thread; the training steps took {log[-1]['seconds'] / 60:.1f}
  minutes (train_log.jsonl), plus about 2 minutes of decoding the corpus.
- Zero-shot top-1 accuracy on tuxpaint-stamps-default ({deb_version('tuxpaint-stamps-default', cache)}),
  {ev['n']} stamps, the {len(ev['classes'])} top-level categories as classes, class names as the folder names
  ({', '.join(ev['classes'])}), `scoring.build_classifier`:

  | prompts | top-1 |
  |---|---|
  | the paper's 80 ImageNet templates | {acc('imagenet80')} |
  | "a drawing of a {{}}." | {acc('drawing')} |
  | "{{}}" | {acc('plain')} |
  | chance (1/{len(ev['classes'])}) | {100 * ev['chance']:.1f}% |
  | majority class (always "{ev['majority_class']}") | {100 * ev['majority_rate']:.1f}% |

  Per class (80 templates): {per_class}.
  None of these stamps is in the training data; the class names are Tux Paint's, not openclipart's.
- Reproduce: `python benchmarks/recipes/make_smallclip_weights.py --steps {args.steps} --batch-size {args.batch_size}
  --threads {args.threads}` (the training command it runs: `{' '.join(cmd[:2])} OPENCLIPART_PNG --out RUN
  {' '.join(c for c in cmd[5:] if c != '--resume')}`); {date.today().isoformat()}.
"""
    (OUT / "SMALLCLIP_MODEL_CARD.md").write_text(card)
    print(card)
    print(f"(this call: {call_s:.0f} s including decoding; run directory {run})")


if __name__ == "__main__":
    main()
