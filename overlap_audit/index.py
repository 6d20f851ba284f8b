"""Corpus indexing: embed sources into Parquet shards (resumable), build a FAISS index, search it.

An index directory holds:

- ``shards/shard-NNNNNN.parquet``: every item given, in input order (id, source, caption, label, vector,
  low_information, skip_reason); written atomically one by one, so an interrupted run resumes after the
  last finished shard;
- ``index.faiss``: IndexFlatIP over L2-normalised vectors, or IndexBinaryFlat over packed hashes;
- ``ids.parquet``: the corpus key of each index row, in row order;
- ``progress.json``: the settings of the run (checked on ``--resume``);
- ``manifest.json``: detector, sources, counts, skipped items; written last, so its presence means the
  index is complete.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .detectors import Detector, get_detector
from .embed import Decoder, embed_decoded
from .errors import DeviceError, IndexDirError, IndexMismatchError, ResumeError
from .imaging import DEFAULT_MAX_PIXELS
from .io import atomic_write, atomic_write_json, remove_stale_temporaries
from .sources import Source, open_source
from .types import DetectorInfo, Neighbors, RawItem, Skipped

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
SHARD_DIR = "shards"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.parquet$")


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


# ---------------------------------------------------------------- devices


def faiss_gpu_count() -> int:
    """Number of GPUs FAISS can use here (0 with a CPU-only FAISS build)."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get is not None else 0
    except Exception:  # noqa: BLE001 - a GPU build on a machine without a driver
        return 0


def resolve_device(device: str) -> str:
    """Map auto|cpu|cuda to the device FAISS will use; 'cuda' without a GPU FAISS build is an error."""
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"device must be auto, cpu or cuda (got {device!r})")
    if device == "cpu":
        return "cpu"
    gpus = faiss_gpu_count()
    if device == "cuda" and gpus == 0:
        raise DeviceError(
            "--device cuda was asked for but FAISS sees no GPU (install the faiss-gpu-cu12 wheel, "
            "`pip install overlap-audit[gpu]`, on a machine with an NVIDIA driver), or use --device cpu"
        )
    return "cuda" if gpus > 0 else "cpu"


# ---------------------------------------------------------------- shards


def _vector_width(info: DetectorInfo) -> int:
    return info.dim // 8 if info.metric == "hamming" else info.dim


def _write_shard(path: Path, keys: list[str], result, info: DetectorInfo) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    width = _vector_width(info)
    dtype = np.uint8 if info.metric == "hamming" else np.float32
    flat = np.zeros((len(result.items), width), dtype=dtype)
    mask = np.ones(len(result.items), dtype=bool)
    for i, vec in enumerate(result.vectors):
        if vec is not None:
            flat[i] = vec
            mask[i] = False
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), width, mask=pa.array(mask))
    table = pa.table({
        "key": pa.array(keys, pa.string()),
        "source": pa.array([it.source for it in result.items], pa.string()),
        "id": pa.array([it.id for it in result.items], pa.string()),
        "caption": pa.array([it.caption for it in result.items], pa.string()),
        "label": pa.array([it.label for it in result.items], pa.string()),
        "vector": vectors,
        "low_information": pa.array(result.low_information, pa.bool_()),
        "skip_reason": pa.array(result.reasons, pa.string()),
    })
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _finished_shards(shard_dir: Path) -> list[int]:
    if not shard_dir.exists():
        return []
    found = sorted(int(m.group(1)) for p in shard_dir.iterdir() if (m := _SHARD_RE.match(p.name)))
    if found != list(range(len(found))):
        raise ResumeError(f"{shard_dir}: finished shards are not a contiguous run from 0 ({found[:10]}...); "
                          "the directory was modified by hand; start again in a new directory")
    return found


