"""Atomic writes: a temporary file in the same directory, then a rename, so a crash never leaves a
half-written file under its final name."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only once it has completed."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        write(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself must survive a crash
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)


def _no_nan(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically; NaN and infinities become null (JSON has no NaN)."""
    atomic_write_text(path, json.dumps(_no_nan(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n")


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporary files a crashed writer left behind; returns how many."""
    removed = 0
    for p in Path(directory).rglob(".*.tmp-*"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed
