"""Sources: image folders, img2dataset-style Parquet, and WebDataset tar shards, streamed as RawItems.

A source spec is a path, optionally prefixed with its kind (``folder:``, ``parquet:``, ``wds:``). Without a
prefix the kind is inferred: a ``.parquet`` file or a directory of them is Parquet; a ``.tar`` (``.tar.gz``,
``.tgz``) file, a directory of them, a glob or a brace pattern (``shards-{000..009}.tar``) is WebDataset;
any other directory is an image folder. The evaluation-set layouts of ``overlap_audit.sources.layouts`` (Hugging Face
hub Parquet and ``save_to_disk`` folders, CLIP_benchmark folders, CIFAR python batches) are recognised
first, by their prefix (``hf:``, ``clip_benchmark:``, ``cifar:``) or their files. Nothing is decoded here:
items carry bytes or a path, and decoding happens in worker processes (``overlap_audit.embed``).

Only regular files are read, and nothing larger than the caps of ``limits.InputLimits``: an image file, a
Parquet image cell or a tar member over its cap, and a FIFO, device or socket, is listed as skipped with
the reason.

Remote and streamed shards: a path with a URL scheme (``https://``, ``s3://``, ``gs://``, any fsspec
protocol) is read through fsspec (the ``remote`` extra): tars as a stream, Parquet through file objects
that read byte ranges. ``pipe:CMD`` runs the command the user wrote and reads its standard output as a
tar stream (WebDataset's convention). Brace patterns expand first, so each shard is one URL or one command.

Why one module of this length: the three corpus formats share the id rules, the duplicate-id check, the
regular-file and size checks and reading items back by id (``fetch_items``); split apart, each would import
those from the others.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import DuplicateIdError, OutputDirError, SourceError
from .layouts import LAYOUT_KINDS, iter_layout, layout_path, open_layout
from ..limits import DEFAULT_LIMITS, InputLimits, ReadRefused, file_problem, read_file
from .remote import (PIPE_PREFIX, PipeStream, expand_glob, is_pipe, is_url, list_dir, missing_urls, open_url,
                      pipe_argv, url_name, url_protocol)
from ..values import RawItem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
PARQUET_IMAGE_COLUMNS = ("jpg", "png", "webp", "image")
PARQUET_ID_COLUMNS = ("key", "id")
PARQUET_CAPTION_COLUMNS = ("caption", "txt")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SOURCE_KINDS = ("folder", "parquet", "wds", *LAYOUT_KINDS)
# Files in an image folder that are read as part of an image's record rather than listed as skipped.
SIDECAR_SUFFIXES = (".txt", ".json", ".cls")


@dataclass(frozen=True)
class Source:
    """A parsed source spec. ``name`` is what records and reports call it. ``classnames`` (label ``i`` is
    ``classnames[i]``) and ``templates`` are those the source's layout ships, for zero-shot prompts."""

    kind: str  # one of SOURCE_KINDS
    paths: tuple[str, ...]
    name: str
    spec: str
    labels_from_folders: bool = False
    classnames: tuple[str, ...] | None = None
    templates: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "name": self.name, "paths": list(self.paths)}

    def count(self) -> int | None:
        """How many items ``iter_items`` will give, where that is cheap to know (a folder's listing, Parquet
        row counts from the file footers, img2dataset's ``*_stats.json`` beside every shard); else None."""
        if self.kind == "folder":
            files, unreadable = _walk(self.paths[0])
            stems = _image_stems(files)
            return len(unreadable) + sum(1 for rel in files if not _is_sidecar(rel, stems))
        if self.kind == "parquet":
            total = 0
            for path in self.paths:
                try:
                    with _parquet_file(path) as pf:
                        total += pf.metadata.num_rows
                except (SourceError, OSError):  # a bad file is reported when it is read, not here
                    return None
            return total
        if self.kind == "wds":
            if any(is_url(p) or is_pipe(p) for p in self.paths):
                return None  # counting would read every shard once more
            return _wds_stats_count(self.paths)
        return None

    def iter_items(self, limits: InputLimits | None = None) -> Iterator[RawItem]:
        """Stream the source's items in a deterministic order; raises DuplicateIdError on a repeated id.
        Items over a cap of ``limits`` (default ``InputLimits()``) come as skipped."""
        limits = limits or DEFAULT_LIMITS
        if self.kind == "folder":
            items = _iter_folder(self, limits)
        elif self.kind == "parquet":
            _check_parquet_ids(self)
            items = _iter_parquet(self, limits)
        elif self.kind in LAYOUT_KINDS:
            items = iter_layout(self.kind, self.paths, self.name)
        else:
            items = _iter_wds(self, limits)
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise DuplicateIdError(self.name, [item.id])
            seen.add(item.id)
            yield item


