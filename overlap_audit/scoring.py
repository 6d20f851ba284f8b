"""Zero-shot classification as in the CLIP paper (Sec. 3.1.4): each class's prompts (class name put
into every template of an ensemble) are embedded by the text tower, L2-normalised, averaged and
normalised again; an image goes to the class whose weight vector has the highest cosine similarity.

Any model that satisfies ``ZeroShotModel`` can be scored: it turns PIL images into a pixel tensor
(``preprocess``) and embeds pixels and texts into one L2-normalised space. The default ensemble is the 80
ImageNet prompt templates published with the CLIP paper (``Prompt_Engineering_for_ImageNet.ipynb`` in
github.com/openai/CLIP); ``load_templates`` reads a per-dataset file, one template per line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import ModelError

__all__ = ["ZeroShotModel", "ZeroShotClassifier", "default_templates", "load_templates", "build_classifier",
           "classify"]


@runtime_checkable
class ZeroShotModel(Protocol):
    """What the scorer needs of a CLIP-style model. Embeddings are float32 and L2-normalised."""

    spec: str

    def preprocess(self, images: Sequence[Any]) -> Any:
        """RGB PIL images -> a pixel tensor [N, 3, H, W] ready for ``encode_images``."""

    def encode_images(self, pixels: Any) -> Any:
        """Pixel tensor -> [N, D] L2-normalised embeddings (a torch tensor or numpy array)."""

    def encode_texts(self, texts: Sequence[str]) -> Any:
        """Texts -> [N, D] L2-normalised embeddings (a torch tensor or numpy array)."""


@dataclass(frozen=True)
class ZeroShotClassifier:
    """One unit-norm weight row per class, built from the prompt ensemble."""

    labels: tuple[str, ...]       # the label each row predicts (as in the evaluation source)
    classnames: tuple[str, ...]   # the readable name put into the templates
    templates: tuple[str, ...]
    weights: np.ndarray           # [C, D] float32, rows L2-normalised


def default_templates() -> list[str]:
    """The 80 ImageNet prompt templates of the CLIP paper."""
    text = resources.files("overlap_audit").joinpath("templates/imagenet80.txt").read_text(encoding="utf-8")
    return _parse_templates(text, "the built-in ImageNet templates")


def load_templates(path: str | os.PathLike) -> list[str]:
    """Templates from a text file, one per line, each with exactly one ``{}``; blank and ``#`` lines skipped."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read templates file {path}: {exc}") from None
    return _parse_templates(text, str(path))


def _parse_templates(text: str, where: str) -> list[str]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.count("{}") != 1 or "{" in line.replace("{}", "") or "}" in line.replace("{}", ""):
            raise ModelError(f"{where}, line {lineno}: a template needs exactly one {{}} for the class name "
                             f"and no other braces (got {line!r})")
        out.append(line)
    if not out:
        raise ModelError(f"{where} holds no templates")
    return out


def _unit_rows(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(norms == 0):
        raise ModelError(f"the model gave a zero or non-finite {what} embedding")
    return x / norms


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def build_classifier(model: ZeroShotModel, labels: Sequence[str], classnames: Sequence[str] | None = None,
                     templates: Sequence[str] | None = None, batch_size: int = 256) -> ZeroShotClassifier:
    """The paper's prompt-ensemble classifier: per class, mean of the normalised prompt embeddings,
    normalised again. ``classnames`` default to the labels themselves."""
    labels = [str(v) for v in labels]
    if not labels:
        raise ModelError("no classes to build a zero-shot classifier for")
    if len(set(labels)) != len(labels):
        raise ModelError("class labels must be distinct")
    names = [str(v) for v in (classnames if classnames is not None else labels)]
    if len(names) != len(labels):
        raise ModelError(f"{len(names)} class names for {len(labels)} labels")
    templates = list(templates) if templates is not None else default_templates()
    prompts = [t.replace("{}", name) for name in names for t in templates]
    rows = []
    for start in range(0, len(prompts), batch_size):
        rows.append(_numpy(model.encode_texts(prompts[start:start + batch_size])))
    emb = _unit_rows(np.concatenate(rows), "text").reshape(len(names), len(templates), -1)
    weights = _unit_rows(emb.mean(axis=1), "class")
    return ZeroShotClassifier(labels=tuple(labels), classnames=tuple(names), templates=tuple(templates),
                              weights=weights)


def classify(classifier: ZeroShotClassifier, image_embeddings: np.ndarray, top: int = 5
             ) -> tuple[np.ndarray, np.ndarray]:
    """(indices [N, k], cosine scores [N, k]) of the top-k classes per image, best first; ties go to the
    lower class index, so identical inputs give identical predictions."""
    emb = _unit_rows(_numpy(image_embeddings), "image") if len(image_embeddings) else np.zeros(
        (0, classifier.weights.shape[1]), np.float32)
    if emb.shape[1] != classifier.weights.shape[1]:
        raise ModelError(f"image embeddings have dimension {emb.shape[1]}, the classifier {classifier.weights.shape[1]}")
    k = min(top, len(classifier.labels))
    scores = emb @ classifier.weights.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)
