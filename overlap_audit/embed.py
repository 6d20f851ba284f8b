"""The only place that loops over images: decoding in worker processes, batching, embedding.

Decoding (bytes -> RGB -> ``detector.preprocess``) runs in a pool of worker processes with a bounded number
of chunks in flight, so memory stays flat however large the source; ``detector.embed`` runs once per batch
in this process. Every item comes out either embedded or as a ``Skipped`` with its reason: a worker that
dies or hangs over an item is replaced, and the item skipped with what happened.

With a zero-shot scorer (``embed_source(..., scorer=...)``) each image is decoded once for both: the workers
also turn it into the model's pixels, and the model embeds them in batches beside the detector, so the
detector and the model see the same set of items (an image either fails for both or is used by both).

Why one module of this length: the watched worker pool, the per-item decoding and the batching are one
loop with one in-order contract; the pool is most of it.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import select
import signal
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .detectors import Detector
from .detectors.base import TRIM_DECODE_SCALE, prepare, prepare_views
from .imaging import ImageRejected, decode_image
from .limits import DEFAULT_LIMITS, DEFAULT_MAX_PIXELS, InputLimits, ReadRefused, read_file
from .sources import Source
from .values import Embeddings, RawItem, Skipped


def default_workers() -> int:
    """Worker processes for decoding: one per CPU this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def default_start_method() -> str:
    """How decoding workers start: fork on Linux, spawn elsewhere.

    fork (as PyTorch's DataLoader does on Linux) starts workers in milliseconds and, unlike spawn and
    forkserver, does not re-import the caller's ``__main__``: a plain script without an
    ``if __name__ == "__main__":`` guard works. The workers only decode images with PIL and numpy, so they
    touch none of the OpenMP/CUDA state a parent may hold. Elsewhere (macOS, Windows) fork is unsafe or
    missing, and spawn is used.
    """
    import sys

    return "fork" if sys.platform.startswith("linux") else "spawn"


def _init_worker(model_input: Callable | None) -> None:
    if model_input is not None and "torch" in sys.modules:
        # a model's transforms run torch ops here: one thread per worker, as torch's DataLoader does
        sys.modules["torch"].set_num_threads(1)


class Decoded(NamedTuple):
    """One item out of the decoder, in input order."""

    item: RawItem
    array: np.ndarray | None  # the detector's input (its declared view of the image); None where skipped
    reason: str | None  # why the item was skipped
    copy: np.ndarray | None = None  # an augmented copy's input, where one was asked for
    pixels: Any = None  # the zero-shot model's pixels, with a model_input
    box: Any = None  # the content box (``content.ContentBox``) of a trimming detector
    whole: np.ndarray | None = None  # with views: the whole image's input where the content box was trimmed
    # with a checksum: (size, checksum, the file's mtime_ns or None) of the bytes decoded, read once for both
    fingerprint: tuple[int, str, int | None] | None = None
    crops: tuple = ()  # with crop areas: the input of each centre crop (``detectors.base.prepare_views``)


