"""Atomic writes: a temporary file in the same directory, then a rename, so a crash never leaves a
half-written file under its final name.

Test hook: with the environment variable ``OVERLAP_AUDIT_KILL_AT_WRITE=N`` the process kills itself
(SIGKILL) at its N-th atomic write, after the temporary file is complete and before the rename; with
``N+`` just after the rename. tests/test_faults.py uses it to check that a kill at any write leaves a
directory that either gives the clean run's result or is refused.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path


_KILL_ENV = "OVERLAP_AUDIT_KILL_AT_WRITE"
_writes = 0


def _kill_hook(after_rename: bool) -> None:
    """The test hook above; a no-op unless the environment variable is set."""
    spec = os.environ.get(_KILL_ENV)
    if not spec:
        return
    at, after = (int(spec[:-1]), True) if spec.endswith("+") else (int(spec), False)
    if _writes == at and after == after_rename:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only once it has completed."""
    global _writes
    path = Path(path)
    tmp = _tmp_name(path)
    _writes += 1
    try:
        write(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _kill_hook(after_rename=False)
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself must survive a crash
        _kill_hook(after_rename=True)
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


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether a file is an atomic write's temporary (left behind only by a crashed writer)."""
    return Path(path).match(".*.tmp-*")


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporary files a crashed writer left behind; returns how many."""
    removed = 0
    for p in Path(directory).rglob(".*.tmp-*"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed
