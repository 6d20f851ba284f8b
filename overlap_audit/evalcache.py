"""The evaluation sets' embeddings and search results kept between runs, so that ``report`` run again on the
same index and sets (other thresholds, other predictions, after a review) does not embed and search again.

One file per evaluation set, ``<cache_dir>/<key>.npz``, written atomically. The key is an xxh3-128 hash of
everything that decides the result: the cache format, the package version, the index (its whole manifest:
generation, file checksums, creation time), the detector, the match settings that change results (k, exact,
views, max_pixels, limits, device, detector override), the set's name and, per item in order, its id,
label, caption, skip reason and an xxh3-128 fingerprint of its bytes. The file holds the key's full text as
well and is used only when that text matches the current one exactly; an unreadable or mismatching file is
a miss (and is replaced by the next write). Sources read from URLs or ``pipe:`` commands are not cached:
fingerprinting them would read every shard twice.

Calibration's generated images (``calibrate.calibrate_sets``: each sampled image transposed, and App. C
copies beside their sources) are kept the same way, as in-memory sets keyed by their bytes: the bytes follow
from the sampled images' contents, the seed and the generator's code, so a change to any of them is a miss.

Neighbours searched with a floor (``min_similarity``: those less similar left out) are stored with it and
serve a later run whose floor is as high or higher (its caller cuts them there); a lower floor is a miss.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import atomic_write
from .content import ContentBox
from .errors import OverlapAuditError
from .limits import DEFAULT_LIMITS, ReadRefused, read_file
from .settings import MatchSettings
from .values import Embeddings, Neighbors, Skipped

__all__ = ["CACHE_FORMAT", "CacheKey", "cacheable", "default_cache_dir", "index_identity", "load_cached",
           "save_cached", "set_key"]

CACHE_FORMAT = 3  # 3: a query's neighbours are merged over its views (``match.merge_views``)
_log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/overlap-audit/eval`` (``~/.cache/overlap-audit/eval`` when it is not set)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "overlap-audit" / "eval"


@dataclass(frozen=True)
class CacheKey:
    """One evaluation set's key: ``text`` (what the result depends on, as JSON) and its hash ``digest``
    (the file name); ``n_items`` counts the items fingerprinted."""

    text: str
    digest: str
    n_items: int


def _fingerprint(item, limits) -> str:
    import xxhash

    if item.data is not None:
        return xxhash.xxh3_128_hexdigest(item.data)
    if item.path is not None:
        try:
            return xxhash.xxh3_128_hexdigest(read_file(item.path, limits.max_file_bytes))
        except (OSError, ReadRefused) as exc:  # embedding will skip it too; its reason is part of the key
            return f"unreadable: {type(exc).__name__}: {exc}"
    return ""


def cacheable(source) -> bool:
    """Whether a source's items can be fingerprinted without reading a remote stream twice."""
    from .sources.remote import is_pipe, is_url

    return not any(is_url(p) or is_pipe(p) for p in getattr(source, "paths", ()))


def index_identity(manifest: dict, detector: dict) -> dict:
    """What identifies an index and the detector that queries it: a hash of the whole manifest (generation,
    file checksums, creation time) and the detector's description."""
    import xxhash

    text = json.dumps(manifest, sort_keys=True, default=str)
    return {"manifest_xxh3": xxhash.xxh3_128_hexdigest(text.encode("utf-8")), "detector": detector}


def set_key(source, identity: dict, settings: MatchSettings, purpose: str | None = None) -> CacheKey:
    """The key of one evaluation set (an opened source) against an index (``identity``: ``index_identity``)
    under ``settings``; reads every item's bytes once. ``purpose`` names an entry that is not a set's search
    result (calibration's copies, stored with their embeddings only), so the two never share a key."""
    import xxhash

    limits = settings.limits or DEFAULT_LIMITS
    items = [[it.id, it.label, it.caption, it.skip_reason, _fingerprint(it, limits)]
             for it in source.iter_items(settings.limits)]
    text = json.dumps({
        "format": CACHE_FORMAT, "package_version": __version__, "index": identity,
        "match": {"detector": settings.detector, "device": settings.device, "k": settings.k,
                  "exact": settings.exact, "views": settings.views, "query_views": list(settings.query_views),
                  "query_turns": list(settings.query_turns),
                  "view_discount": settings.view_discount,
                  "max_pixels": settings.max_pixels,
                  "limits": asdict(limits)},
        "set": source.name, "items": items, **({"purpose": purpose} if purpose is not None else {}),
    }, sort_keys=True, default=str)
    return CacheKey(text, xxhash.xxh3_128_hexdigest(text.encode("utf-8")), len(items))