def _decode_one(item: RawItem, detector: Detector, max_pixels: int, copy: bool = False,
                model_input: Callable | None = None, views: bool = False,
                max_bytes: int = DEFAULT_LIMITS.max_file_bytes, checksum: Callable[[bytes], str] | None = None,
                crops: tuple[float, ...] = ()) -> tuple:
    """Decoded's fields after ``item``."""
    if item.skip_reason is not None:
        return _skipped(item.skip_reason)
    decode_size = getattr(detector, "decode_size", None)
    if decode_size and getattr(detector, "content", "whole") == "trim":
        decode_size = int(decode_size * TRIM_DECODE_SCALE)
    data, path = item.data, item.path
    mtime_ns = None
    if (model_input is not None or checksum is not None) and data is None and path is not None:
        try:  # read once for every use; a failure is left for decode_image to report
            mtime_ns = os.stat(path).st_mtime_ns  # before the read: a later change shows as a newer mtime
            data, path = read_file(path, max_bytes), None
        except (OSError, ReadRefused):
            mtime_ns = None
    fingerprint = None if checksum is None or data is None else (len(data), checksum(data), mtime_ns)
    try:
        image = decode_image(data, path, max_pixels=max_pixels, min_size=decode_size, max_bytes=max_bytes)
    except ImageRejected as exc:
        return None, str(exc), None, None, None, None, fingerprint
    try:
        array, box, crop_arrays = prepare_views(detector, image, crops) if crops else (*prepare(detector, image), ())
        whole = detector.preprocess(image) if views and box is not None and box.trimmed else None
    except Exception as exc:  # noqa: BLE001 - one bad image must not end a corpus run
        return (None, f"detector preprocessing failed: {type(exc).__name__}: {exc}", None, None, None, None,
                fingerprint)
    pixels = None
    if model_input is not None:
        try:
            # the detector may have had a JPEG decoded at a reduced scale; the model gets the full image
            reduced = decode_size is not None and (data is None or data[:3] == b"\xff\xd8\xff")
            full = decode_image(data, path, max_pixels=max_pixels, max_bytes=max_bytes) if reduced else image
            pixels = model_input(full)
        except ImageRejected as exc:  # pragma: no cover - the same bytes decoded a moment ago
            return None, str(exc), None, None, None, None, fingerprint
        except Exception as exc:  # noqa: BLE001 - as above; skipped for the detector too, so both agree
            return (None, f"model preprocessing failed: {type(exc).__name__}: {exc}", None, None, None, None,
                    fingerprint)
    duplicate = None
    if copy:  # a near-duplicate query of this item, for measuring an approximate index's recall
        from .augment import augment

        seed = zlib.crc32(f"{item.source}/{item.id}".encode("utf-8", "surrogatepass"))
        try:
            duplicate = prepare(detector, augment(image, "resize+jpeg", np.random.default_rng(seed)))[0]
        except Exception:  # noqa: BLE001 - the copy is optional; the item itself is fine
            duplicate = None
    return array, None, duplicate, pixels, box, whole, fingerprint, crop_arrays


PARENT_POLL_S = 0.5  # how often a worker looks whether its parent still lives


def _end_with_parent(parent_pid: int) -> None:
    """End this worker as soon as its parent is gone (killed with SIGKILL, it cannot stop us itself).

    Waiting for EOF on the task pipe is not enough: a forked worker inherits the parent's end of its own
    pipe (and of its siblings'), so the pipe never closes. When the parent dies the worker is reparented, so
    a thread watches ``getppid()``; it works with fork and spawn on every platform, unlike Linux's
    PR_SET_PDEATHSIG, which fires when the parent *thread* that started the worker ends.
    """
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


# a worker holds finished results back until its task is done, or until the item it is working on has taken this
# long: the parent then wakes once per task instead of once per item (half its CPU time), while a slow or hung
# item still finds every result before it delivered, so a timeout is charged to the item that took the time
HOLD_S = 0.05


class _Outbox:
    """A worker's results on their way to the parent, sent as lists: at the end of each task, and by a thread
    once the item being decoded has run ``HOLD_S`` (``careful``: each result as soon as it is made)."""

    def __init__(self, conn):
        import threading

        self.conn = conn
        self.held: list = []
        self.started = time.monotonic()  # when the item being decoded started
        self.ready = threading.Condition()
        threading.Thread(target=self._flush_slow, name="result-flush", daemon=True).start()

    def begin(self) -> None:
        """An item starts."""
        with self.ready:
            self.started = time.monotonic()

    def put(self, result: tuple, *, last: bool) -> None:
        """Hold ``result``; send what is held when it is the task's ``last``. Raises OSError/EOFError when the
        parent is gone."""
        with self.ready:
            self.held.append(result)
            if last:
                self._send()
            elif len(self.held) == 1:  # the thread waits for a first result, then wakes every HOLD_S at most
                self.ready.notify()

    def _send(self) -> None:
        held, self.held = self.held, []
        try:
            self.conn.send(held)
        except (EOFError, OSError):
            raise
        except Exception:  # noqa: BLE001 - a result that cannot be pickled: found one by one (nothing was sent)
            self.conn.send([_sendable(result) for result in held])

    def _flush_slow(self) -> None:
        with self.ready:
            while True:
                if not self.held:
                    self.ready.wait()
                    continue
                wait = self.started + HOLD_S - time.monotonic()
                if wait > 0:
                    self.ready.wait(wait)
                    continue
                try:
                    self._send()
                except Exception:  # noqa: BLE001 - the parent is gone: the decoding thread finds out and ends
                    return


