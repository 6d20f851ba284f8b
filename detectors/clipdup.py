"""``clipdup``: the CLIP paper's learned near-duplicate detector (Appendix C) — the detector and its inputs.

Training is in ``clipdup_train`` (``overlap-audit train-detector``). The input is RGB, luma or the HSV value max(R, G, B) (``settings.INPUT_MODES``); the one-channel inputs are
standardised per image inside the network, so brightness and contrast changes do not reach it.

``--detector clipdup`` uses the small checkpoint shipped in ``weights/`` (its model card and recipe:
``weights/MODEL_CARD.md``, ``benchmarks/recipes/make_clipdup_weights.py``); ``clipdup:DIR`` a user's own run. A
checkpoint without a calibrated threshold needs ``report --threshold`` (``overlap-audit calibrate`` finds
one).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..devices import torch_device
from ..settings import INPUT_MODES, check_choice
from .base import DetectorBase

SHIPPED = Path(__file__).parent / "weights" / "clipdup-small.pt"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.pt"
LOG = "train_log.jsonl"


def _torch():
    try:
        import torch
    except ImportError:
        from ..errors import DetectorError

        raise DetectorError("clipdup needs torch: pip install torch (the CPU build where there is no GPU), then "
                            "pip install 'overlap-audit[clipdup]'") from None
    return torch


# rgb: the three channels. luma: ITU-R 601 grey (what pHash hashes). value: HSV value, max(R, G, B) —
# unchanged by any hue rotation or saturation change (luma is not: it weighs R, G and B differently).
# maxmin: two channels, max(R, G, B) and min(R, G, B) — both unchanged by a hue rotation (HSV keeps V and
# S, and min = V(1 - S)), and, unlike value alone, a saturated colour on white stays visible.
# value-or-min: one channel, the value — or, where the value is nearly flat but the min channel is not
# (saturated colours on white: value 255 everywhere), the min channel, blended in between; both are
# unchanged by a hue rotation, so their blend is too.
# maxchroma: two channels, max(R, G, B) and the chroma max - min = V * S, each standardised on its own (see
# CHANNEL_FLOORS): a hue rotation changes neither, and a saturation change (S scaled by k) scales the chroma
# channel alone, which its own standardisation undoes — where maxmin's min = V(1 - S) moves towards the max
# channel (a strongly desaturated copy of saturated clip art moved the min channel by a third of its range).
INPUT_CHANNELS = {"rgb": 3, "luma": 1, "value": 1, "maxmin": 2, "value-or-min": 1, "maxchroma": 2}
# per-channel standardisation floors (std, 0..1): 0.02 (about 5 grey levels) as for the joint standardisation;
# 0.05 for the chroma, so that the faint colour noise of a near-grey image (JPEG chroma, a tint) is not blown
# up to the weight of its structure
CHANNEL_FLOORS = {"maxchroma": (0.02, 0.05)}
# value-or-min: std(value) / std(min) below the first -> the min channel, above the second -> the value
FLAT_VALUE_RATIO = (0.15, 0.35)


def _max_min_planes(image: Image.Image, size: int, chroma: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """max(R, G, B) and min(R, G, B) — or, with chroma, max - min — each resized to size x size (bicubic),
    float32 in 0..1 (the chroma is taken at full resolution, then resized)."""
    rgb = np.asarray(image.convert("RGB"))
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    return tuple(np.asarray(Image.fromarray(plane).resize((size, size), Image.Resampling.BICUBIC),
                            dtype=np.float32) / 255.0 for plane in (hi, hi - lo if chroma else lo))


def to_tensor_array(image: Image.Image, size: int, mode: str = "rgb") -> np.ndarray:
    """Image -> float32 [C, size, size] in 0..1 (bicubic resize of the whole image); C per INPUT_CHANNELS."""
    check_choice("input_mode", mode, INPUT_MODES, ValueError)
    if mode in ("maxmin", "maxchroma"):
        return np.stack(_max_min_planes(image, size, chroma=mode == "maxchroma"))
    if mode == "value-or-min":
        hi, lo = _max_min_planes(image, size)
        # the weight of the value rises from 0 to 1 as its spread goes from 0.15 to 0.35 of the min's:
        # continuous, so a colour edit that moves the ratio a little moves the input a little
        w = float(np.clip((hi.std() / max(lo.std(), 1e-6) - FLAT_VALUE_RATIO[0]) / np.ptp(FLAT_VALUE_RATIO), 0, 1))
        return (w * hi + (1 - w) * lo)[None]
    if mode == "value":  # the channel first, then the resize: a hue-shifted copy gives the same input
        image = Image.fromarray(np.asarray(image.convert("RGB")).max(axis=2))
    image = image.convert("RGB" if mode == "rgb" else "L").resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]


def _weights_file(path: str) -> Path:
    """A clipdup weights file from "clipdup" (the shipped one), a training directory or a file."""
    p = Path(path)
    if path == "clipdup" and not p.exists():  # a run directory of the user's own named "clipdup" wins
        return SHIPPED
    return p / WEIGHTS if p.is_dir() else p


class ClipDup(DetectorBase):
    """A trained DuplicateNet as a detector: float32 unit vectors, cosine similarity."""

    name = "clipdup"
    metric = "cosine"
    # the copies clipdup misses lie far below its threshold: relaxed 2x (0.9639) its first stage kept 60 of the
    # clip-art development set's 75 true copies, 5x (0.9098) 66 (BENCHMARKS.md, "Verification"); App. C copies
    # of photographs lie further down still: on the photo development set 0.9098 kept the source of 81% of the
    # medium copies as the nearest item or among the top 5, 14x (0.748) 94% (bench_photo_report --breakdown)
    verify_relax = 14.0

    def __init__(self, path: str, *, device: str = "auto", spec: str = ""):
        torch = _torch()
        from ..errors import DetectorError
        from .clipdup_net import DuplicateNet, DuplicateNetConfig

        weights = _weights_file(path)
        if not weights.exists():
            raise DetectorError(f"clipdup weights {path!r} not found (train them with `overlap-audit "
                                "train-detector SOURCE --out DIR`, then use clipdup:DIR)")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self.config = DuplicateNetConfig.from_dict(state["model_config"])
            self.input_size = int(state["input_size"])
            self.input_mode = str(state.get("input_mode", "rgb"))
            threshold = state.get("threshold")
            model_state = state["model"].items()
        except Exception as exc:  # noqa: BLE001 - torch.load and a malformed state raise many types
            raise DetectorError(f"{weights} is not a clipdup checkpoint ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}); give the model.pt that "
                                "`overlap-audit train-detector` wrote") from None
        self.dim = self.config.dim
        self.decode_size = self.input_size * 2
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        self.version = f"1+{digest}"  # other weights -> another version: indexes refuse to mix them
        self.default_threshold = float(threshold) if threshold is not None else None
        self.spec = spec or f"clipdup:{path}"
        self._state = {k: v.float() for k, v in model_state}  # shipped weights are float16
        self._device = torch_device(device)
        self._net = None
        self._DuplicateNet = DuplicateNet

    def __getstate__(self):  # workers only preprocess: do not ship the network to them
        d = dict(self.__dict__)
        d["_net"] = None
        return d

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return to_tensor_array(image, self.input_size, self.input_mode)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        torch = _torch()
        if self._net is None:
            self._net = self._DuplicateNet(self.config)
            self._net.load_state_dict(self._state)
            self._net.to(self._device).eval()
        with torch.no_grad():
            z = self._net(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device))
        return z.cpu().numpy().astype(np.float32)

    def low_information(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float32)
        # the mean of the channels (for maxmin, (max + min) / 2); maxchroma gets the same, max - chroma / 2,
        # so that both inputs call the same images low-information
        grey = (x[:, 0] - x[:, 1] / 2 if self.input_mode == "maxchroma" else x.mean(axis=1)) * 255.0
        return grey.reshape(len(batch), -1).std(axis=1) < 2.0


def make_clipdup(arg: str | None = None, *, spec: str = "clipdup", device: str = "auto", **_options) -> ClipDup:
    from ..errors import DetectorError, param

    if not arg:
        if not SHIPPED.exists():
            raise DetectorError("no default clipdup checkpoint is shipped with this install: train one with "
                                f"`overlap-audit train-detector SOURCE... --out DIR` and use {param('detector', 'clipdup:DIR')}")
        return ClipDup(str(SHIPPED), device=device, spec="clipdup")
    return ClipDup(arg, device=device, spec=spec)
