"""Pretraining the small CLIP (``overlap-audit pretrain-clip``): image–caption pairs from any source, the
CLIP paper's symmetric contrastive loss with a learned temperature, resumable checkpoints.

The checkpoint format, the caption rules and loading are described in ``smallclip``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..devices import torch_device
from ..errors import ModelError, param
from ..settings import CAPTION_RULES, PretrainConfig, check_choice
from ..zeroshot.smallclip import (CAPTION_WRAPPERS, CHECKPOINT, FORMAT, LOG, WEIGHTS, _read_checkpoint, _torch,
                        normalise, square_thumbnail)

def _augment(pixels: Any, rng: np.random.Generator, min_scale: float = 0.6) -> Any:
    """Random resized crop (side 60-100%, aspect within 3:4..4:3) and horizontal flip, batched with one
    affine resampling."""
    torch = _torch()
    import torch.nn.functional as F

    n = len(pixels)
    scale = rng.uniform(min_scale, 1.0, n)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), n))
    sx = np.clip(scale * np.sqrt(aspect), 0.2, 1.0)
    sy = np.clip(scale / np.sqrt(aspect), 0.2, 1.0)
    tx = rng.uniform(-1, 1, n) * (1 - sx)
    ty = rng.uniform(-1, 1, n) * (1 - sy)
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    theta_t = torch.from_numpy(theta).to(pixels.device)
    grid = F.affine_grid(theta_t, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ---------------------------------------------------------------- captions and data


def caption_from_path(item_id: str) -> str:
    """``science/astronomy/full_moon_01.png`` -> "full moon, astronomy, science" (numbers dropped)."""
    parts = item_id.replace("\\", "/").split("/")
    stem = os.path.splitext(parts[-1])[0]
    pieces = []
    for i, part in enumerate([stem] + parts[-2::-1]):
        words = [w for w in re.split(r"[\W_]+", part) if w and not w.isdigit()]
        if words:
            pieces.append(" ".join(words).lower() if i > 0 else " ".join(words))
    return ", ".join(pieces)


def _caption(item, rule: str) -> str | None:
    text = (item.caption or "").strip()
    first = text.splitlines()[0].strip() if text else ""
    if rule == "caption":
        return first or None
    if rule == "path":
        return caption_from_path(item.id) or None
    return first or caption_from_path(item.id) or None


@dataclass
class Pairs:
    """Decoded image–caption pairs held in memory: thumbnails ``images`` uint8 [N, 3, S, S]."""

    ids: list[str]
    captions: list[str]
    images: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source:id, reason)

    def __len__(self) -> int:
        return len(self.ids)

    def __add__(self, other: "Pairs") -> "Pairs":
        return Pairs(self.ids + other.ids, self.captions + other.captions,
                     np.concatenate([self.images, other.images]), self.skipped + other.skipped)


def load_pairs(sources: Sequence[str], image_size: int = 64, *, caption_from: str = "auto",
               workers: int | None = 1, max_items: int | None = None, max_pixels: int | None = None,
               progress: bool = False) -> Pairs:
    """Decode every usable image of the sources into a square thumbnail with its caption; items without
    an image or a caption are listed in ``skipped`` with the reason."""
    from ..detectors.base import DetectorBase
    from ..embed import Decoder
    from ..limits import DEFAULT_MAX_PIXELS
    from ..sources import open_source

    check_choice("caption_from", caption_from, CAPTION_RULES, ModelError)

    class _Thumbnail(DetectorBase):  # only its preprocessing is used: the shared decoding pool runs it
        name, version, dim, metric = "smallclip-thumbnail", "1", 0, "cosine"
        content = "whole"  # the training images as they are
        decode_size = image_size

        def preprocess(self, image: Image.Image) -> np.ndarray:
            return square_thumbnail(image, image_size)

        def embed(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - never called
            return np.zeros((len(batch), 0), np.float32)

    ids, captions, arrays, skipped = [], [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="decode", unit="img", leave=False)
    with Decoder(_Thumbnail(), workers=workers, max_pixels=max_pixels or DEFAULT_MAX_PIXELS) as decoder:
        for spec in sources:
            src = open_source(spec)
            for item, array, reason, *_ in decoder.decode(src.iter_items()):
                if bar is not None:
                    bar.update(1)
                key = f"{src.name}:{item.id}"
                if array is None:
                    skipped.append((key, reason or "not decoded"))
                    continue
                caption = _caption(item, caption_from)
                if caption is None:
                    skipped.append((key, f"no caption (caption_from={caption_from})"))
                    continue
                ids.append(key)
                captions.append(caption)
                arrays.append(array)
                if max_items is not None and len(ids) >= max_items:
                    break
            if max_items is not None and len(ids) >= max_items:
                break
    if bar is not None:
        bar.close()
    images = np.stack(arrays) if arrays else np.zeros((0, 3, image_size, image_size), np.uint8)
    return Pairs(ids, captions, images, skipped)


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class PretrainResult:
    out_dir: str
    step: int
    loss: float
    accuracy: float         # image->text top-1 within the last batch
    temperature: float      # 1 / exp(logit scale)
    n_pairs: int
    n_skipped: int
    seconds: float          # wall time of this call's training steps
    device: str
    resumed_from: int       # step the run started at (0 for a fresh run)


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak at cfg.steps."""
    import math

    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train_caption(caption: str, cfg: PretrainConfig, rng: np.random.Generator) -> str:
    parts = [p.strip() for p in caption.split(",") if p.strip()]
    if len(parts) > 1 and rng.random() < cfg.part_dropout:
        keep = rng.random(len(parts)) < 0.5
        if not keep.any():
            keep[rng.integers(len(parts))] = True
        caption = ", ".join(p for p, k in zip(parts, keep) if k)
    if rng.random() < cfg.wrap:
        caption = CAPTION_WRAPPERS[rng.integers(len(CAPTION_WRAPPERS))].replace("{}", caption)
    return caption


