"""The project's own small CLIP: pretraining on image–caption pairs, checkpoints, and zero-shot use.

``pretrain`` (``overlap-audit pretrain-clip SOURCE... --out DIR``) trains an image tower and a text tower
(``overlap_audit.zeroshot.smallclip_net``) with the CLIP paper's symmetric contrastive loss and learned
temperature on the image–caption pairs of any source (folders with NAME.txt caption files, Parquet,
WebDataset). Captions (``caption_from``):

- ``caption``: the source's own caption (a folder's NAME.txt is read whole; only its FIRST line is used,
  since multi-line caption files such as Tux Paint's hold translations on the next lines);
- ``path``: made from the item's id: the file name's words, then its folders from the innermost out
  (``science/astronomy/full_moon_01.png`` -> "full moon, astronomy, science"; numbers are dropped);
- ``auto``: the caption where there is one, else the path.

Checkpoints are torch weights-only files holding the model config, training config, weights, optimiser
state, step and RNG state (``checkpoint.pt``, written every ``checkpoint_every`` steps and at the end);
``--resume`` continues one, refusing any changed setting but ``steps``. The end of a run also writes
``model.pt`` (config + weights) and ``train_log.jsonl`` holds loss, temperature and in-batch accuracy.

``resolve`` turns a shipped name (``SHIPPED``) or a path into a checkpoint file; ``load`` gives a model
satisfying ``overlap_audit.zeroshot.scoring.ZeroShotModel``. Nothing here imports torch until it is called.
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
from ..errors import ModelError

__all__ = ["SHIPPED", "PretrainConfig", "Pairs", "PretrainResult", "SmallClipModel", "ZeroShotResult", "resolve", "load",
           "caption_from_path", "load_pairs", "pretrain", "zero_shot"]

WEIGHTS_DIR = Path(__file__).parent.parent / "weights"
SHIPPED = {"openclipart-small": WEIGHTS_DIR / "smallclip-openclipart.pt"}
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.pt"
LOG = "train_log.jsonl"
FORMAT = "overlap-audit-smallclip"
CAPTION_RULES = ("caption", "path", "auto")
# Generic wrappers put around a training caption now and then, so that words such as "a", "picture" or
# "of" in a zero-shot prompt are words the text tower has learnt to give little weight.
CAPTION_WRAPPERS = ("{}", "a picture of {}.", "an illustration of {}.", "clip art of {}.", "a drawing of {}.",
                    "{} icon.", "an image showing {}.", "a cartoon {}.")


def _torch():
    try:
        import torch
    except ImportError:
        raise ModelError("the small CLIP needs torch: pip install torch (the CPU build where there is no GPU)"
                         ) from None
    return torch


# ---------------------------------------------------------------- names and loading


def resolve(spec: str) -> Path:
    """A shipped model name, a checkpoint file, or a directory holding ``model.pt`` -> the checkpoint file."""
    if spec in SHIPPED:
        path = SHIPPED[spec]
        if not path.is_file():
            raise ModelError(f"the shipped small CLIP {spec!r} is missing from this install (looked for {path}); "
                             "reinstall overlap-audit or train one with `overlap-audit pretrain-clip`")
        return path
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        for name in (WEIGHTS, CHECKPOINT):
            if (path / name).is_file():
                return path / name
        raise ModelError(f"small CLIP directory {spec!r} holds neither {WEIGHTS} nor {CHECKPOINT} (tried "
                         f"{path / WEIGHTS} and {path / CHECKPOINT}); give the --out directory of a finished "
                         "`overlap-audit pretrain-clip` run")
    if path.is_file():
        return path
    raise ModelError(f"no small CLIP {spec!r}: it is neither a shipped name ({', '.join(SHIPPED)}) nor an "
                     f"existing checkpoint file or directory (tried {path.resolve()})")


def _read_checkpoint(path: Path) -> dict:
    torch = _torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is not a checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"cannot read small CLIP checkpoint {path}: {type(exc).__name__}: {first}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise ModelError(f"{path} is not a small CLIP checkpoint (written by `overlap-audit pretrain-clip`)")
    return state


class SmallClipModel:
    """A trained small CLIP in eval mode, satisfying ``overlap_audit.zeroshot.scoring.ZeroShotModel``."""

    def __init__(self, net: Any, spec: str, image_size: int, info: dict, device: str):
        self.net = net
        self.spec = spec
        self.image_size = image_size
        self.info = info
        self.device = device

    @property
    def dim(self) -> int:
        return int(self.net.cfg.embed_dim)

    @property
    def pixel_transform(self) -> "SquarePixels":
        """One image -> float32 [3, S, S]: what decoding workers run, without the weights."""
        return SquarePixels(self.image_size)

    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        """RGB PIL images -> float tensor [N, 3, S, S] (padded square on white, resized, scaled)."""
        torch = _torch()
        arrays = [square_thumbnail(im, self.image_size) for im in images]
        if not arrays:
            return torch.zeros((0, 3, self.image_size, self.image_size))
        return normalise(torch.from_numpy(np.stack(arrays)))

    def encode_images(self, pixels: Any) -> Any:
        torch = _torch()
        with torch.no_grad():
            return self.net.image(torch.as_tensor(pixels).float().to(self.device)).float().cpu()

    def encode_texts(self, texts: Sequence[str]) -> Any:
        torch = _torch()
        with torch.no_grad():
            return self.net.encode_text([str(t) for t in texts]).float().cpu()


def load(path: str | os.PathLike, device: str = "cpu") -> SmallClipModel:
    """Load a small CLIP checkpoint (``model.pt`` or ``checkpoint.pt``; a name or directory goes through
    ``resolve``)."""
    torch = _torch()
    from .smallclip_net import SmallClipNetConfig, SmallClipNet

    file = resolve(str(path))
    state = _read_checkpoint(file)
    try:
        cfg = SmallClipNetConfig.from_dict(state["model_config"])
        net = SmallClipNet(cfg)
        net.load_state_dict({k: v.float() for k, v in state["model"].items()})  # shipped weights are float16
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{file}: the checkpoint does not match this version's small CLIP ({exc}); retrain it "
                         "with this version's `overlap-audit pretrain-clip`") from None
    dev = torch_device(device)
    net.to(dev).eval()
    spec = str(path) if str(path) in SHIPPED else str(file)
    return SmallClipModel(net, spec, cfg.image_size, dict(state.get("trained", {})), dev)


# ---------------------------------------------------------------- pixels


def square_thumbnail(image: Image.Image, size: int) -> np.ndarray:
    """RGB image -> uint8 [3, size, size]: padded to a square on white (drawings have white backgrounds),
    then resized (bicubic)."""
    image = image.convert("RGB")
    w, h = image.size
    side = max(w, h)
    if w != h:
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        image = canvas
    image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


class SquarePixels:
    """``square_thumbnail`` then ``normalise`` for one image, as numpy (picklable: no torch, no weights)."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, image: Image.Image) -> np.ndarray:
        return square_thumbnail(image, self.size).astype(np.float32) / 127.5 - 1.0


