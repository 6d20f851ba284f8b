"""Zero-shot classification as in the CLIP paper (Sec. 3.1.4): each class's prompts (class name put
into every template of an ensemble) are embedded by the text tower, L2-normalised, averaged and
normalised again; an image goes to the class whose weight vector has the highest cosine similarity.

Any model that satisfies ``ZeroShotModel`` can be scored: it turns PIL images into a pixel tensor
(``preprocess``) and embeds pixels and texts into one L2-normalised space. The default ensemble is the 80
ImageNet prompt templates published with the CLIP paper (``Prompt_Engineering_for_ImageNet.ipynb`` in
github.com/openai/CLIP); ``load_templates`` reads a per-dataset file, one template per line.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ModelError, param

__all__ = ["ZeroShotModel", "ZeroShotClassifier", "default_templates", "load_templates", "build_classifier",
           "classify", "load_classnames", "readable_name", "class_names", "assign_files", "ScoredSet",
           "ZeroShotScorer", "TemplateSet"]


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
    """Templates from a text file, one per line, each with exactly one ``{}`` or ``{c}`` (CLIP_benchmark's
    form) for the class name, read as ``{}``; blank and ``#`` lines skipped."""
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: a byte-order mark is not part of a template
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
        if "{}" not in line and line.count("{c}") == 1:
            line = line.replace("{c}", "{}")
        if line.count("{}") != 1 or "{" in line.replace("{}", "") or "}" in line.replace("{}", ""):
            raise ModelError(f"{where}, line {lineno}: a template needs exactly one {{}} (or {{c}}) for the class "
                             f"name and no other braces (got {line!r})")
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
                     templates: Sequence[str] | None = None, batch_size: int = 256,
                     progress: bool = False) -> ZeroShotClassifier:
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
    starts: Iterable[int] = range(0, len(prompts), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"classifier: {len(names)} classes x {len(templates)} prompts", unit="batch",
                      leave=False)
    for start in starts:
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


# ---------------------------------------------------------------- class names and per-dataset files


def readable_name(label: str) -> str:
    """A label as a class name when no classnames file names it: underscores and hyphens become spaces."""
    return " ".join(str(label).replace("_", " ").replace("-", " ").split())


def load_classnames(path: str | os.PathLike) -> dict[str, str]:
    """{label: readable name} from JSON ``{"label": "name"}`` or a CSV/TSV of label,name rows (a first row
    ``label,name`` is a header)."""
    import csv
    import json

    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:  # spreadsheet exports start with a BOM
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read classnames file {path}: {exc}") from None
    data = None
    if str(path).lower().endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelError(f"classnames file {path} is not valid JSON: {exc}") from None
    elif text.lstrip().startswith("{"):
        try:  # JSON under another extension; a CSV whose first label starts with "{" reads as CSV
            data = json.loads(text)
        except ValueError:
            data = None
    if data is not None:
        if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
            raise ModelError(f'classnames file {path} must hold {{"label": "readable name", ...}}')
        return {str(k): v.strip() for k, v in data.items()}
    delimiter = "\t" if str(path).lower().endswith(".tsv") or ("\t" in text and "," not in text) else ","
    out: dict[str, str] = {}
    for lineno, row in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), 1):
        if not row or not "".join(row).strip() or row[0].startswith("#"):
            continue
        if lineno == 1 and [c.strip().lower() for c in row[:2]] == ["label", "name"]:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ModelError(f"classnames file {path}, line {lineno}: expected label{delimiter}name, got {row!r}")
        label = row[0].strip()
        if label in out:
            raise ModelError(f"classnames file {path}, line {lineno}: label {label!r} appears twice")
        out[label] = row[1].strip()
    if not out:
        raise ModelError(f"classnames file {path} names no classes")
    return out


def class_names(labels: Iterable[str], classnames: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(labels, readable names) of the classifier: the classnames file's labels in its order, then the
    source's other labels sorted; a label the file does not name reads as ``readable_name(label)``, except a
    bare integer, which is refused."""
    classnames = classnames or {}
    labels = set(labels)
    bare = sorted((lab for lab in labels - set(classnames) if re.fullmatch(r"-?\d+", lab)), key=int)
    if bare:
        # "a photo of a 3." says nothing of the class: a model scored on such prompts measures nothing
        raise ModelError(f"the evaluation set's labels are bare integers ({', '.join(bare[:5])}"
                         f"{', ...' if len(bare) > 5 else ''}) with no class names: give {param('classnames')} "
                         '(JSON {"0": "airplane", ...} or CSV label,name rows) so the prompts name the classes')
    if classnames and labels and not labels & set(classnames):
        # every real class would fall back to its raw label and the file's classes could never be right
        raise ModelError(f"the classnames file names none of the evaluation set's labels (it has e.g. "
                         f"{sorted(classnames)[:3]}, the set {sorted(labels)[:3]}): its keys must be the labels "
                         "(an image folder's sub-folder names)")
    seen = sorted(labels - set(classnames))
    ordered = list(classnames) + seen
    return ordered, [classnames.get(lab, readable_name(lab)) for lab in ordered]


def assign_files(values: Sequence[str], names: Sequence[str], option: str) -> dict[str, str]:
    """Per-dataset files from option values ``FILE`` (every dataset) or ``NAME=FILE`` (one dataset, NAME an
    evaluated dataset); datasets given no file are left out."""
    default, per = None, {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in names:
            if name in per:
                raise ModelError(f"{option}: two files for dataset {name!r}")
            per[name] = path
        else:
            if default is not None:
                raise ModelError(f"{option}: two files for every dataset ({default}, {value}); give NAME=FILE "
                                 f"for one dataset (evaluated: {', '.join(names)})")
            default = value
    return {n: per.get(n, default) for n in names if per.get(n, default) is not None}


@dataclass(frozen=True)
class TemplateSet:
    """The prompt templates of one dataset and where they came from."""

    templates: tuple[str, ...]
    source: str   # a file path, or "default" (the CLIP paper's 80 ImageNet templates)

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> "TemplateSet":
        if path is None:
            return cls(tuple(default_templates()), "default")
        return cls(tuple(load_templates(path)), str(path))

    @classmethod
    def of(cls, templates: Sequence[str], source: str) -> "TemplateSet":
        """Templates given as lines (``{}`` or ``{c}``), checked as a file's would be."""
        return cls(tuple(_parse_templates("\n".join(templates), source)), source)

    def to_dict(self) -> dict:
        text = "\n".join(self.templates).encode("utf-8")
        return {"source": self.source, "count": len(self.templates),
                "sha256": hashlib.sha256(text).hexdigest(), "templates": list(self.templates)}


# ---------------------------------------------------------------- scoring a stream of decoded images


@dataclass(frozen=True, eq=False)
class ScoredSet:
    """Zero-shot predictions of one evaluation set, row-aligned: the true label, the top-1 prediction and
    the top-k labels, best first."""

    dataset: str
    ids: list[str]
    labels: list[str]
    predictions: list[str]
    top: list[list[str]]
    classifier: ZeroShotClassifier

    def __len__(self) -> int:
        return len(self.ids)


class ModelPixels:
    """PIL image -> the model's float32 pixel array [3, H, W]; runs in the decoding workers. A model with a
    ``pixel_transform`` (one image -> [3, H, W]) ships only that to the workers, not its weights."""

    def __init__(self, model: ZeroShotModel):
        self.transform = getattr(model, "pixel_transform", None)
        self.model = None if self.transform is not None else model

    def __call__(self, image: Any) -> np.ndarray:
        if self.transform is not None:
            return _numpy(self.transform(image))
        return _numpy(self.model.preprocess([image]))[0]


@dataclass
class ZeroShotScorer:
    """Embeds images with a model as their pixels stream past (``add``), in batches on the model's device;
    ``result`` classifies them once every label is known."""

    model: ZeroShotModel
    dataset: str
    batch_size: int = 128
    ids: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    _pending: list[np.ndarray] = field(default_factory=list)
    _embedded: list[np.ndarray] = field(default_factory=list)

    def preprocessor(self) -> ModelPixels:
        return ModelPixels(self.model)

    def add(self, item_id: str, label: str | None, pixels: np.ndarray | None) -> None:
        """One item in input order; ``pixels`` None means it was skipped (and is not scored)."""
        if pixels is None:
            return
        if label is None:
            raise ModelError(f"evaluation set {self.dataset!r}: item {item_id!r} has no label, so it cannot be scored "
                             "zero-shot; put each class's images in a sub-folder named after it (or give a label "
                             f"column), or score the model yourself and pass {param('predictions')}")
        self.ids.append(item_id)
        self.labels.append(str(label))
        self._pending.append(pixels)
        if len(self._pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._embedded.append(_numpy(self.model.encode_images(np.stack(self._pending))))
            self._pending.clear()

    def result(self, classnames: dict[str, str] | None = None, templates: Sequence[str] | None = None,
               top: int = 5, progress: bool = False) -> ScoredSet:
        """Build the dataset's classifier and classify every added image."""
        self.flush()
        if not self.ids:
            raise ModelError(f"evaluation set {self.dataset!r} has no readable images to score")
        labels, names = class_names(self.labels, classnames)
        clf = build_classifier(self.model, labels, names, templates, progress=progress)
        idx, _ = classify(clf, np.concatenate(self._embedded), top=top)
        top_labels = [[clf.labels[j] for j in row] for row in idx]
        return ScoredSet(dataset=self.dataset, ids=list(self.ids), labels=list(self.labels),
                         predictions=[t[0] for t in top_labels], top=top_labels, classifier=clf)