MAX_BRACE_PATHS = 1_000_000  # a shard pattern naming more files than this is a typo, not a corpus


def _brace_count(pattern: str) -> int:
    """How many paths ``_expand_braces`` would give, computed without expanding."""
    count = 1
    for lo, hi in re.findall(r"\{(\d+)\.\.(\d+)\}", pattern):
        count *= max(0, int(hi) - int(lo) + 1)
    return count


def _expand_braces(pattern: str) -> list[str]:
    if _brace_count(pattern) > MAX_BRACE_PATHS:
        raise SourceError(f"source pattern {pattern!r} names {_brace_count(pattern):,} paths, more than "
                          f"{MAX_BRACE_PATHS:,}: check its {{N..M}} ranges")
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo)
    out = []
    for n in range(int(lo), int(hi) + 1):
        out.extend(_expand_braces(pattern[: match.start()] + str(n).zfill(width) + pattern[match.end():]))
    return out


def _file_part(path: str) -> str:
    """The part of a path or URL that ends with the file's suffix (a URL's query string left out)."""
    return urlsplit(path).path if is_url(path) else path


def _is_tar(path: str) -> bool:
    return _file_part(path).lower().endswith(TAR_SUFFIXES)


def _is_parquet(path: str) -> bool:
    return _file_part(path).endswith(".parquet")


def open_source(spec: str, *, name: str | None = None, labels_from_folders: bool = False) -> Source:
    """Parse a source spec into a Source, checking that its files exist."""
    layout = open_layout(spec)
    if layout is not None:
        return Source(layout.kind, layout.paths, name or layout.name, spec, labels_from_folders,
                      classnames=layout.classnames, templates=layout.templates)
    kind = None
    path = spec
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in ("folder", "parquet", "wds"):
        kind, path = prefix, rest
    if is_pipe(path) or is_url(path):
        return _open_streamed(spec, kind, path, name, labels_from_folders)
    path = os.path.expanduser(path)
    default_name = Path(path.rstrip("/")).name or path

    is_pattern = any(ch in path for ch in "*?[") or re.search(r"\{\d+\.\.\d+\}", path)
    if is_pattern and not os.path.exists(path):  # a real file named "set[1]" is read as itself
        paths = sorted({p for pat in _expand_braces(path) for p in (glob.glob(pat) if any(c in pat for c in "*?[") else [pat])})
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise SourceError(f"source {spec!r}: {len(missing)} shard(s) do not exist, e.g. {missing[0]!r}")
        if not paths:
            raise SourceError(f"source {spec!r}: the pattern matches no file")
        if kind is None:
            kind = "parquet" if all(p.endswith(".parquet") for p in paths) else "wds"
        return Source(kind, tuple(os.path.abspath(p) for p in paths), name or default_name, spec, labels_from_folders)

    if not os.path.exists(path):
        raise SourceError(f"source {spec!r}: no such file or directory")
    if os.path.isfile(path):
        if kind is None:
            if path.endswith(".parquet"):
                kind = "parquet"
            elif _is_tar(path):
                kind = "wds"
            else:
                raise SourceError(
                    f"source {spec!r} is a file that is neither .parquet nor .tar; give a folder of images, "
                    "Parquet files or WebDataset shards"
                )
        if kind == "folder":
            raise SourceError(f"source {spec!r}: 'folder:' needs a directory")
        return Source(kind, (os.path.abspath(path),), name or default_name, spec, labels_from_folders)
    if not os.path.isdir(path):
        raise SourceError(f"source {spec!r} is neither a regular file nor a directory (a FIFO, device or socket "
                          "is not read); give a folder of images, Parquet files or WebDataset shards")

    entries = sorted(os.listdir(path))
    tars = [os.path.join(path, e) for e in entries if _is_tar(e)]
    parquets = [os.path.join(path, e) for e in entries if e.endswith(".parquet")]
    if kind is None:
        # img2dataset's webdataset output holds .tar shards plus metadata-only .parquet files: tars win.
        kind = "wds" if tars else ("parquet" if parquets else "folder")
    if kind == "wds":
        if not tars:
            raise SourceError(f"source {spec!r}: no .tar shards in this directory")
        return Source(kind, tuple(os.path.abspath(t) for t in tars), name or default_name, spec, labels_from_folders)
    if kind == "parquet":
        if not parquets:
            raise SourceError(f"source {spec!r}: no .parquet files in this directory")
        return Source(kind, tuple(os.path.abspath(p) for p in parquets), name or default_name, spec,
                      labels_from_folders)
    # absolute paths: the index manifest and report.json record them, and later steps (the report's gallery,
    # `pairs`) read corpus items back from another working directory
    return Source("folder", (os.path.abspath(path),), name or default_name, spec, labels_from_folders)


