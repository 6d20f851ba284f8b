"""img2dataset-style Parquet: one row per item, with an image column (bytes, or Hugging Face's
``{bytes, path}`` struct), an id column and optionally a caption and a label.

A local path is read through pyarrow, a URL through fsspec in byte ranges (the footer, then the column
chunks asked for). An image cell over ``limits.InputLimits.max_cell_bytes`` is listed as skipped. Each item
carries its ``values.ItemLocation`` (file, row group, row in it), from which ``read_located`` reads it back.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import DuplicateIdError, SourceError
from ..limits import DEFAULT_LIMITS, InputLimits, file_problem
from ..values import ItemLocation, RawItem
from .remote import is_url, open_url

PARQUET_IMAGE_COLUMNS = ("jpg", "png", "webp", "image")
PARQUET_ID_COLUMNS = ("key", "id")
PARQUET_CAPTION_COLUMNS = ("caption", "txt")


def _image_type_problem(type_) -> str | None:
    """Why an Arrow type cannot hold images, or None: binary (image bytes), a {bytes, path} struct (Hugging
    Face's Image feature), a string (a path, not read) or null are accepted."""
    import pyarrow as pa

    def binary(t) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or (
            hasattr(pa.types, "is_binary_view") and pa.types.is_binary_view(t))

    def string(t) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t) or (
            hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))

    if binary(type_) or string(type_) or pa.types.is_null(type_):
        return None
    if pa.types.is_struct(type_):
        names = [type_.field(i).name for i in range(type_.num_fields)]
        if "bytes" in names and (binary(type_.field("bytes").type) or pa.types.is_null(type_.field("bytes").type)):
            return None
        if "bytes" not in names and "path" in names and string(type_.field("path").type):
            return None
    return (f"holds {type_}, not image bytes (binary), a {{bytes, path}} struct or a path string; "
            "point the source at Parquet files whose image column holds encoded images")


