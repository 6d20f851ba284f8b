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
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..detectors import get_detector
from ..embed import Decoder, embed_decoded
from ..errors import DeviceError, IndexDirError, IndexMismatchError, OverlapAuditError, ResumeError
from ..imaging import DEFAULT_MAX_PIXELS
from ..devices import faiss_device, faiss_gpu_count  # noqa: F401 - faiss_gpu_count: a public name

resolve_device = faiss_device  # the old public name
from ..atomic import atomic_write, atomic_write_json, remove_stale_temporaries
from ..sources import Source, open_source
from ..values import DetectorInfo, Neighbors, RawItem, Skipped

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
SHARD_DIR = "shards"
VECTORS_FILE = "vectors.npy"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.parquet$")
# Augmented copies embedded per shard as recall queries for approximate indexes (at most RECALL_QUERIES used).
RECALL_QUERIES_PER_SHARD = 32
RECALL_QUERIES = 1000


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


# ---------------------------------------------------------------- shards


def _vector_width(info: DetectorInfo) -> int:
    return info.dim // 8 if info.metric == "hamming" else info.dim


def _fixed_list(rows: list[np.ndarray | None], width: int, dtype):
    """Vectors as Parquet FIXED_LEN_BYTE_ARRAY (one value per row, no per-element levels): decoding is a
    zero-copy view, several times faster and leaner than a list<float> column."""
    import pyarrow as pa

    nbytes = width * np.dtype(dtype).itemsize
    return pa.array([None if v is None else np.ascontiguousarray(v, dtype=dtype).tobytes() for v in rows],
                    type=pa.binary(nbytes))


