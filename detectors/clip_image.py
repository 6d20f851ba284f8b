"""``clip-image:MODEL``: a CLIP image tower's own embedding as a near-duplicate detector — the semantic
baseline the CLIP paper rejected (Appendix C: two different soccer balls or flowers of one species match,
the same texture resized with another interpolation does not), kept for comparison.

``MODEL`` is any zero-shot model spec (``overlap_audit.zeroshot.loaders``): ``open_clip:ARCH:PATH``, ``hf:DIR`` or
``overlap-audit:NAME|PATH`` (the project's small CLIP, e.g. ``overlap-audit:openclipart-small``), loaded by
the same code that scores the model zero-shot, with the model's own preprocessing. A path to a TorchScript
export of an image tower (``clip-image:PATH.pt``) is read by the TorchScript adapter.

Low-information images are those whose grey level varies by under 2 grey levels, as for the other
detectors, measured on the image as given (a 64-px grey thumbnail), not on the model's input: a model that
pads to a square (the small CLIP pads on white) would otherwise turn a blank image into a framed box, and
two blank images of one shape would match. ``preprocess`` carries that spread in a fourth channel beside the
model's three; ``embed`` drops it.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from .base import DetectorBase

MODEL_PREFIXES = ("open_clip:", "hf:", "overlap-audit:")


class ClipImageDetector(DetectorBase):
    """A zero-shot model's image embedding: float32 unit vectors, cosine similarity."""

    name = "clip-image"
    metric = "cosine"
    default_threshold = None  # a semantic embedding has no copy-detection threshold: calibrate one

    def __init__(self, model_spec: str, *, device: str = "auto", spec: str = ""):
        from ..errors import DetectorError, ModelError
        from ..zeroshot.loaders import load_model, parse_model_spec, weights_sha256
        from ..zeroshot.scoring import ModelPixels

        try:
            source = parse_model_spec(model_spec)
            self._model = load_model(model_spec, device=device)
        except ModelError as exc:
            raise DetectorError(f"clip-image: {exc}") from None
        self.model_spec = model_spec
        self.spec = spec or f"clip-image:{model_spec}"
        digest = hashlib.sha256(f"{model_spec}\0{weights_sha256(source.weights)}".encode()).hexdigest()[:12]
        self.version = f"1+{digest}"  # other weights -> another version: indexes refuse to mix them
        self._pixels = ModelPixels(self._model)  # what decoding workers run (the transform, not the weights)
        probe = self.preprocess(Image.new("RGB", (256, 256), "white"))
        if probe.ndim != 3 or probe.shape[0] != 4:
            raise DetectorError(f"clip-image: {model_spec}'s preprocessing gives pixels of shape "
                                f"{probe.shape[1:] if probe.ndim == 3 else probe.shape}, not [3, H, W]")
        self.dim = int(self.embed(probe[None]).shape[1])

    def __getstate__(self):  # decoding workers only preprocess
        d = dict(self.__dict__)
        d["_model"] = None
        return d

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The model's pixels [3, H, W] and, as a fourth channel, the image's own grey-level spread."""
        image = image.convert("RGB")
        pixels = np.asarray(self._pixels(image), dtype=np.float32)
        if pixels.ndim != 3 or pixels.shape[0] != 3:
            return pixels  # __init__ reports the shape
        thumb = np.asarray(image.convert("L").resize((64, 64), Image.Resampling.BOX), dtype=np.float32)
        return np.concatenate([pixels, np.full((1, *pixels.shape[1:]), thumb.std(), np.float32)])

    def embed(self, batch: np.ndarray) -> np.ndarray:
        out = self._model.encode_images(np.ascontiguousarray(batch[:, :3], dtype=np.float32))
        out = np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def low_information(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, dtype=np.float32)[:, 3, 0, 0] < 2.0


def make_clip_image(arg: str | None = None, *, spec: str = "clip-image", device: str = "auto", **_options):
    """``clip-image:MODEL_SPEC`` (a zero-shot model) or ``clip-image:PATH`` (a TorchScript image tower)."""
    from ..errors import DetectorError, param

    if not arg:
        raise DetectorError(f"clip-image needs a CLIP model: {param('detector', 'clip-image:MODEL')} with MODEL a zero-shot model "
                            "spec (open_clip:ARCH:PATH, hf:DIR, overlap-audit:openclipart-small), or clip-image:PATH "
                            "to a TorchScript export of an image tower (with PATH.json giving its input_size, mean "
                            "and std)")
    if arg.startswith(MODEL_PREFIXES):
        return ClipImageDetector(arg, device=device, spec=spec)
    from .torchscript import TorchScriptDetector

    det = TorchScriptDetector(arg, device=device, spec=spec)
    det.name = "clip-image"
    return det
