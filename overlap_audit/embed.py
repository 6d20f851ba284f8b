"""The only place that loops over images: decoding in worker processes, batching, embedding.

Decoding (bytes -> RGB -> ``detector.preprocess``) runs in a pool of worker processes with a bounded number
of chunks in flight, so memory stays flat however large the source; ``detector.embed`` runs once per batch
in this process. Every item comes out either embedded or as a ``Skipped`` with its reason.

With a zero-shot scorer (``embed_source(..., scorer=...)``) each image is decoded once for both: the workers
also turn it into the model's pixels, and the model embeds them in batches beside the detector, so the
detector and the model see the same set of items (an image either fails for both or is used by both).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .detectors import Detector
from .detectors.base import prepare
from .imaging import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from .sources import Source
from .values import Embeddings, RawItem, Skipped

_WORKER_STATE: dict = {}


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


def _init_worker(detector: Detector, max_pixels: int, model_input: Callable | None = None,
                 views: bool = False) -> None:
    _WORKER_STATE["detector"] = detector
    _WORKER_STATE["max_pixels"] = max_pixels
    _WORKER_STATE["model_input"] = model_input
    _WORKER_STATE["views"] = views
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


def _decode_one(item: RawItem, detector: Detector, max_pixels: int, copy: bool = False,
                model_input: Callable | None = None, views: bool = False) -> tuple:
    """Decoded's fields after ``item``."""
    if item.skip_reason is not None:
        return None, item.skip_reason, None, None, None, None
    decode_size = getattr(detector, "decode_size", None)
    data, path = item.data, item.path
    if model_input is not None and data is None and path is not None:
        try:  # read once for both decodes; a failure is left for decode_image to report
            with open(path, "rb") as fh:
                data, path = fh.read(), None
        except OSError:
            pass
    try:
        image = decode_image(data, path, max_pixels=max_pixels, min_size=decode_size)
    except ImageRejected as exc:
        return None, str(exc), None, None, None, None
    try:
        array, box = prepare(detector, image)
        whole = detector.preprocess(image) if views and box is not None and box.trimmed else None
    except Exception as exc:  # noqa: BLE001 - one bad image must not end a corpus run
        return None, f"detector preprocessing failed: {type(exc).__name__}: {exc}", None, None, None, None
    pixels = None
    if model_input is not None:
        try:
            # the detector may have had a JPEG decoded at a reduced scale; the model gets the full image
            reduced = decode_size is not None and (data is None or data[:3] == b"\xff\xd8\xff")
            full = decode_image(data, path, max_pixels=max_pixels) if reduced else image
            pixels = model_input(full)
        except ImageRejected as exc:  # pragma: no cover - the same bytes decoded a moment ago
            return None, str(exc), None, None, None, None
        except Exception as exc:  # noqa: BLE001 - as above; skipped for the detector too, so both agree
            return None, f"model preprocessing failed: {type(exc).__name__}: {exc}", None, None, None, None
    duplicate = None
    if copy:  # a near-duplicate query of this item, for measuring an approximate index's recall
        from .augment import augment

        seed = zlib.crc32(f"{item.source}/{item.id}".encode("utf-8", "surrogatepass"))
        try:
            duplicate = prepare(detector, augment(image, "resize+jpeg", np.random.default_rng(seed)))[0]
        except Exception:  # noqa: BLE001 - the copy is optional; the item itself is fine
            duplicate = None
    return array, None, duplicate, pixels, box, whole


