"""Typed values passed between the stages of the pipeline.

sources -> RawItem -> (decode, detector.preprocess) -> detector.embed -> Embeddings -> index search ->
Neighbors -> split -> Split (+ Predictions) -> stats -> DatasetReport / Report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Metric = Literal["cosine", "hamming"]


@dataclass(frozen=True)
class ItemLocation:
    """Where an item lies in its source, recorded when it is indexed so that it can be read back without listing
    or scanning the source: ``file`` is the tar's or Parquet file's position in the source's paths; a WebDataset
    sample's ``members`` are (extension, offset of the member's data in the tar, its size) of each member read
    (the image, and the ``.txt`` / ``.json`` / ``.cls`` caption and label); a Parquet row is its ``row_group``
    and its ``row`` within it."""

    file: int
    members: tuple[tuple[str, int, int], ...] = ()
    row_group: int | None = None
    row: int | None = None

    def to_dict(self) -> dict:
        """As stored in an index shard: the members as ``ext@offset+size`` joined by spaces (None when none)."""
        members = " ".join(f"{ext}@{offset}+{size}" for ext, offset, size in self.members)
        return {"file": self.file, "members": members or None, "row_group": self.row_group, "row": self.row}

    @classmethod
    def from_dict(cls, d: dict) -> "ItemLocation":
        members = []
        for part in (d.get("members") or "").split():
            ext, _, span = part.partition("@")
            offset, _, size = span.partition("+")
            members.append((ext, int(offset), int(size)))
        return cls(int(d["file"]), tuple(members), d.get("row_group"), d.get("row"))


@dataclass(frozen=True)
class RawItem:
    """One undecoded record of a source: its id and where its image bytes are.

    Exactly one of ``data`` (bytes) and ``path`` (a file to read) is set, unless ``skip_reason``
    already says why the item cannot be used (e.g. a failed download recorded by img2dataset). ``location``
    is where a tar or Parquet source holds it (None where it cannot be read back by location: a folder, a
    ``pipe:`` stream, a compressed tar).
    """

    source: str
    id: str
    data: bytes | None = None
    path: str | None = None
    caption: str | None = None
    label: str | None = None
    skip_reason: str | None = None
    location: ItemLocation | None = None


@dataclass(frozen=True)
class Skipped:
    """An item that was given but could not be used, and why."""

    source: str
    id: str
    reason: str

    def to_dict(self) -> dict:
        return {"source": self.source, "id": self.id, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict) -> "Skipped":
        return cls(source=d["source"], id=d["id"], reason=d["reason"])


@dataclass(frozen=True)
class DetectorInfo:
    """What identifies a detector's embeddings: two indexes are comparable only if these agree."""

    spec: str
    name: str
    version: str
    dim: int
    metric: Metric
    default_threshold: float | None  # None: the detector has no calibrated threshold (pass one)
    # the declared content normalisation: "trim" (each image is embedded as its content box) or "whole";
    # None in a manifest written before the setting existed
    content: str | None = None

    def to_dict(self) -> dict:
        return {
            "spec": self.spec,
            "name": self.name,
            "version": self.version,
            "dim": self.dim,
            "metric": self.metric,
            "default_threshold": self.default_threshold,
            "content": self.content,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorInfo":
        return cls(
            spec=d["spec"],
            name=d["name"],
            version=d["version"],
            dim=int(d["dim"]),
            metric=d["metric"],
            default_threshold=None if d["default_threshold"] is None else float(d["default_threshold"]),
            content=d.get("content"),
        )


@dataclass(frozen=True, eq=False)
class Embeddings:
    """Embedded items of one source or set, row-aligned.

    ``vectors`` is float32 [N, D] (L2-normalised) for metric "cosine", or uint8 [N, D/8] packed bits for
    metric "hamming". ``low_information`` marks near-uniform images that must not count as matches.
    """

    ids: list[str]
    vectors: np.ndarray
    low_information: np.ndarray
    labels: list[str | None] = field(default_factory=list)
    captions: list[str | None] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # per row, the content box (``content.ContentBox``) of a trimming detector; empty when not recorded
    boxes: list = field(default_factory=list)
    # a second view: the whole image's vectors of the rows ``whole_rows`` (those whose content box was trimmed)
    whole_rows: np.ndarray | None = None
    whole_vectors: np.ndarray | None = None
    # further views: the vectors [rows, views, width] of each row's centre crops, where they were asked for
    crop_vectors: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, eq=False)
class Neighbors:
    """The k nearest corpus items of each query, most similar first.

    ``ids`` is an object array [N, k] of corpus ids (None where the corpus has fewer than k items);
    ``similarities`` is float32 [N, k] in the detector's similarity (cosine, or 1 - Hamming/bits),
    NaN where there is no neighbour.
    """

    query_ids: list[str]
    ids: np.ndarray
    similarities: np.ndarray
    # per query, the view of it that matched ("trimmed", "whole" or a centre crop "view80"); None when only one
    # view was searched
    views: list[str] | None = None

    @property
    def k(self) -> int:
        return int(self.similarities.shape[1])


@dataclass(frozen=True, eq=False)
class Split:
    """One evaluation set split into Overlap / Clean at a threshold."""

    dataset: str
    threshold: float
    ids: list[str]
    labels: list[str | None]
    neighbors: Neighbors
    overlap: np.ndarray  # bool [N]
    low_information: np.ndarray  # bool [N]; never Overlap
    boxes: list = field(default_factory=list)  # per row, the content box of a trimming detector (or empty)
    neighbor_boxes: list = field(default_factory=list)  # per row, the matched corpus item's content box
    # verification (``decide.rule.DecisionRule``): per row, the score of the matched pair (NaN where it was not
    # verified) and whether it passed; None when verification was off
    verify_scores: np.ndarray | None = None  # float32 [N]
    verified: np.ndarray | None = None  # bool [N]; False where not verified
    # per row, the column of ``neighbors`` the decision names as the example's match (0: the nearest item; a
    # later one where verification accepted it); None: the nearest for every row
    match: np.ndarray | None = None  # int [N]

    @property
    def top_similarity(self) -> np.ndarray:
        return self.neighbors.similarities[:, 0] if self.neighbors.k else np.zeros(len(self.ids), np.float32)

    @property
    def match_column(self) -> np.ndarray:
        """Per row, the column of ``neighbors`` of the corpus item the decision names."""
        return np.zeros(len(self.ids), np.int64) if self.match is None else np.asarray(self.match, np.int64)

    def match_key(self, row: int) -> str | None:
        """The corpus key of ``row``'s match (None: no neighbour)."""
        if not self.neighbors.k:
            return None
        key = self.neighbors.ids[row, int(self.match_column[row])]
        return None if key is None else str(key)

    def match_similarity(self, row: int) -> float:
        """The similarity of ``row``'s match (NaN: no neighbour)."""
        if not self.neighbors.k:
            return float("nan")
        return float(self.neighbors.similarities[row, int(self.match_column[row])])


@dataclass(frozen=True)
class Predictions:
    """Per-example correctness of the audited model: ``correct[dataset][id] -> bool``; ``labels[dataset][id]``
    the label a predictions file gives (where it has a label column), to check against the set's own."""

    correct: dict[str, dict[str, bool]]
    source: str = ""
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
