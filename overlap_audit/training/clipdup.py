"""Training ``clipdup`` (``overlap-audit train-detector``): self-supervised, as in the CLIP paper's Appendix C.

Each step takes a batch of corpus images, makes an augmented copy of each with
``overlap_audit.augment.augment_training`` (the App. C pipeline ``augment_all``, optionally after an edit of the
drawing: ``EDIT_FAMILIES``), optionally compares the content-trimmed views of both (as the audit does), and maximises the similarity of every image with its own copy against
every other image of the batch (``info_nce`` at the fixed temperature 0.07), optionally with mined hard
negatives. Checkpoints are torch weights-only files (``torch.load(weights_only=True)``) holding the model
config, weights, optimiser state, step and RNG state; training resumes from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..devices import torch_device
from ..detectors.base import DetectorBase
from ..detectors.clipdup import (CHANNEL_FLOORS, CHECKPOINT, INPUT_CHANNELS, LOG, WEIGHTS, _torch, _weights_file,
                      to_tensor_array)
from ..settings import INPUT_MODES, SAME_PICTURE_RULES, SCHEDULES, TRAIN_STRENGTHS, DetectorTrainConfig, check_choice


def _load_images(sources: list[str], cfg: DetectorTrainConfig, workers: int | None) -> list[Image.Image]:
    """Decode up to max_images corpus images once, kept as small RGB thumbnails (2x the input size)."""
    from ..embed import Decoder
    from ..sources import open_source

    class _Thumb(DetectorBase):  # a "detector" whose preprocessing is a thumbnail: reuses the decoding pool
        name, version, dim, metric = "thumb", "1", 0, "cosine"
        content = "whole"  # the training images as they are
        decode_size = cfg.input_size * 2

        def preprocess(self, image: Image.Image) -> np.ndarray:
            image = image.copy()
            image.thumbnail((cfg.input_size * 2, cfg.input_size * 2), Image.Resampling.BICUBIC)
            return np.asarray(image, dtype=np.uint8)

        def embed(self, batch: np.ndarray) -> np.ndarray:  # never called: only the decoding pool is used
            return np.zeros((len(batch), 0), np.float32)

    images: list[Image.Image] = []
    with Decoder(_Thumb(), workers=workers) as decoder:
        for spec in sources:
            for item, array, reason, *_ in decoder.decode(open_source(spec).iter_items()):
                if array is not None:
                    images.append(Image.fromarray(array))
                if len(images) >= cfg.max_images:
                    return images
    return images


# mining: a neighbour whose 16x16 input differs from the image's by less than this (mean absolute, 0..1) is
# the same picture again (an exact or resized duplicate in the corpus), never used as its hard negative
SAME_PICTURE = 0.02
# the same, on standardised 32x32 thumbnails (``standardised_thumbnails``): a mild JPEG, rescaled or
# recoloured copy of a drawing lies at a median 0.02-0.04 from it, 90% of them within 0.06-0.09
SAME_PICTURE_Z = 0.1


def standardised_thumbnails(x, size: int = 32):
    """[N, C, H, W] inputs (a torch tensor) -> [N, C*size*size]: area-averaged, zero mean, unit variance per image.

    Mean absolute differences of these compare pictures regardless of brightness and contrast."""
    torch = _torch()
    t = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(x, dtype=torch.float32), size).flatten(1)
    return (t - t.mean(dim=1, keepdim=True)) / t.std(dim=1, keepdim=True).clamp_min(1e-6)


def widen_to_maxmin(weights: dict, model_cfg):
    """One-channel standardised weights (value, value-or-min) -> weights that take max(R, G, B) and min(R, G, B).

    The first convolution gets a second input channel whose weights start at zero: the network sees the max
    channel (the value) as before — only the per-image standardisation now spans both channels — and fine-tuning
    brings in the min channel, which keeps white shapes on saturated colours (a white pictogram on a blue
    sign: max(R, G, B) is 255 on both) that the value alone loses."""
    from dataclasses import replace

    key = "stem.0.parametrizations.weight.original1"  # weight_norm's direction v; its norm g is unchanged
    if key not in weights or weights[key].shape[1] != 1:
        from ..errors import DetectorError

        raise DetectorError("these weights have no one-channel first convolution to widen")
    out = dict(weights)
    v = weights[key].float()
    out[key] = _torch().cat([v, _torch().zeros_like(v)], dim=1)
    return out, replace(model_cfg, channels=2)


def maxmin_to_maxchroma(weights: dict, model_cfg):
    """Max-and-min weights -> weights that take max(R, G, B) and the chroma max - min, each channel standardised
    on its own (CHANNEL_FLOORS).

    The first convolution's weights are mapped so that, before standardisation, it computes the same thing:
    a * max + b * min = (a + b) * max - b * chroma. Only the standardisation differs (per channel instead of
    joint), which fine-tuning then adapts to."""
    from dataclasses import replace

    torch = _torch()
    v_key, g_key = "stem.0.parametrizations.weight.original1", "stem.0.parametrizations.weight.original0"
    if v_key not in weights or g_key not in weights or weights[v_key].shape[1] != 2 or model_cfg.channel_floors:
        from ..errors import DetectorError

        raise DetectorError("these weights have no max-and-min first convolution to map to max and chroma")
    # weight_norm: w = g * v / |v| (norm over all but the output dimension); map v, rescale g to keep w
    v, g = weights[v_key].float(), weights[g_key].float()
    mapped = torch.cat([v[:, :1] + v[:, 1:], -v[:, 1:]], dim=1)
    norm = lambda t: t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))  # noqa: E731
    out = dict(weights)
    out[v_key], out[g_key] = mapped, g * norm(mapped) / norm(v).clamp_min(1e-12)
    return out, replace(model_cfg, channel_floors=CHANNEL_FLOORS["maxchroma"])


def mine_neighbours(net, images: list[Image.Image], cfg: DetectorTrainConfig, device: str, *, batch: int = 256) -> np.ndarray:
    """Each image's nearest other images under ``net`` (most similar first): an int array [N, hard_negatives - 1].

    Duplicates of the image itself (SAME_PICTURE, or SAME_PICTURE_Z by ``cfg.same_picture``) are skipped; a
    row is padded with -1 where none is left.
    """
    torch = _torch()
    k = cfg.hard_negatives - 1
    embeddings, small = [], []
    net.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.stack([to_tensor_array(im, cfg.input_size, cfg.input_mode)
                                           for im in images[i:i + batch]]))
            embeddings.append(net(x.to(device)).cpu())
            small.append(standardised_thumbnails(x, 32) if cfg.same_picture == "z32"
                         else torch.nn.functional.adaptive_avg_pool2d(x, 16).flatten(1))
    net.train()
    e, small = torch.cat(embeddings), torch.cat(small)
    out = np.full((len(images), k), -1, dtype=np.int64)
    for i in range(0, len(images), 1024):
        sims = e[i:i + 1024] @ e.t()
        sims[torch.arange(len(sims)), torch.arange(i, i + len(sims))] = -np.inf  # not itself
        candidates = sims.topk(min(len(images) - 1, 4 * k), dim=1).indices
        for row, cand in enumerate(candidates.numpy()):
            same = (small[cand] - small[i + row]).abs().mean(dim=1).numpy() < (
                SAME_PICTURE_Z if cfg.same_picture == "z32" else SAME_PICTURE)
            keep = cand[~same][:k]
            out[i + row, :len(keep)] = keep
    return out


def batch_indices(rng: np.random.Generator, n: int, batch: int, neighbours: np.ndarray | None) -> np.ndarray:
    """A batch of distinct image indices: random, or random seeds each followed by its mined neighbours."""
    if neighbours is None:
        return rng.choice(n, size=min(batch, n), replace=False)
    chosen: list[int] = []
    used: set[int] = set()
    for seed in rng.permutation(n):
        if len(chosen) >= batch:
            break
        if seed in used:
            continue
        group = [int(seed)] + [int(j) for j in neighbours[seed] if j >= 0 and j not in used]
        group = group[:min(1 + neighbours.shape[1], batch - len(chosen))]
        chosen += group
        used.update(group)
    return np.asarray(chosen)


def train(sources: list[str], out_dir: str | os.PathLike, cfg: DetectorTrainConfig = DetectorTrainConfig(), *,
          device: str = "auto", resume: bool = False, workers: int | None = None, progress: bool = False,
          log_every: int = 10) -> dict:
    """Train (or resume training) a DuplicateNet on the sources' images; returns the last log entry."""
    torch = _torch()
    from ..augment import STRENGTHS, augment_training
    from ..content import trim
    from ..errors import DetectorError, param
    from ..atomic import atomic_write, atomic_write_json
    from ..detectors.clipdup_net import DuplicateNet, DuplicateNetConfig, batch_global_nce, info_nce

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch_device(device)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise DetectorError(f"{out} already holds a checkpoint; pass {param('resume', True)} to continue it, or a "
                            f"new {param('out_dir')}")
    check_choice("input_mode", cfg.input_mode, INPUT_MODES, DetectorError)
    check_choice("strength", cfg.strength, TRAIN_STRENGTHS, DetectorError)
    check_choice("schedule", cfg.schedule, SCHEDULES, DetectorError)
    check_choice("same_picture", cfg.same_picture, SAME_PICTURE_RULES, DetectorError)
    if not cfg.global_weight >= 0:
        raise DetectorError(f"{param('global_weight')} must be a number >= 0 (got {cfg.global_weight})")
    if not 0 <= cfg.edit_p <= 1:
        raise DetectorError(f"{param('edit_p')} must be a probability in 0..1 (got {cfg.edit_p})")
    if cfg.hard_negatives == 1 or cfg.hard_negatives < 0 or cfg.mine_every < 1:
        raise DetectorError(f"{param('hard_negatives')} must be 0 (random batches) or a group size of at least 2, "
                            f"{param('mine_every')} at least 1")
    torch.manual_seed(cfg.seed)
    init_digest = None
    if cfg.init:  # fine-tuning: the architecture is the initial weights' own
        init_file = _weights_file(cfg.init)
        if not init_file.is_file():
            raise DetectorError(f"{param('init', cfg.init)}: no clipdup weights there")
        try:
            init = torch.load(init_file, map_location="cpu", weights_only=True)
            model_cfg = DuplicateNetConfig.from_dict(init["model_config"])
        except Exception as exc:  # noqa: BLE001 - not a clipdup weights file
            raise DetectorError(f"{param('init', cfg.init)} is not clipdup weights: {str(exc).splitlines()[0]}") from None
        widen = (model_cfg.channels, model_cfg.standardize, cfg.input_mode) == (1, True, "maxmin")
        if widen:  # one-channel (value) weights start a max-and-min run: see widen_to_maxmin
            init["model"], model_cfg = widen_to_maxmin(init["model"], model_cfg)
        if init.get("input_mode") == "maxmin" and cfg.input_mode == "maxchroma":  # see maxmin_to_maxchroma
            init["model"], model_cfg = maxmin_to_maxchroma(init["model"], model_cfg)
        if ((model_cfg.channels, model_cfg.standardize, model_cfg.channel_floors)
                != (INPUT_CHANNELS[cfg.input_mode], cfg.input_mode != "rgb", CHANNEL_FLOORS.get(cfg.input_mode, ()))):
            raise DetectorError(f"{param('init')} weights take {model_cfg.channels}-channel input (their input mode "
                                f"was {init.get('input_mode', 'rgb')!r}); {param('input_mode', cfg.input_mode)} does "
                                "not fit")
        init_digest = hashlib.sha256(init_file.read_bytes()).hexdigest()
    else:
        model_cfg = DuplicateNetConfig.named(cfg.arch, dim=cfg.dim, channels=INPUT_CHANNELS[cfg.input_mode],
                                      standardize=cfg.input_mode != "rgb",
                                      channel_floors=CHANNEL_FLOORS.get(cfg.input_mode, ()))
    net = DuplicateNet(model_cfg).to(dev)
    if cfg.init:
        net.load_state_dict({k: v.float() for k, v in init["model"].items()})
    neighbours = None
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    step, rng = 0, np.random.default_rng(cfg.seed)
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=dev, weights_only=True)
        # the initial weights only matter at step 0: on resume the checkpoint's weights replace them
        free = ("steps", "init")
        previous = {k: v for k, v in {**DetectorTrainConfig().__dict__, **state["train_config"]}.items() if k not in free}
        if previous != {k: v for k, v in cfg.__dict__.items() if k not in free}:
            raise DetectorError(f"cannot resume {out}: it was trained with {state['train_config']} "
                                f"(only {param('steps')} and {param('init')} may change on {param('resume', True)})")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        rng.bit_generator.state = json.loads(state["rng"])
        if "neighbours" in state:
            neighbours = state["neighbours"].numpy()
    originals = _load_images(sources, cfg, workers)
    if len(originals) < 2:
        raise DetectorError(f"training needs at least 2 readable images; the sources gave {len(originals)}")
    # the anchors (and the images mined for look-alikes): as the audit embeds them
    view = (lambda im: trim(im)[0]) if cfg.trim else (lambda im: im)
    images = [view(im) for im in originals] if cfg.trim else originals
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train-detector", unit="step")
    last: dict = {}
    started = time.monotonic()
    net.train()
    while step < cfg.steps:
        if cfg.hard_negatives and (neighbours is None or step % cfg.mine_every == 0):
            neighbours = mine_neighbours(net, images, cfg, dev)
        idx = batch_indices(rng, len(images), cfg.batch_size, neighbours)
        strengths = (rng.choice(list(STRENGTHS), size=len(idx)) if cfg.strength == "mixed"
                     else [cfg.strength] * len(idx))
        a = np.stack([to_tensor_array(images[i], cfg.input_size, cfg.input_mode) for i in idx])
        b = np.stack([to_tensor_array(view(augment_training(originals[i], str(s), rng, cfg.edit_p)), cfg.input_size,
                                      cfg.input_mode) for i, s in zip(idx, strengths)])
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        za, zb = net(torch.from_numpy(a).to(dev)), net(torch.from_numpy(b).to(dev))
        loss, acc = info_nce(za, zb, model_cfg.temperature)
        if cfg.global_weight:
            loss = loss + cfg.global_weight * batch_global_nce(za, zb, model_cfg.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        last = {"step": step, "loss": loss.item(), "proxy_accuracy": acc.item(),
                "seconds": round(time.monotonic() - started, 2)}
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['proxy_accuracy']:.2f}")
        if step % log_every == 0 or step == cfg.steps:
            with open(out / LOG, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(last) + "\n")
            state = {"model_config": model_cfg.to_dict(), "train_config": cfg.__dict__, "model": net.state_dict(),
                     "optimizer": opt.state_dict(), "step": step, "rng": json.dumps(rng.bit_generator.state)}
            if neighbours is not None:
                state["neighbours"] = torch.from_numpy(neighbours)
            atomic_write(ckpt_path, lambda tmp: torch.save(state, tmp))
    if bar is not None:
        bar.close()
    if not last and (out / LOG).exists():  # resumed a finished run: nothing trained, report where it stands
        last = json.loads((out / LOG).read_text().splitlines()[-1])
    weights = {"model_config": model_cfg.to_dict(), "model": net.state_dict(), "input_size": cfg.input_size,
               "input_mode": cfg.input_mode,
               "threshold": None, "trained": {**cfg.__dict__, **last, "images": len(images), "device": dev,
                                              **({"init_sha256": init_digest} if init_digest else {})}}
    atomic_write(out / WEIGHTS, lambda tmp: torch.save(weights, tmp))
    atomic_write_json(out / "train_summary.json", weights["trained"])
    return last
