"""The index directory format, defined once: file names, the manifest, the Parquet shards, loading.

An index directory holds:

- ``shards/shard-NNNNNN.parquet``: every item given, in input order (key, source, id, caption, label,
  vector, low_information, skip_reason, query_vector); each written atomically, so an interrupted run
  resumes after the last finished shard;
- ``index.faiss``: the FAISS index over the indexed vectors (see ``overlap_audit.index.ann``);
- ``ids.parquet``: the corpus key of each index row, in row order;
- ``vectors.npy``: the exact vectors, for IVF-PQ over float vectors only (its shortlist is re-ranked);
- ``progress.json``: the settings of the run (checked on resume);
- ``manifest.json``: detector, sources, counts, skipped items; written last, so its presence means the
  index is complete.

An item is indexed when it was embedded (no skip reason) and is not low-information; index rows are the
indexed items of the shards in order.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..content import ContentBox, box_arrow_type
from ..errors import IndexDirError, IndexMismatchError, OverlapAuditError, ResumeError
from ..sources import SOURCE_KINDS, Source
from ..values import DetectorInfo, RawItem, Skipped

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
SHARD_DIR = "shards"
VECTORS_FILE = "vectors.npy"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.parquet$")
_TEXT_COLUMNS = ["key", "source", "id", "caption", "label", "low_information", "skip_reason"]


@dataclass(frozen=True)
class IndexManifest:
    """The sidecar of an index directory (manifest.json)."""

    detector: DetectorInfo
    sources: list[dict]
    n_given: int
    n_embedded: int
    n_indexed: int
    n_low_information: int
    n_skipped: int
    skipped: list[Skipped]
    shard_size: int
    n_shards: int
    index_type: str
    faiss_version: str
    package_version: str
    created: str
    build_seconds: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "detector": self.detector.to_dict(),
            "sources": self.sources,
            "counts": {
                "given": self.n_given,
                "embedded": self.n_embedded,
                "indexed": self.n_indexed,
                "low_information": self.n_low_information,
                "skipped": self.n_skipped,
            },
            "skipped": [s.to_dict() for s in self.skipped],
            "shard_size": self.shard_size,
            "n_shards": self.n_shards,
            "index_type": self.index_type,
            "index_file": INDEX_FILE,
            "ids_file": IDS_FILE,
            "faiss_version": self.faiss_version,
            "package_version": self.package_version,
            "created": self.created,
            "build_seconds": self.build_seconds,
            "complete": True,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "IndexManifest":
        c = d["counts"]
        return cls(
            detector=DetectorInfo.from_dict(d["detector"]),
            sources=list(d["sources"]),
            n_given=int(c["given"]),
            n_embedded=int(c["embedded"]),
            n_indexed=int(c["indexed"]),
            n_low_information=int(c["low_information"]),
            n_skipped=int(c["skipped"]),
            skipped=[Skipped.from_dict(s) for s in d["skipped"]],
            shard_size=int(d["shard_size"]),
            n_shards=int(d["n_shards"]),
            index_type=d["index_type"],
            faiss_version=d["faiss_version"],
            package_version=d["package_version"],
            created=d["created"],
            build_seconds=float(d["build_seconds"]),
            extra=d.get("extra", {}),
        )


def load_manifest(index_dir: str | os.PathLike) -> IndexManifest:
    """Read an index directory's manifest; an interrupted or foreign directory is an error."""
    path = Path(index_dir)
    if not (path / MANIFEST).exists():
        if (path / PROGRESS).exists():
            raise IndexDirError(f"{path} is an unfinished index (interrupted); finish it with "
                                "`overlap-audit index ... --resume` using the same command")
        raise IndexDirError(f"{path} is not an overlap-audit index directory (no {MANIFEST})")
    try:
        return IndexManifest.from_dict(json.loads((path / MANIFEST).read_text()))
    except (KeyError, ValueError, TypeError) as exc:
        raise IndexDirError(f"{path / MANIFEST} is malformed: {exc}") from None


def corpus_key(source_name: str, item_id: str, n_sources: int) -> str:
    """The id a corpus item has in the index: its own id, qualified by its source when there are several."""
    return item_id if n_sources == 1 else f"{source_name}/{item_id}"


# ---------------------------------------------------------------- shards


def shard_path(index_dir: str | os.PathLike, shard_no: int) -> Path:
    """Where shard number ``shard_no`` of an index directory lives."""
    return Path(index_dir) / SHARD_DIR / f"shard-{shard_no:06d}.parquet"


def shard_paths(index_dir: str | os.PathLike) -> list[Path]:
    """The shard files of an index directory, in shard order."""
    return sorted((Path(index_dir) / SHARD_DIR).glob("shard-*.parquet"))


def finished_shards(index_dir: str | os.PathLike) -> list[int]:
    """The numbers of the shards on disk; they must run contiguously from 0."""
    shard_dir = Path(index_dir) / SHARD_DIR
    if not shard_dir.exists():
        return []
    found = sorted(int(m.group(1)) for p in shard_dir.iterdir() if (m := _SHARD_RE.match(p.name)))
    if found != list(range(len(found))):
        raise ResumeError(f"{shard_dir}: finished shards are not a contiguous run from 0 ({found[:10]}...); "
                          "the directory was modified by hand; start again in a new directory")
    return found


def vector_width(info: DetectorInfo) -> int:
    """Values per stored vector: dim floats, or dim/8 bytes of a packed hash."""
    return info.dim // 8 if info.metric == "hamming" else info.dim


def _vector_dtype(info: DetectorInfo) -> np.dtype:
    return np.dtype(np.uint8 if info.metric == "hamming" else np.float32)


def _fixed_width(rows: list[np.ndarray | None], info: DetectorInfo):
    """Vectors as Parquet FIXED_LEN_BYTE_ARRAY (one value per row, no per-element levels): decoding is a
    zero-copy view, several times faster and leaner than a list<float> column."""
    import pyarrow as pa

    dtype = _vector_dtype(info)
    return pa.array([None if v is None else np.ascontiguousarray(v, dtype=dtype).tobytes() for v in rows],
                    type=pa.binary(vector_width(info) * dtype.itemsize))


def write_shard(path: Path, info: DetectorInfo, *, keys: list[str], sources: list[str], ids: list[str],
                captions: list[str | None], labels: list[str | None], vectors: list[np.ndarray | None],
                low_information: list[bool], reasons: list[str | None], copies: list[np.ndarray | None],
                boxes: list | None = None) -> None:
    """Write one shard atomically: every item given, embedded or skipped, plus any recall-query copies.

    ``boxes`` are the items' content boxes (``content.ContentBox`` or None) under a trimming detector: the
    ``content_box`` column holds left, top, right, bottom, width and height in the decoded image's pixels and
    whether the embedded view was cut to it (null where the detector does not trim or the item was skipped).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    boxes = boxes if boxes is not None else [None] * len(keys)

    table = pa.table({
        "key": pa.array(keys, pa.string()),
        "source": pa.array(sources, pa.string()),
        "id": pa.array(ids, pa.string()),
        "caption": pa.array(captions, pa.string()),
        "label": pa.array(labels, pa.string()),
        "vector": _fixed_width(vectors, info),
        "low_information": pa.array(low_information, pa.bool_()),
        "skip_reason": pa.array(reasons, pa.string()),
        "query_vector": _fixed_width(copies, info),
        "content_box": pa.array([None if b is None else b.to_dict() for b in boxes], box_arrow_type()),
    })
    # vectors do not compress, repeat or sort: no compression, dictionary or min/max statistics for them
    atomic_write(path, lambda tmp: pq.write_table(
        table, tmp, compression={c: ("snappy" if c in _TEXT_COLUMNS else "none") for c in table.column_names},
        use_dictionary=_TEXT_COLUMNS, write_statistics=_TEXT_COLUMNS))


def content_boxes(index_dir: str | os.PathLike, keys) -> dict:
    """The recorded content boxes (``content.ContentBox``) of the corpus items behind ``keys``; keys without
    one (a detector that does not trim, an index written before boxes were recorded) are absent."""
    import pyarrow.parquet as pq

    wanted = {k for k in keys if k is not None}
    found: dict = {}
    for path in shard_paths(index_dir):
        if not wanted - found.keys():
            break
        if "content_box" not in pq.read_schema(path).names:
            continue
        table = pq.read_table(path, columns=["key", "content_box"], memory_map=True)
        for key, box in zip(table["key"].to_pylist(), table["content_box"].to_pylist()):
            if key in wanted and box is not None:
                found[key] = ContentBox.from_dict(box)
    return found


def usable_mask(table) -> np.ndarray:
    """Rows of a shard table that are indexed: embedded (no skip reason) and not low-information."""
    skipped = np.asarray(table["skip_reason"].is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    low = np.asarray(table["low_information"].fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    return ~skipped & ~low


def _column_vectors(column, info: DetectorInfo) -> np.ndarray:
    """All rows of a vector column as one [rows, width] array (null rows hold zeros or garbage)."""
    dtype = _vector_dtype(info)
    width = vector_width(info)
    parts = []
    for chunk in column.chunks:
        data = chunk.buffers()[1]
        if data is None or len(chunk) == 0:
            parts.append(np.zeros((len(chunk), width), dtype))
            continue
        view = np.frombuffer(data, dtype=dtype, count=len(chunk) * width, offset=chunk.offset * width * dtype.itemsize)
        parts.append(view.reshape(len(chunk), width))
    if not parts:
        return np.zeros((0, width), dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def read_shard_vectors(path: Path, info: DetectorInfo) -> np.ndarray:
    """The vectors of a shard's indexed items, in index row order."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["vector", "low_information", "skip_reason"], memory_map=True)
    mask = usable_mask(table)
    vectors = _column_vectors(table["vector"], info)
    return vectors if mask.all() else vectors[mask]


