"""Source specs: what a spec names, opened as a ``Source`` that streams its items.

A source spec is a path, optionally prefixed with its kind (``folder:``, ``parquet:``, ``wds:``). Without a
prefix the kind is inferred: a ``.parquet`` file or a directory of them is Parquet; a ``.tar`` (``.tar.gz``,
``.tgz``) file, a directory of them, a glob or a brace pattern (``shards-{000..009}.tar``) is WebDataset;
any other directory is an image folder. The evaluation-set layouts of ``overlap_audit.sources.layouts`` (Hugging
Face hub Parquet and ``save_to_disk`` folders, CLIP_benchmark folders, CIFAR python batches) are recognised
first, by their prefix (``hf:``, ``clip_benchmark:``, ``cifar:``) or their files. Nothing is decoded here:
items carry bytes or a path, and decoding happens in worker processes (``overlap_audit.embed``).

Remote and streamed shards: a path with a URL scheme (``https://``, ``s3://``, ``gs://``, any fsspec
protocol) is read through fsspec (the ``remote`` extra): tars as a stream, Parquet through file objects
that read byte ranges. ``pipe:CMD`` runs the command the user wrote and reads its standard output as a
tar stream (WebDataset's convention). Brace patterns expand first, so each shard is one URL or one command.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import DuplicateIdError, SourceError, param
from ..limits import DEFAULT_LIMITS, InputLimits
from ..values import RawItem
from .folder import count_folder, iter_folder
from .layouts import LAYOUT_KINDS, iter_layout, layout_path, open_layout
from .parquet import check_parquet_ids, count_rows, iter_parquet
from .remote import (PIPE_PREFIX, check_urls, expand_glob, is_pipe, is_url, list_dir, pipe_argv, url_name,
                     url_protocol)
from .webdataset import TAR_SUFFIXES, iter_wds, stats_count

SOURCE_KINDS = ("folder", "parquet", "wds", *LAYOUT_KINDS)


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
            return count_folder(self.paths[0])
        if self.kind == "parquet":
            return count_rows(self.paths)
        if self.kind == "wds":
            if any(is_url(p) or is_pipe(p) for p in self.paths):
                return None  # counting would read every shard once more
            return stats_count(self.paths)
        return None

    def iter_items(self, limits: InputLimits | None = None) -> Iterator[RawItem]:
        """Stream the source's items in a deterministic order; raises DuplicateIdError on a repeated id.
        Items over a cap of ``limits`` (default ``InputLimits()``) come as skipped."""
        limits = limits or DEFAULT_LIMITS
        if self.kind == "folder":
            items = iter_folder(self.name, self.paths[0], self.labels_from_folders, limits)
        elif self.kind == "parquet":
            check_parquet_ids(self.name, self.paths)
            items = iter_parquet(self.name, self.paths, limits)
        elif self.kind in LAYOUT_KINDS:
            items = iter_layout(self.kind, self.paths, self.name)
        else:
            items = iter_wds(self.name, self.paths, limits)
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
                              "kind, wds: or parquet: (clip_benchmark: for a CLIP_benchmark folder)")
    check_urls(spec, urls)
    return Source(kind, tuple(urls), name or default_name, spec, labels_from_folders)


def readback_problem(source: Source, files: Iterable[int] | None = None) -> str | None:
    """Why the items of a source recorded in an index manifest cannot be read back, or None when they can:
    a local file that no longer exists, or a ``pipe:`` command (a command recorded in a file is not run).
    With ``files`` (positions in its paths: where the wanted items were recorded) only those are checked."""
    for path in source.paths if files is None else (source.paths[i] for i in sorted(set(files))):
        if is_pipe(path):
            return (f"source {source.spec!r} is a pipe: command, which is run only when given on the command "
                    "line, never from an index manifest")
        if not is_url(path) and not os.path.exists(path):
            return f"source {source.spec!r} is no longer readable ({path} does not exist)"
    return None


def parse_eval_spec(spec: str) -> tuple[str, str]:
    """Split ``NAME=SOURCE`` into its parts."""
    name, sep, source = spec.partition("=")
    if not sep or not name or not source:
        raise SourceError(f"{param('evals', spec)}: expected NAME=SOURCE, e.g. cifar10=/data/cifar10/test")
    return name.strip(), source.strip()


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
    if is_url(path) or is_pipe(path):
        return path, False  # nothing here is written to
    if not os.path.exists(path) and (any(ch in path for ch in "*?[") or re.search(r"\{\d+\.\.\d+\}", path)):
        parts = Path(path).parts
        fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?[{"))
        return os.path.realpath(Path(*parts[:fixed]) if fixed else "."), True
    return os.path.realpath(path), os.path.isdir(path)