def _write_shard(path: Path, info: DetectorInfo, *, keys: list[str], sources: list[str], ids: list[str],
                 captions: list[str | None], labels: list[str | None], vectors: list[np.ndarray | None],
                 low_information: list[bool], reasons: list[str | None], copies: list[np.ndarray | None]) -> None:
    """Write one shard atomically: every item given, embedded or skipped, plus any recall-query copies."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    width = _vector_width(info)
    dtype = np.uint8 if info.metric == "hamming" else np.float32
    table = pa.table({
        "key": pa.array(keys, pa.string()),
        "source": pa.array(sources, pa.string()),
        "id": pa.array(ids, pa.string()),
        "caption": pa.array(captions, pa.string()),
        "label": pa.array(labels, pa.string()),
        "vector": _fixed_list(vectors, width, dtype),
        "low_information": pa.array(low_information, pa.bool_()),
        "skip_reason": pa.array(reasons, pa.string()),
        "query_vector": _fixed_list(copies, width, dtype),
    })
    # vectors do not compress, repeat or sort: no compression, dictionary or min/max statistics for them
    text = ["key", "source", "id", "caption", "label", "low_information", "skip_reason"]
    atomic_write(path, lambda tmp: pq.write_table(
        table, tmp, compression={c: ("snappy" if c in text else "none") for c in table.column_names},
        use_dictionary=text, write_statistics=text))


def _copy_picks(chunk: list[RawItem], n: int) -> set[tuple[str, str]]:
    """The n items of a shard that get an augmented copy: smallest CRC-32 of their key (deterministic)."""
    ranked = sorted(chunk, key=lambda it: zlib.crc32(f"{it.source}/{it.id}".encode("utf-8", "surrogatepass")))
    return {(it.source, it.id) for it in ranked[:n] if it.skip_reason is None}


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
                on_shard: Callable[[int, int], None] | None = None, index_type: str = "auto",
                memory_budget: int | str | None = None, ray_address: str | None = None) -> IndexManifest:
    """Embed the corpus sources into shards and build the FAISS index in ``out_dir``.

    ``on_shard(shard_number, items_done)`` is called after each shard is safely on disk. With
    ``resume=True`` the finished shards of an interrupted run with the same settings are kept and only the
    rest is embedded; on a finished index, asking for another ``index_type`` rebuilds only the index.
    ``index_type`` is auto, flat, ivfpq or hnsw (see ``overlap_audit.index.ann``). With ``ray_address``
    (``local``, ``auto`` or a cluster address) the shards are embedded on a Ray cluster
    (``overlap_audit.index.ray``): same shards, same resumption, same result.
    """
    from .ann import INDEX_TYPES, parse_bytes

    if index_type not in INDEX_TYPES:
        raise IndexDirError(f"--index-type must be one of {', '.join(INDEX_TYPES)} (got {index_type!r})")
    parse_bytes(memory_budget)  # a malformed budget fails before any work
    if not sources:
        raise IndexDirError("give at least one corpus source")
    if shard_size < 1 or batch_size < 1:
        raise IndexDirError("shard_size and batch_size must be positive")
    started = time.monotonic()
    out = Path(out_dir)
    det = get_detector(detector, device=device)
    faiss_dev = faiss_device(device)
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
        remove_stale_temporaries(out)
        if (out / MANIFEST).exists():
            done_manifest = load_manifest(out)
            if index_type in ("auto", done_manifest.index_type):
                return done_manifest  # already complete with these settings: nothing to redo
            return _finish_index(out, det.info, settings["sources"], shard_size, faiss_dev,
                                 done_manifest.build_seconds, index_type=index_type, memory_budget=memory_budget)
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
    if ray_address:
        from .ray import connect, embed_shards

        connect(ray_address)

        def shards():
            nonlocal items_done
            for number, chunk in enumerate(_chunked(items, shard_size), start=len(done)):
                items_done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                yield number, chunk

        embed_shards(shards(), detector=detector, out_dir=out, max_pixels=max_pixels, batch_size=batch_size,
                     n_sources=n_sources, copies_per_shard=RECALL_QUERIES_PER_SHARD, device=device,
                     on_shard=on_shard)
        if bar is not None:
            bar.close()
        _finished_shards(shard_dir)  # all present and contiguous
        return _finish_index(out, det.info, settings["sources"], shard_size, faiss_dev,
                             time.monotonic() - started, index_type=index_type, memory_budget=memory_budget)
    with Decoder(det, workers=workers, max_pixels=max_pixels) as decoder:
        for chunk in _chunked(items, shard_size):
            decoded = decoder.decode(chunk, copies=_copy_picks(chunk, RECALL_QUERIES_PER_SHARD))
            if bar is not None:
                decoded = _counting(decoded, bar)
            r = embed_decoded(decoded, det, batch_size=batch_size)
            _write_shard(shard_dir / f"shard-{shard_no:06d}.parquet", det.info,
                         keys=[corpus_key(it.source, it.id, n_sources) for it in r.items],
                         sources=[it.source for it in r.items], ids=[it.id for it in r.items],
                         captions=[it.caption for it in r.items], labels=[it.label for it in r.items],
                         vectors=r.vectors, low_information=r.low_information, reasons=r.reasons, copies=r.copies)
            items_done += len(chunk)
            if on_shard is not None:
                on_shard(shard_no, items_done)
            shard_no += 1
    if bar is not None:
        bar.close()
    return _finish_index(out, det.info, settings["sources"], shard_size, faiss_dev, time.monotonic() - started,
                         index_type=index_type, memory_budget=memory_budget)


def _shard_keys(path: Path) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["source", "id"])
    return list(zip(table["source"].to_pylist(), table["id"].to_pylist()))


def _counting(decoded, bar):
    for entry in decoded:
        bar.update(1)
        yield entry


def _shard_paths(out: Path) -> list[Path]:
    return sorted((out / SHARD_DIR).glob("shard-*.parquet"))


@dataclass
class _ShardScan:
    """What the finishing pass learns from the shards before building an index."""

    keys: list[str] = field(default_factory=list)
    given: int = 0
    embedded: int = 0
    low: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    query_vectors: list[np.ndarray] = field(default_factory=list)
    query_rows: list[int] = field(default_factory=list)
    query_crc: list[int] = field(default_factory=list)


def _usable_mask(table) -> np.ndarray:
    """Rows that are indexed: embedded (no skip reason) and not low-information."""
    skipped = np.asarray(table["skip_reason"].is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    low = np.asarray(table["low_information"].fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    return ~skipped & ~low


def _column_vectors(column, info: DetectorInfo) -> np.ndarray:
    """All rows of a vector column as one [rows, width] array (null rows hold zeros or garbage)."""
    dtype = np.dtype(np.uint8 if info.metric == "hamming" else np.float32)
    width = _vector_width(info)
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


def iter_shard_vectors(index_dir: str | os.PathLike, info: DetectorInfo, *, prefetch: bool = True):
    """Stream (first corpus row, vectors) of the indexable items of each shard, in index row order.

    The next shard is read in a background thread while the caller works on this one (pyarrow releases
    the GIL), so reading overlaps searching; memory holds at most two shards.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    def read(path: Path) -> np.ndarray:
        table = pq.read_table(path, columns=["vector", "low_information", "skip_reason"], memory_map=True)
        mask = _usable_mask(table)
        vectors = _column_vectors(table["vector"], info)
        return vectors if mask.all() else vectors[mask]

    paths = _shard_paths(Path(index_dir))
    row = 0
    if not prefetch:
        for path in paths:
            vectors = read(path)
            yield row, vectors
            row += len(vectors)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, paths[0]) if paths else None
        for i in range(len(paths)):
            vectors = pending.result()
            pending = pool.submit(read, paths[i + 1]) if i + 1 < len(paths) else None
            yield row, vectors
            row += len(vectors)