def _sendable(result: tuple) -> tuple:
    import pickle

    try:
        pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        return result
    except Exception as exc:  # noqa: BLE001 - as the worker would send it: skipped with the reason
        return _skipped(f"decoding failed: the result cannot be sent: {type(exc).__name__}: {exc}")


def _worker(conn, detector: Detector, max_pixels: int, model_input: Callable | None, views: bool,
            max_bytes: int, checksum: Callable[[bytes], str] | None, crops: tuple[float, ...],
            parent_pid: int) -> None:
    """A decoding worker: decodes each task's items in order and sends their results in order, in lists
    (``_Outbox``); a task marked careful (the retry after a worker died) one result per list, so that the
    parent knows which item a second death happened on."""
    _end_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is the parent's to handle
    _init_worker(model_input)
    outbox = _Outbox(conn)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        pairs, careful = task
        for i, (item, copy) in enumerate(pairs):
            outbox.begin()
            try:
                result = _decode_one(item, detector, max_pixels, copy, model_input, views, max_bytes, checksum,
                                     crops)
            except Exception as exc:  # noqa: BLE001 - one bad image must not end a corpus run
                result = _skipped(f"decoding failed: {type(exc).__name__}: {exc}")
            try:
                outbox.put(result, last=careful or i == len(pairs) - 1)
            except (EOFError, OSError):
                return


def _skipped(reason: str) -> tuple:
    return None, reason, None, None, None, None, None


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class _Chunk:
    """A chunk of (item, copy) pairs on its way through the workers: results arrive one item at a time."""

    def __init__(self, pairs: list[tuple[RawItem, bool]]):
        self.pairs = pairs
        self.results: list[Decoded] = []
        self.died_on: set[int] = set()  # items whose worker died once already

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.pairs)

    def add(self, fields: tuple) -> None:
        self.results.append(Decoded(self.pairs[len(self.results)][0], *fields))


def _readable(conn) -> Callable[[], bool]:
    """Whether ``conn`` has a message (or its end) waiting, without waiting. ``Connection.poll`` builds a
    selector on every call, which the decoder's loop paid several times per item; a poll object is made once."""
    if not hasattr(select, "poll"):  # pragma: no cover - not Linux or macOS
        return conn.poll
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return lambda: bool(poller.poll(0))


class _Worker:
    """One decoding process and the chunk it is working through (None when idle)."""

    def __init__(self, ctx, args: tuple):
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker, args=(child, *args, os.getpid()), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        self.readable = _readable(parent)
        self.chunk: _Chunk | None = None
        self.silent = 0.0  # seconds watched since this worker last delivered an item

    def stop(self, *, kill: bool) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                kill = True
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


