"""Image folders: every file under a directory is an item (its path relative to the folder is its id); an
image's ``.txt`` beside it is its caption, and with ``labels_from_folders`` its first folder is its label.

Only regular files within ``limits.InputLimits.max_file_bytes`` are read; anything else is listed as skipped
with the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from ..limits import DEFAULT_LIMITS, InputLimits, ReadRefused, file_problem, read_file
from ..values import RawItem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
# Files in an image folder that are read as part of an image's record rather than listed as skipped.
SIDECAR_SUFFIXES = (".txt", ".json", ".cls")


def read_text(path: str, max_bytes: int = DEFAULT_LIMITS.max_file_bytes) -> str | None:
    """A sidecar's text; None when it is missing, unreadable, not a regular file or over ``max_bytes``."""
    try:
        return read_file(path, max_bytes).decode("utf-8", errors="replace").strip()
    except (OSError, ReadRefused):
        return None


def printable_id(rel: str) -> str:
    """A path as an id that is valid UTF-8: undecodable bytes in file names become \\xNN escapes."""
    return rel.replace(os.sep, "/").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def id_path(ident: str) -> str:
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
        # one relpath per directory, not per file (it normalises both paths every call)
        rel_dir = os.path.relpath(dirpath, root)
        files.extend(filenames if rel_dir == os.curdir else [os.path.join(rel_dir, fn) for fn in filenames])
    files.sort()
    return files, unreadable


def _image_stems(files: list[str]) -> set[str]:
    return {os.path.splitext(f)[0] for f in files if f.lower().endswith(IMAGE_EXTENSIONS)}


def _is_sidecar(rel: str, image_stems: set[str]) -> bool:
    """A caption or label file read as part of its image's record (not an item of its own)."""
    stem, ext = os.path.splitext(rel)
    return ext.lower() in SIDECAR_SUFFIXES and stem in image_stems


def iter_folder(name: str, root: str, labels_from_folders: bool = False,
                limits: InputLimits = DEFAULT_LIMITS) -> Iterator[RawItem]:
    """The items of the image folder ``root``, under the source name ``name``, in sorted path order."""
    files, unreadable = _walk(root)
    for rel, why in unreadable:
        yield RawItem(name, printable_id(rel) + "/", skip_reason=f"unreadable directory: {why}")
    image_stems = _image_stems(files)
    listed = set(files)
    for rel in files:
        rel_id = printable_id(rel)
        full = os.path.join(root, rel)
        stem, ext = os.path.splitext(rel)
        label = None
        if labels_from_folders:
            parts = rel_id.split("/")
            label = parts[0] if len(parts) > 1 else None
        if ext.lower() in IMAGE_EXTENSIONS:
            problem = file_problem(full, limits.max_file_bytes)  # never opens a FIFO or device
            if problem is not None:
                yield RawItem(name, rel_id, label=label, skip_reason=problem)
                continue
            # a caption is looked for only where the listing has one (no stat per image)
            caption = (read_text(os.path.join(root, stem + ".txt"), limits.max_file_bytes)
                       if stem + ".txt" in listed else None)
            yield RawItem(name, rel_id, path=full, caption=caption, label=label)
        elif _is_sidecar(rel, image_stems):
            continue  # read together with its image
        else:
            yield RawItem(name, rel_id, label=label,
                          skip_reason=f"not an image file (extension {ext or 'none'!r} is not one of "
                                      f"{', '.join(IMAGE_EXTENSIONS)})")


def count_folder(root: str) -> int:
    """How many items ``iter_folder`` gives for ``root``, from its listing alone."""
    files, unreadable = _walk(root)
    stems = _image_stems(files)
    return len(unreadable) + sum(1 for rel in files if not _is_sidecar(rel, stems))
