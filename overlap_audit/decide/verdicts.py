"""Pair comparisons kept between runs, so that ``report`` run again on the same index and evaluation sets
(other thresholds, other predictions, after a review) does not compare the same two images again.

What is kept is the comparison of two images (``photo.PhotoVerification``), from which the verdict and score
follow for whatever verification settings a run has (``rule._outcome``). One SQLite file,
``<cache_dir>/verdicts.sqlite3``, beside the evaluation cache's files (``evalcache``). A comparison is keyed
by an xxh3-128 hash of:

- each image's bytes (xxh3-128; the corpus item's bytes are those ``index.corpus_items`` held to the
  fingerprint the index recorded): a changed image is another key;
- how the images are read (the pixel cap, the long side they are decoded at);
- the comparison's identity: the cache format, ``rule.DECISION_VERSION``, the package's and the imaging
  libraries' versions, and a hash of the source of every module that computes a comparison (imaging, content,
  decide.verify, decide.photo, decide.rule), so that an edited comparison never reuses an old result.

A cache that cannot be opened, read or written is no error: the run compares again (a warning is logged).
Pairs of byte-identical images and unreadable pairs are not stored.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
from dataclasses import asdict
from pathlib import Path

from .photo import PhotoVerification

__all__ = ["VERDICTS_FILE", "VerdictCache", "comparison_key", "fingerprint"]

VERDICTS_FILE = "verdicts.sqlite3"
CACHE_FORMAT = 1
# the modules whose code decides a comparison: a change in any of them is a new identity
_MODULES = ("overlap_audit.imaging", "overlap_audit.content", "overlap_audit.decide.verify",
            "overlap_audit.decide.photo", "overlap_audit.decide.rule")
_log = logging.getLogger(__name__)


def fingerprint(data: bytes) -> str:
    """The xxh3-128 hash of an image's bytes, as the evaluation cache takes it (``evalcache``)."""
    import xxhash

    return xxhash.xxh3_128_hexdigest(data)


@functools.cache
def _identity(decision_version: int) -> str:
    """What a comparison's result depends on besides its two images and how they are read."""
    import importlib
    import sys

    import numpy
    import PIL
    import scipy
    import xxhash

    from .. import __version__

    code = xxhash.xxh3_128()
    for name in _MODULES:
        module = sys.modules.get(name) or importlib.import_module(name)
        code.update(Path(module.__file__).read_bytes())
    return json.dumps({"format": CACHE_FORMAT, "decision_version": decision_version, "package": __version__,
                       "pillow": PIL.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
                       "code": code.hexdigest()}, sort_keys=True)


def comparison_key(eval_fingerprint: str, corpus_fingerprint: str, *, max_pixels: int, long_side: int,
                   decision_version: int) -> str:
    """The key of one comparison: the two images' fingerprints (``fingerprint``), in this order, how they are
    decoded (``max_pixels``, ``long_side``) and the identity of the comparison's code, under the decision
    rule's version (``rule.DECISION_VERSION``)."""
    import xxhash

    text = json.dumps([_identity(decision_version), eval_fingerprint, corpus_fingerprint, int(max_pixels),
                       int(long_side)])
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


def _encode(v: PhotoVerification) -> str:
    return json.dumps(asdict(v))  # NaN as NaN: Python's json reads it back


def _decode(text: str) -> PhotoVerification:
    d = json.loads(text)
    d["zoom"] = tuple(d["zoom"])
    return PhotoVerification(**d)


class VerdictCache:
    """The comparisons stored in ``cache_dir`` (``VERDICTS_FILE``), read and written in this process."""

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.path = Path(cache_dir) / VERDICTS_FILE
        self._db: sqlite3.Connection | None = None
        self._broken = False

    def _open(self, create: bool) -> sqlite3.Connection | None:
        if self._db is not None or self._broken:
            return self._db
        if not create and not self.path.is_file():
            return None
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30)
            db.execute("CREATE TABLE IF NOT EXISTS comparisons (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.commit()
        except (OSError, sqlite3.Error) as exc:
            self._fail(exc)
            return None
        self._db = db
        return db

    def _fail(self, exc: Exception) -> None:
        _log.warning("the verification cache %s cannot be used (%s); pairs are compared again", self.path, exc)
        self._broken = True
        if self._db is not None:
            self._db.close()
            self._db = None

    def get(self, keys: list[str]) -> dict[str, PhotoVerification]:
        """The stored comparisons of ``keys`` (those missing, or unreadable, are left out)."""
        db = self._open(create=False)
        if db is None or not keys:
            return {}
        found: dict[str, PhotoVerification] = {}
        try:
            for start in range(0, len(keys), 500):  # SQLite's limit on bound parameters
                part = keys[start:start + 500]
                rows = db.execute(f"SELECT key, value FROM comparisons WHERE key IN ({','.join('?' * len(part))})",
                                  part).fetchall()
                for key, value in rows:
                    try:
                        found[key] = _decode(value)
                    except (ValueError, TypeError, KeyError):  # written by another layout: a miss
                        continue
        except sqlite3.Error as exc:
            self._fail(exc)
            return {}
        return found

    def put(self, comparisons: dict[str, PhotoVerification]) -> None:
        """Store ``comparisons`` (key -> comparison) in one transaction."""
        if not comparisons:
            return
        db = self._open(create=True)
        if db is None:
            return
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO comparisons (key, value) VALUES (?, ?)",
                               [(k, _encode(v)) for k, v in comparisons.items()])
        except sqlite3.Error as exc:
            self._fail(exc)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