def as_source(spec, *, name: str, labels_from_folders: bool = False):
    """An evaluation set as a source: a spec is opened (``open_source``); an already opened source (a ``Source``,
    or ``memory.MemorySource``: anything with ``iter_items``) is used as it is, under ``name``."""
    if isinstance(spec, (str, os.PathLike)):
        return open_source(os.fspath(spec), name=name, labels_from_folders=labels_from_folders)
    if not hasattr(spec, "iter_items"):
        raise SourceError(f"evaluation set {name!r}: give a source spec (a path) or an in-memory source "
                          f"(overlap_audit.sources.memory.memory_source), not a {type(spec).__name__}")
    import dataclasses

    return dataclasses.replace(spec, name=name) if spec.name != name else spec


def source_spec(spec, *, name: str) -> str:
    """What a report records for the evaluation set ``name``: its spec, or an opened source's ``spec``."""
    return os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else str(as_source(spec, name=name).spec)


def _open_streamed(spec: str, kind: str | None, path: str, name: str | None, labels_from_folders: bool) -> Source:
    """A source of ``pipe:`` commands or URLs: one per shard once brace patterns are expanded."""
    if is_pipe(path):
        if kind not in (None, "wds"):
            raise SourceError(f"source {spec!r}: a pipe: command is read as a WebDataset tar stream, not as {kind}")
        commands = _expand_braces(path)
        pipe_argv(commands[0][len(PIPE_PREFIX):])  # a command that cannot be parsed fails now, not mid-run
        named = [w for w in path[len(PIPE_PREFIX):].split() if is_url(w) or _is_tar(w)]
        default_name = (url_name(named[-1]) if is_url(named[-1]) else Path(named[-1]).name) if named else "pipe"
        return Source("wds", tuple(commands), name or default_name, spec, labels_from_folders)
    if url_protocol(path) in ("file", "local"):
        raise SourceError(f"source {spec!r}: give a local path without the file:// prefix")
    if kind == "folder":
        raise SourceError(f"source {spec!r}: an image folder is read from a local path; remote sources are "
                          "WebDataset tars or Parquet files")
    default_name = url_name(path)
    # over http(s) "?" starts a query string, and a server has no listing to match a glob against or to read
    # as a directory
    listable = url_protocol(path) not in ("http", "https")
    has_glob = listable and any(ch in path.split("://", 1)[1] for ch in "*?[")
    urls = sorted({u for pat in _expand_braces(path) for u in (expand_glob(pat) if has_glob else [pat])})
    if not urls:
        raise SourceError(f"source {spec!r}: the pattern matches no file")
    if listable and len(urls) == 1 and not _is_tar(urls[0]) and not _is_parquet(urls[0]):
        listed = list_dir(urls[0])
        if listed is not None:  # a directory (an object-store prefix): its shards, as for a local folder
            tars = [u for u in listed if _is_tar(u)]
            parquets = [u for u in listed if _is_parquet(u)]
            kind = kind or ("wds" if tars else "parquet")
            urls = tars if kind == "wds" else parquets
            if not urls:
                raise SourceError(f"source {spec!r}: no {'.tar shards' if kind == 'wds' else '.parquet files'} "
                                  "in this directory")
    if kind is None:
        if all(_is_parquet(u) for u in urls):
            kind = "parquet"
        elif all(_is_tar(u) for u in urls):
            kind = "wds"
        else:
            raise SourceError(f"source {spec!r}: a URL of neither .parquet nor .tar files; prefix it with its "
                              "kind, wds: or parquet:")
    missing = missing_urls(urls)
    if missing:
        raise SourceError(f"source {spec!r}: {len(missing)} shard(s) do not exist or cannot be reached, "
                          f"e.g. {missing[0]!r}")
    return Source(kind, tuple(urls), name or default_name, spec, labels_from_folders)


