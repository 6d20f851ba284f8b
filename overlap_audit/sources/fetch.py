"""Reading items back by id: the one place that gets a recorded item's bytes again, for every kind of source
(the report's gallery, pair verification, ``pairs`` and ``index.corpus_items`` read through it).

An item whose location its index recorded (``values.ItemLocation``: a tar member's offset and size, a Parquet
row group and row) is read there, touching nothing else of the source; the others are looked for by id, which
for a tar source means reading its shards in order until every wanted sample has been seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..limits import DEFAULT_LIMITS, InputLimits, file_problem
from ..values import ItemLocation, RawItem
from .folder import id_path, read_text
from .parquet import parquet_columns, parquet_file, rows_items
from .parquet import read_located as parquet_located
from .spec import Source
from .webdataset import iter_wds
from .webdataset import read_located as wds_located


def fetch_items(source: Source, ids: Iterable[str], limits: InputLimits | None = None,
                locations: Mapping[str, ItemLocation | None] | None = None) -> dict[str, RawItem]:
    """The items of ``source`` with the given ids; an id the source no longer has maps to a RawItem whose
    ``skip_reason`` says so. Caps as in ``Source.iter_items``.

    An id with a recorded location in ``locations`` (a tar or Parquet source) is read there (``read_located``
    of ``webdataset`` / ``parquet``): a tar sample's members by offset and size, whatever the tar holds there
    now; a Parquet row from its row group, if it still holds the id (else it is looked for as below). Other ids
    are looked for: folders and Parquet read directly; WebDataset and the evaluation-set layouts in one
    streaming pass that keeps only the wanted samples."""
    limits = limits or DEFAULT_LIMITS
    wanted = set(ids)
    found: dict[str, RawItem] = {}
    if not wanted:
        return found
    located = _usable_locations(source, wanted, locations or {})
    if located:
        found = _fetch_located(source, located, limits)
        moved = located.keys() - found.keys()
        if moved:  # rows of a rewritten Parquet file: looked for in the files they were in first
            files = tuple(source.paths[i] for i in sorted({located[i].file for i in moved}))
            found.update(_fetch_parquet(source, moved, limits, files))
        wanted -= found.keys()
    if not wanted:
        return found
    if source.kind == "folder":
        found.update(_fetch_folder(source, wanted, limits))
    elif source.kind == "parquet":
        found.update(_fetch_parquet(source, wanted, limits))
    else:
        left = set(wanted)
        for item in (iter_wds(source.name, source.paths, limits) if source.kind == "wds"
                     else source.iter_items(limits)):
            if item.id in left:
                found[item.id] = item
                left.discard(item.id)
                if not left:
                    break
    for ident in wanted - set(found):
        found[ident] = RawItem(source.name, ident, skip_reason=f"no longer in source {source.spec!r}")
    return found


def _usable_locations(source: Source, wanted: set[str],
                      locations: Mapping[str, ItemLocation | None]) -> dict[str, ItemLocation]:
    """The wanted ids' locations that name one of the source's files in the way its kind records them."""
    out = {}
    for ident in wanted:
        loc = locations.get(ident)
        if loc is None or not 0 <= loc.file < len(source.paths):
            continue
        if (source.kind == "wds" and loc.members) or (
                source.kind == "parquet" and loc.row_group is not None and loc.row is not None):
            out[ident] = loc
    return out


def _fetch_located(source: Source, located: dict[str, ItemLocation], limits: InputLimits) -> dict[str, RawItem]:
    by_file: dict[int, dict[str, ItemLocation]] = {}
    for ident, loc in located.items():
        by_file.setdefault(loc.file, {})[ident] = loc
    read = wds_located if source.kind == "wds" else parquet_located
    found: dict[str, RawItem] = {}
    for file, items in sorted(by_file.items()):
        found.update(read(source.name, source.paths[file], items, limits))
    return found


def _fetch_folder(source: Source, wanted: set[str], limits: InputLimits) -> dict[str, RawItem]:
    found: dict[str, RawItem] = {}
    root = source.paths[0]
    for ident in wanted:
        full = os.path.join(root, *ident.split("/"))
        if not os.path.isfile(full) and "\\x" in ident:  # a name with bytes that are not UTF-8
            full = os.path.join(root, *id_path(ident).split("/"))
        if not _inside(full, root):
            found[ident] = RawItem(source.name, ident, skip_reason=f"id {ident!r} names a path outside source "
                                                                   f"{source.spec!r}: not read")
            continue
        if not os.path.isfile(full):
            continue
        stem = os.path.splitext(full)[0]
        caption = read_text(stem + ".txt", limits.max_file_bytes) if os.path.exists(stem + ".txt") else None
        label = ident.split("/")[0] if source.labels_from_folders and "/" in ident else None
        problem = file_problem(full, limits.max_file_bytes)
        found[ident] = RawItem(source.name, ident, path=None if problem else full, caption=caption,
                               label=label, skip_reason=problem)
    return found


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` lies under ``root`` as written: no absolute or ``..`` part of an id escapes it (links
    inside the folder may lead elsewhere, as the folder walk follows them too)."""
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(root))
    return rel != "." and not os.path.isabs(rel) and ".." not in Path(rel).parts


def _fetch_parquet(source: Source, wanted: set[str], limits: InputLimits = DEFAULT_LIMITS,
                   paths: tuple[str, ...] | None = None) -> dict[str, RawItem]:
    """The rows of the wanted ids, looked for in ``paths`` (default: every file of the source)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found: dict[str, RawItem] = {}
    keys = pa.array(sorted(wanted), pa.string())
    for path in source.paths if paths is None else paths:
        with parquet_file(path) as pf:
            cols = parquet_columns(path, pf)
            # the ids first; then only the row groups that hold a wanted one (a remote file is not read whole)
            parts = []
            for group in range(pf.num_row_groups):
                ids = pf.read_row_group(group, columns=[cols["id"]]).column(0)
                if pc.any(pc.is_in(pc.cast(ids, pa.string()), value_set=keys)).as_py():
                    parts.append(pf.read_row_group(group, columns=[c for c in cols.values() if c]))
        if not parts:
            continue
        table = pa.concat_tables(parts)
        table = table.filter(pc.is_in(pc.cast(table[cols["id"]], pa.string()), value_set=keys))
        found.update((item.id, item) for item in rows_items(source.name, path, cols, table, limits))
    return found