def _scan_shards(out: Path, info: DetectorInfo) -> _ShardScan:
    import pyarrow.parquet as pq

    scan = _ShardScan()
    for shard in _shard_paths(out):
        columns = ["key", "source", "id", "skip_reason", "low_information"]
        names = pq.read_schema(shard).names
        table = pq.read_table(shard, columns=columns + (["query_vector"] if "query_vector" in names else []),
                              memory_map=True)
        scan.given += table.num_rows
        reasons = table["skip_reason"].to_pylist()
        scan.skipped += [Skipped(s, i, r) for s, i, r in zip(table["source"].to_pylist(), table["id"].to_pylist(),
                                                             reasons) if r is not None]
        mask = _usable_mask(table)
        embedded = sum(r is None for r in reasons)
        scan.embedded += embedded
        scan.low += embedded - int(mask.sum())
        first = len(scan.keys)
        keys = table["key"].to_pylist()
        usable_keys = [k for k, m in zip(keys, mask) if m]
        scan.keys += usable_keys
        if "query_vector" in table.column_names and table["query_vector"].null_count < table.num_rows:
            has_q = np.asarray(table["query_vector"].is_valid().to_numpy(zero_copy_only=False), dtype=bool) & mask
            usable_row = np.cumsum(mask) - 1 + first
            qv = _column_vectors(table["query_vector"], info)
            for j in np.nonzero(has_q)[0]:
                scan.query_vectors.append(qv[j:j + 1].copy())
                scan.query_rows.append(int(usable_row[j]))
                scan.query_crc.append(zlib.crc32(keys[j].encode("utf-8", "surrogatepass")))
    return scan


def _read_training_sample(out: Path, info: DetectorInfo, n_total: int, n_sample: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n_total, size=min(n_sample, n_total), replace=False))
    parts = []
    for first, vectors in iter_shard_vectors(out, info):
        local = keep[(keep >= first) & (keep < first + len(vectors))] - first
        if len(local):
            parts.append(vectors[local])
    return np.concatenate(parts) if parts else np.zeros((0, _vector_width(info)), np.float32)


