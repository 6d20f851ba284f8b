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
import secrets
from collections.abc import Callable
from pathlib import Path

from .errors import OverlapAuditError, WriteError

# O_NOFOLLOW: a link planted under the temporary name is refused, never written through
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _tmp_name(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}{suffix}")


def create_temporary(path: str | os.PathLike, suffix: str = "") -> Path:
    """A new, empty file beside ``path`` with an unpredictable name (ending in ``suffix``), created
    exclusively (O_EXCL) and without following links; the caller writes it and moves or removes it."""
    path = Path(path)
    for _ in range(100):
        tmp = _tmp_name(path, suffix)
        try:
            fd = os.open(tmp, _CREATE_FLAGS, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise WriteError(f"cannot create a temporary file beside {path}: every name tried exists")  # pragma: no cover


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


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only once it has completed.

    The temporary file exists (empty, created with O_EXCL) before ``write`` runs, so ``write`` must
    truncate it (every ``open(tmp, "w")`` and library writer does). A failure inside ``write`` that is
    not ours becomes a ``WriteError`` naming ``path``.
    """
    global _writes
    path = Path(path)
    tmp = create_temporary(path)
    _writes += 1
    try:
        try:
            write(str(tmp))
        except OverlapAuditError:
            raise
        except Exception as exc:  # noqa: BLE001 - serialisers (faiss, pyarrow) raise their own types on I/O errors
            detail = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc).strip().splitlines()
            if isinstance(detail, list):
                detail = detail[-1] if detail else type(exc).__name__
            raise WriteError(f"cannot write {path}: {detail} (check the free space and permissions of "
                             f"{path.parent})") from exc
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _kill_hook(after_rename=False)
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself must survive a crash
        _kill_hook(after_rename=True)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


def fsync_dir(directory: Path) -> None:
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
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
        with open(fd, "w", encoding="utf-8") as fh:
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
