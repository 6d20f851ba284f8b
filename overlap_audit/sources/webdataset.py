"""WebDataset tar shards: a sample is the members that share a key (WebDataset's rule: the member name up to
the first dot of its basename); its image is the first of ``WDS_IMAGE_EXTENSIONS``, its caption ``.txt`` or a
``.json`` caption, its label ``.cls`` or a ``.json`` label.

A shard is read once as a stream (a local file, a URL through fsspec, or a ``pipe:`` command's output), so
truncation and garbled headers are found where reading stops. A member over
``limits.InputLimits.max_member_bytes``, a link or a special file is listed as skipped.

A sample of an uncompressed tar file (local or a URL) carries its ``values.ItemLocation``: the offset and size of
each member read, so that ``read_located`` reads it back with one positioned read per member, no tar walk.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator

from ..errors import SourceError
from ..limits import DEFAULT_LIMITS, InputLimits, file_problem
from ..values import ItemLocation, RawItem
from .remote import PIPE_PREFIX, PipeStream, is_pipe, is_url, open_url, url_name

WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def wds_split(name: str) -> tuple[str, str]:
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


def _wds_item(name: str, key: str, parts: dict[str, bytes], file: int | None = None,
              spans: dict[str, tuple[int, int]] | None = None) -> RawItem:
    """The item of a sample's members ``parts`` (by extension); with ``spans`` (extension -> the member's data
    offset and size in tar file number ``file``) an item with an image carries its location."""
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
        return RawItem(name, key, caption=caption, label=label, skip_reason=refused[image_ext])
    if image_ext is None:
        found = ", ".join(sorted([*parts, *refused])) or "nothing"
        return RawItem(name, key, caption=caption, label=label,
                       skip_reason=f"no image in the sample (found {found})")
    location = None
    if spans is not None and file is not None:
        read = [ext for ext in (image_ext, "txt", "json", "cls") if ext in parts and ext in spans]
        location = ItemLocation(file, tuple((ext, *spans[ext]) for ext in read))
    return RawItem(name, key, data=parts[image_ext], caption=caption, label=label, location=location)


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


def stats_count(shards: tuple[str, ...]) -> int | None:
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


def iter_wds(name: str, shards: tuple[str, ...], limits: InputLimits = DEFAULT_LIMITS) -> Iterator[RawItem]:
    """The samples of the shards as items of the source ``name``, shard by shard in tar order."""
    for number, shard in enumerate(shards):
        yield from _shard_items(name, shard, limits, number)


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


def _shard_items(name: str, shard: str, limits: InputLimits, number: int) -> Iterator[RawItem]:
    shard_name = _shard_name(shard)
    key: str | None = None
    parts: dict[str, bytes] = {}
    spans: dict[str, tuple[int, int]] | None = None  # where each member's data lies, when it can be read back there
    if not is_pipe(shard) and not is_url(shard):
        problem = file_problem(shard, 1 << 62)
        if problem is not None:
            yield RawItem(name, f"{shard}#unreadable-after-start",
                          skip_reason=f"WebDataset shard {shard_name!r}: {problem}")
            return
    try:
        stream = _Tracked(_open_shard(shard))
    except OSError as exc:
        why = exc.strerror or str(exc) or ("not found" if isinstance(exc, FileNotFoundError) else repr(exc))
        yield RawItem(name, f"{shard}#unreadable-after-start",
                      skip_reason=f"WebDataset shard {shard_name!r} cannot be opened: {why}; not read")
        return
    try:
        try:
            # "r|*" reads the shard as a stream (no seeking, no extraction to disk), compressed or not.
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                # a compressed tar's offsets are in its decompressed stream, and a command's output is gone
                locate = not is_pipe(shard) and getattr(tar.fileobj, "comptype", "tar") == "tar"
                spans = {} if locate else None
                for member in tar:
                    if member.isdir():
                        continue
                    if not member.isfile():
                        kind = "link" if member.issym() or member.islnk() else "special file"
                        yield RawItem(name, f"{shard}#{member.name}",
                                      skip_reason=f"tar member is a {kind}, not a file: not read")
                        continue
                    mkey, ext = wds_split(member.name)
                    if key is not None and mkey != key:
                        yield _wds_item(name, key, parts, number, spans)
                        parts = {}
                        spans = {} if locate else None
                    key = mkey
                    parts[ext] = _wds_member(tar, member, ext, limits)
                    if spans is not None:
                        spans[ext] = (member.offset_data, member.size)
            end_problem = _tar_end_problem(stream, tar)
            if isinstance(stream.raw, PipeStream):
                end_problem = end_problem or stream.raw.finish()  # raises if the command failed
        except (tarfile.TarError, OSError, EOFError) as exc:
            if isinstance(stream.raw, PipeStream):
                failure = stream.raw.exited_with_failure()
                if failure is not None:  # the command's failure, not the tar it left unfinished
                    raise SourceError(failure) from None
            if key is not None:
                yield RawItem(name, key, skip_reason=f"WebDataset shard {shard_name!r} ends inside this "
                                                         f"sample: {exc}")
            yield RawItem(name, f"{shard}#unreadable-after-{key or 'start'}",
                          skip_reason=f"WebDataset shard {shard_name!r} is corrupt or truncated: {exc}; "
                                      "the rest of this shard was not read")
            return
        if key is not None:
            yield _wds_item(name, key, parts, number, spans)
        if end_problem:
            yield RawItem(name, f"{shard}#unreadable-after-{key or 'start'}", skip_reason=end_problem)
    finally:
        stream.raw.close()  # a command still running (the reader stopped early) is killed


def read_located(name: str, shard: str, located: dict[str, ItemLocation],
                 limits: InputLimits = DEFAULT_LIMITS) -> dict[str, RawItem]:
    """The samples of one tar file (a local path or a URL, read in byte ranges) at their recorded locations:
    each recorded member is one positioned read of its recorded size, with no tar walk. The bytes are whatever
    lies there now: ``index.corpus_items`` holds them to the fingerprint the index recorded, so a tar that was
    replaced reads as changed. A shard that cannot be opened leaves its samples skipped, saying why."""
    shard_name = _shard_name(shard)
    try:
        fh = open_url(shard, stream=False) if is_url(shard) else open(shard, "rb")
    except OSError as exc:
        why = exc.strerror or str(exc) or repr(exc)
        return {key: RawItem(name, key, skip_reason=f"WebDataset shard {shard_name!r} cannot be opened: {why}; "
                                                    "not read") for key in located}
    out: dict[str, RawItem] = {}
    cap = limits.max_member_bytes
    try:
        # in tar order, so that a local file and a range-reading remote one are read forwards
        for key, location in sorted(located.items(), key=lambda kv: min((m[1] for m in kv[1].members), default=0)):
            parts: dict[str, bytes] = {}
            short = None
            for ext, offset, size in location.members:
                if size > cap:
                    parts[ext] = _Refused(f"tar member {f'{key}.{ext}'!r} of {size:,} bytes exceeds the limit of "
                                          f"{cap:,} bytes: not read")
                    continue
                fh.seek(offset)
                data = fh.read(size)
                if len(data) != size:
                    short = ext
                    break
                parts[ext] = data
            if short is not None:
                out[key] = RawItem(name, key, skip_reason=f"WebDataset shard {shard_name!r} ends before the member "
                                                          f"{f'{key}.{short}'!r} recorded at indexing: it changed since")
            else:
                out[key] = _wds_item(name, key, parts)
    except OSError as exc:
        why = exc.strerror or str(exc) or repr(exc)
        for key in located.keys() - out.keys():
            out[key] = RawItem(name, key, skip_reason=f"WebDataset shard {shard_name!r} cannot be read: {why}")
    finally:
        fh.close()
    return out
