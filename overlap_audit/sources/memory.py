"""An evaluation set held in memory: (id, image, label) triples from Python, e.g. a torchvision or Hugging Face
``datasets`` object, used wherever a source spec is accepted (``run_report``, ``review_pairs``).

``memory_source(((str(i), img, str(y)) for i, (img, y) in enumerate(ds)), name="cifar10")`` encodes each
PIL image once as PNG (lossless, so the set embeds exactly as the same images saved to a folder as PNG
would) and keeps the bytes; already encoded image bytes are kept as given. The items are then RawItems
with ``data``, so the decoding workers, the report's thumbnails and verification read them like any other
source's. The whole set stays in memory for the life of the value.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import DuplicateIdError, SourceError
from ..limits import DEFAULT_LIMITS, InputLimits
from ..values import RawItem

__all__ = ["MEMORY_KIND", "MemorySource", "memory_source"]

MEMORY_KIND = "memory"
# modes Pillow writes to PNG as they are; any other mode is converted to RGB (or RGBA with transparency)
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


@dataclass(frozen=True, eq=False)
class MemorySource:
    """An in-memory evaluation set with the reading interface of ``sources.Source``: ``iter_items``,
    ``count``, ``name``, ``spec``, ``classnames``, ``templates``. ``spec`` is what report.json records."""

    items: tuple[RawItem, ...]
    name: str = "memory"
    classnames: tuple[str, ...] | None = None
    templates: tuple[str, ...] | None = None
    kind: str = field(default=MEMORY_KIND, init=False)
    paths: tuple[str, ...] = field(default=(), init=False)
    labels_from_folders: bool = field(default=False, init=False)

    @property
    def spec(self) -> str:
        return f"{MEMORY_KIND}:{self.name} ({len(self.items)} images given in memory)"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "name": self.name, "paths": []}

    def count(self) -> int:
        return len(self.items)

    def iter_items(self, limits: InputLimits | None = None) -> Iterator[RawItem]:
        """The items in the order given, under this source's name; an image over ``limits.max_file_bytes``
        comes as skipped."""
        limits = limits or DEFAULT_LIMITS
        for item in self.items:
            if item.data is not None and len(item.data) > limits.max_file_bytes:
                yield RawItem(self.name, item.id, label=item.label,
                              skip_reason=f"image of {len(item.data):,} bytes exceeds the limit of "
                                          f"{limits.max_file_bytes:,} bytes: not read")
            elif item.source != self.name:
                yield RawItem(self.name, item.id, data=item.data, caption=item.caption, label=item.label,
                              skip_reason=item.skip_reason)
            else:
                yield item


def _encode(image, where: str) -> bytes:
    """PNG bytes of a PIL image (bytes given are kept: an already encoded image)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        raise SourceError("in-memory evaluation sets need Pillow") from None
    if not isinstance(image, Image.Image):
        raise SourceError(f"{where}: the image is a {type(image).__name__}, not a PIL image or encoded image bytes; "
                          "give PIL images (e.g. a torchvision dataset without a transform)")
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buf = io.BytesIO()
    try:
        image.save(buf, format="PNG", compress_level=1)
    except (OSError, ValueError) as exc:
        raise SourceError(f"{where}: the image cannot be encoded as PNG ({exc})") from None
    return buf.getvalue()


_IMAGE_KEYS = ("image", "img", "jpg", "png")
_LABEL_KEYS = ("label", "fine_label", "cls")


def _dataset_classnames(items) -> tuple[str, ...] | None:
    """The class names a dataset object carries: a Hugging Face ``datasets.Dataset``'s ClassLabel feature, or
    a torchvision dataset's ``classes``."""
    features = getattr(items, "features", None)
    if features is not None and hasattr(features, "get"):
        for key in _LABEL_KEYS:
            names = getattr(features.get(key), "names", None)
            if names:
                return tuple(str(n) for n in names)
    classes = getattr(items, "classes", None)
    return tuple(str(c) for c in classes) if isinstance(classes, (list, tuple)) and classes else None


def _triple(entry, n: int, where: str) -> tuple:
    """(id, image, label) of one entry: an (id, image, label) tuple, a torchvision dataset's (image, label)
    (id: its index), or a ``datasets.Dataset`` row, a dict with an image and a label column (id: its
    ``id`` column, else its index)."""
    if isinstance(entry, tuple) and len(entry) == 3:
        return entry
    if isinstance(entry, tuple) and len(entry) == 2 and not isinstance(entry[0], str):  # ("id", image): no label
        return str(n), entry[0], entry[1]
    if isinstance(entry, dict):
        image = next((entry[k] for k in _IMAGE_KEYS if k in entry), None)
        if image is None:
            raise SourceError(f"{where}: a row with no image column (looked for {', '.join(_IMAGE_KEYS)}; it has "
                              f"{', '.join(map(str, entry))}); give (id, image, label) tuples")
        label = next((entry[k] for k in _LABEL_KEYS if k in entry), None)
        ident = entry.get("id")
        return (str(ident) if ident is not None else str(n)), image, label
    raise SourceError(f"{where}: expected an (id, image, label) tuple, an (image, label) pair (a torchvision "
                      f"dataset) or a row dict (a datasets.Dataset), got {type(entry).__name__}"
                      + (f" of length {len(entry)}" if isinstance(entry, tuple) else ""))


def memory_source(items: Iterable, name: str = "memory", *, classnames: Iterable[str] | None = None,
                  templates: Iterable[str] | None = None) -> MemorySource:
    """A ``MemorySource`` from (id, image, label) triples, a torchvision-style dataset ((image, label) pairs, the
    index as id) or a ``datasets.Dataset`` (rows with an image and a label column; ``id`` column or the index
    as id; its ClassLabel names as ``classnames``); ``image`` is a PIL image or encoded image bytes,
    ``label`` a class (written as text) or None. ``classnames`` (label ``i`` is ``classnames[i]``) and
    ``templates`` serve zero-shot scoring as a layout's own do. Ids must be distinct, non-empty text."""
    if classnames is None:
        classnames = _dataset_classnames(items)
    out: list[RawItem] = []
    seen: set[str] = set()
    dups: list[str] = []
    for n, entry in enumerate(items):
        where = f"in-memory evaluation set {name!r}, item {n + 1}"
        ident, image, label = _triple(entry, n, where)
        if not isinstance(ident, str) or not ident:
            raise SourceError(f"{where}: the id must be non-empty text, got {ident!r}; e.g. str(i)")
        if ident in seen:
            dups.append(ident)
        seen.add(ident)
        out.append(RawItem(name, ident, data=_encode(image, f"{where} ({ident!r})"),
                           label=None if label is None else str(label)))
    if dups:
        raise DuplicateIdError(name, sorted(set(dups)))
    return MemorySource(tuple(out), name, classnames=None if classnames is None else tuple(classnames),
                        templates=None if templates is None else tuple(templates))
