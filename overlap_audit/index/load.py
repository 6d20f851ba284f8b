"""Opening an index for reading: the FAISS index with each row's key (``load_index``), and the corpus
items behind keys, read back from the sources the manifest records (``corpus_items``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OverlapAuditError
from ..sources import SOURCE_KINDS, Source, fetch_items, readback_problem
from ..values import RawItem
from .integrity import check_faiss, check_files, read_faiss_index, read_ids
from .manifest import VECTORS_FILE, IndexManifest, load_manifest
from .shards import rows_by_key


@dataclass(frozen=True, eq=False)
class CorpusIndex:
    """A loaded index: its manifest, the FAISS index (None when loaded for streaming) and each row's key."""

    path: Path
    manifest: IndexManifest
    index: object
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def params(self) -> dict:
        return self.manifest.extra.get("index_params", {})

    @property
    def vectors_file(self) -> str:
        return self.manifest.vectors_file or VECTORS_FILE


def load_index(index_dir: str | os.PathLike, *, load_faiss: bool = True) -> CorpusIndex:
    """Load a complete index directory (without the FAISS index itself when only streaming), checked
    against its manifest (``check_files``, ``check_faiss``)."""
    path = Path(index_dir)
    manifest = load_manifest(path)
    check_files(path, manifest)
    index = None
    if load_faiss:
        index = read_faiss_index(path, manifest)
        check_faiss(path, manifest, index)
    return CorpusIndex(path, manifest, index, read_ids(path, manifest))


def _recorded_source(entry: dict | None, name: str) -> Source | None:
    """The source a manifest entry records, or None for one that cannot be read back (vectors)."""
    if entry is None or entry.get("kind") not in SOURCE_KINDS:
        return None
    return Source(entry["kind"], tuple(entry.get("paths", ())), name, entry.get("spec", ""))


def corpus_items(index_dir: str | os.PathLike, keys) -> dict[str, RawItem]:
    """The corpus items behind index keys, read back from the sources the manifest records.

    Every key maps to a RawItem; one whose image cannot be read any more (a moved source, a removed file,
    an index built from bare vectors) carries a ``skip_reason`` that says why.
    """
    manifest = load_manifest(index_dir)
    wanted = {str(k) for k in keys if k is not None}
    located = rows_by_key(index_dir, wanted, ["source", "id", "caption", "label"])
    out = {key: RawItem("", key, skip_reason="not in this index's shards") for key in wanted - located.keys()}
    by_source: dict[str, list[str]] = {}
    for key, row in located.items():
        by_source.setdefault(row["source"], []).append(key)
    recorded = {s.get("name"): s for s in manifest.sources}
    for source_name, source_keys in by_source.items():
        src = _recorded_source(recorded.get(source_name), source_name)
        items: dict[str, RawItem] = {}
        if src is None:
            reason = f"source {source_name!r} is not recorded in the manifest (an index built from vectors)"
        else:
            reason = readback_problem(src)
            if reason is None:
                try:
                    items = fetch_items(src, [located[k]["id"] for k in source_keys])
                except (OSError, OverlapAuditError) as exc:
                    reason = f"source {src.spec!r} is no longer readable ({exc})"
        for key in source_keys:
            row = located[key]
            item = items.get(row["id"])
            if item is None:
                item = RawItem(source_name, row["id"], skip_reason=reason or "not found in its source")
            out[key] = RawItem(source_name, row["id"], data=item.data, path=item.path, caption=row["caption"],
                               label=row["label"], skip_reason=item.skip_reason)
    return out