def _build_faiss(out: Path, info: DetectorInfo, plan, n: int):
    """Build the FAISS index the plan names over the shards' vectors (two passes for trained indexes)."""
    from .ann import new_index

    index = new_index(plan, info)
    if plan.needs_training:
        sample = _read_training_sample(out, info, n, plan.params["train_size"])
        index.train(np.ascontiguousarray(sample))
    keep_vectors = plan.index_type == "ivfpq" and info.metric == "cosine"
    memmap = None
    if keep_vectors and n:
        tmp = out / f".{VECTORS_FILE}.tmp-{os.getpid()}"
        memmap = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, info.dim))
    for first, vectors in iter_shard_vectors(out, info):
        if len(vectors):
            index.add(np.ascontiguousarray(vectors))
            if memmap is not None:
                memmap[first:first + len(vectors)] = vectors
    if memmap is not None:
        memmap.flush()
        del memmap
        os.replace(out / f".{VECTORS_FILE}.tmp-{os.getpid()}", out / VECTORS_FILE)
    return index


def _finish_index(out: Path, info: DetectorInfo, sources: list[dict], shard_size: int, device: str,
                  seconds: float, *, index_type: str = "auto", memory_budget: int | str | None = None,
                  recall_k: int = 10) -> IndexManifest:
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .ann import choose_index

    started = time.monotonic()
    scan = _scan_shards(out, info)
    if len(set(scan.keys)) != len(scan.keys):  # ids are unique per source already; guards a hand-edited dir
        raise IndexDirError(f"{out}: the shards hold repeated keys; rebuild the index in a new directory")
    plan = choose_index(index_type, len(scan.keys), info, memory_budget)
    index = _build_faiss(out, info, plan, len(scan.keys))
    writer = faiss.write_index_binary if info.metric == "hamming" else faiss.write_index
    atomic_write(out / INDEX_FILE, lambda tmp: writer(index, tmp))
    atomic_write(out / IDS_FILE, lambda tmp: pq.write_table(pa.table({"key": pa.array(scan.keys, pa.string())}), tmp))
    build_seconds = time.monotonic() - started
    recall = _measure_recall(out, info, index, plan, scan, recall_k, device) if plan.approximate else {
        "exact": True, "note": "flat index: exact search"}
    manifest = IndexManifest(
        detector=info,
        sources=sources,
        n_given=scan.given,
        n_embedded=scan.embedded,
        n_indexed=len(scan.keys),
        n_low_information=scan.low,
        n_skipped=len(scan.skipped),
        skipped=scan.skipped,
        shard_size=shard_size,
        n_shards=len(_shard_paths(out)),
        index_type=plan.index_type,
        faiss_version=getattr(faiss, "__version__", "unknown"),
        package_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(seconds + build_seconds, 3),
        extra={"device": device, "faiss_index": type(index).__name__, "index_params": plan.params,
               "index_choice": plan.reason, "index_build_seconds": round(build_seconds, 3), "recall": recall},
    )
    atomic_write_json(out / MANIFEST, manifest.to_dict())
    return manifest


def _measure_recall(out: Path, info: DetectorInfo, index, plan, scan: _ShardScan, k: int, device: str) -> dict:
    """Recall of the approximate index against exact search, on augmented copies of corpus items."""
    from .search import stream_search

    if not scan.query_vectors:
        return {"exact": False, "n_queries": 0, "note": "no augmented corpus copies to measure recall with"}
    queries = np.concatenate(scan.query_vectors)
    order = np.argsort(np.array(scan.query_crc, dtype=np.int64), kind="stable")[:RECALL_QUERIES]
    queries, source_rows = queries[order], np.array(scan.query_rows, dtype=np.int64)[order]
    k = min(k, len(scan.keys))
    exact_sims, exact_rows = stream_search(queries, iter_shard_vectors(out, info), k, info.metric, info.dim)
    approx_sims, approx_rows = search_rows(index, plan.index_type, plan.params, queries, k, info, out, device)
    # Tie-aware: a returned neighbour counts when its (exact) similarity reaches the exact k-th one, so
    # equally similar items (common with Hamming distances) are interchangeable.
    # (within float rounding: the two searches compute inner products with differently blocked BLAS calls)
    tol = 1e-5 if info.metric == "cosine" else 0.0
    recall_1 = float((approx_sims[:, 0] >= exact_sims[:, 0] - tol).mean())
    overlap = np.minimum((approx_sims >= exact_sims[:, k - 1:k] - tol).sum(axis=1), k) / k
    found_exact = float((exact_rows == source_rows[:, None]).any(axis=1).mean())
    found_approx = float((approx_rows == source_rows[:, None]).any(axis=1).mean())
    return {"exact": False, "n_queries": int(len(queries)), "k": int(k), "recall_at_1": recall_1,
            "recall_at_k": float(overlap.mean()), "source_found_at_k_exact": found_exact,
            "source_found_at_k": found_approx,
            "queries": "augmented copies (resize + JPEG) of corpus items, embedded during indexing"}


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
    """Move an index to the GPU when asked and possible (HNSW has no GPU version and stays on the CPU)."""
    if device != "cuda":
        return index
    import faiss

    res = faiss.StandardGpuResources()
    if metric == "hamming":
        if isinstance(index, faiss.IndexBinaryFlat):
            return faiss.GpuIndexBinaryFlat(res, index)
        return index
    if "HNSW" in type(index).__name__:
        return index
    return faiss.index_cpu_to_gpu(res, 0, index)


