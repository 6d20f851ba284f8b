"""Remote files and command output as byte streams: fsspec URLs and WebDataset's ``pipe:CMD``.

A path with a URL scheme (``https://``, ``s3://``, ``gs://``, any protocol fsspec knows) is opened through
fsspec, which is an optional extra (``pip install 'overlap-audit[remote]'``: fsspec and aiohttp, which
fsspec's HTTP filesystem needs; ``s3://`` needs s3fs and ``gs://`` gcsfs besides). HTTP files opened as a
stream are read with one GET, chunk by chunk; other files are read in blocks (byte ranges). Nothing is
downloaded whole.

``pipe:CMD`` runs CMD, a command the user wrote, and reads its standard output. It runs without a shell
(split as the shell would, by ``shlex``) unless it uses shell syntax (``|``, ``&``, ``;``, ``<``, ``>``,
parentheses, ``$`` or backquotes), which ``/bin/sh -c`` then runs. What is guaranteed about a command:

- it cannot hang a run: a command that writes nothing for ``STALL_TIMEOUT_S`` seconds, or does not exit
  within that long after closing its output, is killed (with its process group) and is an error;
- a command that exits with a non-zero status is an error (SourceError) that names the status and the
  end of what it wrote to stderr;
- a command whose consumer stops early (every wanted item found) is killed, not left running.

An HTTP stream that delivers no bytes for ``STALL_TIMEOUT_S`` seconds fails the same way (as an OSError
while reading).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import threading
from collections import deque
from urllib.parse import urlsplit

from ..errors import SourceError

STALL_TIMEOUT_S = 300.0  # seconds without a byte from a command or an HTTP stream before it is given up
REMOTE_EXTRA = "pip install 'overlap-audit[remote]'"
PIPE_PREFIX = "pipe:"
STDERR_TAIL_BYTES = 2000

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SHELL_SYNTAX = re.compile(r"[$`]")


def url_protocol(path: str) -> str | None:
    """The scheme of a URL (``https``, ``s3``, ...), or None for a local path or a ``pipe:`` command."""
    match = _URL.match(path)
    return match.group(1).lower() if match else None


def is_url(path: str) -> bool:
    return url_protocol(path) is not None


def is_pipe(path: str) -> bool:
    return path.startswith(PIPE_PREFIX)


def url_name(url: str) -> str:
    """The last part of a URL's path (``shard-{000..009}.tar``), or its host when the path is empty."""
    parts = urlsplit(url)
    return os.path.basename(parts.path.rstrip("/")) or parts.netloc or url


def filesystem(url: str):
    """The fsspec filesystem for ``url``; SourceError, with the extra to install, when fsspec or the
    protocol's package is missing, or the protocol is unknown."""
    try:
        import fsspec
    except ImportError:
        raise SourceError(f"source {url!r} is a URL: reading it needs fsspec; {REMOTE_EXTRA}") from None
    protocol = url_protocol(url) or "file"
    options = {}
    if protocol in ("http", "https"):
        try:
            import aiohttp
        except ImportError:
            raise SourceError(f"source {url!r}: reading http(s) URLs needs aiohttp; {REMOTE_EXTRA}") from None
        # no limit on a whole transfer (a shard may take long), but on silence: a stalled server is given up
        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=60,
                                                                     sock_read=STALL_TIMEOUT_S)}
    try:
        return fsspec.filesystem(protocol, **options)
    except ImportError as exc:
        raise SourceError(f"source {url!r}: the {protocol}:// protocol needs a package that is not installed "
                          f"({exc}); {REMOTE_EXTRA} installs fsspec and aiohttp (http, https); s3:// needs "
                          "s3fs, gs:// gcsfs") from None
    except ValueError as exc:
        raise SourceError(f"source {url!r}: fsspec does not know the protocol {protocol!r} ({exc})") from None


def _is_http(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in ("http", "https") for p in protocols)


def missing_urls(urls: list[str], check_all: int = 32) -> list[str]:
    """The URLs that do not exist or cannot be reached: all of them checked when there are at most
    ``check_all``, else the first and the last (a shard missing in between fails when it is read)."""
    chosen = urls if len(urls) <= check_all else [urls[0], urls[-1]]
    missing = []
    for url in chosen:
        try:
            exists = filesystem(url).exists(url)
        except SourceError:
            raise
        except Exception:  # noqa: BLE001 - fsspec backends raise their own types for an unreachable host
            exists = False
        if not exists:
            missing.append(url)
    return missing


def expand_glob(pattern: str) -> list[str]:
    """The URLs a glob pattern (``s3://bucket/shards/*.tar``) matches, sorted."""
    fs = filesystem(pattern)
    try:
        found = fs.glob(pattern)
    except Exception as exc:  # noqa: BLE001 - as above
        raise SourceError(f"source {pattern!r}: the pattern cannot be listed ({exc})") from None
    return sorted(p if is_url(p) else fs.unstrip_protocol(p) for p in found)


def list_dir(url: str) -> list[str] | None:
    """The URLs of the files directly inside ``url`` when it is a directory (a prefix of an object store);
    None when it is not one."""
    fs = filesystem(url)
    try:
        if not fs.isdir(url):
            return None
        entries = fs.ls(url, detail=False)
    except Exception:  # noqa: BLE001 - as above
        return None
    return sorted(p if is_url(p) else fs.unstrip_protocol(p) for p in entries)