class Decoder:
    """Decodes chunks of RawItems in worker processes (or in this process with ``workers=0``), in order.

    The workers are watched: a worker that dies (killed, out of memory, a crash in a native decoder) is
    replaced, and the item it was decoding is tried once more in the fresh worker, then skipped with the
    reason; an item that takes longer than ``limits.decode_timeout_s`` has its worker stopped and is skipped.
    With ``checksum`` (bytes -> str) each item read also comes with the size and checksum of its bytes
    (``Decoded.fingerprint``), taken in the worker from the bytes it decodes: no second read of the file.
    """

    def __init__(self, detector: Detector, *, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 chunk_size: int = 32, start_method: str | None = None, model_input: Callable | None = None,
                 views: bool = False, limits: InputLimits | None = None,
                 checksum: Callable[[bytes], str] | None = None, crops: tuple[float, ...] = ()):
        self.detector = detector
        self.crops = tuple(crops)  # also the centre crop at each of these areas (``Decoded.crops``)
        self.checksum = checksum
        self.model_input = model_input  # PIL image -> a zero-shot model's pixels, made beside the detector's
        self.views = views  # also the whole image's input where a trimming detector trimmed
        self.workers = default_workers() if workers is None else int(workers)
        self.max_pixels = max_pixels
        self.limits = limits or DEFAULT_LIMITS
        self.chunk_size = chunk_size
        self.start_method = start_method or default_start_method()
        self._ctx = None
        self._procs: list[_Worker] = []
        self._poller: tuple[list[_Worker], Any] | None = None  # (the workers it watches, a select.poll)

    def __enter__(self) -> "Decoder":
        if self.workers > 0:
            self._ctx = mp.get_context(self.start_method)
            self._procs = [self._start() for _ in range(self.workers)]
        return self

    def __exit__(self, *exc) -> None:
        for worker in self._procs:
            worker.stop(kill=exc[0] is not None or worker.chunk is not None)
        self._procs = []

    def _start(self) -> _Worker:
        return _Worker(self._ctx, (self.detector, self.max_pixels, self.model_input, self.views,
                                   self.limits.max_file_bytes, self.checksum, self.crops))

    def decode(self, items: Iterable[RawItem], copies: set[tuple[str, str]] | None = None
               ) -> Iterator[Decoded]:
        """Yield a ``Decoded`` per item, in input order; copies are made for the (source, id) pairs in
        ``copies``."""
        yield from self._decode(items, copies or set())

    def _decode(self, items: Iterable[RawItem], copies: set[tuple[str, str]]) -> Iterator[Decoded]:
        flagged = ((item, (item.source, item.id) in copies) for item in items)
        if not self._procs:
            for item, copy in flagged:
                yield Decoded(item, *_decode_one(item, self.detector, self.max_pixels, copy, self.model_input,
                                                 self.views, self.limits.max_file_bytes, self.checksum,
                                                 self.crops))
            return
        chunks = _chunks(flagged, self.chunk_size)
        window: deque[_Chunk] = deque()  # chunks read ahead, in input order
        max_in_flight = 2 * self.workers + 2  # bounded read-ahead: memory does not grow with the source
        exhausted = False
        try:
            while True:
                while not exhausted and len(window) < max_in_flight:
                    pairs = next(chunks, None)
                    if pairs is None:
                        exhausted = True
                    else:
                        window.append(_Chunk(pairs))
                self._assign(window)
                if not window:
                    return
                if window[0].done:
                    for worker in self._procs:  # take what has arrived: a worker whose pipe is full waits idle
                        self._receive(worker)
                    yield from window.popleft().results
                else:
                    self._watch()
        finally:
            for i, worker in enumerate(self._procs):
                if worker.chunk is not None:  # left unfinished (the caller stopped early): start afresh
                    worker.stop(kill=True)
                    self._procs[i] = self._start()

    def _assign(self, window: deque[_Chunk]) -> None:
        """Give each idle worker the first chunk no worker is working through."""
        taken = {id(w.chunk) for w in self._procs if w.chunk is not None}
        waiting = (c for c in window if not c.done and id(c) not in taken)
        for worker in self._procs:
            if worker.chunk is not None:
                continue
            chunk = next(waiting, None)
            if chunk is None:
                return
            self._give(worker, chunk)

    def _give(self, worker: _Worker, chunk: _Chunk) -> None:
        worker.chunk, worker.silent = chunk, 0.0
        try:
            # a chunk retried after a worker died on it comes back one result at a time (``_worker``)
            worker.conn.send((chunk.pairs[len(chunk.results):], bool(chunk.died_on)))
        except (OSError, ValueError):
            pass  # the worker is gone: noticed by the next watch

    def _watch(self) -> None:
        """Wait for results; handle workers that died or took too long over an item."""
        timeout = self.limits.decode_timeout_s
        busy = [w for w in self._procs if w.chunk is not None]
        wait_for = None if timeout is None or not busy else max(0.0, timeout - max(w.silent for w in busy))
        started = time.monotonic()
        ready = self._wait([w.conn for w in busy] + [w.process.sentinel for w in self._procs], wait_for)
        # only time spent waiting here counts towards a timeout: a worker whose results wait to be read
        # while the caller embeds is never stopped
        watched = time.monotonic() - started
        for i, worker in enumerate(self._procs):
            if worker.chunk is not None:
                worker.silent += watched
            if worker.conn in ready:
                self._receive(worker)
            if worker.process.sentinel in ready or not worker.process.is_alive():
                self._receive(worker)  # what it sent before it died
                worker.process.join()
                self._replace(i, f"decoding worker died ({_death(worker.process.exitcode)})")
            elif worker.chunk is not None and timeout is not None and worker.silent >= timeout:
                self._replace(i, f"decoding took longer than {timeout:g} s: stopped", timed_out=True)

    def _wait(self, objects: list, timeout: float | None) -> set:
        """The connections and sentinels among ``objects`` that are ready, after at most ``timeout`` seconds:
        ``multiprocessing.connection.wait``, with one poll object kept while the workers stay the same (that
        function builds a selector on every call, and the loop calls it about once per item)."""
        if not hasattr(select, "poll"):  # pragma: no cover - not Linux or macOS
            return set(mp_connection.wait(objects, timeout=timeout))
        if self._poller is None or self._poller[0] != self._procs:
            poller = select.poll()
            for worker in self._procs:
                poller.register(worker.conn.fileno(), select.POLLIN)
                poller.register(worker.process.sentinel, select.POLLIN)
            self._poller = (list(self._procs), poller)
        events = self._poller[1].poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        fds = {fd for fd, _ in events}
        return {obj for obj in objects if (obj if isinstance(obj, int) else obj.fileno()) in fds}

    @staticmethod
    def _receive(worker: _Worker) -> None:
        chunk = worker.chunk
        try:
            while chunk is not None and worker.readable():
                for fields in worker.conn.recv():
                    chunk.add(fields)
                worker.silent = 0.0
                if chunk.done:
                    worker.chunk = chunk = None
        except (EOFError, OSError):
            pass  # the worker died; its sentinel says so

    def _replace(self, i: int, why: str, *, timed_out: bool = False) -> None:
        """Replace worker ``i``; the item it was working on is skipped (a timeout, or a second death) or
        tried once more in the fresh worker."""
        old = self._procs[i]
        chunk = old.chunk
        old.stop(kill=True)
        self._procs[i] = fresh = self._start()
        if chunk is None:
            return
        at = len(chunk.results)
        if timed_out:
            chunk.add(_skipped(why))
        elif at in chunk.died_on:
            chunk.add(_skipped(f"{why} twice"))
        else:
            chunk.died_on.add(at)
        if not chunk.done:
            self._give(fresh, chunk)