def search_rows(index, index_type: str, params: dict, queries: np.ndarray, k: int, info: DetectorInfo,
                path: Path, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Top-k (similarities, rows) from a FAISS index of any type, in the canonical order.

    Approximate indexes may miss neighbours but never report a wrong similarity: HNSW and binary IVF
    store exact codes, and IVF-PQ's shortlist is re-ranked with the exact vectors (vectors.npy).
    """
    from .search import order_topk, search_index

    if index_type == "hnsw":
        index.hnsw.efSearch = int(params.get("ef_search", 128))
    if index_type == "ivfpq":
        index.nprobe = int(params.get("nprobe", 16))
    index = _to_device(index, info.metric, device)
    if index_type == "ivfpq" and info.metric == "cosine":
        shortlist = max(4 * k, k + int(params.get("rerank_extra", 32)))
        _, cand = search_index(index, queries, shortlist, info.metric, info.dim)
        vectors = np.load(path / VECTORS_FILE, mmap_mode="r")
        safe = np.where(cand < 0, 0, cand)
        exact = np.einsum("qd,qcd->qc", queries.astype(np.float32), np.asarray(vectors[safe.reshape(-1)]).reshape(
            len(queries), shortlist, -1)).astype(np.float32)
        return order_topk(exact, cand, k)
    return search_index(index, queries, k, info.metric, info.dim)


def search(corpus: CorpusIndex, query_ids: list[str], vectors: np.ndarray, *, k: int = 5,
           device: str = "auto", exact_stream: bool = False, ray_address: str | None = None) -> Neighbors:
    """The k nearest corpus items of each query vector, most similar first, ties by corpus row.

    With ``exact_stream`` the stored shards are streamed past the queries (exact at any corpus size, memory
    bounded by the queries plus one shard); otherwise the index is searched (exact for flat indexes).
    With ``ray_address`` the stream runs as a map over shards on a Ray cluster.
    """
    from .search import NO_ROW, stream_search

    info = corpus.manifest.detector
    k = max(1, int(k))
    dev = faiss_device(device)
    if ray_address and (exact_stream or corpus.index is None):
        from .ray import connect
        from .ray import stream_search as ray_stream_search

        connect(ray_address)
        sims, rows = ray_stream_search(corpus.path, info, np.asarray(vectors), k)
    elif exact_stream or corpus.index is None:
        gpu = None
        if dev == "cuda" and info.metric == "cosine":
            import faiss

            gpu = faiss.StandardGpuResources()
        sims, rows = stream_search(np.asarray(vectors), iter_shard_vectors(corpus.path, info), k, info.metric,
                                   info.dim, gpu_resources=gpu)
    else:
        sims, rows = search_rows(corpus.index, corpus.manifest.index_type, corpus.params, np.asarray(vectors), k,
                                 info, corpus.path, dev)
        if sims.shape[1] < k:
            pad = k - sims.shape[1]
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=NO_ROW)
    ids = np.full(rows.shape, None, dtype=object)
    valid = rows != NO_ROW
    ids[valid] = corpus.keys[rows[valid]]
    return Neighbors(list(query_ids), ids, np.where(valid, sims, np.nan).astype(np.float32))


def index_from_vectors(out_dir: str | os.PathLike, vectors: np.ndarray, *, keys: list[str] | None = None,
                       metric: str = "cosine", name: str = "vectors", shard_size: int = 100_000,
                       index_type: str = "auto", memory_budget: int | str | None = None,
                       recall_queries: tuple[np.ndarray, np.ndarray] | None = None,
                       default_threshold: float = 0.95) -> IndexManifest:
    """An index directory from precomputed embeddings (float32 unit vectors, or packed uint8 hashes).

    For benchmarks and for users who embed elsewhere. ``recall_queries`` = (corpus rows, query vectors):
    near-duplicates of those rows, used to measure an approximate index's recall.
    """
    vectors = np.asarray(vectors)
    keys = keys or [str(i) for i in range(len(vectors))]
    copies: dict[int, np.ndarray] = {}
    if recall_queries is not None:
        copies = {int(r): q for r, q in zip(*recall_queries)}

    def blocks():
        for start in range(0, len(vectors), shard_size):
            stop = min(start + shard_size, len(vectors))
            yield keys[start:stop], vectors[start:stop], [copies.get(i) for i in range(start, stop)]

    dim = vectors.shape[1] * 8 if metric == "hamming" else vectors.shape[1]
    return index_from_vector_blocks(out_dir, blocks(), dim=dim, metric=metric, name=name, shard_size=shard_size,
                                    index_type=index_type, memory_budget=memory_budget,
                                    default_threshold=default_threshold)


def index_from_vector_blocks(out_dir: str | os.PathLike, blocks, *, dim: int, metric: str = "cosine",
                             name: str = "vectors", shard_size: int = 100_000, index_type: str = "auto",
                             memory_budget: int | str | None = None, default_threshold: float = 0.95,
                             build: bool = True) -> IndexManifest | None:
    """Like ``index_from_vectors`` from an iterable of (keys, vectors, recall copies or None) blocks, one
    shard each, so a corpus larger than memory can be written. ``build=False`` writes only the shards."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ResumeError(f"{out} exists and is not empty; choose a new directory")
    info = DetectorInfo(spec=name, name=name, version="1", dim=dim, metric=metric, default_threshold=default_threshold)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for shard_no, (keys, vectors, copies) in enumerate(blocks):
        n = len(keys)
        _write_shard(out / SHARD_DIR / f"shard-{shard_no:06d}.parquet", info, keys=list(keys), sources=[name] * n,
                     ids=list(keys), captions=[None] * n, labels=[None] * n, vectors=list(vectors),
                     low_information=[False] * n, reasons=[None] * n,
                     copies=list(copies) if copies is not None else [None] * n)
    atomic_write_json(out / PROGRESS, {"detector": info.to_dict(), "sources": [{"kind": "vectors", "name": name}],
                                       "shard_size": shard_size})
    if not build:
        return None
    return finish_from_shards(out, info, index_type=index_type, memory_budget=memory_budget,
                              seconds=time.monotonic() - started)


def finish_from_shards(out_dir: str | os.PathLike, info: DetectorInfo | None = None, *, index_type: str = "auto",
                       memory_budget: int | str | None = None, seconds: float = 0.0,
                       device: str = "auto") -> IndexManifest:
    """(Re)build the FAISS index of a directory whose shards are written."""
    out = Path(out_dir)
    progress = json.loads((out / PROGRESS).read_text())
    info = info or DetectorInfo.from_dict(progress["detector"])
    return _finish_index(out, info, progress["sources"], progress["shard_size"], faiss_device(device), seconds,
                         index_type=index_type, memory_budget=memory_budget)


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
    for shard in _shard_paths(path):
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
        if entry is None or entry.get("kind") not in ("folder", "parquet", "wds"):
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
