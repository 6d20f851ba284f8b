"""Atomic writes: a temporary file in the same directory, then a rename, so a crash never leaves a
half-written file under its final name; the exchange of two directories (``exchange``); and the lock a run
holds on the directory it writes (``hold_lock``).

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BusyError, OverlapAuditError, WriteError

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


# ---------------------------------------------------------------- exchanging two paths

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``, called through
    ctypes); False where the platform, the C library or the filesystem cannot, and nothing changed."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28 and later
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # an old kernel or a filesystem without the flag
    raise OSError(err, os.strerror(err), str(a))


# ---------------------------------------------------------------- the lock of a run

_held_fds: set[int] = set()
_fork_hook = False


def _close_in_child() -> None:
    # a forked child (a decoding worker) must not keep the lock alive after its parent: closing its copy
    # of the descriptor releases nothing while the parent's copy is open (flock locks the open file)
    for fd in list(_held_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_fds.clear()


def lock_path(directory: str | os.PathLike) -> Path:
    """The lock file of a directory a run writes: ``.NAME.lock`` beside it (inside, it would be a file the
    directory's own checks count as foreign)."""
    directory = Path(directory).absolute()
    return directory.with_name(f".{directory.name}.lock")


def _open_locked(path: Path, what: str, directory) -> int:
    """A descriptor of ``path`` holding its exclusive flock, or BusyError at once when another run has it."""
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                         0o644)
        except OSError as exc:
            raise WriteError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BusyError(f"{directory} is in use by another overlap-audit {what} run (it holds {path}); "
                            "wait for it to finish, or choose another directory") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the run before removed this file as it released it: lock the new one


@contextmanager
def hold_lock(directory: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock of ``directory`` (an flock on ``lock_path``) for the length of a run; a directory another
    run holds is refused at once with BusyError (``what`` names the run: "index", "report").

    The lock file is removed while still locked, as the run ends, so none is left behind; a run that opened it
    meanwhile sees it gone and locks a new one."""
    global _fork_hook
    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(path, what, directory)
    if not _fork_hook:
        os.register_at_fork(after_in_child=_close_in_child)
        _fork_hook = True
    _held_fds.add(fd)
    try:
        yield
    finally:
        _held_fds.discard(fd)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)
