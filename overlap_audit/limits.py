"""What one input item may cost: bytes read into memory and seconds of decoding; and the one safe file read.

Only regular files are read: a FIFO, a device, a socket (or a link resolving to one) is refused without
being opened for reading, so a pipe cannot block a run and ``/dev/zero`` cannot fill memory. Every size is
checked before the bytes are read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass

MB = 1 << 20

# PIL's own default (about 89.5 megapixels): above it an image is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class InputLimits:
    """Caps on one input item; an item over a cap is skipped with the reason.

    ``max_file_bytes``: an image file in a folder (and its caption sidecar); ``max_cell_bytes``: one
    Parquet image cell; ``max_member_bytes``: one member of a WebDataset tar (its declared size, checked
    before it is extracted); ``decode_timeout_s``: seconds a decoding worker may spend on one item before it
    is stopped and the item skipped (None: no limit; decoding in this process, ``workers=0``, is not timed).
    """

    max_file_bytes: int = 256 * MB
    max_cell_bytes: int = 256 * MB
    max_member_bytes: int = 256 * MB
    decode_timeout_s: float | None = 60.0

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_cell_bytes", "max_member_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"InputLimits.{name} must be a positive number of bytes")
        if self.decode_timeout_s is not None and self.decode_timeout_s <= 0:
            raise ValueError("InputLimits.decode_timeout_s must be positive, or None for no limit")

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_LIMITS = InputLimits()


class ReadRefused(Exception):
    """A file was not read; the message is the reason recorded for it."""


def _kind(mode: int) -> str | None:
    """What a non-regular file is, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _too_large(size: int, max_bytes: int, what: str) -> str:
    return f"{what} of {size:,} bytes exceeds the limit of {max_bytes:,} bytes: not read"


def file_problem(path: str, max_bytes: int) -> str | None:
    """Why ``path`` (links followed) will not be read, from its metadata alone, or None when it can be."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # reading it reports the error
    kind = _kind(st.st_mode)
    if kind is not None:
        return f"not a regular file ({kind}): not read"
    if st.st_size > max_bytes:
        return _too_large(st.st_size, max_bytes, "file")
    return None


def read_file(path: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes``; raises ReadRefused with the reason
    for anything else (and OSError when the file cannot be opened)."""
    # O_NONBLOCK: opening a FIFO does not wait for a writer; it is refused by fstat right after
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        kind = _kind(st.st_mode)
        if kind is not None:
            raise ReadRefused(f"not a regular file ({kind}): not read")
        if st.st_size > max_bytes:
            raise ReadRefused(_too_large(st.st_size, max_bytes, "file"))
        # reads of the size fstat gave, plus one byte to see whether the file has grown since: a buffered
        # read of max_bytes + 1 allocates that much for every file (0.2 ms of a 15 kB PNG's read)
        chunks, total = [], 0
        while chunk := os.read(fd, min(st.st_size, max_bytes - total) + 1):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ReadRefused(f"file grew past the limit of {max_bytes:,} bytes while read: not read")
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
