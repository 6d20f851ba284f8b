"""The index directory format, defined once: file names, the manifest, the Parquet shards, loading.

An index directory holds:

- ``shards/shard-NNNNNN.parquet``: every item given, in input order (key, source, id, caption, label,
  vector, low_information, skip_reason, query_vector, item_size, item_mtime_ns, item_xxh3); each written
  atomically, so an interrupted run resumes after the last finished shard;
- ``index.faiss``: the FAISS index over the indexed vectors (see ``overlap_audit.index.ann``);
- ``ids.parquet``: the corpus key of each index row, in row order;
- ``vectors.npy``: the exact vectors, for IVF-PQ over float vectors only (its shortlist is re-ranked);
- ``progress.json``: the settings of the run (checked on resume);
- ``manifest.json``: detector, sources, counts, skipped items, the index type and parameters, a
  generation number, and the size, xxh3-64 checksum and row count of every file above; written last, so
  its presence means the index is complete.

The last three data files belong to a generation: generation 1 uses the names above, generation g > 1
``index.gG.faiss``, ``ids.gG.parquet``, ``vectors.gG.npy``. Rebuilding the index writes the next
generation's files, switches the manifest (one atomic rename), then removes the files of the generation it
replaced; so a kill at any point leaves a directory whose manifest names complete files.

Every reader checks what it loads against the manifest (``check_files``): the shard set, sizes and row
counts always, checksums of ids.parquet and of files under ``SMALL_FILE`` bytes; ``verify_index`` checks
every checksum. A manifest without file records (written before they existed) is refused with a message
to run ``index --resume``, which upgrades it.

An item is indexed when it was embedded (no skip reason) and is not low-information; index rows are the
indexed items of the shards in order.

Why one module of this length: it is the one definition of the directory format, so the manifest, the shard
schema and the checks that hold every file to the manifest are read and written in one place.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..content import ContentBox, box_arrow_type
from ..errors import IndexDamagedError, IndexDirError, IndexMismatchError, OverlapAuditError, ResumeError
from ..sources import SOURCE_KINDS, Source
from ..values import DetectorInfo, RawItem, Skipped

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
SHARD_DIR = "shards"
VECTORS_FILE = "vectors.npy"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.parquet$")
_GENERATION_RE = re.compile(r"^(index|ids|vectors)\.g(\d+)\.(faiss|parquet|npy)$")
FORMAT = 2
SMALL_FILE = 4 << 20  # files up to this size are checksummed on every load
_HASH_BLOCK = 4 << 20
# the FAISS classes each index type is built as (``overlap_audit.index.ann.new_index``): binary, float
FAISS_CLASSES = {"flat": ("IndexBinaryFlat", "IndexFlatIP"), "ivfpq": ("IndexBinaryIVF", "IndexIVFPQ"),
                 "hnsw": ("IndexBinaryHNSW", "IndexHNSWFlat")}
_REPAIR = ("repair it with `overlap-audit index ... --resume` (the same command that built it), "
           "or rebuild it in a new directory")
_TEXT_COLUMNS = ["key", "source", "id", "caption", "label", "low_information", "skip_reason"]


@dataclass(frozen=True)
class FileRecord:
    """What the manifest records of one file it depends on."""

    size: int
    xxh3: str
    rows: int | None = None  # Parquet rows, or FAISS vectors

    def to_dict(self) -> dict:
        return {"size": self.size, "xxh3_64": self.xxh3, **({"rows": self.rows} if self.rows is not None else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "FileRecord":
        return cls(int(d["size"]), str(d["xxh3_64"]), None if d.get("rows") is None else int(d["rows"]))


@dataclass(frozen=True)
class GenerationFiles:
    """The names of one generation's index, ids and vectors files."""

    index: str
    ids: str
    vectors: str

    @classmethod
    def of(cls, generation: int) -> "GenerationFiles":
        if generation <= 1:
            return cls(INDEX_FILE, IDS_FILE, VECTORS_FILE)
        return cls(f"index.g{generation}.faiss", f"ids.g{generation}.parquet", f"vectors.g{generation}.npy")


def checksum_file(path: str | os.PathLike) -> str:
    """The xxh3-64 checksum of a file's bytes, as hex."""
    import xxhash

    h = xxhash.xxh3_64()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def checksum_bytes(data: bytes) -> str:
    """The xxh3-64 checksum of bytes, as hex."""
    import xxhash

    return xxhash.xxh3_64_hexdigest(data)


