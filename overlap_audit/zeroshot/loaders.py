"""Zero-shot models for scoring, loaded from local files only: ``load_model("open_clip:ARCH:PATH")``.

Specs:

- ``open_clip:ARCH:PATH``: an open_clip architecture (a built-in name such as ``ViT-B-32``, or a path to a
  model config JSON ``{"embed_dim", "vision_cfg", "text_cfg"}``) and a local checkpoint file, through
  open_clip's own factory, transforms and tokenizer (its BPE vocabulary ships inside the package);
- ``hf:DIR``: a Hugging Face transformers ``CLIPModel`` saved with ``save_pretrained`` together with its
  tokenizer and image processor;
- ``overlap-audit:NAME|PATH``: this project's own small CLIP (``overlap_audit.zeroshot.smallclip``).

Nothing is downloaded: a pretrained tag (``openai``) or a hub id (``openai/clip-vit-base-patch32``) is a
``ModelError`` that says how to fetch the files elsewhere and pass a local path. open_clip and transformers
are imported only when a spec needs them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..devices import torch_device as resolve_model_device  # noqa: F401 - a public name
from ..errors import ModelError

__all__ = ["ModelSource", "parse_model_spec", "load_model", "weights_sha256", "resolve_model_device"]

PREFIXES = ("open_clip", "hf", "overlap-audit")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz")
_SPEC_FORMS = ("open_clip:ARCH:/path/to/checkpoint.pt (ARCH a built-in name or a model config .json), "
               "hf:/path/to/saved/CLIPModel/dir, overlap-audit:NAME or overlap-audit:/path")


@dataclass(frozen=True)
class ModelSource:
    """A parsed, checked model spec: where its weights are, before anything is loaded."""

    spec: str
    kind: str            # "open_clip" | "hf" | "overlap-audit"
    weights: Path        # checkpoint file, or directory of weight files
    arch: str | None = None   # open_clip: the architecture name (or config path) as given


def weights_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file, or of a directory's weight files (name and bytes, in sorted order)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
        if not files:
            raise ModelError(f"{path} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    for f in files:
        if len(files) > 1:
            h.update(f.name.encode("utf-8") + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def parse_model_spec(spec: str) -> ModelSource:
    """Parse and check a spec without loading anything heavy: missing files and names that would need the
    network are ModelErrors here."""
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in PREFIXES or not rest:
        raise ModelError(f"model spec {spec!r} is not one of: {_SPEC_FORMS}")
    if prefix == "open_clip":
        return _parse_open_clip(spec, rest)
    if prefix == "hf":
        return _parse_hf(spec, rest)
    return _parse_smallclip(spec, rest)


def load_model(spec: str, device: str = "auto") -> Any:
    """Load a spec as a ``scoring.ZeroShotModel`` on ``device`` (auto, cpu or cuda)."""
    source = parse_model_spec(spec)
    dev = resolve_model_device(device)
    if source.kind == "open_clip":
        return _load_open_clip(source, dev)
    if source.kind == "hf":
        return _load_hf(source, dev)
    return _load_smallclip(source, dev)


# ---------------------------------------------------------------- adapters


class TorchZeroShotModel:
    """A CLIP-style torch model behind the ZeroShotModel protocol: per-image transform, two towers."""

    def __init__(self, spec: str, device: str, transform: Callable[[Any], Any],
                 image_features: Callable[[Any], Any], text_features: Callable[[list[str]], Any]):
        self.spec = spec
        self.device = device
        self.pixel_transform = transform  # one image -> [3, H, W]; what the decoding workers run
        self._image_features = image_features
        self._text_features = text_features

    def preprocess(self, images: Sequence[Any]) -> Any:
        import torch

        return torch.stack([torch.as_tensor(self.pixel_transform(im)) for im in images])

    def encode_images(self, pixels: Any) -> Any:
        import torch

        with torch.inference_mode():
            x = torch.as_tensor(pixels).to(self.device, dtype=torch.float32)
            return torch.nn.functional.normalize(_pooled(self._image_features(x)).float(), dim=-1).cpu()

    def encode_texts(self, texts: Sequence[str]) -> Any:
        import torch

        with torch.inference_mode():
            return torch.nn.functional.normalize(_pooled(self._text_features(list(texts))).float(), dim=-1).cpu()


def _pooled(out: Any) -> Any:
    # transformers 5 returns an output object whose pooler_output is the projected embedding; 4.x a tensor
    return out.pooler_output if hasattr(out, "pooler_output") else out


# ---------------------------------------------------------------- open_clip


def _import_open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise ModelError(f"open_clip models need open_clip_torch and torchvision ({exc}); "
                         "pip install 'overlap-audit[openclip]'") from None
    return open_clip


def _parse_open_clip(spec: str, rest: str) -> ModelSource:
    arch, sep, path = rest.partition(":")
    if arch in ("hf-hub", "local-dir"):
        raise ModelError(f"{spec!r}: open_clip's {arch}: schema is not supported (hf-hub needs the network); "
                         "use open_clip:ARCH:/path/to/checkpoint, or hf:DIR for a saved transformers CLIP")
    if not sep or not path:
        raise ModelError(f"{spec!r}: give the checkpoint too, as open_clip:ARCH:/path/to/checkpoint.pt")
    path = os.path.expanduser(path)
    open_clip = _import_open_clip()
    name = _open_clip_arch(spec, arch, open_clip)
    if not os.path.isfile(path):
        tags = open_clip.list_pretrained_tags_by_model(name) if name in open_clip.list_models() else []
        looks_like_tag = path in tags or not any(c in path for c in "/\\.")
        if looks_like_tag:
            raise ModelError(
                f"{spec!r}: {path!r} is a pretrained tag, which would need a download; this tool loads local files "
                f"only. Download elsewhere, e.g. python -c \"import open_clip; open_clip.create_model('{name}', "
                f"pretrained='{path}', cache_dir='ckpt')\" (or fetch the file from the model's page), then pass "
                f"open_clip:{arch}:/path/to/the/checkpoint")
        raise ModelError(f"{spec!r}: checkpoint {path} does not exist")
    return ModelSource(spec=spec, kind="open_clip", weights=Path(path), arch=arch)


def _open_clip_arch(spec: str, arch: str, open_clip) -> str:
    """The registered architecture name; a config .json is registered under its file stem."""
    if arch.lower().endswith(".json"):
        arch_path = Path(os.path.expanduser(arch))
        try:
            cfg = json.loads(arch_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{spec!r}: cannot read the open_clip model config {arch}: {exc}") from None
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
        if missing:
            raise ModelError(f"{spec!r}: the model config {arch} lacks {', '.join(missing)} "
                             "(an open_clip config holds embed_dim, vision_cfg and text_cfg)")
        name = arch_path.stem
        if open_clip.get_model_config(name) != cfg:
            open_clip.add_model_config(arch_path)
    else:
        name = arch
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            import difflib

            close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ModelError(f"{spec!r}: unknown open_clip architecture {name!r}.{hint} See the names with "
                             "python -c \"import open_clip; print(open_clip.list_models())\", or pass a path to a "
                             "model config .json as ARCH")
    text_cfg = cfg.get("text_cfg", {})
    hub_parts = [text_cfg[k] for k in ("hf_tokenizer_name", "hf_model_name") if text_cfg.get(k)]
    if hub_parts or "siglip" in name.lower():
        raise ModelError(f"{spec!r}: architecture {name!r} takes its tokenizer or text model from the Hugging Face "
                         f"hub ({', '.join(hub_parts) or 'a SigLIP tokenizer'}), which would need the network; this "
                         "tool loads local files only. Save the model as a transformers CLIP directory and use "
                         "hf:DIR, or use an architecture with open_clip's built-in CLIP tokenizer")
    return name


def _load_open_clip(source: ModelSource, device: str) -> TorchZeroShotModel:
    open_clip = _import_open_clip()
    name = _open_clip_arch(source.spec, source.arch or "", open_clip)
    try:
        model, _, transform = open_clip.create_model_and_transforms(name, pretrained=str(source.weights),
                                                                    device=device)
    except (RuntimeError, KeyError, ValueError, OSError, EOFError, TypeError) as exc:
        raise ModelError(f"{source.spec!r}: cannot load {source.weights} as open_clip {name!r}: "
                         f"{str(exc).splitlines()[0][:500]} (is it a checkpoint of this architecture?)") from None
    except Exception as exc:  # noqa: BLE001 - torch.load/pickle raise many types for a file that is not a checkpoint
        raise ModelError(f"{source.spec!r}: {source.weights} is not a readable checkpoint: "
                         f"{type(exc).__name__}: {exc}") from None
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)

    def texts(batch: list[str]):
        return model.encode_text(tokenizer(batch).to(device))

    return TorchZeroShotModel(source.spec, device, transform, lambda x: model.encode_image(x), texts)


# ---------------------------------------------------------------- Hugging Face transformers


def _parse_hf(spec: str, rest: str) -> ModelSource:
    path = os.path.expanduser(rest)
    if not os.path.isdir(path):
        if not os.path.exists(path) and not path.startswith(("/", ".", "~")) and path.count("/") <= 1:
            raise ModelError(
                f"{spec!r}: {rest!r} is not a local directory; as a hub id it would need the network, and this tool "
                f"loads local files only. Download it elsewhere, e.g. `huggingface-cli download {rest} --local-dir "
                f"clip-dir` (or CLIPModel/AutoProcessor .from_pretrained('{rest}').save_pretrained('clip-dir')), "
                "then pass hf:/path/to/clip-dir")
        raise ModelError(f"{spec!r}: {path} is not a directory (give the folder save_pretrained wrote)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelError(f"{spec!r}: {path} has no config.json; give the folder CLIPModel.save_pretrained wrote")
    return ModelSource(spec=spec, kind="hf", weights=Path(path))


def _load_hf(source: ModelSource, device: str) -> TorchZeroShotModel:
    try:
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel
    except ImportError as exc:
        raise ModelError(f"hf: models need transformers ({exc}); pip install 'overlap-audit[hf]'") from None
    path = str(source.weights)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/KeyError variously
        raise ModelError(f"{source.spec!r}: cannot read {path}/config.json: {exc}") from None
    if getattr(config, "model_type", None) != "clip":
        raise ModelError(f"{source.spec!r}: hf: loads transformers CLIPModel directories; {path} holds a "
                         f"{getattr(config, 'model_type', 'unknown')!r} model")
    parts = {}
    for what, loader in (("model", CLIPModel), ("tokenizer", AutoTokenizer), ("image processor", AutoImageProcessor)):
        try:
            parts[what] = loader.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - as above
            raise ModelError(f"{source.spec!r}: cannot load the {what} from {path}: {str(exc).splitlines()[0][:400]} "
                             f"(save it there with its save_pretrained)") from None
    # float32 whatever the checkpoint's dtype (transformers 5 keeps a half-precision checkpoint's dtype)
    model, tokenizer, processor = parts["model"].float().to(device).eval(), parts["tokenizer"], parts["image processor"]
    max_len = int(getattr(config.text_config, "max_position_embeddings", 77))

    def texts(batch: list[str]):
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return model.get_text_features(input_ids=enc["input_ids"].to(device),
                                       attention_mask=enc["attention_mask"].to(device))

    return TorchZeroShotModel(source.spec, device, _HFPixels(processor),
                              lambda x: model.get_image_features(pixel_values=x), texts)


class _HFPixels:
    """A transformers image processor as a one-image transform (a class, so it pickles for spawned workers)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image):
        return self.processor(images=[image], return_tensors="pt")["pixel_values"][0]


# ---------------------------------------------------------------- this project's small CLIP


def _smallclip():
    try:
        from . import smallclip
    except ImportError as exc:
        raise ModelError(f"overlap-audit: models need overlap_audit.zeroshot.smallclip, which this installation lacks ({exc})"
                         ) from None
    return smallclip


def _parse_smallclip(spec: str, rest: str) -> ModelSource:
    path = _smallclip().resolve(rest)
    return ModelSource(spec=spec, kind="overlap-audit", weights=Path(path))


def _load_smallclip(source: ModelSource, device: str):
    model = _smallclip().load(source.weights, device=device)
    from .scoring import ZeroShotModel

    if not isinstance(model, ZeroShotModel):
        raise ModelError(f"{source.spec!r}: smallclip.load gave a {type(model).__name__}, not a ZeroShotModel")
    return model