def readback_problem(source: Source) -> str | None:
    """Why the items of a source recorded in an index manifest cannot be read back, or None when they can:
    a local file that no longer exists, or a ``pipe:`` command (a command recorded in a file is not run)."""
    for path in source.paths:
        if is_pipe(path):
            return (f"source {source.spec!r} is a pipe: command, which is run only when given on the command "
                    "line, never from an index manifest")
        if not is_url(path) and not os.path.exists(path):
            return f"source {source.spec!r} is no longer readable ({path} does not exist)"
    return None


# ---------------------------------------------------------------- folders


def _read_text(path: str, max_bytes: int = DEFAULT_LIMITS.max_file_bytes) -> str | None:
    """A sidecar's text; None when it is missing, unreadable, not a regular file or over ``max_bytes``."""
    try:
        return read_file(path, max_bytes).decode("utf-8", errors="replace").strip()
    except (OSError, ReadRefused):
        return None


def printable_id(rel: str) -> str:
    """A path as an id that is valid UTF-8: undecodable bytes in file names become \\xNN escapes."""
    return rel.replace(os.sep, "/").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _id_path(ident: str) -> str:
    """The file name behind a ``printable_id``: its \\xNN escapes back to the undecodable bytes."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), ident.encode("utf-8"))
    return raw.decode("utf-8", "surrogateescape")


def _walk(root: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Every file under root (following links to directories, once each), and the directories that could
    not be read, with why."""
    files: list[str] = []
    unreadable: list[tuple[str, str]] = []
    seen_dirs: set[str] = set()

    def onerror(exc: OSError) -> None:
        unreadable.append((os.path.relpath(exc.filename, root) if exc.filename else ".", exc.strerror or str(exc)))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a link back to a directory already read: do not loop or read twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for fn in filenames:
            files.append(os.path.relpath(os.path.join(dirpath, fn), root))
    files.sort()
    return files, unreadable


def _image_stems(files: list[str]) -> set[str]:
    return {os.path.splitext(f)[0] for f in files if f.lower().endswith(IMAGE_EXTENSIONS)}


def _is_sidecar(rel: str, image_stems: set[str]) -> bool:
    """A caption or label file read as part of its image's record (not an item of its own)."""
    stem, ext = os.path.splitext(rel)
    return ext.lower() in SIDECAR_SUFFIXES and stem in image_stems


def _iter_folder(src: Source, limits: InputLimits = DEFAULT_LIMITS) -> Iterator[RawItem]:
    root = src.paths[0]
    files, unreadable = _walk(root)
    for rel, why in unreadable:
        yield RawItem(src.name, printable_id(rel) + "/", skip_reason=f"unreadable directory: {why}")
    image_stems = _image_stems(files)
    for rel in files:
        rel_id = printable_id(rel)
        full = os.path.join(root, rel)
        stem, ext = os.path.splitext(rel)
        label = None
        if src.labels_from_folders:
            parts = rel_id.split("/")
            label = parts[0] if len(parts) > 1 else None
        if ext.lower() in IMAGE_EXTENSIONS:
            problem = file_problem(full, limits.max_file_bytes)  # never opens a FIFO or device
            if problem is not None:
                yield RawItem(src.name, rel_id, label=label, skip_reason=problem)
                continue
            txt = os.path.join(root, stem + ".txt")
            caption = _read_text(txt, limits.max_file_bytes) if os.path.exists(txt) else None
            yield RawItem(src.name, rel_id, path=full, caption=caption, label=label)
        elif _is_sidecar(rel, image_stems):
            continue  # read together with its image
        else:
            yield RawItem(src.name, rel_id, label=label,
                          skip_reason=f"not an image file (extension {ext or 'none'!r} is not one of "
                                      f"{', '.join(IMAGE_EXTENSIONS)})")