def file_record(path: Path, rows: int | None = None) -> FileRecord:
    """Size and checksum of a file as written now."""
    return FileRecord(path.stat().st_size, checksum_file(path), rows)


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
    generation: int = 1
    files: dict[str, FileRecord] = field(default_factory=dict)  # path relative to the directory -> record
    index_file: str = INDEX_FILE
    ids_file: str = IDS_FILE
    vectors_file: str | None = None
    superseded: list[str] = field(default_factory=list)  # the replaced generation's files, removed after the switch

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
            "index_file": self.index_file,
            "ids_file": self.ids_file,
            "vectors_file": self.vectors_file,
            "format": FORMAT,
            "generation": self.generation,
            "files": {name: rec.to_dict() for name, rec in self.files.items()},
            "superseded": self.superseded,
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
            generation=int(d["generation"]),
            files={str(k): FileRecord.from_dict(v) for k, v in d["files"].items()},
            index_file=str(d.get("index_file", INDEX_FILE)),
            ids_file=str(d.get("ids_file", IDS_FILE)),
            vectors_file=d.get("vectors_file"),
            superseded=[str(x) for x in d.get("superseded", [])],
        )


def load_manifest(index_dir: str | os.PathLike) -> IndexManifest:
    """Read an index directory's manifest; an interrupted or foreign directory is an error, and so is a
    manifest of another format version (an index written by another overlap-audit: rebuild it)."""
    path = Path(index_dir)
    if not (path / MANIFEST).exists():
        if (path / PROGRESS).exists():
            raise IndexDirError(f"{path} is an unfinished index (interrupted); finish it with "
                                "`overlap-audit index ... --resume` using the same command")
        raise IndexDirError(f"{path} is not an overlap-audit index directory (no {MANIFEST})")
    try:
        raw = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexDirError(f"{path / MANIFEST} is malformed ({type(exc).__name__}: {exc}); {_REPAIR}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format", "none") if isinstance(raw, dict) else "none"
        raise IndexDirError(f"{path} is an index of format {found}, and this overlap-audit reads format {FORMAT} "
                            "only: rebuild it with `overlap-audit index` in a new directory")
    try:
        return IndexManifest.from_dict(raw)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise IndexDirError(f"{path / MANIFEST} is malformed ({type(exc).__name__}: {exc}); {_REPAIR}") from None


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


@dataclass(frozen=True)
class ItemBytes:
    """The bytes an item was embedded from: their size and checksum, and the file's mtime where it is a file."""

    size: int
    xxh3: str
    mtime_ns: int | None = None


def item_bytes(item: RawItem) -> ItemBytes | None:
    """Size, checksum (and mtime) of an item's bytes as its source gives them now; None when it has none."""
    if item.data is not None:
        return ItemBytes(len(item.data), checksum_bytes(item.data))
    if item.path is not None:
        try:
            st = os.stat(item.path)
            return ItemBytes(st.st_size, checksum_file(item.path), st.st_mtime_ns)
        except OSError:
            return None
    return None


def same_item_bytes(item: RawItem, recorded: ItemBytes) -> bool:
    """Whether an item still has the bytes a shard recorded: a file's unchanged size and mtime suffice,
    otherwise the checksum decides."""
    if item.path is not None and item.data is None and recorded.mtime_ns is not None:
        try:
            st = os.stat(item.path)
        except OSError:
            return False
        if st.st_size == recorded.size and st.st_mtime_ns == recorded.mtime_ns:
            return True
    now = item_bytes(item)
    return now is not None and now.size == recorded.size and now.xxh3 == recorded.xxh3


def write_shard(path: Path, info: DetectorInfo, *, keys: list[str], sources: list[str], ids: list[str],
                captions: list[str | None], labels: list[str | None], vectors: list[np.ndarray | None],
                low_information: list[bool], reasons: list[str | None], copies: list[np.ndarray | None],
                boxes: list | None = None, fingerprints: list[ItemBytes | None] | None = None) -> None:
    """Write one shard atomically: every item given, embedded or skipped, plus any recall-query copies.

    ``boxes`` are the items' content boxes (``content.ContentBox`` or None) under a trimming detector: the
    ``content_box`` column holds left, top, right, bottom, width and height in the decoded image's pixels and
    whether the embedded view was cut to it (null where the detector does not trim or the item was skipped).
    ``fingerprints`` (``item_size``, ``item_mtime_ns``, ``item_xxh3``) let a resumed run check that a finished
    shard's items are unchanged (null where an item had no bytes, or the shard came from vectors).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    boxes = boxes if boxes is not None else [None] * len(keys)
    fingerprints = fingerprints if fingerprints is not None else [None] * len(keys)

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
        "item_size": pa.array([None if f is None else f.size for f in fingerprints], pa.int64()),
        "item_mtime_ns": pa.array([None if f is None else f.mtime_ns for f in fingerprints], pa.int64()),
        "item_xxh3": pa.array([None if f is None else f.xxh3 for f in fingerprints], pa.string()),
    })
    # vectors do not compress, repeat or sort: no compression, dictionary or min/max statistics for them
    atomic_write(path, lambda tmp: pq.write_table(
        table, tmp, compression={c: ("snappy" if c in _TEXT_COLUMNS else "none") for c in table.column_names},
        use_dictionary=_TEXT_COLUMNS, write_statistics=_TEXT_COLUMNS))


def content_boxes(index_dir: str | os.PathLike, keys) -> dict:
    """The recorded content boxes (``content.ContentBox``) of the corpus items behind ``keys``; keys without
    one (a detector that does not trim, an index written before boxes were recorded) are absent."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = {str(k) for k in keys if k is not None}
    found: dict = {}
    for path in shard_paths(index_dir):
        missing = wanted - found.keys()
        if not missing:
            break
        if "content_box" not in pq.read_schema(path).names:
            continue
        table = pq.read_table(path, columns=["key", "content_box"], memory_map=True)
        # the rows wanted, picked in Arrow (a shard holds many keys; only the few wanted become Python objects)
        table = table.filter(pc.is_in(table["key"], value_set=pa.array(sorted(missing), pa.string())))
        for key, box in zip(table["key"].to_pylist(), table["content_box"].to_pylist()):
            if box is not None:
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


