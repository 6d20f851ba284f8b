"""The project's own small CLIP: checkpoints, loading, and zero-shot use (pretraining: ``smallclip_train``).

``smallclip_train.pretrain`` (``overlap-audit pretrain-clip SOURCE... --out DIR``) trains an image tower and a text tower
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

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..devices import torch_device
from ..errors import ModelError

__all__ = ["SHIPPED", "SmallClipModel", "ZeroShotResult", "resolve", "load", "zero_shot"]

WEIGHTS_DIR = Path(__file__).parent.parent / "weights"
SHIPPED = {"openclipart-small": WEIGHTS_DIR / "smallclip-openclipart.pt"}
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.pt"
LOG = "train_log.jsonl"
FORMAT = "overlap-audit-smallclip"
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
    _torch()  # a missing torch is named before the checkpoint is read
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