# ---------------------------------------------------------------- parquet


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
def _parquet_file(path: str):
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


def _parquet_columns(path: str, pf) -> dict[str, str | None]:
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


def _check_parquet_ids(src: Source) -> None:
    seen: set[str] = set()
    dups: list[str] = []
    for path in src.paths:
        with _parquet_file(path) as pf:
            ids = pf.read(columns=[_parquet_columns(path, pf)["id"]]).column(0).to_pylist()
        for value in ids:
            key = str(value)
            if key in seen:
                dups.append(key)
            seen.add(key)
    if dups:
        raise DuplicateIdError(src.name, sorted(set(dups)))


def _image_bytes(value) -> bytes | None:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None  # null, or a path string (not read)


def _cell_sizes(column) -> list[int]:
    """The byte length of each image cell of an Arrow column (0 for null, a path, or no bytes)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        return [n for chunk in column.chunks for n in _cell_sizes(chunk)]
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            return [0] * len(column)
        column = column.field("bytes")
    if pa.types.is_null(column.type) or pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return [0] * len(column)
    return [0 if n is None else int(n) for n in pc.binary_length(column).to_pylist()]


def _cell_problem(size: int, column: str, limits: InputLimits) -> str | None:
    if size > limits.max_cell_bytes:
        return (f"Parquet cell of column {column!r} of {size:,} bytes exceeds the limit of "
                f"{limits.max_cell_bytes:,} bytes: not read")
    return None


def _iter_parquet(src: Source, limits: InputLimits = DEFAULT_LIMITS) -> Iterator[RawItem]:
    for path in src.paths:
        with _parquet_file(path) as pf:
            yield from _parquet_items(src, path, pf, limits)


def _parquet_items(src: Source, path: str, pf, limits: InputLimits) -> Iterator[RawItem]:
    cols = _parquet_columns(path, pf)
    wanted = [c for c in cols.values() if c]
    for batch in pf.iter_batches(batch_size=256, columns=wanted):
        images = batch.column(wanted.index(cols["image"]))
        sizes = _cell_sizes(images)
        # the image cells are turned into Python bytes one at a time, and only those within the cap
        data = batch.drop_columns([cols["image"]]).to_pydict()
        for i in range(batch.num_rows):
            ident = data[cols["id"]][i]
            if ident is None:
                raise SourceError(f"Parquet file {path!r}: row with a null {cols['id']!r}")
            ident = str(ident)
            caption = data[cols["caption"]][i] if cols["caption"] else None
            caption = None if caption is None else str(caption)
            label = data[cols["label"]][i] if cols["label"] else None
            label = None if label is None else str(label)
            reason = _cell_problem(sizes[i], cols["image"], limits)
            image = None if reason is not None else _image_bytes(images[i].as_py())
            if image is None and reason is None:
                status = data[cols["status"]][i] if cols["status"] else None
                error = data[cols["error"]][i] if cols["error"] else None
                reason = "no image data in column " + repr(cols["image"])
                if status and status != "success":
                    reason += f" (img2dataset status {status!r}{': ' + str(error) if error else ''})"
            yield RawItem(src.name, ident, data=image, caption=caption, label=label, skip_reason=reason)


# ---------------------------------------------------------------- webdataset


def _wds_split(name: str) -> tuple[str, str]:
    """Split a member name into (key, extension) by WebDataset's rule: the first dot of the basename."""
    directory, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (os.path.join(directory, stem) if directory else stem), ext.lower()


# The members of a sample that are read; any other member is listed by extension but never read.
_WDS_READ = (*WDS_IMAGE_EXTENSIONS, "txt", "json", "cls")


class _Refused(str):
    """A member that was not read: the reason."""


def _wds_item(src: Source, key: str, parts: dict[str, bytes]) -> RawItem:
    refused = {ext: parts.pop(ext) for ext in list(parts) if isinstance(parts[ext], _Refused)}
    caption = label = None
    if "txt" in parts:
        caption = parts["txt"].decode("utf-8", errors="replace").strip()
    if "json" in parts:
        try:
            meta = json.loads(parts["json"].decode("utf-8", errors="replace"))
        except ValueError:
            meta = {}
        if isinstance(meta, dict):
            if caption is None and isinstance(meta.get("caption"), str):
                caption = meta["caption"]
            if meta.get("label") is not None:
                label = str(meta["label"])
    if "cls" in parts:
        label = parts["cls"].decode("utf-8", errors="replace").strip()
    image_ext = next((e for e in WDS_IMAGE_EXTENSIONS if e in parts or e in refused), None)
    if image_ext in refused:
        return RawItem(src.name, key, caption=caption, label=label, skip_reason=refused[image_ext])
    if image_ext is None:
        found = ", ".join(sorted([*parts, *refused])) or "nothing"
        return RawItem(src.name, key, caption=caption, label=label,
                       skip_reason=f"no image in the sample (found {found})")
    return RawItem(src.name, key, data=parts[image_ext], caption=caption, label=label)


class _Tracked:
    """A shard's bytes, read once from front to back, keeping the last ones read: where the tar reader
    stopped can then be checked without seeking back, which a stream (HTTP, a command's output) cannot."""

    KEEP = 1 << 16  # the tar reader reads ahead of its position by one 10 KiB record at most

    def __init__(self, raw):
        self.raw = raw
        self.pos = 0
        self.kept = bytearray()  # the bytes just before ``pos``

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.pos += len(data)
        self.kept += data
        if len(self.kept) > 2 * self.KEEP:
            del self.kept[: len(self.kept) - self.KEEP]
        return data

    def block(self, offset: int, size: int = 512) -> bytes | None:
        """The ``size`` bytes from ``offset`` (fewer where the stream ends); None if no longer kept."""
        while self.pos < offset + size and self.read(offset + size - self.pos):
            pass
        start = self.pos - len(self.kept)
        if offset < start:
            return None
        return bytes(self.kept[offset - start: offset - start + size])


def _tar_end_problem(stream: _Tracked, tar: tarfile.TarFile) -> str | None:
    """For an uncompressed tar read up to ``tar.offset``: why its end is not a clean end-of-archive, or None.

    Python's tarfile stops silently at a truncated or garbled header after the first one; a clean shard has
    an all-zero end-of-archive block where reading stopped.
    """
    if getattr(tar.fileobj, "comptype", "tar") != "tar":
        return None  # compressed: truncation raises while decompressing instead
    offset = tar.offset
    block = stream.block(offset)
    if block is None:  # pragma: no cover - the reader never runs that far ahead
        return None
    if len(block) < 512:
        return f"the shard ends at byte {offset + len(block):,} without an end-of-archive marker: it is truncated"
    if block.strip(b"\0"):
        return f"unreadable tar header at byte {offset:,}: the rest of the shard was not read"
    return None


def _wds_stats_count(shards: tuple[str, ...]) -> int | None:
    """The samples in the shards from img2dataset's ``NNNNN_stats.json`` ("successes": the samples it wrote
    into ``NNNNN.tar``) when every shard has one; else None."""
    total = 0
    for shard in shards:
        base = shard
        for suffix in TAR_SUFFIXES:
            if base.lower().endswith(suffix):
                base = base[: -len(suffix)]
                break
        try:
            with open(base + "_stats.json", encoding="utf-8") as fh:
                n = json.load(fh).get("successes")
        except (OSError, ValueError, AttributeError):
            return None
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            return None
        total += n
    return total




def _wds_member(tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str, limits: InputLimits) -> bytes:
    """A member's bytes, read only when the sample needs it and its declared size is within the cap."""
    if ext not in _WDS_READ:
        return b""  # not needed: stream mode skips its data without keeping it
    cap = limits.max_member_bytes
    if member.size > cap:
        return _Refused(f"tar member {member.name!r} of {member.size:,} bytes exceeds the limit of {cap:,} "
                        "bytes: not read")
    fh = tar.extractfile(member)
    data = fh.read(cap + 1) if fh is not None else b""
    if len(data) > cap:  # pragma: no cover - tarfile never returns more than the declared size
        return _Refused(f"tar member {member.name!r} exceeds the limit of {cap:,} bytes: not read")
    return data


def _iter_wds(src: Source, limits: InputLimits = DEFAULT_LIMITS) -> Iterator[RawItem]:
    for shard in src.paths:
        yield from _shard_items(src, shard, limits)


def _shard_name(shard: str) -> str:
    if is_pipe(shard):
        return shard
    return url_name(shard) if is_url(shard) else os.path.basename(shard)


def _open_shard(shard: str):
    """A shard's bytes as a stream: a local file, a URL (streamed through fsspec) or a command's output."""
    if is_pipe(shard):
        return PipeStream(shard[len(PIPE_PREFIX):])
    if is_url(shard):
        return open_url(shard, stream=True)
    return open(shard, "rb")


def _shard_items(src: Source, shard: str, limits: InputLimits) -> Iterator[RawItem]:
    shard_name = _shard_name(shard)
    key: str | None = None
    parts: dict[str, bytes] = {}
    if not is_pipe(shard) and not is_url(shard):
        problem = file_problem(shard, 1 << 62)
        if problem is not None:
            yield RawItem(src.name, f"{shard}#unreadable-after-start",
                          skip_reason=f"WebDataset shard {shard_name!r}: {problem}")
            return
    try:
        stream = _Tracked(_open_shard(shard))
    except OSError as exc:
        why = exc.strerror or ("not found" if isinstance(exc, FileNotFoundError) else str(exc))
        yield RawItem(src.name, f"{shard}#unreadable-after-start",
                      skip_reason=f"WebDataset shard {shard_name!r} cannot be opened: {why}; not read")
        return
    try:
        try:
            # "r|*" reads the shard as a stream (no seeking, no extraction to disk), compressed or not.
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    if member.isdir():
                        continue
                    if not member.isfile():
                        kind = "link" if member.issym() or member.islnk() else "special file"
                        yield RawItem(src.name, f"{shard}#{member.name}",
                                      skip_reason=f"tar member is a {kind}, not a file: not read")
                        continue
                    mkey, ext = _wds_split(member.name)
                    if key is not None and mkey != key:
                        yield _wds_item(src, key, parts)
                        parts = {}
                    key = mkey
                    parts[ext] = _wds_member(tar, member, ext, limits)
            end_problem = _tar_end_problem(stream, tar)
            if isinstance(stream.raw, PipeStream):
                end_problem = end_problem or stream.raw.finish()  # raises if the command failed
        except (tarfile.TarError, OSError, EOFError) as exc:
            if isinstance(stream.raw, PipeStream):
                failure = stream.raw.exited_with_failure()
                if failure is not None:  # the command's failure, not the tar it left unfinished
                    raise SourceError(failure) from None
            if key is not None:
                yield RawItem(src.name, key, skip_reason=f"WebDataset shard {shard_name!r} ends inside this "
                                                         f"sample: {exc}")
            yield RawItem(src.name, f"{shard}#unreadable-after-{key or 'start'}",
                          skip_reason=f"WebDataset shard {shard_name!r} is corrupt or truncated: {exc}; "
                                      "the rest of this shard was not read")
            return
        if key is not None:
            yield _wds_item(src, key, parts)
        if end_problem:
            yield RawItem(src.name, f"{shard}#unreadable-after-{key or 'start'}", skip_reason=end_problem)
    finally:
        stream.raw.close()  # a command still running (the reader stopped early) is killed


def parse_eval_spec(spec: str) -> tuple[str, str]:
    """Split ``NAME=SOURCE`` into its parts."""
    name, sep, source = spec.partition("=")
    if not sep or not name or not source:
        raise SourceError(f"--eval {spec!r}: expected NAME=SOURCE, e.g. cifar10=/data/cifar10/test")
    return name.strip(), source.strip()


# ---------------------------------------------------------------- outputs kept apart from sources