def _source_names(sources: list[Source]) -> list[Source]:
    """Give each source a distinct name (needed when ids are qualified by source): x, x-2, x-3, ...,
    never taking a name a later source has by itself."""
    original = [src.name for src in sources]
    used: set[str] = set()
    out = []
    for i, src in enumerate(sources):
        later = set(original[i + 1:])
        name, n = src.name, 1
        while name in used or (name != src.name and name in later):
            n += 1
            name = f"{src.name}-{n}"
        used.add(name)
        out.append(Source(src.kind, src.paths, name, src.spec, src.labels_from_folders))
    return out


def corpus_key(source_name: str, item_id: str, n_sources: int) -> str:
    """The id a corpus item has in the index: its own id, qualified by its source when there are several."""
    return item_id if n_sources == 1 else f"{source_name}/{item_id}"


def _iter_all(sources: list[Source]) -> Iterator[RawItem]:
    for src in sources:
        yield from src.iter_items()


def _chunked(it: Iterator[RawItem], n: int) -> Iterator[list[RawItem]]:
    while True:
        chunk = []
        for item in it:
            chunk.append(item)
            if len(chunk) == n:
                break
        if not chunk:
            return
        yield chunk
        if len(chunk) < n:
            return


def build_index(sources: list[str], out_dir: str | os.PathLike, *, detector: str = "phash",
                batch_size: int = 256, workers: int | None = None, device: str = "auto", resume: bool = False,
                shard_size: int = 10_000, max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False,
                on_shard: Callable[[int, int], None] | None = None) -> IndexManifest:
    """Embed the corpus sources into shards and build the FAISS index in ``out_dir``.

    ``on_shard(shard_number, items_done)`` is called after each shard is safely on disk. With
    ``resume=True`` the finished shards of an interrupted run with the same settings are kept and only the
    rest is embedded.
    """
    if not sources:
        raise IndexDirError("give at least one corpus source")
    if shard_size < 1 or batch_size < 1:
        raise IndexDirError("shard_size and batch_size must be positive")
    started = time.monotonic()
    out = Path(out_dir)
    det = get_detector(detector, device=device)
    faiss_device = resolve_device(device)
    srcs = _source_names([open_source(s) for s in sources])
    settings = {
        "detector": det.info.to_dict(),
        "sources": [s.to_dict() for s in srcs],
        "shard_size": shard_size,
        "max_pixels": max_pixels,
    }

    if out.exists() and not out.is_dir():
        raise IndexDirError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise ResumeError(f"{out} exists and is not empty; pass --resume to finish an interrupted run there, "
                              "or choose a new directory")
        if not (out / PROGRESS).exists():
            raise ResumeError(f"{out} has no {PROGRESS}: it is not an interrupted overlap-audit index")
        try:
            previous = json.loads((out / PROGRESS).read_text())
        except ValueError as exc:
            raise ResumeError(f"{out / PROGRESS} is damaged ({exc}); start again in a new directory") from None
        differs = [k for k in settings if previous.get(k) != settings[k]]
        if differs:
            raise ResumeError(f"cannot resume {out}: its run used different {', '.join(differs)}; "
                              "use the same command, or a new directory")
        if (out / MANIFEST).exists():
            return load_manifest(out)  # already complete with these settings: nothing to redo
        remove_stale_temporaries(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / PROGRESS, settings)
    shard_dir = out / SHARD_DIR
    shard_dir.mkdir(exist_ok=True)

    done = _finished_shards(shard_dir)
    n_sources = len(srcs)
    items = _iter_all(srcs)
    items_done = 0
    for shard_no_done in done:  # the finished shards' items: read past, not decoded again, but checked
        expected = _shard_keys(shard_dir / f"shard-{shard_no_done:06d}.parquet")
        for want in expected:
            item = next(items, None)
            got = None if item is None else (item.source, item.id)
            if got != want:
                raise ResumeError(
                    f"cannot resume {out}: the corpus changed since the interrupted run (shard {shard_no_done} "
                    f"holds {want[0]}:{want[1]!r} where the sources now give "
                    f"{'nothing' if got is None else repr(got[0] + ':' + got[1])}); start again in a new directory"
                )
            items_done += 1

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="index", unit="img", initial=items_done)
    shard_no = len(done)
    with Decoder(det, workers=workers, max_pixels=max_pixels) as decoder:
        for chunk in _chunked(items, shard_size):
            decoded = decoder.decode(chunk)
            if bar is not None:
                decoded = _counting(decoded, bar)
            result = embed_decoded(decoded, det, batch_size=batch_size)
            keys = [corpus_key(it.source, it.id, n_sources) for it in result.items]
            _write_shard(shard_dir / f"shard-{shard_no:06d}.parquet", keys, result, det.info)
            items_done += len(chunk)
            if on_shard is not None:
                on_shard(shard_no, items_done)
            shard_no += 1
    if bar is not None:
        bar.close()
    return _finish_index(out, det, srcs, shard_size, faiss_device, time.monotonic() - started)