@dataclass(frozen=True)
class ShardRows:
    """Everything a shard records about its items except their vectors."""

    keys: list[str]
    sources: list[str]
    ids: list[str]
    reasons: list[str | None]
    usable: np.ndarray  # bool per row: indexed
    has_query: np.ndarray  # bool per row: an indexed row with an augmented copy
    query_vectors: np.ndarray  # [rows, width]; meaningful where has_query

    @property
    def skipped(self) -> list[Skipped]:
        return [Skipped(s, i, r) for s, i, r in zip(self.sources, self.ids, self.reasons) if r is not None]


def read_shard(path: Path, info: DetectorInfo) -> ShardRows:
    """A shard's keys, item ids, skip reasons, indexed rows and recall-query copies."""
    import pyarrow.parquet as pq

    columns = ["key", "source", "id", "skip_reason", "low_information"]
    if "query_vector" in pq.read_schema(path).names:
        columns.append("query_vector")
    table = pq.read_table(path, columns=columns, memory_map=True)
    usable = usable_mask(table)
    if "query_vector" in table.column_names and table["query_vector"].null_count < table.num_rows:
        has_query = np.asarray(table["query_vector"].is_valid().to_numpy(zero_copy_only=False), dtype=bool) & usable
        queries = _column_vectors(table["query_vector"], info)
    else:
        has_query = np.zeros(table.num_rows, dtype=bool)
        queries = np.zeros((0, vector_width(info)), _vector_dtype(info))
    return ShardRows(table["key"].to_pylist(), table["source"].to_pylist(), table["id"].to_pylist(),
                     table["skip_reason"].to_pylist(), usable, has_query, queries)


def shard_item_ids(path: Path) -> list[tuple[str, str]]:
    """The (source, id) of every item in a shard, in input order."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["source", "id"])
    return list(zip(table["source"].to_pylist(), table["id"].to_pylist()))


def shard_first_rows(index_dir: str | os.PathLike) -> list[tuple[Path, int]]:
    """Each shard with the index row of its first indexed item."""
    import pyarrow.parquet as pq

    out, row = [], 0
    for path in shard_paths(index_dir):
        out.append((path, row))
        row += int(usable_mask(pq.read_table(path, columns=["low_information", "skip_reason"])).sum())
    return out


def iter_shard_vectors(index_dir: str | os.PathLike, info: DetectorInfo) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (first corpus row, vectors) of the indexable items of each shard, in index row order.

    The next shard is read in a background thread while the caller works on this one (pyarrow releases
    the GIL), so reading overlaps searching; memory holds at most two shards.
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = shard_paths(index_dir)
    row = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read_shard_vectors, paths[0], info) if paths else None
        for i in range(len(paths)):
            vectors = pending.result()
            pending = pool.submit(read_shard_vectors, paths[i + 1], info) if i + 1 < len(paths) else None
            yield row, vectors
            row += len(vectors)


# ---------------------------------------------------------------- a complete index


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


def load_index(index_dir: str | os.PathLike, *, load_faiss: bool = True) -> CorpusIndex:
    """Load a complete index directory (without the FAISS index itself when only streaming)."""
    import faiss
    import pyarrow.parquet as pq

    path = Path(index_dir)
    manifest = load_manifest(path)
    reader = faiss.read_index_binary if manifest.detector.metric == "hamming" else faiss.read_index
    try:
        index = reader(str(path / INDEX_FILE)) if load_faiss else None
        keys = np.array(pq.read_table(path / IDS_FILE)["key"].to_pylist(), dtype=object)
    except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError, pyarrow several types
        raise IndexDirError(f"{path} is damaged: cannot read {INDEX_FILE} / {IDS_FILE} "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); rebuild it") from None
    if index is not None and index.ntotal != len(keys):
        raise IndexDirError(f"{path}: index holds {index.ntotal} vectors but {IDS_FILE} {len(keys)} ids")
    return CorpusIndex(path, manifest, index, keys)


def check_detector(manifest: IndexManifest, detector: DetectorInfo, index_dir: str = "") -> None:
    """Refuse a detector whose embeddings are not comparable with the index's."""
    built = manifest.detector
    problems = []
    if built.name != detector.name:
        problems.append(f"detector {built.name!r} (asked: {detector.name!r})")
    if built.version != detector.version:
        note = ""
        if built.content != detector.content:
            was = "no content normalisation" if built.content is None else f"content {built.content!r}"
            note = f", i.e. {was} where this detector uses content {detector.content!r}"
        problems.append(f"detector version {built.version!r} (installed: {detector.version!r}{note})")
    if built.dim != detector.dim:
        problems.append(f"dimension {built.dim} (asked: {detector.dim})")
    if built.metric != detector.metric:
        problems.append(f"metric {built.metric!r} (asked: {detector.metric!r})")
    if problems:
        raise IndexMismatchError(
            f"the index {index_dir} was built with {'; '.join(problems)}: its embeddings cannot be compared "
            "with this detector's. Rebuild the index with this detector, or report with the index's own."
        )


def corpus_items(index_dir: str | os.PathLike, keys) -> dict[str, RawItem]:
    """The corpus items behind index keys, read back from the sources the manifest records.

    Every key maps to a RawItem; one whose image cannot be read any more (a moved source, a removed file,
    an index built from bare vectors) carries a ``skip_reason`` that says why.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ..sources import fetch_items

    path = Path(index_dir)
    manifest = load_manifest(path)
    wanted = {str(k) for k in keys if k is not None}
    out: dict[str, RawItem] = {}
    if not wanted:
        return out
    value_set = pa.array(sorted(wanted), pa.string())
    located: dict[str, tuple[str, str, str | None, str | None]] = {}  # key -> source, id, caption, label
    for shard in shard_paths(path):
        table = pq.read_table(shard, columns=["key", "source", "id", "caption", "label"])
        table = table.filter(pc.is_in(table["key"], value_set=value_set))
        for row in table.to_pylist():
            located[row["key"]] = (row["source"], row["id"], row["caption"], row["label"])
    by_source: dict[str, list[str]] = {}
    for key in wanted:
        if key not in located:
            out[key] = RawItem("", key, skip_reason="not in this index's shards")
        else:
            by_source.setdefault(located[key][0], []).append(key)
    recorded = {s.get("name"): s for s in manifest.sources}
    for source_name, source_keys in by_source.items():
        entry = recorded.get(source_name)
        reason = None
        items: dict[str, RawItem] = {}
        if entry is None or entry.get("kind") not in SOURCE_KINDS:
            reason = f"source {source_name!r} is not recorded in the manifest (an index built from vectors)"
        else:
            src = Source(entry["kind"], tuple(entry.get("paths", ())), source_name, entry.get("spec", ""))
            missing = [p for p in src.paths if not os.path.exists(p)]
            if missing:
                reason = f"source {src.spec!r} is no longer readable ({missing[0]} does not exist)"
            else:
                try:
                    items = fetch_items(src, [located[k][1] for k in source_keys])
                except (OSError, OverlapAuditError) as exc:
                    reason = f"source {src.spec!r} is no longer readable ({exc})"
        for key in source_keys:
            src_name, ident, caption, label = located[key]
            item = items.get(ident)
            if item is None:
                item = RawItem(src_name, ident, skip_reason=reason or "not found in its source")
            out[key] = RawItem(src_name, ident, data=item.data, path=item.path, caption=caption,
                               label=label, skip_reason=item.skip_reason)
    return out
