"""Sources: image folders, img2dataset-style Parquet, and WebDataset tar shards, streamed as RawItems.

A source spec is a path, optionally prefixed with its kind (``folder:``, ``parquet:``, ``wds:``). Without a
prefix the kind is inferred: a ``.parquet`` file or a directory of them is Parquet; a ``.tar`` (``.tar.gz``,
``.tgz``) file, a directory of them, a glob or a brace pattern (``shards-{000..009}.tar``) is WebDataset;
any other directory is an image folder. Nothing is decoded here: items carry bytes or a path, and decoding
happens in worker processes (``overlap_audit.embed``).
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DuplicateIdError, SourceError
from .values import RawItem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
PARQUET_IMAGE_COLUMNS = ("jpg", "png", "webp", "image")
PARQUET_ID_COLUMNS = ("key", "id")
PARQUET_CAPTION_COLUMNS = ("caption", "txt")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# Files in an image folder that are read as part of an image's record rather than listed as skipped.
SIDECAR_SUFFIXES = (".txt", ".json", ".cls")


@dataclass(frozen=True)
class Source:
    """A parsed source spec. ``name`` is what records and reports call it."""

    kind: str  # "folder" | "parquet" | "wds"
    paths: tuple[str, ...]
    name: str
    spec: str
    labels_from_folders: bool = False

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
            import pyarrow.parquet as pq

            try:
                return sum(pq.ParquetFile(path).metadata.num_rows for path in self.paths)
            except Exception:  # noqa: BLE001 - a bad file is reported when it is read, not here
                return None
        if self.kind == "wds":
            return _wds_stats_count(self.paths)
        return None

    def iter_items(self) -> Iterator[RawItem]:
        """Stream the source's items in a deterministic order; raises DuplicateIdError on a repeated id."""
        if self.kind == "folder":
            items = _iter_folder(self)
        elif self.kind == "parquet":
            _check_parquet_ids(self)
            items = _iter_parquet(self)
        else:
            items = _iter_wds(self)
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise DuplicateIdError(self.name, [item.id])
            seen.add(item.id)
            yield item


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo)
    out = []
    for n in range(int(lo), int(hi) + 1):
        out.extend(_expand_braces(pattern[: match.start()] + str(n).zfill(width) + pattern[match.end():]))
    return out


def _is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def open_source(spec: str, *, name: str | None = None, labels_from_folders: bool = False) -> Source:
    """Parse a source spec into a Source, checking that its files exist."""
    kind = None
    path = spec
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in ("folder", "parquet", "wds"):
        kind, path = prefix, rest
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


# ---------------------------------------------------------------- folders


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
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


def _iter_folder(src: Source) -> Iterator[RawItem]:
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
            txt = os.path.join(root, stem + ".txt")
            caption = _read_text(txt) if os.path.exists(txt) else None
            yield RawItem(src.name, rel_id, path=full, caption=caption, label=label)
        elif _is_sidecar(rel, image_stems):
            continue  # read together with its image
        else:
            yield RawItem(src.name, rel_id, label=label,
                          skip_reason=f"not an image file (extension {ext or 'none'!r} is not one of "
                                      f"{', '.join(IMAGE_EXTENSIONS)})")


# ---------------------------------------------------------------- parquet


def _parquet_columns(path: str) -> dict[str, str | None]:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise SourceError(f"cannot read Parquet file {path!r}: {exc}") from None
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
    return {
        "image": image,
        "id": ident,
        "caption": next((c for c in PARQUET_CAPTION_COLUMNS if c in names), None),
        "label": "label" if "label" in names else None,
        "status": "status" if "status" in names else None,
        "error": "error_message" if "error_message" in names else None,
    }


def _check_parquet_ids(src: Source) -> None:
    import pyarrow.parquet as pq

    seen: set[str] = set()
    dups: list[str] = []
    for path in src.paths:
        cols = _parquet_columns(path)
        for value in pq.read_table(path, columns=[cols["id"]]).column(0).to_pylist():
            key = str(value)
            if key in seen:
                dups.append(key)
            seen.add(key)
    if dups:
        raise DuplicateIdError(src.name, sorted(set(dups)))


def _image_bytes(value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if isinstance(value, str):
        return None
    return bytes(value) if value is not None else None


def _iter_parquet(src: Source) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    for path in src.paths:
        cols = _parquet_columns(path)
        wanted = [c for c in cols.values() if c]
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=256, columns=wanted):
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                ident = data[cols["id"]][i]
                if ident is None:
                    raise SourceError(f"Parquet file {path!r}: row with a null {cols['id']!r}")
                ident = str(ident)
                caption = data[cols["caption"]][i] if cols["caption"] else None
                caption = None if caption is None else str(caption)
                label = data[cols["label"]][i] if cols["label"] else None
                label = None if label is None else str(label)
                raw = data[cols["image"]][i]
                image = _image_bytes(raw)
                reason = None
                if image is None:
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