def _path(cache_dir: str | os.PathLike, key: CacheKey) -> Path:
    return Path(cache_dir) / f"{key.digest}.npz"


def load_cached(cache_dir: str | os.PathLike, key: CacheKey,
                min_similarity: float | None = None) -> tuple[Embeddings, Neighbors] | None:
    """The set's embeddings and neighbours stored under ``key``; None when there is none, the file cannot
    be read or was written under another key, or its neighbours were searched with a floor above
    ``min_similarity`` (None: no floor)."""
    path = _path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            if meta.get("key") != key.text:
                _log.debug("eval cache %s: written under another key; not used", path)
                return None
            stored = meta.get("min_similarity")
            if stored is not None and (min_similarity is None or float(min_similarity) < stored):
                _log.debug("eval cache %s: neighbours searched from similarity %s only; not used", path, stored)
                return None
            return _decode(meta, {name: z[name] for name in z.files})
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:  # a miss, not an error
        _log.debug("eval cache %s unreadable (%s); not used", path, exc)
        return None


def _decode(meta: dict, arrays: dict) -> tuple[Embeddings, Neighbors]:
    has_whole = bool(meta["has_whole"])
    emb = Embeddings(
        ids=meta["ids"], vectors=arrays["vectors"], low_information=arrays["low_information"].astype(bool),
        labels=meta["labels"], captions=meta["captions"], skipped=[Skipped.from_dict(s) for s in meta["skipped"]],
        boxes=[None if b is None else ContentBox(**b) for b in meta["boxes"]],
        whole_rows=arrays["whole_rows"] if has_whole else None,
        whole_vectors=arrays["whole_vectors"] if has_whole else None,
        crop_vectors=arrays["crop_vectors"] if meta["has_crops"] else None)
    ids = np.empty(arrays["similarities"].shape, dtype=object)
    ids.reshape(-1)[:] = meta["neighbor_ids"]
    if not len(ids) == len(emb.ids) == len(emb.vectors) == len(meta["query_ids"]):
        raise ValueError("rows do not line up")
    neighbors = Neighbors(meta["query_ids"], ids, arrays["similarities"], views=meta["views"])
    return emb, neighbors


def save_cached(cache_dir: str | os.PathLike, key: CacheKey, emb: Embeddings, neighbors: Neighbors,
                min_similarity: float | None = None) -> bool:
    """Store a set's embeddings and neighbours (searched with the floor ``min_similarity``) under ``key``
    (atomically); False, with a warning logged, when the cache directory cannot be written (the run goes on
    without it)."""
    has_whole = emb.whole_rows is not None
    meta = {"key": key.text, "min_similarity": min_similarity, "ids": list(emb.ids), "labels": list(emb.labels), "captions": list(emb.captions),
            "skipped": [s.to_dict() for s in emb.skipped],
            "boxes": [None if b is None else asdict(b) for b in emb.boxes], "has_whole": has_whole,
            "has_crops": emb.crop_vectors is not None,
            "query_ids": list(neighbors.query_ids), "neighbor_ids": [None if v is None else str(v)
                                                                     for v in neighbors.ids.reshape(-1)],
            "views": neighbors.views}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
              "vectors": emb.vectors, "low_information": np.asarray(emb.low_information, dtype=bool),
              "similarities": neighbors.similarities,
              "whole_rows": emb.whole_rows if has_whole else np.zeros(0, np.int64),
              "whole_vectors": emb.whole_vectors if has_whole else np.zeros((0, 0), emb.vectors.dtype),
              "crop_vectors": (emb.crop_vectors if emb.crop_vectors is not None
                               else np.zeros((0, 0, 0), emb.vectors.dtype))}

    def write(tmp: str) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())

    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(_path(cache_dir, key), write)
    except (OSError, OverlapAuditError) as exc:  # a cache that cannot be written must not fail the report
        _log.warning("the evaluation cache %s cannot be written (%s); the next run embeds again", cache_dir, exc)
        return False
    return True