def _decode_chunk(chunk: list[tuple[RawItem, bool]]) -> list[Decoded]:
    detector = _WORKER_STATE["detector"]
    max_pixels = _WORKER_STATE["max_pixels"]
    model_input = _WORKER_STATE.get("model_input")
    views = _WORKER_STATE.get("views", False)
    return [_decode_one(item, detector, max_pixels, copy, model_input, views) for item, copy in chunk]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Decoder:
    """Decodes chunks of RawItems in worker processes (or in this process with ``workers=0``), in order."""

    def __init__(self, detector: Detector, *, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 chunk_size: int = 32, start_method: str | None = None, model_input: Callable | None = None,
                 views: bool = False):
        self.detector = detector
        self.model_input = model_input  # PIL image -> a zero-shot model's pixels, made beside the detector's
        self.views = views  # also the whole image's input where a trimming detector trimmed
        self.workers = default_workers() if workers is None else int(workers)
        self.max_pixels = max_pixels
        self.chunk_size = chunk_size
        self.start_method = start_method or default_start_method()
        self._pool = None

    def __enter__(self) -> "Decoder":
        if self.workers > 0:
            ctx = mp.get_context(self.start_method)
            self._pool = ctx.Pool(self.workers, initializer=_init_worker,
                                  initargs=(self.detector, self.max_pixels, self.model_input, self.views))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            if exc[0] is None:
                self._pool.close()
            else:
                self._pool.terminate()
            self._pool.join()
            self._pool = None

    def decode(self, items: Iterable[RawItem], copies: set[tuple[str, str]] | None = None
               ) -> Iterator[Decoded]:
        """Yield a ``Decoded`` per item, in input order; copies are made for the (source, id) pairs in
        ``copies``."""
        yield from self._decode(items, copies or set())

    def _decode(self, items: Iterable[RawItem], copies: set[tuple[str, str]]) -> Iterator[Decoded]:
        flagged = ((item, (item.source, item.id) in copies) for item in items)
        if self._pool is None:
            for item, copy in flagged:
                yield Decoded(item, *_decode_one(item, self.detector, self.max_pixels, copy, self.model_input,
                                                 self.views))
            return
        in_flight: deque = deque()
        max_in_flight = 2 * self.workers + 2  # bounded read-ahead: memory does not grow with the source
        for chunk in _chunks(flagged, self.chunk_size):
            in_flight.append((chunk, self._pool.apply_async(_decode_chunk, (chunk,))))
            while len(in_flight) >= max_in_flight:
                yield from self._collect(in_flight.popleft())
        while in_flight:
            yield from self._collect(in_flight.popleft())

    @staticmethod
    def _collect(entry):
        chunk, result = entry
        for (item, _), decoded in zip(chunk, result.get()):
            yield Decoded(item, *decoded)


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
        vectors = detector.embed(batch)
        low = detector.low_information(batch)
        for j, (idx, what) in enumerate(pending):
            if what == "copy":
                out.copies[idx] = vectors[j]
            elif what == "whole":
                out.wholes[idx] = vectors[j]
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
        idx = len(out.items) - 1
        for arr, what in ((entry.array, "item"), (entry.copy, "copy"), (entry.whole, "whole")):
            if arr is not None:
                pending.append((idx, what))
                pending_arrays.append(arr)
        if len(pending) >= batch_size:
            flush()
    flush()
    return out


def embed_source(source: Source, detector: Detector, *, batch_size: int = 256, workers: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False, scorer=None) -> Embeddings:
    """Embed a whole source in memory (evaluation sets are small); skipped items are listed, not dropped.

    ``scorer`` (a ``scoring.ZeroShotScorer``) is fed each decoded image's model pixels as well, from the
    same decoding pass."""
    items: Iterable[RawItem] = source.iter_items()
    model_input = scorer.preprocessor() if scorer is not None else None
    with Decoder(detector, workers=workers, max_pixels=max_pixels, model_input=model_input) as decoder:
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
    return Embeddings(
        ids=[result.items[i].id for i in keep],
        vectors=vectors,
        low_information=np.array([result.low_information[i] for i in keep], dtype=bool),
        labels=[result.items[i].label for i in keep],
        captions=[result.items[i].caption for i in keep],
        skipped=[Skipped(it.source, it.id, r) for it, r in zip(result.items, result.reasons) if r is not None],
    )
