"""Building an index directory: embed the corpus into shards (resumable, on one machine or a Ray cluster),
then finish it (``overlap_audit.index.finish``: the FAISS index, its recall, the manifest).

``index_from_vectors`` / ``index_from_vector_blocks`` write the same directory from precomputed vectors.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json, hold_lock, is_temporary, remove_stale_temporaries
from ..detectors import Detector, get_detector
from ..devices import faiss_device
from ..embed import Decoder, embed_decoded
from ..errors import IndexDamagedError, IndexDirError, ResumeError, param
from ..limits import DEFAULT_MAX_PIXELS, InputLimits
from ..outputs import check_output_apart
from ..settings import INDEX_TYPES, IndexSettings, check_choice
from ..sources import Source, open_source, source_location
from ..values import DetectorInfo, RawItem
from .ann import parse_bytes
from .finish import finish_index
from .integrity import check_faiss, check_files, read_faiss_index, stale_generation_files
from .manifest import MANIFEST, PROGRESS, SHARD_DIR, IndexManifest, checksum_bytes, load_manifest
from .ray import connect, embed_shards
from .views import check_views, index_views, write_view_shard
from .shards import (ItemBytes, ShardsInOrder, corpus_key, finished_shards, item_bytes, pending_shard_path,
                     remove_pending_shards, same_item_bytes, shard_items, shard_path, write_shard)

# Augmented copies embedded per shard as recall queries for approximate indexes (``finish`` uses at most
# RECALL_QUERIES of them).
RECALL_QUERIES_PER_SHARD = 32
# --resume trusts a file's unchanged size and mtime only when the mtime is older than its shard by more than
# this (2 s: the coarsest common mtime granularity, FAT's); within it, the content hash decides
MTIME_GRANULARITY_NS = 2_000_000_000


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


def _copy_picks(chunk: list[RawItem], n: int) -> set[tuple[str, str]]:
    """The n items of a shard that get an augmented copy: smallest CRC-32 of their key (deterministic)."""
    ranked = sorted(chunk, key=lambda it: zlib.crc32(f"{it.source}/{it.id}".encode("utf-8", "surrogatepass")))
    return {(it.source, it.id) for it in ranked[:n] if it.skip_reason is None}


def _counting(decoded, tick: Callable[[], None]):
    for entry in decoded:
        tick()
        yield entry


def embed_shard(detector: Detector, items: list[RawItem], shard_no: int, *, out_dir: str | os.PathLike,
                n_sources: int, batch_size: int, max_pixels: int = DEFAULT_MAX_PIXELS, decoder: Decoder | None = None,
                tick: Callable[[], None] | None = None, limits: InputLimits | None = None,
                pending: bool = False, views: tuple[float, ...] = ()) -> None:
    """Decode, embed and write one shard (with its recall-query copies): the unit of work of the local and
    the Ray paths. Without ``decoder`` one is made in this process; ``tick()`` follows each decoded item.
    With ``pending`` the shard is written as a pending file, for ``ShardsInOrder`` to commit. With ``views``
    (areas; the decoder must make the same crops) the view vectors are written first (``views``)."""
    if decoder is None:
        with Decoder(detector, workers=0, max_pixels=max_pixels, limits=limits, checksum=checksum_bytes,
                     crops=views) as own:
            return embed_shard(detector, items, shard_no, out_dir=out_dir, n_sources=n_sources,
                               batch_size=batch_size, decoder=own, tick=tick, pending=pending, views=views)
    decoded = decoder.decode(items, copies=_copy_picks(items, RECALL_QUERIES_PER_SHARD))
    if tick is not None:
        decoded = _counting(decoded, tick)
    r = embed_decoded(decoded, detector, batch_size=batch_size)
    # taken by the decoder from the bytes it decoded; read here only where it did not read them (refused)
    fingerprints = [item_bytes(it) if f is None else ItemBytes(*f) for it, f in zip(r.items, r.fingerprints)]
    if views:  # named after the finished shard: a pending shard's views wait under its final name
        write_view_shard(shard_path(out_dir, shard_no), detector.info, len(views), r.crop_vectors)
    write_shard((pending_shard_path if pending else shard_path)(out_dir, shard_no), detector.info,
                keys=[corpus_key(it.source, it.id, n_sources) for it in r.items],
                sources=[it.source for it in r.items], ids=[it.id for it in r.items],
                captions=[it.caption for it in r.items], labels=[it.label for it in r.items],
                vectors=r.vectors, low_information=r.low_information, reasons=r.reasons, copies=r.copies,
                boxes=r.boxes, fingerprints=fingerprints, locations=[it.location for it in r.items])
    return None


def _resume_complete(out: Path, s: IndexSettings, finish: Callable[..., IndexManifest]) -> IndexManifest | None:
    """``--resume`` where a manifest exists: nothing to do when the index verifies and has the asked index
    type; otherwise the FAISS index is rebuilt from the shards as the next generation. None when the manifest cannot be read: the run is then finished as an interrupted one.
    Damaged shards cannot be repaired here (their embeddings are lost)."""
    try:
        done = load_manifest(out)
    except IndexDirError:
        return None
    for stale in stale_generation_files(out, done):
        stale.unlink(missing_ok=True)
    intact = True
    try:
        check_files(out, done, full=True)
        check_faiss(out, done, read_faiss_index(out, done))
    except IndexDamagedError as exc:
        if exc.file.startswith(f"{SHARD_DIR}/"):
            raise ResumeError(f"cannot resume {out}: {exc.file} is missing, extra or changed since the index "
                              "was built; rebuild the index in a new directory") from None
        intact = False
    if intact and s.index_type in ("auto", done.index_type):
        return done  # already complete with these settings: nothing to redo
    index_type = done.index_type if s.index_type == "auto" else s.index_type
    return finish(done.build_seconds, index_type=index_type, previous=done)


def build_index(sources: list[str], out_dir: str | os.PathLike, settings: IndexSettings | None = None, *,
                progress: bool = False, on_shard: Callable[[int, int], None] | None = None) -> IndexManifest:
    """Embed the corpus sources into shards and build the FAISS index in ``out_dir``.

    ``on_shard(shard_number, items_done)`` is called after each shard is safely on disk. The run holds the
    directory's lock (``atomic.hold_lock``): a second run on it is refused with BusyError. On a finished
    index resumed with another ``index_type``, only the index is rebuilt. ``out_dir`` may not be, or lie inside, a folder source, nor hold a
    source (``OutputDirError``).
    """
    s = settings or IndexSettings()
    check_choice("index_type", s.index_type, INDEX_TYPES, IndexDirError)
    parse_bytes(s.memory_budget)  # a malformed budget fails before any work
    index_views(s.detector, s.views)  # and so do malformed views
    if not sources:
        raise IndexDirError("give at least one corpus source")
    if s.shard_size < 1 or s.batch_size < 1:
        raise IndexDirError("shard_size and batch_size must be positive")
    out = Path(out_dir)
    # the index's own files must never become corpus items on a later run, nor the corpus its files
    check_output_apart(out, [("corpus source", *source_location(str(src))) for src in sources])
    with hold_lock(out, "index"):  # one run at a time on a directory: a second is refused, not interleaved
        return _build_locked(sources, out, s, progress=progress, on_shard=on_shard)


def _build_locked(sources: list[str], out: Path, s: IndexSettings, *, progress: bool,
                  on_shard: Callable[[int, int], None] | None) -> IndexManifest:
    started = time.monotonic()
    det = get_detector(s.detector, device=s.device, content=s.content)
    faiss_dev = faiss_device(s.device)
    srcs = _source_names([open_source(src) for src in sources])
    views = index_views(s.detector, s.views)
    recorded = {"detector": det.info.to_dict(), "sources": [src.to_dict() for src in srcs],
                "shard_size": s.shard_size, "max_pixels": s.max_pixels, "limits": s.limits.to_dict(),
                **({"views": list(views)} if views else {})}
    finish = partial(finish_index, out, det.info, recorded["sources"], s.shard_size, faiss_dev,
                     index_type=s.index_type, memory_budget=s.memory_budget, limits=recorded["limits"], views=views)

    if out.exists() and not out.is_dir():
        raise IndexDirError(f"{param('out_dir', out)} exists and is not a directory")
    if s.resume and out.is_dir() and all(is_temporary(p) for p in out.iterdir()):
        remove_stale_temporaries(out)  # a run killed while writing its first file: start it afresh
    if out.exists() and any(out.iterdir()):
        if not s.resume:
            raise ResumeError(f"{out} exists and is not empty; pass {param('resume', True)} to finish an interrupted run there, "
                              "or choose a new directory")
        if not (out / PROGRESS).exists():
            raise ResumeError(f"{out} has no {PROGRESS}: it is not an interrupted overlap-audit index")
        try:
            previous = json.loads((out / PROGRESS).read_text())
        except ValueError as exc:
            raise ResumeError(f"{out / PROGRESS} is damaged ({exc}); start again in a new directory") from None
        differs = [k for k in recorded if previous.get(k) != recorded[k]]
        if differs:
            raise ResumeError(f"cannot resume {out}: its run used different {', '.join(differs)}; "
                              "use the same command, or a new directory")
        remove_stale_temporaries(out)
        if (out / MANIFEST).exists():
            done_manifest = _resume_complete(out, s, finish)
            if done_manifest is not None:
                return done_manifest
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / PROGRESS, recorded)
    (out / SHARD_DIR).mkdir(exist_ok=True)

    remove_pending_shards(out)  # finished out of order by an interrupted Ray run: embedded again below
    done = finished_shards(out)
    items = (item for src in srcs for item in src.iter_items(s.limits))
    items_done = 0
    for shard_no in done:  # the finished shards' items: read past, not decoded again, but checked
        written_ns = shard_path(out, shard_no).stat().st_mtime_ns
        for source, ident, recorded in shard_items(shard_path(out, shard_no)):
            item = next(items, None)
            got = None if item is None else (item.source, item.id)
            if got != (source, ident):
                raise ResumeError(
                    f"cannot resume {out}: the corpus changed since the interrupted run (shard {shard_no} "
                    f"holds {source}:{ident!r} where the sources now give "
                    f"{'nothing' if got is None else repr(got[0] + ':' + got[1])}); start again in a new directory"
                )
            # size and mtime vouch for a file only when its mtime is clearly older than the shard: a file
            # rewritten within the filesystem's mtime granularity of being read keeps its mtime ("racy")
            trust = recorded is not None and recorded.mtime_ns is not None and (
                recorded.mtime_ns < written_ns - MTIME_GRANULARITY_NS)
            if recorded is not None and not same_item_bytes(item, recorded, trust_mtime=trust):
                raise ResumeError(
                    f"cannot resume {out}: the image of {source}:{ident!r} changed since shard {shard_no} embedded "
                    "it; start again in a new directory"
                )
            items_done += 1

    bar = None
    if progress:
        from tqdm import tqdm

        counts = [src.count() for src in srcs]
        bar = tqdm(desc="index", unit="img", initial=items_done,
                   total=None if None in counts else sum(counts))  # with a total, tqdm shows the ETA
    work = partial(embed_shard, out_dir=out, n_sources=len(srcs), batch_size=s.batch_size, max_pixels=s.max_pixels,
                   limits=s.limits, views=views)
    if s.ray_address:
        connect(s.ray_address)
        # actors finish shards in any order: each is written pending and committed once those before it are
        in_order = ShardsInOrder(out, len(done), items_done, on_shard)
        sizes: dict[int, int] = {}

        def shards():
            nonlocal items_done
            for number, chunk in enumerate(_chunked(items, s.shard_size), start=len(done)):
                items_done += len(chunk)
                sizes[number] = len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                yield number, chunk

        embed_shards(shards(), partial(work, pending=True), detector=s.detector, device=s.device,
                     on_shard=lambda number, _: in_order.done(number, sizes[number]), content=s.content)
        if bar is not None:
            bar.close()
        if in_order.waiting:
            raise IndexDirError(f"{out}: shards {in_order.waiting} finished but shard {in_order.next} never did")
        finished_shards(out)  # all present and contiguous
        return finish(time.monotonic() - started)
    with Decoder(det, workers=s.workers, max_pixels=s.max_pixels, limits=s.limits,
                 checksum=checksum_bytes, crops=views) as decoder:
        for shard_no, chunk in enumerate(_chunked(items, s.shard_size), start=len(done)):
            work(det, chunk, shard_no, decoder=decoder, tick=None if bar is None else partial(bar.update, 1))
            items_done += len(chunk)
            if on_shard is not None:
                on_shard(shard_no, items_done)
    if bar is not None:
        bar.close()
    return finish(time.monotonic() - started)


# ---------------------------------------------------------------- from precomputed vectors

_VECTORS_NAME = "vectors"
_VECTORS_THRESHOLD = 0.95


def index_from_vectors(out_dir: str | os.PathLike, vectors: np.ndarray, *, keys: list[str] | None = None,
                       metric: str = "cosine", shard_size: int = 100_000, index_type: str = "auto",
                       recall_queries: tuple[np.ndarray, np.ndarray] | None = None,
                       views: tuple[float, ...] = (), view_vectors: np.ndarray | None = None) -> IndexManifest:
    """An index directory from precomputed embeddings (float32 unit vectors, or packed uint8 hashes).

    For benchmarks and for users who embed elsewhere; ``keys`` are the items' ids (default: row numbers).
    ``recall_queries`` = (corpus rows, query vectors): near-duplicates of those rows, used to measure an
    approximate index's recall. ``view_vectors`` [items, len(views), width] are the items' corpus views.
    """
    vectors = np.asarray(vectors)
    keys = keys or [str(i) for i in range(len(vectors))]
    copies: dict[int, np.ndarray] = {}
    if recall_queries is not None:
        copies = {int(r): q for r, q in zip(*recall_queries)}

    def blocks():
        for start in range(0, len(vectors), shard_size):
            stop = min(start + shard_size, len(vectors))
            block = (keys[start:stop], vectors[start:stop], [copies.get(i) for i in range(start, stop)])
            yield block + ((list(view_vectors[start:stop]),) if views else ())

    dim = vectors.shape[1] * 8 if metric == "hamming" else vectors.shape[1]
    return index_from_vector_blocks(out_dir, blocks(), dim=dim, metric=metric, shard_size=shard_size,
                                    index_type=index_type, views=views)


def index_from_vector_blocks(out_dir: str | os.PathLike, blocks: Iterable, *, dim: int, metric: str = "cosine",
                             shard_size: int = 100_000, index_type: str = "auto",
                             build: bool = True, views: tuple[float, ...] = ()) -> IndexManifest | None:
    """Like ``index_from_vectors`` from an iterable of (keys, vectors, recall copies or None) blocks, one
    shard each, so a corpus larger than memory can be written. ``build=False`` writes only the shards. With
    ``views`` each block has a fourth element: its items' view vectors."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ResumeError(f"{out} exists and is not empty; choose a new directory")
    name = _VECTORS_NAME
    info = DetectorInfo(spec=name, name=name, version="1", dim=dim, metric=metric,
                        default_threshold=_VECTORS_THRESHOLD)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    views = check_views(views) if views else ()
    for shard_no, (keys, vectors, copies, *more) in enumerate(blocks):
        n = len(keys)
        if views:
            write_view_shard(shard_path(out, shard_no), info, len(views), list(more[0]))
        write_shard(shard_path(out, shard_no), info, keys=list(keys), sources=[name] * n, ids=list(keys),
                    captions=[None] * n, labels=[None] * n, vectors=list(vectors), low_information=[False] * n,
                    reasons=[None] * n, copies=list(copies) if copies is not None else [None] * n)
    sources = [{"kind": "vectors", "name": name}]
    atomic_write_json(out / PROGRESS, {"detector": info.to_dict(), "sources": sources, "shard_size": shard_size,
                                       **({"views": list(views)} if views else {})})
    if not build:
        return None
    return finish_index(out, info, sources, shard_size, faiss_device("auto"), time.monotonic() - started,
                        index_type=index_type, views=views)
