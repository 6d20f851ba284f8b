"""The index directory format, defined once: file names, the manifest and the checksums it records.

An index directory holds:

- ``shards/shard-NNNNNN.parquet``: every item given, in input order (key, source, id, caption, label,
  vector, low_information, skip_reason, query_vector, content_box, item_size, item_mtime_ns, item_xxh3,
  location);
  each written atomically, so an interrupted run resumes after the last finished shard
  (``overlap_audit.index.shards``);
- ``index.faiss``: the FAISS index over the indexed vectors (see ``overlap_audit.index.ann``);
- ``ids.parquet``: the corpus key of each index row, in row order;
- ``vectors.npy``: the exact vectors, for IVF-PQ over float vectors only (its shortlist is re-ranked);
- with corpus views (``overlap_audit.index.views``): ``views/shard-NNNNNN.npy`` beside each shard and one
  FAISS index per view (``index.view70.faiss``);
- ``progress.json``: the settings of the run (checked on resume);
- ``manifest.json``: detector, sources, counts, the first ``SKIPPED_SAMPLE`` skipped items, the index type
  and parameters, a generation number, and the size, xxh3-64 checksum and row count of every file above;
  written last, so its presence means the index is complete. It lists no item but those few: every skipped
  item is in the shards and the item table (``load.skipped_items``).

The last three data files belong to a generation: generation 1 uses the names above, generation g > 1
``index.gG.faiss``, ``ids.gG.parquet``, ``vectors.gG.npy``. Rebuilding the index writes the next
generation's files, switches the manifest (one atomic rename), then removes the files of the generation it
replaced (``overlap_audit.index.finish``); so a kill at any point leaves a directory whose manifest names
complete files. Every reader holds the files to the manifest (``overlap_audit.index.integrity``); a
manifest of another format version is refused (rebuild the index).

An item is indexed when it was embedded (no skip reason) and is not low-information; index rows are the
indexed items of the shards in order.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IndexDirError
from ..values import DetectorInfo, Skipped

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
SHARD_DIR = "shards"
VECTORS_FILE = "vectors.npy"
ITEMS_FILE = "items.rows"
# the files of a generation after the first (``GenerationFiles``): what a builder may leave behind when killed
GENERATION_FILE_RE = re.compile(
    r"^(index|ids|vectors|items)\.g(\d+)\.(?:view\d+\.)?(faiss|parquet|npy|mih|rows|(?:offsets|keys|buckets)\.npy)$")
FORMAT = 3
SKIPPED_SAMPLE = 20  # skipped items the manifest lists, to show
_HASH_BLOCK = 4 << 20
REPAIR = ("repair it with `overlap-audit index ... --resume` (the same command that built it), "
          "or rebuild it in a new directory")


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
    """The names of one generation's index, ids, vectors and item table files."""

    index: str
    ids: str
    vectors: str
    items: str

    @classmethod
    def of(cls, generation: int) -> "GenerationFiles":
        if generation <= 1:
            return cls(INDEX_FILE, IDS_FILE, VECTORS_FILE, ITEMS_FILE)
        return cls(f"index.g{generation}.faiss", f"ids.g{generation}.parquet", f"vectors.g{generation}.npy",
                   f"items.g{generation}.rows")


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
    skipped_sample: list[Skipped]  # the first SKIPPED_SAMPLE, in shard order (all: ``load.skipped_items``)
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
    # the item table (``overlap_audit.index.items``); None (or one of an earlier layout): items are read from the shards
    items_file: str | None = None
    superseded: list[str] = field(default_factory=list)  # the replaced generation's files, removed after the switch
    # the corpus views' areas (``overlap_audit.index.views``); an index written without views has none
    views: tuple[float, ...] = ()

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
            "skipped_sample": [s.to_dict() for s in self.skipped_sample],
            "shard_size": self.shard_size,
            "n_shards": self.n_shards,
            "index_type": self.index_type,
            "index_file": self.index_file,
            "ids_file": self.ids_file,
            "vectors_file": self.vectors_file,
            "items_file": self.items_file,
            "format": FORMAT,
            "generation": self.generation,
            "files": {name: rec.to_dict() for name, rec in self.files.items()},
            "superseded": self.superseded,
            "views": list(self.views),
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
            skipped_sample=[Skipped.from_dict(s) for s in d["skipped_sample"]],
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
            items_file=d.get("items_file"),
            superseded=[str(x) for x in d.get("superseded", [])],
            views=tuple(float(a) for a in d.get("views", [])),
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
        raise IndexDirError(f"{path / MANIFEST} is malformed ({type(exc).__name__}: {exc}); {REPAIR}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format", "none") if isinstance(raw, dict) else "none"
        raise IndexDirError(f"{path} is an index of format {found}, and this overlap-audit reads format {FORMAT} "
                            "only: rebuild it with `overlap-audit index` in a new directory")
    try:
        return IndexManifest.from_dict(raw)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise IndexDirError(f"{path / MANIFEST} is malformed ({type(exc).__name__}: {exc}); {REPAIR}") from None