def pretrain(sources: Sequence[str], out_dir: str | os.PathLike, cfg: PretrainConfig = PretrainConfig(),
             model_config: Any = None, *, device: str = "auto", resume: bool = False, threads: int | None = None,
             workers: int | None = 1, progress: bool = False, log_every: int = 10, checkpoint_every: int = 100,
             pairs: Pairs | None = None) -> PretrainResult:
    """Train (or resume) a small CLIP on the sources' image–caption pairs; ``pairs`` skips the decoding
    (already loaded with ``load_pairs``; ``sources`` is then only recorded)."""
    torch = _torch()
    from ..atomic import atomic_write, atomic_write_json
    from ..zeroshot.smallclip_net import SmallClipNetConfig, SmallClipNet, contrastive_loss

    mcfg = model_config or SmallClipNetConfig()
    check_choice("caption_from", cfg.caption_from, CAPTION_RULES, ModelError)
    if cfg.batch_size < 2:
        raise ModelError("the contrastive loss needs a batch of at least 2 pairs")
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise ModelError(f"{out} already holds a small CLIP checkpoint; pass {param('resume', True)} to continue it, "
                         f"or choose a new {param('out_dir')}")
    dev = torch_device(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _pretrain(torch, list(sources), out, ckpt_path, cfg, mcfg, dev, resume, workers, progress,
                         log_every, checkpoint_every, pairs, atomic_write, atomic_write_json, SmallClipNet,
                         contrastive_loss)
    finally:
        torch.set_num_threads(old_threads)


def _pretrain(torch, sources, out, ckpt_path, cfg, mcfg, dev, resume, workers, progress, log_every,
              checkpoint_every, pairs, atomic_write, atomic_write_json, SmallClipNet, contrastive_loss):
    torch.manual_seed(cfg.seed)
    net = SmallClipNet(mcfg).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    train_config = {**asdict(cfg), "sources": list(sources)}
    if resume and ckpt_path.exists():
        state = _read_checkpoint(ckpt_path)
        if state["model_config"] != mcfg.to_dict():
            raise ModelError(f"cannot resume {out}: it was trained with the architecture {state['model_config']}, "
                             f"not {mcfg.to_dict()} (architecture settings cannot change on {param('resume', True)})")
        before = {k: v for k, v in state["train_config"].items() if k != "steps"}
        now = {k: v for k, v in train_config.items() if k != "steps"}
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise ModelError(f"cannot resume {out}: {', '.join(changed)} changed since it was started "
                             f"(was {', '.join(f'{k}={before.get(k)!r}' for k in changed)}); only {param('steps')} "
                             f"may change on {param('resume', True)}")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])
    resumed_from = step
    if pairs is None:
        pairs = load_pairs(sources, mcfg.image_size, caption_from=cfg.caption_from, workers=workers,
                           max_items=cfg.max_items, progress=progress)
    if pairs.images.shape[1:] != (3, mcfg.image_size, mcfg.image_size):
        raise ModelError(f"the pairs hold {tuple(pairs.images.shape[1:])} images; the model takes "
                         f"{mcfg.image_size} px")
    if len(pairs) < 2:
        raise ModelError(f"pretraining needs at least 2 image–caption pairs; the sources gave {len(pairs)} "
                         f"({len(pairs.skipped)} skipped, e.g. {pairs.skipped[:3]})")
    out.mkdir(parents=True, exist_ok=True)
    images = torch.from_numpy(pairs.images)
    batch = min(cfg.batch_size, len(pairs))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="pretrain-clip", unit="step")
    started = time.monotonic()
    last = {"step": step, "loss": float("nan"), "accuracy": float("nan"),
            "temperature": float(1 / net.logit_scale.exp().item())}
    if resumed_from:  # a finished run resumed again reports its last step's numbers, not NaN
        logged = (out / LOG).read_text(encoding="utf-8").splitlines() if (out / LOG).exists() else []
        for line in reversed(logged):  # the last complete line: a crash can leave a partial one
            try:
                last.update({k: v for k, v in json.loads(line).items() if k in ("loss", "accuracy")})
                break
            except ValueError:
                continue

    def save() -> None:
        state = {"format": FORMAT, "model_config": mcfg.to_dict(), "train_config": train_config,
                 "model": net.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state()}
        atomic_write(ckpt_path, lambda tmp: torch.save(state, tmp))

    net.train()
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        idx = rng.choice(len(pairs), size=batch, replace=False)
        pixels = _augment(normalise(images[idx]).to(dev), rng, cfg.min_crop)
        texts = [_train_caption(pairs.captions[i], cfg, rng) for i in idx]
        loss, acc = contrastive_loss(net.image(pixels), net.encode_text(texts), net.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        net.clamp_scale()
        step += 1
        last = {"step": step, "loss": round(loss.item(), 5), "accuracy": round(acc.item(), 4),
                "temperature": round(1 / net.logit_scale.exp().item(), 5), "lr": round(_lr_at(step - 1, cfg), 6),
                "seconds": round(time.monotonic() - started, 2)}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['accuracy']:.2f}", t=f"{last['temperature']:.3f}")
        if step % log_every == 0 or step == cfg.steps:
            with open(out / LOG, "a", encoding="utf-8") as fh:
                if fh.tell() and not (out / LOG).read_bytes().endswith(b"\n"):
                    fh.write("\n")  # end a line a crash left partial, so this one parses
                fh.write(json.dumps(last) + "\n")
        if step % checkpoint_every == 0 or step == cfg.steps:
            save()
    if bar is not None:
        bar.close()
    if not ckpt_path.exists():
        save()
    seconds = time.monotonic() - started
    trained = {**train_config, "step": step, "loss": last["loss"], "accuracy": last["accuracy"],
               "temperature": last["temperature"], "pairs": len(pairs), "skipped": len(pairs.skipped),
               "device": dev, "threads": torch.get_num_threads()}
    weights = {"format": FORMAT, "model_config": mcfg.to_dict(), "model": net.state_dict(), "trained": trained}
    atomic_write(out / WEIGHTS, lambda tmp: torch.save(weights, tmp))
    atomic_write_json(out / "train_summary.json", trained)
    net.eval()
    return PretrainResult(out_dir=str(out), step=step, loss=float(last["loss"]), accuracy=float(last["accuracy"]),
                          temperature=float(last["temperature"]), n_pairs=len(pairs), n_skipped=len(pairs.skipped),
                          seconds=round(seconds, 2), device=dev, resumed_from=resumed_from)