def _wds_item(src: Source, key: str, parts: dict[str, bytes]) -> RawItem:
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
    image_ext = next((e for e in WDS_IMAGE_EXTENSIONS if e in parts), None)
    if image_ext is None:
        found = ", ".join(sorted(parts)) or "nothing"
        return RawItem(src.name, key, caption=caption, label=label,
                       skip_reason=f"no image in the sample (found {found})")
    return RawItem(src.name, key, data=parts[image_ext], caption=caption, label=label)


def _tar_end_problem(shard: str, offset: int) -> str | None:
    """For an uncompressed tar read up to ``offset``: why its end is not a clean end-of-archive, or None.

    Python's tarfile stops silently at a truncated or garbled header after the first one; a clean shard has
    an all-zero end-of-archive block where reading stopped.
    """
    if not shard.lower().endswith(".tar"):
        return None  # compressed: truncation raises while decompressing instead
    size = os.path.getsize(shard)
    if size - offset < 512:
        return f"the shard ends at byte {size:,} without an end-of-archive marker: it is truncated"
    with open(shard, "rb") as fh:
        fh.seek(offset)
        block = fh.read(512)
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


def _iter_wds(src: Source) -> Iterator[RawItem]:
    for shard in src.paths:
        shard_name = os.path.basename(shard)
        key: str | None = None
        parts: dict[str, bytes] = {}
        try:
            # "r|*" reads the shard as a stream (no seeking, no extraction to disk), compressed or not.
            with open(shard, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
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
                    fh_member = tar.extractfile(member)
                    parts[ext] = fh_member.read() if fh_member is not None else b""
            end_problem = _tar_end_problem(shard, tar.offset)
        except (tarfile.TarError, OSError, EOFError) as exc:
            if key is not None:
                yield RawItem(src.name, key, skip_reason=f"WebDataset shard {shard_name!r} ends inside this "
                                                         f"sample: {exc}")
                parts = {}
            yield RawItem(src.name, f"{shard}#unreadable-after-{key or 'start'}",
                          skip_reason=f"WebDataset shard {shard_name!r} is corrupt or truncated: {exc}; "
                                      "the rest of this shard was not read")
            key = None
            continue
        if key is not None:
            yield _wds_item(src, key, parts)
        if end_problem:
            yield RawItem(src.name, f"{shard}#unreadable-after-{key or 'start'}", skip_reason=end_problem)


def parse_eval_spec(spec: str) -> tuple[str, str]:
    """Split ``NAME=SOURCE`` into its parts."""
    name, sep, source = spec.partition("=")
    if not sep or not name or not source:
        raise SourceError(f"--eval {spec!r}: expected NAME=SOURCE, e.g. cifar10=/data/cifar10/test")
    return name.strip(), source.strip()


# ---------------------------------------------------------------- fetching items by id


def fetch_items(source: Source, ids: Iterable[str]) -> dict[str, RawItem]:
    """The items of ``source`` with the given ids; an id the source no longer has maps to a RawItem whose
    ``skip_reason`` says so. Folders and Parquet are read directly; WebDataset in one streaming pass that
    keeps only the wanted samples."""
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
            if not os.path.isfile(full):
                continue
            stem = os.path.splitext(full)[0]
            caption = _read_text(stem + ".txt") if os.path.exists(stem + ".txt") else None
            label = ident.split("/")[0] if source.labels_from_folders and "/" in ident else None
            found[ident] = RawItem(source.name, ident, path=full, caption=caption, label=label)
    elif source.kind == "parquet":
        found = _fetch_parquet(source, wanted)
    else:
        for item in _iter_wds(source):
            if item.id in wanted and item.id not in found:
                found[item.id] = item
                if len(found) == len(wanted):
                    break
    for ident in wanted - set(found):
        found[ident] = RawItem(source.name, ident, skip_reason=f"no longer in source {source.spec!r}")
    return found


def _fetch_parquet(source: Source, wanted: set[str]) -> dict[str, RawItem]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    found: dict[str, RawItem] = {}
    keys = pa.array(sorted(wanted), pa.string())
    for path in source.paths:
        cols = _parquet_columns(path)
        table = pq.read_table(path, columns=[c for c in cols.values() if c])
        table = table.filter(pc.is_in(pc.cast(table[cols["id"]], pa.string()), value_set=keys))
        for row in table.to_pylist():
            ident = str(row[cols["id"]])
            image = _image_bytes(row[cols["image"]])
            caption = row[cols["caption"]] if cols["caption"] else None
            label = row[cols["label"]] if cols["label"] else None
            found[ident] = RawItem(source.name, ident, data=image,
                                   caption=None if caption is None else str(caption),
                                   label=None if label is None else str(label),
                                   skip_reason=None if image is not None else "no image data")
    return found