def normalise(pixels: Any) -> Any:
    """uint8 tensor [N, 3, S, S] -> float in about -1..1."""
    return pixels.float() / 127.5 - 1.0


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
    from ..imaging import DEFAULT_MAX_PIXELS
    from ..sources import open_source

    if caption_from not in CAPTION_RULES:
        raise ModelError(f"caption_from must be one of {', '.join(CAPTION_RULES)} (got {caption_from!r})")

    class _Thumbnail(DetectorBase):  # only its preprocessing is used: the shared decoding pool runs it
        name, version, dim, metric = "smallclip-thumbnail", "1", 0, "cosine"
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
            for item, array, reason, _ in decoder.decode(src.iter_items()):
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
class PretrainConfig:
    """Training settings (the architecture is ``smallclip_model.SmallClipNetConfig``)."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    seed: int = 0
    caption_from: str = "auto"
    max_items: int | None = None
    part_dropout: float = 0.3   # chance to keep only a random subset of a caption's comma-separated parts
    wrap: float = 0.3           # chance to put a caption into one of CAPTION_WRAPPERS
    min_crop: float = 0.6       # smallest random crop side, as a fraction of the image


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
    from .smallclip_net import SmallClipNetConfig, SmallClipNet, contrastive_loss

    mcfg = model_config or SmallClipNetConfig()
    if cfg.caption_from not in CAPTION_RULES:
        raise ModelError(f"caption_from must be one of {', '.join(CAPTION_RULES)} (got {cfg.caption_from!r})")
    if cfg.batch_size < 2:
        raise ModelError("the contrastive loss needs a batch of at least 2 pairs")
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise ModelError(f"{out} already holds a small CLIP checkpoint; pass --resume to continue it, or choose "
                         "a new --out")
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
                             f"not {mcfg.to_dict()} (architecture settings cannot change on --resume)")
        before = {k: v for k, v in state["train_config"].items() if k != "steps"}
        now = {k: v for k, v in train_config.items() if k != "steps"}
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise ModelError(f"cannot resume {out}: {', '.join(changed)} changed since it was started "
                             f"(was {', '.join(f'{k}={before.get(k)!r}' for k in changed)}); only --steps may "
                             "change on --resume")
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


# ---------------------------------------------------------------- zero-shot evaluation


@dataclass(frozen=True)
class ZeroShotResult:
    """Per-example zero-shot predictions on a labelled set."""

    ids: tuple[str, ...]
    labels: tuple[str, ...]
    predicted: tuple[str, ...]
    classes: tuple[str, ...]

    @property
    def correct(self) -> np.ndarray:
        return np.array([p == t for p, t in zip(self.predicted, self.labels)], dtype=bool)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.ids else float("nan")

    @property
    def majority_rate(self) -> float:
        """Accuracy of always answering the most frequent label."""
        if not self.labels:
            return float("nan")
        _, counts = np.unique(np.array(self.labels), return_counts=True)
        return float(counts.max() / len(self.labels))


def zero_shot(model: Any, images: Sequence[Image.Image] | np.ndarray, labels: Sequence[str], *,
              ids: Sequence[str] | None = None, classes: Sequence[str] | None = None,
              classnames: Sequence[str] | None = None, templates: Sequence[str] | None = None,
              batch_size: int = 256) -> ZeroShotResult:
    """Zero-shot top-1 predictions with ``scoring.build_classifier`` (default: the paper's 80 templates).

    ``images`` are PIL images, or uint8 thumbnails [N, 3, S, S] as ``load_pairs`` holds them (SmallClipModel
    models only). ``classes`` default to the sorted distinct labels."""
    from .scoring import build_classifier, classify

    classes = list(classes) if classes is not None else sorted(set(labels))
    clf = build_classifier(model, classes, classnames=classnames, templates=templates)
    rows = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if isinstance(chunk, np.ndarray):
            torch = _torch()
            pixels = normalise(torch.from_numpy(chunk))
        else:
            pixels = model.preprocess(list(chunk))
        emb = model.encode_images(pixels)
        rows.append(emb.detach().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb))
    emb = np.concatenate(rows) if rows else np.zeros((0, clf.weights.shape[1]), np.float32)
    order, _ = classify(clf, emb, top=1)
    predicted = tuple(classes[i] for i in order[:, 0])
    ids = tuple(ids) if ids is not None else tuple(str(i) for i in range(len(labels)))
    return ZeroShotResult(ids=ids, labels=tuple(labels), predicted=predicted, classes=tuple(classes))


_RENAMED = {'SmallClip': 'SmallClipModel', 'TrainConfig': 'PretrainConfig'}


def __getattr__(name: str):
    from .._renamed import renamed_attribute

    return renamed_attribute(__name__, _RENAMED, name, globals())