@dataclass
class EmbeddedItems:
    """A run of items in input order: the embedded ones row-aligned with ``vectors``, and the skipped ones."""

    items: list[RawItem] = field(default_factory=list)
    vectors: list[np.ndarray | None] = field(default_factory=list)  # per item; None where skipped
    low_information: list[bool] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    copies: list[np.ndarray | None] = field(default_factory=list)  # embedded augmented copies, where made
    boxes: list = field(default_factory=list)  # content boxes (``content.ContentBox``) or None
    wholes: list[np.ndarray | None] = field(default_factory=list)  # the whole image's vector, where trimmed
    fingerprints: list = field(default_factory=list)  # Decoded.fingerprint per item
    crop_vectors: list[list | None] = field(default_factory=list)  # per item, its centre crops' vectors


def embed_decoded(decoded: Iterable[Decoded], detector: Detector, *, batch_size: int = 256) -> EmbeddedItems:
    """Embed already-decoded items (and their copies and whole views) in batches; keeps every item,
    embedded or skipped, in input order."""
    out = EmbeddedItems()
    pending: list[tuple[int, str]] = []  # (item index, "item" | "copy" | "whole")
    pending_arrays: list[np.ndarray] = []

    def flush() -> None:
        if not pending:
            return
        batch = np.stack(pending_arrays)
        vectors, low = detector.embed_flagged(batch)
        for j, (idx, what) in enumerate(pending):
            if what == "copy":
                out.copies[idx] = vectors[j]
            elif what == "whole":
                out.wholes[idx] = vectors[j]
            elif what.startswith("crop"):
                out.crop_vectors[idx][int(what[4:])] = vectors[j]
            else:
                out.vectors[idx] = vectors[j]
                out.low_information[idx] = bool(low[j])
        pending.clear()
        pending_arrays.clear()

    for entry in decoded:
        out.items.append(entry.item)
        out.vectors.append(None)
        out.low_information.append(False)
        out.reasons.append(entry.reason)
        out.copies.append(None)
        out.boxes.append(entry.box)
        out.wholes.append(None)
        out.fingerprints.append(entry.fingerprint)
        out.crop_vectors.append([None] * len(entry.crops) if entry.crops else None)
        idx = len(out.items) - 1
        crops = tuple((arr, f"crop{c}") for c, arr in enumerate(entry.crops or ()))
        for arr, what in ((entry.array, "item"), (entry.copy, "copy"), (entry.whole, "whole"), *crops):
            if arr is not None:
                pending.append((idx, what))
                pending_arrays.append(arr)
        if len(pending) >= batch_size:
            flush()
    flush()
    return out