def _shard_keys(path: Path) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["source", "id"])
    return list(zip(table["source"].to_pylist(), table["id"].to_pylist()))


def _counting(decoded, bar):
    for entry in decoded:
        bar.update(1)
        yield entry


def _read_shards(out: Path, info: DetectorInfo):
    """Yield (keys, vectors) of the indexable rows of each shard, plus per-shard counts and skips."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    width = _vector_width(info)
    dtype = np.uint8 if info.metric == "hamming" else np.float32
    for shard in sorted((out / SHARD_DIR).glob("shard-*.parquet")):
        table = pq.read_table(shard)
        skipped = [Skipped(s, i, r) for s, i, r in zip(table["source"].to_pylist(), table["id"].to_pylist(),
                                                         table["skip_reason"].to_pylist()) if r is not None]
        embedded = table.filter(pc.is_valid(table["vector"]))
        low = np.asarray(embedded["low_information"].to_numpy(zero_copy_only=False), dtype=bool)
        usable = embedded.filter(pc.invert(embedded["low_information"]))
        vectors = np.asarray(usable["vector"].combine_chunks().flatten(), dtype=dtype).reshape(-1, width)
        yield usable["key"].to_pylist(), vectors, table.num_rows, embedded.num_rows, int(low.sum()), skipped


def _new_faiss_index(info: DetectorInfo):
    import faiss

    if info.metric == "hamming":
        return faiss.IndexBinaryFlat(info.dim), "IndexBinaryFlat"
    return faiss.IndexFlatIP(info.dim), "IndexFlatIP"


def _finish_index(out: Path, det: Detector, srcs: list[Source], shard_size: int, device: str,
                  seconds: float) -> IndexManifest:
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    info = det.info
    index, index_type = _new_faiss_index(info)
    keys: list[str] = []
    given = embedded = low = 0
    skipped: list[Skipped] = []
    for shard_keys, vectors, n_given, n_embedded, n_low, shard_skipped in _read_shards(out, info):
        if len(vectors):
            index.add(vectors)
        keys.extend(shard_keys)
        given += n_given
        embedded += n_embedded
        low += n_low
        skipped.extend(shard_skipped)
    if len(set(keys)) != len(keys):  # ids are unique per source already; this guards a hand-edited directory
        raise IndexDirError(f"{out}: the shards hold repeated keys; rebuild the index in a new directory")
    writer = faiss.write_index_binary if info.metric == "hamming" else faiss.write_index
    atomic_write(out / INDEX_FILE, lambda tmp: writer(index, tmp))
    atomic_write(out / IDS_FILE, lambda tmp: pq.write_table(pa.table({"key": pa.array(keys, pa.string())}), tmp))
    manifest = IndexManifest(
        detector=info,
        sources=[s.to_dict() for s in srcs],
        n_given=given,
        n_embedded=embedded,
        n_indexed=len(keys),
        n_low_information=low,
        n_skipped=len(skipped),
        skipped=skipped,
        shard_size=shard_size,
        n_shards=len(list((out / SHARD_DIR).glob("shard-*.parquet"))),
        index_type=index_type,
        faiss_version=getattr(faiss, "__version__", "unknown"),
        package_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(seconds, 3),
        extra={"device": device},
    )
    atomic_write_json(out / MANIFEST, manifest.to_dict())
    return manifest


# ---------------------------------------------------------------- loading and search


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


@dataclass(frozen=True, eq=False)
class CorpusIndex:
    """A loaded index: its manifest, the FAISS index and the key of each row."""

    path: Path
    manifest: IndexManifest
    index: object
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def load_index(index_dir: str | os.PathLike) -> CorpusIndex:
    """Load a complete index directory."""
    import faiss
    import pyarrow.parquet as pq

    path = Path(index_dir)
    manifest = load_manifest(path)
    reader = faiss.read_index_binary if manifest.detector.metric == "hamming" else faiss.read_index
    try:
        index = reader(str(path / INDEX_FILE))
        keys = np.array(pq.read_table(path / IDS_FILE)["key"].to_pylist(), dtype=object)
    except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError, pyarrow several types
        raise IndexDirError(f"{path} is damaged: cannot read {INDEX_FILE} / {IDS_FILE} "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); rebuild it") from None
    if index.ntotal != len(keys):
        raise IndexDirError(f"{path}: index holds {index.ntotal} vectors but {IDS_FILE} {len(keys)} ids")
    return CorpusIndex(path, manifest, index, keys)


def check_detector(manifest: IndexManifest, detector: DetectorInfo, index_dir: str = "") -> None:
    """Refuse a detector whose embeddings are not comparable with the index's."""
    built = manifest.detector
    problems = []
    if built.name != detector.name:
        problems.append(f"detector {built.name!r} (asked: {detector.name!r})")
    if built.version != detector.version:
        problems.append(f"detector version {built.version!r} (installed: {detector.version!r})")
    if built.dim != detector.dim:
        problems.append(f"dimension {built.dim} (asked: {detector.dim})")
    if built.metric != detector.metric:
        problems.append(f"metric {built.metric!r} (asked: {detector.metric!r})")
    if problems:
        raise IndexMismatchError(
            f"the index {index_dir} was built with {'; '.join(problems)}: its embeddings cannot be compared "
            "with this detector's. Rebuild the index with this detector, or report with the index's own."
        )


