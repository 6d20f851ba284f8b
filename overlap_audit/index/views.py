"""Corpus views: extra vectors per indexed item, searched beside the primary ones.

A view is the centre crop holding a fraction ``area`` of what the detector embeds (its content box for a
trimming detector). An App. C copy is often a crop of its source (65-100% of its area), and a perceptual
hash of a crop is far from the hash of the whole; the hash of the source's own centre crop is nearer. An
index built with views (``IndexSettings.views``, recorded as ``IndexManifest.views``) holds, beside each
shard, ``views/shard-NNNNNN.npy``: an array [shard items, views, width] (zeros where an item was skipped),
and, per view, a flat FAISS index (``view_index_name``) whose row i is index row i. ``search`` takes, per
corpus item, the most similar of its views (``search.merge_max``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import IndexDirError
from ..values import DetectorInfo
from .integrity import _damaged
from .manifest import FileRecord, file_record
from .shards import shard_paths, usable_mask, vector_width

VIEW_DIR = "views"
MAX_VIEWS = 3
# the views an index gets unless told (``IndexSettings.views``; ``--views`` with no area: none), by detector
# name. phash: a centre crop of 70% of the area; on the photo development set it takes the default decision's
# recall of medium App. C copies from 0.87 to 0.95 and of strong ones from 0.59 to 0.77 at the same precision
# (BENCHMARKS.md, "Corpus views"), for 8 more bytes per item and a second search
DEFAULT_VIEWS: dict[str, tuple[float, ...]] = {"phash": (0.7,)}


def index_views(detector: str, views) -> tuple[float, ...]:
    """The views an index of ``detector`` is built with: ``views`` checked, or the detector's default."""
    if views is None:
        return DEFAULT_VIEWS.get(str(detector).split(":")[0], ())
    return check_views(views) if views else ()


def check_views(areas) -> tuple[float, ...]:
    """The view areas as a tuple, refused unless each lies in (0.2, 1) and none repeats."""
    out = tuple(round(float(a), 4) for a in areas)
    if len(set(out)) != len(out) or len(out) > MAX_VIEWS or any(not 0.2 < a < 1 for a in out):
        raise IndexDirError(f"views must be at most {MAX_VIEWS} distinct areas between 0.2 and 1 (fractions of the "
                            f"image's area kept by a centre crop); got {tuple(areas)}")
    return out


def view_tag(area: float) -> str:
    """A view's name in file names and reports: ``view70`` for the centre crop of 70% of the area."""
    return f"view{round(float(area) * 100):d}"


def views_line(views: tuple[float, ...], query_views: tuple[float, ...], query_turns: tuple[float, ...] = ()) -> str:
    """How a report's search used views, as a clause ("" for an index without them)."""
    if not views:
        return ""
    def pct(areas):
        return ", ".join(f"{round(a * 100)}%" for a in areas)
    turns = ", ".join(f"±{a:g}°" for a in query_turns)
    return (f"; corpus views: centre {pct(views)} of each item's area"
            + (f"; query views: centre {pct(query_views)}" if query_views else "")
            + (f"; query turned {turns}" if query_turns else ""))


def view_index_name(index_file: str, area: float) -> str:
    """The FAISS index file of one view, beside (and of the same generation as) ``index_file``."""
    stem, _, ext = index_file.rpartition(".")
    return f"{stem}.{view_tag(area)}.{ext}"


def view_shard_path(shard: Path) -> Path:
    """Where the view vectors of a shard file live."""
    return shard.parent.parent / VIEW_DIR / f"{shard.stem}.npy"


def write_view_shard(shard: Path, info: DetectorInfo, n_views: int, vectors: list) -> None:
    """Write the view vectors of a shard's items (per item a list of ``n_views`` vectors, or None where the
    item was skipped) atomically, before the shard itself, so a finished shard always has its views."""
    dtype = np.uint8 if info.metric == "hamming" else np.float32
    out = np.zeros((len(vectors), n_views, vector_width(info)), dtype=dtype)
    for i, vs in enumerate(vectors):
        if vs is not None:
            out[i] = np.stack(vs)
    path = view_shard_path(shard)
    path.parent.mkdir(exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, out)

    atomic_write(path, write)


def iter_view_vectors(index_dir: str | os.PathLike, view: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first corpus row, vectors) of view number ``view`` of each shard's indexed items, in row order."""
    import pyarrow.parquet as pq

    row = 0
    for shard in shard_paths(index_dir):
        usable = usable_mask(pq.read_table(shard, columns=["low_information", "skip_reason"]))
        vectors = np.load(view_shard_path(shard), mmap_mode="r")
        if len(vectors) != len(usable):
            raise IndexDirError(f"{view_shard_path(shard)} holds {len(vectors)} rows where its shard holds "
                                f"{len(usable)}; rebuild the index")
        block = np.ascontiguousarray(vectors[usable, view])
        yield row, block
        row += len(block)


def view_tables_name(index_file: str, area: float) -> str:
    """The multi-index hash tables of one view (an index of type ``mih``), beside its FAISS index."""
    from .mih import tables_name

    return tables_name(view_index_name(index_file, area))


def build_view_indexes(out: Path, info: DetectorInfo, areas: tuple[float, ...], index_file: str,
                       n_indexed: int, substrings: int | None = None) -> dict[str, FileRecord]:
    """Write a flat FAISS index per view over the shards' view vectors, and with ``substrings`` (a ``mih``
    index's) the view's multi-index hash tables too, so that a radius search answers the views as it answers
    the primary vectors; returns the manifest records of the view files (the per-shard arrays, the indexes
    and tables)."""
    import faiss

    files: dict[str, FileRecord] = {}
    for shard in shard_paths(out):
        path = view_shard_path(shard)
        if not path.exists():
            raise IndexDirError(f"{out}: {shard.name} has no view vectors ({VIEW_DIR}/{path.name}); the shards were "
                                "written without views: rebuild the index with them in a new directory")
        files[f"{VIEW_DIR}/{path.name}"] = file_record(path, len(np.load(path, mmap_mode="r")))
    for v, area in enumerate(areas):
        index = faiss.IndexBinaryFlat(info.dim) if info.metric == "hamming" else faiss.IndexFlatIP(info.dim)
        for _, block in iter_view_vectors(out, v):
            if len(block):
                index.add(block)
        if index.ntotal != n_indexed:
            raise IndexDirError(f"{out}: view {view_tag(area)} holds {index.ntotal} vectors for {n_indexed} items")
        writer = faiss.write_index_binary if info.metric == "hamming" else faiss.write_index
        name = view_index_name(index_file, area)
        atomic_write(out / name, lambda tmp, index=index: writer(index, tmp))
        files[name] = file_record(out / name, int(index.ntotal))
        if substrings is not None:
            from .mih import flat_codes, write_mih

            tables = view_tables_name(index_file, area)
            write_mih(out / tables, flat_codes(index), substrings)
            files[tables] = file_record(out / tables, int(index.ntotal))
    return files


def read_view_indexes(path: Path, info: DetectorInfo, areas: tuple[float, ...], index_file: str,
                      n_indexed: int) -> tuple:
    """The view indexes of a loaded index (their files already held to the manifest)."""
    import faiss

    reader = faiss.read_index_binary if info.metric == "hamming" else faiss.read_index
    out = []
    for area in areas:
        name = view_index_name(index_file, area)
        index = reader(str(path / name))
        if index.ntotal != n_indexed:
            raise _damaged(path, f"{name} holds {index.ntotal} vectors where the manifest counts {n_indexed}", name)
        out.append(index)
    return tuple(out)