def source_location(spec: str) -> tuple[str, bool]:
    """Where a source spec reads (resolved: links and ``..`` followed), and whether that is a folder whose
    contents make up the source.

    A directory (an image folder, a folder of Parquet files or tar shards, a hub, ``save_to_disk``,
    CLIP_benchmark or CIFAR folder) is such a folder: a file written anywhere inside it may be read as part
    of the source on a later run. So is the folder of a glob or brace pattern (the deepest folder before its
    first wildcard), whose matches change as files appear there. A single file (a Parquet file, a tar)
    is not: files written beside it are never read, so its folder may hold an output.
    """
    path = layout_path(spec)
    if path is None:
        prefix, sep, rest = spec.partition(":")
        path = os.path.expanduser(rest if sep and prefix in ("folder", "parquet", "wds") else spec)
    if not os.path.exists(path) and (any(ch in path for ch in "*?[") or re.search(r"\{\d+\.\.\d+\}", path)):
        parts = Path(path).parts
        fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?[{"))
        return os.path.realpath(Path(*parts[:fixed]) if fixed else "."), True
    return os.path.realpath(path), os.path.isdir(path)


def _within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    return os.path.commonpath([path, folder]) == folder


def check_output_apart(out_dir: str | os.PathLike, reads: Iterable[tuple[str, str, bool]]) -> None:
    """Refuse an output directory that is, or lies inside, a folder a run reads, and anything the run reads
    that lies inside the output directory. ``reads`` holds ``(what, path, is_folder)``, e.g.
    ``("corpus source", *source_location(spec))``; only folders (``is_folder``) are refused as a place for
    the output. Paths are compared resolved, so a link does not hide an overlap.
    """
    out = os.path.realpath(out_dir)
    for what, path, is_folder in reads:
        path = os.path.realpath(path)
        if is_folder and _within(out, path):
            where = "is" if out == path else "lies inside"
            raise OutputDirError(f"--out {out} {where} the {what} {path}: files written there would be read as "
                                 "part of it on a later run; give an --out outside it")
        if _within(path, out):
            raise OutputDirError(f"the {what} {path} lies inside --out {out}: writing there would replace or mix "
                                 "with what is read; give an --out that does not hold it")


# ---------------------------------------------------------------- fetching items by id


def fetch_items(source: Source, ids: Iterable[str], limits: InputLimits | None = None) -> dict[str, RawItem]:
    """The items of ``source`` with the given ids; an id the source no longer has maps to a RawItem whose
    ``skip_reason`` says so. Folders and Parquet are read directly; WebDataset and the layouts of
    ``formats`` in one streaming pass that keeps only the wanted samples. Caps as in ``Source.iter_items``."""
    limits = limits or DEFAULT_LIMITS
    wanted = set(ids)
    found: dict[str, RawItem] = {}
    if not wanted:
        return found
    if source.kind == "folder":
        root = source.paths[0]
        for ident in wanted:
            full = os.path.join(root, *ident.split("/"))
            if not os.path.isfile(full) and "\\x" in ident:  # a name with bytes that are not UTF-8
                full = os.path.join(root, *_id_path(ident).split("/"))
            if not _inside(full, root):
                found[ident] = RawItem(source.name, ident, skip_reason=f"id {ident!r} names a path outside source "
                                                                       f"{source.spec!r}: not read")
                continue
            if not os.path.isfile(full):
                continue
            stem = os.path.splitext(full)[0]
            caption = _read_text(stem + ".txt", limits.max_file_bytes) if os.path.exists(stem + ".txt") else None
            label = ident.split("/")[0] if source.labels_from_folders and "/" in ident else None
            problem = file_problem(full, limits.max_file_bytes)
            found[ident] = RawItem(source.name, ident, path=None if problem else full, caption=caption,
                                   label=label, skip_reason=problem)
    elif source.kind == "parquet":
        found = _fetch_parquet(source, wanted, limits)
    else:
        for item in (_iter_wds(source, limits) if source.kind == "wds" else source.iter_items(limits)):
            if item.id in wanted and item.id not in found:
                found[item.id] = item
                if len(found) == len(wanted):
                    break
    for ident in wanted - set(found):
        found[ident] = RawItem(source.name, ident, skip_reason=f"no longer in source {source.spec!r}")
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
        with _parquet_file(path) as pf:
            cols = _parquet_columns(path, pf)
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
        sizes = _cell_sizes(images)
        for i, row in enumerate(table.drop_columns([cols["image"]]).to_pylist()):
            ident = str(row[cols["id"]])
            reason = _cell_problem(sizes[i], cols["image"], limits)
            image = None if reason is not None else _image_bytes(images[i].as_py())
            caption = row[cols["caption"]] if cols["caption"] else None
            label = row[cols["label"]] if cols["label"] else None
            found[ident] = RawItem(source.name, ident, data=image,
                                   caption=None if caption is None else str(caption),
                                   label=None if label is None else str(label),
                                   skip_reason=reason or (None if image is not None else "no image data"))
    return found
