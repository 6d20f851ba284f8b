"""``torchscript:PATH``: any TorchScript image descriptor as a detector (e.g. SSCD's
``sscd_disc_mixup.torchscript.pt``: resize to 288, ImageNet mean and std, L2-normalised output).

The preprocessing is declared in a JSON file beside the model (``PATH.json`` or ``STEM.json``)::

    {"input_size": 288, "resize": "square" | "short_side", "mean": [0.485, 0.456, 0.406],
     "std": [0.229, 0.224, 0.225], "threshold": null, "name": "sscd"}

Every key is optional (defaults: 224, square, ImageNet mean/std, no calibrated threshold). Outputs are
L2-normalised here whatever the model does; the detector's version is a hash of the file, so indexes
built with other weights are refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..devices import torch_device
from .base import DetectorBase

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _options(path: Path) -> dict:
    for candidate in (Path(str(path) + ".json"), path.with_suffix(".json")):
        if candidate.exists():
            try:
                return json.loads(candidate.read_text())
            except ValueError as exc:
                from ..errors import DetectorError

                raise DetectorError(f"{candidate} is not valid JSON: {exc}") from None
    return {}


class TorchScriptDetector(DetectorBase):
    metric = "cosine"

    def __init__(self, path: str, *, device: str = "auto", spec: str = ""):
        from ..errors import DetectorError
        from .clipdup import _torch

        torch = _torch()
        self.path = Path(path)
        if not self.path.exists():
            raise DetectorError(f"TorchScript model {path!r} not found")
        opts = _options(self.path)
        if not isinstance(opts, dict):
            raise DetectorError(f"{path}: its JSON options must be an object such as {{\"input_size\": 224}}")
        try:
            self.input_size = int(opts.get("input_size", 224))
            self.mean = np.array(opts.get("mean", IMAGENET_MEAN), dtype=np.float32).reshape(3, 1, 1)
            self.std = np.array(opts.get("std", IMAGENET_STD), dtype=np.float32).reshape(3, 1, 1)
            threshold = opts.get("threshold")
            threshold = None if threshold is None else float(threshold)
        except (TypeError, ValueError) as exc:
            raise DetectorError(f"{path}: its JSON options are invalid ({exc}): input_size is an integer, mean and "
                                "std three numbers each, threshold a number") from None
        self.resize = opts.get("resize", "square")
        if self.resize not in ("square", "short_side"):
            raise DetectorError(f"{path}: resize must be 'square' or 'short_side'")
        self.name = "torchscript"
        self.spec = spec or f"torchscript:{path}"
        self.version = "1+" + hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        self.default_threshold = threshold
        self.decode_size = self.input_size
        self._device = torch_device(device)
        self._model = None
        try:
            probe = self._load()(torch.zeros(1, 3, self.input_size, self.input_size, device=self._device))
        except Exception as exc:  # noqa: BLE001 - whatever the scripted model raises
            raise DetectorError(f"{path}: the model does not run on a 1x3x{self.input_size}x{self.input_size} "
                                f"input: {exc}") from None
        if probe.ndim != 2:
            raise DetectorError(f"{path}: the model must return [N, D] descriptors, got shape {tuple(probe.shape)}")
        self.dim = int(probe.shape[1])

    def _load(self):
        from .clipdup import _torch

        torch = _torch()
        if self._model is None:
            self._model = torch.jit.load(str(self.path), map_location=self._device).eval()
        return self._model

    def __getstate__(self):  # decoding workers only preprocess
        d = dict(self.__dict__)
        d["_model"] = None
        return d

    def preprocess(self, image: Image.Image) -> np.ndarray:
        s = self.input_size
        if self.resize == "square":
            image = image.resize((s, s), Image.Resampling.BICUBIC)
        else:  # shorter side to s, then centre crop
            w, h = image.size
            f = s / min(w, h)
            image = image.resize((max(s, round(w * f)), max(s, round(h * f))), Image.Resampling.BICUBIC)
            w, h = image.size
            left, top = (w - s) // 2, (h - s) // 2
            image = image.crop((left, top, left + s, top + s))
        arr = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (arr - self.mean) / self.std

    def embed(self, batch: np.ndarray) -> np.ndarray:
        from .clipdup import _torch

        torch = _torch()
        with torch.no_grad():
            out = self._load()(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device))
        out = out.float().cpu().numpy()
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def low_information(self, batch: np.ndarray) -> np.ndarray:
        raw = np.asarray(batch, dtype=np.float32) * self.std + self.mean
        return (raw.mean(axis=1) * 255.0).reshape(len(batch), -1).std(axis=1) < 2.0


def make_torchscript(arg: str | None = None, *, spec: str = "torchscript", device: str = "auto",
                     **_options) -> TorchScriptDetector:
    from ..errors import DetectorError, param

    if not arg:
        raise DetectorError(f"torchscript needs a path: {param('detector', 'torchscript:/path/to/model.pt')}")
    return TorchScriptDetector(arg, device=device, spec=spec)
