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

import logging
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
from collections import deque
from urllib.parse import urlsplit

from ..errors import SourceError

STALL_TIMEOUT_S = 300.0  # seconds without a byte from a command or an HTTP stream before it is given up
PROBE_TIMEOUT_S = 60.0  # seconds for a server to answer when a URL is checked or a connection is made
MAX_WHOLE_COPY_BYTES = 4 << 30  # a file copied whole (no range requests) larger than this is refused
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


_SSL_CONTEXTS: dict[tuple[str | None, str | None], ssl.SSLContext] = {}
_RANGED: dict[str, bool] = {}  # URL -> whether its server answered a range request (checked once a process)
_COPIES: dict[str, str] = {}  # URL -> its whole copy, for servers without range requests
_COPY_DIR: list[tempfile.TemporaryDirectory] = []  # made on first use, removed at exit


def _ssl_context() -> ssl.SSLContext:
    """The TLS context for https: the system's CAs, or those of SSL_CERT_FILE / SSL_CERT_DIR as they are now
    (aiohttp's own default context reads them once, when it is imported)."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    if key not in _SSL_CONTEXTS:  # one object per setting: fsspec caches its filesystems by their options
        _SSL_CONTEXTS[key] = ssl.create_default_context()
    return _SSL_CONTEXTS[key]


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
        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=PROBE_TIMEOUT_S,
                                                                     sock_read=STALL_TIMEOUT_S)}
        if protocol == "https":
            options["ssl"] = _ssl_context()
    try:
        return fsspec.filesystem(protocol, **options)
    except ImportError as exc:
        raise SourceError(f"source {url!r}: the {protocol}:// protocol needs a package that is not installed "
                          f"({exc}); {REMOTE_EXTRA} installs fsspec and aiohttp (http, https); s3:// needs "
                          "s3fs, gs:// gcsfs") from None
    except ValueError as exc:
        raise SourceError(f"source {url!r}: fsspec does not know the protocol {protocol!r} ({exc})") from None


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def describe_failure(exc: BaseException, url: str, waited_s: float | None = None) -> str:
    """Why reading ``url`` failed, in words a user can act on: the certificate check, the HTTP status, a
    refused connection, a timeout (after ``waited_s`` seconds, where known), an unknown host; else the
    exception's own text."""
    host = urlsplit(url).netloc or url
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            cause = getattr(cause, "certificate_error", cause)  # aiohttp's wrapper holds ssl's own error
            why = getattr(cause, "verify_message", None) or str(cause)
            now = os.environ.get("SSL_CERT_FILE")
            return (f"certificate verify failed ({why}) for {host}: to trust it, name a PEM file that holds its "
                    f"CA certificate in SSL_CERT_FILE" + (f" (now {now})" if now else ""))
        status = getattr(cause, "status", None)
        if isinstance(status, int) and 400 <= status < 600:
            return _status_text(status, getattr(cause, "message", "") or "")
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {host}: nothing listens there (check the host and port)"
        if isinstance(cause, socket.gaierror):
            return f"the host {urlsplit(url).hostname or host!r} cannot be resolved (check its name)"
        if isinstance(cause, TimeoutError):
            return (f"no answer from {host}" + (f" within {waited_s:g} s" if waited_s else "")
                    + " (timeout): check that the server is up and the host and port are right")
    for cause in _causes(exc):
        if isinstance(cause, FileNotFoundError):
            return "not found"
        if isinstance(cause, PermissionError):
            return f"access denied ({cause}): check the credentials {url_protocol(url) or 'this'}:// reads with"
    text = str(exc) or type(exc).__name__
    return text if text != url else type(exc).__name__


def _status_text(status: int, reason: str) -> str:
    if status == 404:
        return f"HTTP 404 {reason or 'Not Found'} (check the URL)"
    if status in (401, 403):
        return (f"HTTP {status} {reason} (the server refuses access: a URL that needs credentials can be read "
                "with a pipe: command that sends them, e.g. pipe:curl -fsS -H 'Authorization: ...' URL)").replace(
                    "  ", " ")
    return f"HTTP {status} {reason}".rstrip()


def _is_http(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in ("http", "https") for p in protocols)