def _to_device(index, metric: str, device: str):
    if device != "cuda":
        return index
    import faiss

    res = faiss.StandardGpuResources()
    if metric == "hamming":
        return faiss.GpuIndexBinaryFlat(res, index)
    return faiss.index_cpu_to_gpu(res, 0, index)


def search(corpus: CorpusIndex, query_ids: list[str], vectors: np.ndarray, *, k: int = 5,
           device: str = "auto", batch_size: int = 8192) -> Neighbors:
    """The k nearest corpus items of each query vector, most similar first (exact search)."""
    info = corpus.manifest.detector
    n = len(vectors)
    k = max(1, int(k))
    kk = min(k, len(corpus))
    ids = np.full((n, k), None, dtype=object)
    sims = np.full((n, k), np.nan, dtype=np.float32)
    if n == 0 or kk == 0:
        return Neighbors(list(query_ids), ids, sims)
    index = _to_device(corpus.index, info.metric, resolve_device(device))
    for start in range(0, n, batch_size):
        chunk = vectors[start:start + batch_size]
        if info.metric == "hamming":
            dist, rows = index.search(np.ascontiguousarray(chunk, dtype=np.uint8), kk)
            score = 1.0 - dist.astype(np.float64) / info.dim
        else:
            score, rows = index.search(np.ascontiguousarray(chunk, dtype=np.float32), kk)
        valid = rows >= 0
        block_ids = np.full(rows.shape, None, dtype=object)
        block_ids[valid] = corpus.keys[rows[valid]]
        ids[start:start + len(chunk), :kk] = block_ids
        sims[start:start + len(chunk), :kk] = np.where(valid, score, np.nan)
    return Neighbors(list(query_ids), ids, sims)
