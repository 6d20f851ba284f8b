"""Near-duplicate detectors behind one protocol, looked up by name.

``list_detectors()`` names what is available; ``get_detector("phash")`` imports and builds one. Nothing is
imported or loaded until a detector is asked for. A spec is ``NAME`` or ``NAME:ARG`` (for example a path to
a user's own weights, for detectors that take one).
"""

from __future__ import annotations

import importlib

from .base import Detector, DetectorBase

# name -> ("module:factory", one-line description). Factories take the spec's argument (or None) and
# keyword options such as device.
_REGISTRY: dict[str, tuple[str, str]] = {
    "phash": ("overlap_audit.detectors.phash:make_phash64",
              "DCT perceptual hash, 64 bits (8x8 low frequencies of a 32x32 image); no torch needed"),
    "phash256": ("overlap_audit.detectors.phash:make_phash256",
                 "DCT perceptual hash, 256 bits (16x16 low frequencies of a 64x64 image); no torch needed"),
    "pdq": ("overlap_audit.detectors.pdq:make_pdq",
            "Meta's PDQ perceptual hash, 256 bits, with its quality score; needs pdqhash "
            "(pip install overlap-audit[pdq])"),
    "tiny": ("overlap_audit.detectors.tiny:make_tiny",
             "mean-centred 16x16 grey thumbnail, cosine (the 'tiny images' baseline); no torch needed"),
    "clipdup": ("overlap_audit.detectors.clipdup:make_clipdup",
                "the CLIP paper's learned detector (Appendix C): the shipped small checkpoint, or clipdup:DIR of a "
                "train-detector run; needs torch"),
    "torchscript": ("overlap_audit.detectors.torchscript:make_torchscript",
                    "any TorchScript image descriptor, torchscript:PATH (preprocessing in PATH.json); needs torch"),
    "clip-image": ("overlap_audit.detectors.clip_image:make_clip_image",
                   "a CLIP image tower's own (semantic) embedding, the baseline the paper rejected: "
                   "clip-image:MODEL (a zero-shot model spec, e.g. clip-image:overlap-audit:openclipart-small) "
                   "or clip-image:PATH to a TorchScript export; needs torch"),
}

__all__ = ["Detector", "DetectorBase", "get_detector", "list_detectors", "parse_detector_spec"]


def list_detectors() -> dict[str, str]:
    """Return the registered detector names with a one-line description of each."""
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def parse_detector_spec(spec: str) -> tuple[str, str | None]:
    """Split ``NAME[:ARG]`` into its name and argument."""
    name, sep, arg = spec.partition(":")
    return name.strip().lower(), (arg if sep else None)


def get_detector(spec: str, *, content: str | None = None, **options) -> Detector:
    """Import and build the detector a spec names; raises DetectorError for an unknown name.

    ``content`` is the content normalisation (``settings.CONTENT_MODES``; None: the detector's own default)."""
    from ..errors import DetectorError
    from ..settings import CONTENT_MODES, check_choice

    if content is not None:
        check_choice("content", content, CONTENT_MODES, DetectorError)

    name, arg = parse_detector_spec(spec)
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise DetectorError(f"unknown detector {spec!r}; available: {known}")
    target, _ = _REGISTRY[name]
    module_name, factory_name = target.split(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    detector = factory(arg, spec=spec, **options)
    if content is not None:
        detector.content = content
    return detector