def open_url(url: str, *, stream: bool):
    """A binary file object reading ``url``; ``stream``: read once from start to end (HTTP: one GET, read
    as it arrives) rather than seekable. Failures to open are OSError."""
    fs = filesystem(url)
    try:
        if stream and _is_http(fs):
            return _Reads(fs.open(url, "rb", block_size=0), url)
        return _Reads(fs.open(url, "rb"), url)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types
        raise OSError(f"cannot open {url}: {exc}") from None


class _Reads:
    """A file object whose read errors are all OSError (fsspec backends raise their own types)."""

    def __init__(self, fh, url: str):
        self._fh = fh
        self.url = url

    def read(self, n: int = -1) -> bytes:
        try:
            return self._fh.read(n)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise OSError(f"reading {self.url} failed: {type(exc).__name__}: {exc}") from None

    def __getattr__(self, name):  # seek, tell, size, ... for pyarrow
        return getattr(self._fh, name)

    def close(self) -> None:
        try:
            self._fh.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- pipe:


def pipe_argv(command: str) -> list[str]:
    """How ``pipe:COMMAND``'s command runs: its words, or ``/bin/sh -c COMMAND`` when it uses shell syntax."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError as exc:  # an unclosed quote
        raise SourceError(f"pipe: command {command!r} cannot be parsed: {exc}") from None
    if not words:
        raise SourceError("pipe: needs a command after it, e.g. 'pipe:curl -fsS https://host/shard-000.tar'")
    operators = any(w and all(c in "();<>|&" for c in w) for w in words)
    if operators or _SHELL_SYNTAX.search(command):
        return ["/bin/sh", "-c", command]
    return shlex.split(command)


class PipeStream:
    """The standard output of a running ``pipe:`` command, read with a stall timeout.

    ``read`` gives bytes as the command writes them; ``finish`` reads what is left (at most ``drain``
    bytes), waits for the command and raises SourceError if it failed; ``close`` kills it if it still runs.
    """

    def __init__(self, command: str, stall_timeout_s: float | None = None):
        self.command = command
        self.stall = STALL_TIMEOUT_S if stall_timeout_s is None else stall_timeout_s
        self._stderr: deque[bytes] = deque()
        self._stderr_size = 0
        self._killed = False
        try:
            self.proc = subprocess.Popen(pipe_argv(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=os.name == "posix")
        except OSError as exc:
            raise SourceError(f"pipe: command {command!r} cannot be started: {exc.strerror or exc}") from None
        self._fd = self.proc.stdout.fileno()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        for line in iter(lambda: self.proc.stderr.read1(4096), b""):
            self._stderr.append(line)
            self._stderr_size += len(line)
            while self._stderr_size - len(self._stderr[0]) > STDERR_TAIL_BYTES and len(self._stderr) > 1:
                self._stderr_size -= len(self._stderr.popleft())

    def _stderr_tail(self) -> str:
        self._reader.join(timeout=5)
        text = b"".join(self._stderr)[-STDERR_TAIL_BYTES:].decode("utf-8", "replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " / ".join(lines[-3:])[-300:]

    def _wait_readable(self) -> None:
        if os.name != "posix":
            return  # select() does not take pipes on Windows: reads block
        import select

        readable, _, _ = select.select([self._fd], [], [], self.stall)
        if not readable:
            self.kill()
            raise SourceError(f"pipe: command {self.command!r} wrote nothing for {self.stall:g} s: stopped")

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left for n < 0); fewer only at the end of the output."""
        chunks: list[bytes] = []
        got = 0
        while n < 0 or got < n:
            self._wait_readable()
            chunk = os.read(self._fd, 1 << 16 if n < 0 else min(n - got, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def finish(self, drain: int = 1 << 20) -> str | None:
        """Read the rest of the output (up to ``drain`` bytes), wait for the command to exit and raise
        SourceError if it failed. Returns a note when the command wrote more than ``drain`` bytes after the
        end and was stopped, else None."""
        note = None
        if len(self.read(drain)) >= drain and self.read(1):
            note = f"the command wrote more than {drain:,} bytes after the end of the tar: stopped"
            self.kill()
        try:
            status = self.proc.wait(timeout=self.stall)
        except subprocess.TimeoutExpired:
            self.kill()
            raise SourceError(f"pipe: command {self.command!r} closed its output but did not exit within "
                             f"{self.stall:g} s: stopped") from None
        if status != 0 and not self._killed:
            raise SourceError(self.failure(status))
        return note

    def failure(self, status: int) -> str:
        how = f"was killed by signal {-status}" if status < 0 else f"failed with exit status {status}"
        tail = self._stderr_tail()
        return f"pipe: command {self.command!r} {how}" + (f": {tail}" if tail else " (nothing on stderr)")

    def exited_with_failure(self) -> str | None:
        """After a read error: the failure message if the command has already failed (or fails within the
        stall timeout once its output is drained), else None."""
        try:
            self.finish()
        except SourceError as exc:
            return str(exc)
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self._killed = True
            try:
                if os.name == "posix":
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    self.proc.kill()
            except OSError:
                pass

    def close(self) -> None:
        self.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=1)
        for pipe in (self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
