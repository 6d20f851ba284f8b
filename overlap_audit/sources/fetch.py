"""Reading items back by id: the one place that gets a recorded item's bytes again, for every kind of source
(the report's gallery, pair verification, ``pairs`` and ``index.corpus_items`` read through it)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..limits import DEFAULT_LIMITS, InputLimits, file_problem
from ..values import RawItem
from .folder import id_path, read_text
from .parquet import cell_problem, cell_sizes, image_bytes, parquet_columns, parquet_file
from .spec import Source
from .webdataset import iter_wds


def fetch_items(source: Source, ids: Iterable[str], limits: InputLimits | None = None) -> dict[str, RawItem]:
    """The items of ``source`` with the given ids; an id the source no longer has maps to a RawItem whose
    ``skip_reason`` says so. Folders and Parquet are read directly; WebDataset and the evaluation-set
    layouts in one streaming pass that keeps only the wanted samples. Caps as in ``Source.iter_items``."""
    limits = limits or DEFAULT_LIMITS
    wanted = set(ids)
    found: dict[str, RawItem] = {}
    if not wanted:
        return found
    if source.kind == "folder":
        found = _fetch_folder(source, wanted, limits)
    elif source.kind == "parquet":
        found = _fetch_parquet(source, wanted, limits)
    else:
        for item in (iter_wds(source.name, source.paths, limits) if source.kind == "wds"
                     else source.iter_items(limits)):
            if item.id in wanted and item.id not in found:
                found[item.id] = item
                if len(found) == len(wanted):
                    break
    for ident in wanted - set(found):
        found[ident] = RawItem(source.name, ident, skip_reason=f"no longer in source {source.spec!r}")
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


def _fetch_parquet(source: Source, wanted: set[str], limits: InputLimits = DEFAULT_LIMITS) -> dict[str, RawItem]:
    import pyarrow as pa
    import pyarrow.compute as pc

    found: dict[str, RawItem] = {}
    keys = pa.array(sorted(wanted), pa.string())
    for path in source.paths:
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
        images = table[cols["image"]]
        sizes = cell_sizes(images)
        for i, row in enumerate(table.drop_columns([cols["image"]]).to_pylist()):
            ident = str(row[cols["id"]])
            reason = cell_problem(sizes[i], cols["image"], limits)
            image = None if reason is not None else image_bytes(images[i].as_py())
            caption = row[cols["caption"]] if cols["caption"] else None
            label = row[cols["label"]] if cols["label"] else None
            found[ident] = RawItem(source.name, ident, data=image,
                                   caption=None if caption is None else str(caption),
                                   label=None if label is None else str(label),
                                   skip_reason=reason or (None if image is not None else "no image data"))
    return found