def embed_source(source: Source, detector: Detector, *, batch_size: int = 256, workers: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False, scorer=None,
                 views: bool = False, limits: InputLimits | None = None, crops: tuple[float, ...] = ()) -> Embeddings:
    """Embed a whole source in memory (evaluation sets are small); skipped items are listed, not dropped.

    ``scorer`` (a ``scoring.ZeroShotScorer``) is fed each decoded image's model pixels as well, from the
    same decoding pass. With ``views`` a trimming detector also embeds the whole image of every item whose
    content box it trimmed (``Embeddings.whole_rows`` / ``whole_vectors``). ``limits`` caps what one item
    may cost (default ``InputLimits()``). With ``crops`` every item's centre crop at each of those areas is
    embedded too (``Embeddings.crop_vectors``)."""
    items: Iterable[RawItem] = source.iter_items(limits)
    model_input = scorer.preprocessor() if scorer is not None else None
    with Decoder(detector, workers=workers, max_pixels=max_pixels, model_input=model_input, views=views,
                 limits=limits, crops=crops) as decoder:
        decoded = decoder.decode(items)
        if scorer is not None:
            decoded = _feed(decoded, scorer)
        if progress:
            from tqdm import tqdm

            what = "embed and score" if scorer is not None else "embed"
            decoded = tqdm(decoded, desc=f"{what} {source.name}", unit="img", leave=False, total=source.count())
        result = embed_decoded(decoded, detector, batch_size=batch_size)
        if scorer is not None:
            scorer.flush()
    return to_embeddings(result, detector)


def _feed(decoded: Iterable[Decoded], scorer) -> Iterator[Decoded]:
    """Pass the decoded stream on unchanged, handing each item's model pixels to the scorer on the way."""
    for entry in decoded:
        scorer.add(entry.item.id, entry.item.label, entry.pixels if entry.reason is None else None)
        yield entry


def to_embeddings(result: EmbeddedItems, detector: Detector) -> Embeddings:
    """Collect the embedded items of an EmbeddedItems into an Embeddings value."""
    keep = [i for i, v in enumerate(result.vectors) if v is not None]
    if keep:
        vectors = np.stack([result.vectors[i] for i in keep])
    else:
        width = detector.dim // 8 if detector.metric == "hamming" else detector.dim
        vectors = np.zeros((0, width), dtype=np.uint8 if detector.metric == "hamming" else np.float32)
    whole = [(row, result.wholes[i]) for row, i in enumerate(keep) if result.wholes[i] is not None]
    boxes = [result.boxes[i] for i in keep]
    crop_vectors = None
    if keep and result.crop_vectors[keep[0]] is not None:  # [rows, crops, width]
        crop_vectors = np.stack([np.stack(result.crop_vectors[i]) for i in keep])
    return Embeddings(
        ids=[result.items[i].id for i in keep],
        vectors=vectors,
        low_information=np.array([result.low_information[i] for i in keep], dtype=bool),
        labels=[result.items[i].label for i in keep],
        captions=[result.items[i].caption for i in keep],
        skipped=[Skipped(it.source, it.id, r) for it, r in zip(result.items, result.reasons) if r is not None],
        boxes=boxes if any(b is not None for b in boxes) else [],
        whole_rows=np.array([row for row, _ in whole], dtype=np.int64) if whole else None,
        whole_vectors=np.stack([v for _, v in whole]) if whole else None,
        crop_vectors=crop_vectors,
    )