@contextmanager
def parquet_file(path: str):
    """A ``pyarrow.parquet.ParquetFile`` of a local path or a URL (read through fsspec in byte ranges: the
    footer, then the column chunks asked for); SourceError for a file that is not a readable Parquet file."""
    import pyarrow.parquet as pq

    fh = None
    if is_url(path):
        fh = open_url(path, stream=False)
    else:
        problem = file_problem(path, 1 << 62)
        if problem is not None:
            raise SourceError(f"Parquet file {path!r}: {problem}")
    try:
        try:
            pf = pq.ParquetFile(fh if fh is not None else path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise SourceError(f"cannot read Parquet file {path!r}: {exc}") from None
        try:
            yield pf
        finally:
            pf.close()
    finally:
        if fh is not None:
            fh.close()


def parquet_columns(path: str, pf) -> dict[str, str | None]:
    """The columns a file's items are read from (image, id, caption, label, img2dataset's status and error;
    None where the file has none). Raises SourceError when it has no image or id column, or its image column
    cannot hold images."""
    schema = pf.schema_arrow
    names = schema.names
    image = next((c for c in PARQUET_IMAGE_COLUMNS if c in names), None)
    ident = next((c for c in PARQUET_ID_COLUMNS if c in names), None)
    if image is None:
        raise SourceError(
            f"Parquet file {path!r} has no image column (looked for {', '.join(PARQUET_IMAGE_COLUMNS)}; "
            f"it has {', '.join(names)}). img2dataset writes image bytes only with output_format=parquet."
        )
    if ident is None:
        raise SourceError(
            f"Parquet file {path!r} has no id column (looked for {', '.join(PARQUET_ID_COLUMNS)}; "
            f"it has {', '.join(names)})"
        )
    problem = _image_type_problem(schema.field(image).type)
    if problem is not None:
        raise SourceError(f"Parquet file {path!r}: image column {image!r} {problem}")
    return {
        "image": image,
        "id": ident,
        "caption": next((c for c in PARQUET_CAPTION_COLUMNS if c in names), None),
        "label": "label" if "label" in names else None,
        "status": "status" if "status" in names else None,
        "error": "error_message" if "error_message" in names else None,
    }


def check_parquet_ids(name: str, paths: tuple[str, ...]) -> None:
    """Raise DuplicateIdError when an id occurs twice across the files (checked before any item is read)."""
    seen: set[str] = set()
    dups: list[str] = []
    for path in paths:
        with parquet_file(path) as pf:
            ids = pf.read(columns=[parquet_columns(path, pf)["id"]]).column(0).to_pylist()
        for value in ids:
            key = str(value)
            if key in seen:
                dups.append(key)
            seen.add(key)
    if dups:
        raise DuplicateIdError(name, sorted(set(dups)))


def image_bytes(value) -> bytes | None:
    """An image cell's bytes; None for null or a path string."""
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None  # null, or a path string (not read)


def cell_sizes(column) -> list[int]:
    """The byte length of each image cell of an Arrow column (0 for null, a path, or no bytes)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        return [n for chunk in column.chunks for n in cell_sizes(chunk)]
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            return [0] * len(column)
        column = column.field("bytes")
    if pa.types.is_null(column.type) or pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return [0] * len(column)
    return [0 if n is None else int(n) for n in pc.binary_length(column).to_pylist()]


def cell_problem(size: int, column: str, limits: InputLimits) -> str | None:
    """Why an image cell of ``size`` bytes is not read, or None."""
    if size > limits.max_cell_bytes:
        return (f"Parquet cell of column {column!r} of {size:,} bytes exceeds the limit of "
                f"{limits.max_cell_bytes:,} bytes: not read")
    return None


def iter_parquet(name: str, paths: tuple[str, ...], limits: InputLimits = DEFAULT_LIMITS) -> Iterator[RawItem]:
    """The rows of the Parquet files as items of the source ``name``, file by file in row order."""
    for number, path in enumerate(paths):
        with parquet_file(path) as pf:
            yield from _parquet_items(name, path, pf, limits, number)


def _group_starts(pf) -> list[int]:
    """The file row of each row group's first row."""
    starts, at = [], 0
    for g in range(pf.num_row_groups):
        starts.append(at)
        at += pf.metadata.row_group(g).num_rows
    return starts


def _parquet_items(name: str, path: str, pf, limits: InputLimits, number: int) -> Iterator[RawItem]:
    cols = parquet_columns(path, pf)
    wanted = [c for c in cols.values() if c]
    starts = _group_starts(pf)
    row = 0
    for batch in pf.iter_batches(batch_size=256, columns=wanted):
        groups = [bisect.bisect_right(starts, r) - 1 for r in range(row, row + batch.num_rows)]
        yield from rows_items(name, path, cols, batch, limits,
                               [ItemLocation(number, row_group=g, row=r - starts[g])
                                for g, r in zip(groups, range(row, row + batch.num_rows))])
        row += batch.num_rows


def rows_items(name: str, path: str, cols: dict[str, str | None], batch, limits: InputLimits,
                locations: list[ItemLocation] | None = None) -> list[RawItem]:
    """The items of a batch (or table) of rows read with the columns ``cols``, in row order, each with its
    location where ``locations`` are given."""
    images = batch.column(cols["image"])
    sizes = cell_sizes(images)
    # the image cells are turned into Python bytes one at a time, and only those within the cap
    data = batch.drop_columns([cols["image"]]).to_pydict()
    out = []
    for i in range(batch.num_rows):
        ident = data[cols["id"]][i]
        if ident is None:
            raise SourceError(f"Parquet file {path!r}: row with a null {cols['id']!r}")
        ident = str(ident)
        caption = data[cols["caption"]][i] if cols["caption"] else None
        caption = None if caption is None else str(caption)
        label = data[cols["label"]][i] if cols["label"] else None
        label = None if label is None else str(label)
        reason = cell_problem(sizes[i], cols["image"], limits)
        image = None if reason is not None else image_bytes(images[i].as_py())
        if image is None and reason is None:
            status = data[cols["status"]][i] if cols["status"] else None
            error = data[cols["error"]][i] if cols["error"] else None
            reason = "no image data in column " + repr(cols["image"])
            if status and status != "success":
                reason += f" (img2dataset status {status!r}{': ' + str(error) if error else ''})"
        out.append(RawItem(name, ident, data=image, caption=caption, label=label, skip_reason=reason,
                           location=None if locations is None else locations[i]))
    return out


def read_located(name: str, path: str, located: dict[str, ItemLocation],
                 limits: InputLimits = DEFAULT_LIMITS) -> dict[str, RawItem]:
    """The rows of one Parquet file (a local path or a URL, read in byte ranges) at their recorded locations:
    only the row groups that hold them are read, and of those only the rows asked for become items. An id whose
    recorded row holds another id now (the file was rewritten) is absent: the caller looks for it otherwise."""
    import pyarrow as pa

    out: dict[str, RawItem] = {}
    with parquet_file(path) as pf:
        cols = parquet_columns(path, pf)
        by_group: dict[int, list[tuple[int, str]]] = {}
        for ident, location in located.items():
            if location.row_group is not None and location.row is not None \
                    and 0 <= location.row_group < pf.num_row_groups:
                by_group.setdefault(location.row_group, []).append((location.row, ident))
        for group, rows in sorted(by_group.items()):
            n = pf.metadata.row_group(group).num_rows
            rows = sorted((r, ident) for r, ident in rows if 0 <= r < n)
            if not rows:
                continue
            table = pf.read_row_group(group, columns=[c for c in cols.values() if c])
            picked = table.take(pa.array([r for r, _ in rows], pa.int64()))
            ids = picked[cols["id"]].to_pylist()
            # only the rows still holding their id are turned into items (a null id among them does not raise)
            keep = [i for i, ((_, ident), now) in enumerate(zip(rows, ids)) if now is not None and str(now) == ident]
            if len(keep) < len(rows):
                picked = picked.take(pa.array(keep, pa.int64()))
            for item in rows_items(name, path, cols, picked, limits):
                out[item.id] = item
    return out


def count_rows(paths: tuple[str, ...]) -> int | None:
    """The rows of the Parquet files from their footers; None if one cannot be read."""
    total = 0
    for path in paths:
        try:
            with parquet_file(path) as pf:
                total += pf.metadata.num_rows
        except (SourceError, OSError):  # a bad file is reported when it is read, not here
            return None
    return total