def _probe_http(fs, url: str) -> bool:
    """Ask for the first byte of ``url`` with a range request (one GET, closed before the body is read):
    whether the server answered the range. Raises what the request raised, an HTTP error status included."""
    import aiohttp
    from fsspec.asyn import sync

    async def ask() -> bool:
        session = await fs.set_session()
        options = {k: v for k, v in fs.kwargs.items() if k not in ("headers", "timeout")}
        async with session.get(fs.encode_url(url), headers={"Range": "bytes=0-0"},
                               timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S), **options) as r:
            try:
                if r.status == 416:  # an empty file has no first byte: readable, and read whole
                    return False
                r.raise_for_status()
                return r.status == 206
            finally:
                r.close()  # the body of a server that ignored the range is not read

    return sync(fs.loop, ask)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be read (``describe_failure``), or None when it can. An http(s) URL is asked for
    its first byte, which also tells whether its server answers range requests."""
    found = _url_problem(url)
    return None if found is None else found[0]


def _url_problem(url: str) -> tuple[str, bool] | None:
    """(why, whether the host itself failed: certificate, connection, timeout) or None."""
    fs = filesystem(url)
    try:
        if _is_http(fs):
            _RANGED[url] = _probe_http(fs, url)
            return None
        fs.info(url)  # not exists(): it answers False for a denied or unreachable URL as well
        return None
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types for an unreachable host
        answered = any(isinstance(getattr(c, "status", None), int) for c in _causes(exc)) or _not_found(exc)
        return describe_failure(exc, url, PROBE_TIMEOUT_S), not answered


def unreadable_urls(urls: list[str], check_all: int = 32) -> list[tuple[str, str]]:
    """(URL, why) for the URLs that cannot be read: all of them checked when there are at most
    ``check_all``, else the first and the last (a shard missing in between fails when it is read). A host
    that fails (certificate, connection, timeout) ends the check: its other URLs would fail the same way,
    each after its own timeout."""
    chosen = urls if len(urls) <= check_all else [urls[0], urls[-1]]
    found = []
    for url in chosen:
        problem = _url_problem(url)
        if problem is not None:
            found.append((url, problem[0]))
            if problem[1]:
                break
    return found


def check_urls(spec: str, urls: list[str]) -> None:
    """SourceError naming the first URL of ``urls`` that cannot be read and why (certificate, HTTP status,
    connection, timeout), and how many cannot."""
    unreadable = unreadable_urls(urls)
    if unreadable:
        url, why = unreadable[0]
        more = f"{len(unreadable)} URLs cannot be read, the first " if len(unreadable) > 1 else ""
        raise SourceError(f"source {spec!r}: {more}{'' if url == spec and not more else url + ': '}{why}")


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
    as it arrives) rather than seekable. Failures to open are OSError (FileNotFoundError when the file does
    not exist) whose text says why (``describe_failure``)."""
    fs = filesystem(url)
    try:
        if stream and _is_http(fs):
            return _Reads(fs.open(url, "rb", block_size=0), url)
        if _is_http(fs):
            if url not in _RANGED:
                _RANGED[url] = _probe_http(fs, url)
            if not _RANGED[url]:
                return open(_whole_copy(fs, url), "rb")
        return _Reads(fs.open(url, "rb"), url)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own types
        raise (FileNotFoundError if _not_found(exc) else OSError)(describe_failure(exc, url)) from None


def _not_found(exc: BaseException) -> bool:
    """Whether a failure means the file does not exist (HTTP 404 / 410, or the backend's FileNotFoundError
    with no other cause: fsspec's HTTP ``info`` raises FileNotFoundError for any failure)."""
    for cause in _causes(exc):
        status = getattr(cause, "status", None)
        if isinstance(status, int) and status >= 400:
            return status in (404, 410)
        if cause is not exc and isinstance(cause, (OSError, TimeoutError)) and not isinstance(cause, FileNotFoundError):
            return False
    return isinstance(exc, FileNotFoundError)


def _whole_copy(fs, url: str) -> str:
    """A local copy of ``url`` (a server without range requests: a seekable file is read whole), made once a
    process in a temporary folder removed at exit; SourceError over ``MAX_WHOLE_COPY_BYTES``."""
    if url in _COPIES and os.path.exists(_COPIES[url]):
        return _COPIES[url]
    refuse = (f"{url}: its server does not answer range requests, so the file is copied whole to a temporary "
              f"file, and it is larger than {MAX_WHOLE_COPY_BYTES:,} bytes: download it (curl -fLo FILE URL) and "
              "give the local path, or serve it from a server that answers range requests (object stores, "
              "nginx, Apache)")
    size = fs.info(url).get("size")
    if size is not None and size > MAX_WHOLE_COPY_BYTES:
        raise SourceError(refuse)
    logging.getLogger(__name__).info("%s: the server does not answer range requests: copying it whole (%s)",
                                     url, "size unknown" if size is None else f"{size:,} bytes")
    if not _COPY_DIR:
        _COPY_DIR.append(tempfile.TemporaryDirectory(prefix="overlap-audit-copies-"))
    fd, path = tempfile.mkstemp(suffix="-" + url_name(url), dir=_COPY_DIR[0].name)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out, _Reads(fs.open(url, "rb", block_size=0), url) as src:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > MAX_WHOLE_COPY_BYTES:
                    raise SourceError(refuse)
                out.write(chunk)
    except BaseException:
        os.unlink(path)
        raise
    _COPIES[url] = path
    return path


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
            raise OSError(f"reading {self.url} failed: {describe_failure(exc, self.url, STALL_TIMEOUT_S)}") from None

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