def shard_items(path: Path) -> list[tuple[str, str, ItemBytes | None]]:
    """The (source, id, recorded bytes or None) of every item in a shard, in input order."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if "item_xxh3" not in names:  # a shard written before items were fingerprinted
        return [(s, i, None) for s, i in shard_item_ids(path)]
    t = pq.read_table(path, columns=["source", "id", "item_size", "item_mtime_ns", "item_xxh3"]).to_pydict()
    return [(s, i, None if h is None else ItemBytes(int(n), h, m))
            for s, i, n, m, h in zip(t["source"], t["id"], t["item_size"], t["item_mtime_ns"], t["item_xxh3"])]


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

    @property
    def vectors_file(self) -> str:
        return self.manifest.vectors_file or VECTORS_FILE


def _damaged(path: Path, what: str, file: str = "") -> IndexDamagedError:
    return IndexDamagedError(f"{path} is damaged: {what}; {_REPAIR}", file)


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def check_files(index_dir: str | os.PathLike, manifest: IndexManifest, *, full: bool = False) -> tuple[int, int]:
    """Check the files of an index directory against its manifest; returns (files, bytes checksummed).

    Always: the shard set is exactly the recorded one, every recorded file exists with its recorded size,
    Parquet files hold their recorded rows, and the counts agree with each other. Checksums: every file with
    ``full``, else ids.parquet and files up to ``SMALL_FILE`` bytes. The first mismatch raises IndexDirError.
    """
    path = Path(index_dir)
    on_disk = {f"{SHARD_DIR}/{p.name}" for p in shard_paths(path)}
    recorded = {name for name in manifest.files if name.startswith(f"{SHARD_DIR}/")}
    if on_disk != recorded:
        missing, extra = sorted(recorded - on_disk), sorted(on_disk - recorded)
        what = f"{missing[0]} is missing" if missing else f"{extra[0]} is not one of its recorded shards"
        raise _damaged(path, what + f" ({len(recorded)} shards recorded, {len(on_disk)} present)",
                       (missing or extra)[0])
    for name in (manifest.index_file, manifest.ids_file, manifest.vectors_file):
        if name is not None and name not in manifest.files:
            raise _damaged(path, f"its manifest names {name} but records no size or checksum for it")
    if manifest.n_shards != len(recorded):
        raise _damaged(path, f"the manifest counts {manifest.n_shards} shards but records {len(recorded)}")
    checked = 0
    for name, rec in manifest.files.items():
        file = path / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise _damaged(path, f"{name} is missing", name) from None
        if size != rec.size:
            raise _damaged(path, f"{name} is {size} bytes where the manifest records {rec.size}", name)
        if name.endswith(".parquet") and rec.rows is not None:
            try:
                rows = _parquet_rows(file)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad footer
                raise _damaged(path, f"{name} is not a readable Parquet file ({type(exc).__name__})", name) from None
            if rows != rec.rows:
                raise _damaged(path, f"{name} holds {rows} rows where the manifest records {rec.rows}", name)
        if name.endswith(".npy") and rec.rows is not None:
            try:
                rows = len(np.load(file, mmap_mode="r"))
            except (OSError, ValueError) as exc:
                raise _damaged(path, f"{name} is not a readable array ({exc})", name) from None
            if rows != rec.rows:
                raise _damaged(path, f"{name} holds {rows} rows where the manifest records {rec.rows}", name)
        if full or name == manifest.ids_file or size <= SMALL_FILE:
            if checksum_file(file) != rec.xxh3:
                raise _damaged(path, f"{name} does not have the checksum the manifest records (its content "
                                     "changed)", name)
            checked += size
    shard_rows = sum(rec.rows or 0 for name, rec in manifest.files.items() if name in recorded)
    if shard_rows != manifest.n_given:
        raise _damaged(path, f"its shards hold {shard_rows} items where the manifest counts {manifest.n_given}")
    for name in (manifest.ids_file, manifest.index_file):
        rows = manifest.files[name].rows
        if rows is not None and rows != manifest.n_indexed:
            raise _damaged(path, f"{name} records {rows} rows where the manifest counts {manifest.n_indexed} "
                                 "indexed items")
    return len(manifest.files), checked


def check_faiss(index_dir: str | os.PathLike, manifest: IndexManifest, index) -> None:
    """Refuse a FAISS index whose class, metric or size is not what the manifest records."""
    path = Path(index_dir)
    cls = type(index).__name__
    binary = manifest.detector.metric == "hamming"
    expected = FAISS_CLASSES.get(manifest.index_type)
    if expected is None:
        raise _damaged(path, f"its manifest names an unknown index type {manifest.index_type!r}", MANIFEST)
    if cls != expected[0 if binary else 1]:
        raise _damaged(path, f"{manifest.index_file} is a {cls} where the manifest records a "
                             f"{manifest.index_type} index ({expected[0 if binary else 1]})", manifest.index_file)
    if not binary:
        import faiss

        if index.metric_type != faiss.METRIC_INNER_PRODUCT or index.d != manifest.detector.dim:
            raise _damaged(path, f"{manifest.index_file} has metric {index.metric_type} and dimension {index.d} "
                                 f"where the manifest records inner product over {manifest.detector.dim}",
                           manifest.index_file)
    elif index.d != manifest.detector.dim:
        raise _damaged(path, f"{manifest.index_file} has {index.d} bits where the manifest records "
                             f"{manifest.detector.dim}", manifest.index_file)
    if index.ntotal != manifest.n_indexed:
        raise _damaged(path, f"{manifest.index_file} holds {index.ntotal} vectors where the manifest counts "
                             f"{manifest.n_indexed} indexed items", manifest.index_file)


def read_faiss_index(path: Path, manifest: IndexManifest):
    """The FAISS index the manifest names, read; an unreadable file is IndexDamagedError."""
    import faiss

    reader = faiss.read_index_binary if manifest.detector.metric == "hamming" else faiss.read_index
    try:
        return reader(str(path / manifest.index_file))
    except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError with a long C++ message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _damaged(path, f"cannot read {manifest.index_file} ({first[:200]})", manifest.index_file) from None


def _read_ids(path: Path, manifest: IndexManifest) -> np.ndarray:
    import pyarrow.parquet as pq

    try:
        keys = np.array(pq.read_table(path / manifest.ids_file)["key"].to_pylist(), dtype=object)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise _damaged(path, f"cannot read {manifest.ids_file} ({type(exc).__name__})") from None
    if len(keys) != manifest.n_indexed:
        raise _damaged(path, f"{manifest.ids_file} holds {len(keys)} ids where the manifest counts "
                             f"{manifest.n_indexed} indexed items")
    return keys


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
    return CorpusIndex(path, manifest, index, _read_ids(path, manifest))


@dataclass(frozen=True)
class VerifyResult:
    """A fully verified index directory."""

    path: Path
    generation: int
    index_type: str
    n_indexed: int
    n_files: int
    n_bytes: int
    seconds: float


def verify_index(index_dir: str | os.PathLike) -> VerifyResult:
    """Check every file of an index directory against its manifest: sizes, row counts and all checksums,
    then the FAISS index's class, metric and size; the first mismatch raises IndexDirError."""
    started = time.monotonic()
    path = Path(index_dir)
    manifest = load_manifest(path)
    n_files, n_bytes = check_files(path, manifest, full=True)
    check_faiss(path, manifest, read_faiss_index(path, manifest))
    _read_ids(path, manifest)
    return VerifyResult(path, manifest.generation, manifest.index_type, manifest.n_indexed, n_files, n_bytes,
                        time.monotonic() - started)


def stale_generation_files(index_dir: str | os.PathLike, manifest: IndexManifest | None) -> list[Path]:
    """Files the builder wrote that the manifest does not use: the superseded generation's (a kill after
    the switch leaves them) and any later generation's (a kill before it)."""
    path = Path(index_dir)
    if manifest is None:
        return []
    named = {manifest.index_file, manifest.ids_file, manifest.vectors_file}
    out = [path / name for name in manifest.superseded if name not in named and (path / name).exists()]
    for p in path.iterdir():
        m = _GENERATION_RE.match(p.name)
        if m and int(m.group(2)) > manifest.generation and p.name not in named:
            out.append(p)
    return out


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

    from ..sources import fetch_items, readback_problem

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
            reason = readback_problem(src)
            if reason is None:
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
