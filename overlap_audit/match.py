"""The matching step ``report`` and ``pairs`` share: open an index with its own detector, then embed each
evaluation set and find its nearest corpus items.

``open_corpus`` loads the index and the detector and refuses a detector whose embeddings are not
comparable with the index's; ``match_eval_sets`` gives, per evaluation set, its embeddings and neighbours.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .detectors import Detector, get_detector
from .devices import faiss_device
from .embed import embed_source
from .evalcache import cacheable, index_identity, load_cached, save_cached, set_key
from .errors import IndexDirError, SourceError, param
from .index import CorpusIndex, IndexManifest, check_detector, load_index, search, view_tag
from .outputs import check_output_apart
from .settings import MatchSettings, Turn
from .sources import as_source, source_location
from .values import Embeddings, Neighbors, Skipped

if TYPE_CHECKING:
    from .zeroshot.scoring import ZeroShotScorer

_log = logging.getLogger(__name__)

__all__ = ["Corpus", "EvalMatch", "check_eval_sets", "check_report_apart", "match_eval_sets",
           "open_corpus"]


@dataclass(frozen=True, eq=False)
class Corpus:
    """An opened index and the detector that embeds queries for it."""

    path: str  # the index directory as given, for messages and the report
    index: CorpusIndex
    detector: Detector

    @property
    def manifest(self) -> IndexManifest:
        return self.index.manifest


@dataclass(frozen=True, eq=False)
class EvalMatch:
    """One evaluation set embedded and matched: its embeddings and their nearest corpus items, row-aligned."""

    name: str
    embeddings: Embeddings
    neighbors: Neighbors
    cached: bool = False  # read from the evaluation cache (``evalcache``) instead of embedded and searched
    # seconds spent: "embed" (or, from the cache, fingerprinting the items and reading the file), "search"
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def skipped(self) -> list[Skipped]:
        """Items of the set that could not be embedded (and so have no neighbours)."""
        return self.embeddings.skipped


def check_eval_sets(evals: Iterable[tuple[str, object]]) -> list[tuple[str, object]]:
    """The (name, source) pairs as a list, refused when empty or when a name repeats. A source is a spec or an
    in-memory source (``memory.memory_source``)."""
    evals = [(str(name), spec) for name, spec in evals]
    if not evals:
        raise SourceError(f"give at least one evaluation set ({param('evals')})")
    names = [name for name, _ in evals]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise SourceError(f"evaluation set names must be distinct; repeated: {', '.join(repeated)}")
    return evals


def check_report_apart(out_dir: str | os.PathLike, index_dir: str | os.PathLike,
                       evals: Iterable[tuple[str, str]]) -> None:
    """Refuse a report or pairs ``out_dir`` that is, or lies inside, the index directory or a folder
    evaluation set (its files would become evaluation examples, or index files, on a later run), or that
    holds either."""
    on_disk = [(name, spec) for name, spec in evals if isinstance(spec, (str, os.PathLike))]  # not in memory
    check_output_apart(out_dir, [("index directory", str(index_dir), True),
                                 *((f"evaluation set {name}", *source_location(str(spec))) for name, spec in on_disk)])


def open_corpus(index_dir: str | os.PathLike, settings: MatchSettings | None = None) -> Corpus:
    """Load the index (without the FAISS index when ``settings.exact`` streams the shards) and its
    detector, refusing an empty index and a detector the index was not built with."""
    settings = settings or MatchSettings()
    faiss_device(settings.device)  # a GPU asked of a CPU-only FAISS fails now, not after every set is embedded
    index = load_index(index_dir, load_faiss=not settings.exact)
    if len(index) == 0:
        raise IndexDirError(f"the index {index_dir} holds no items (all {index.manifest.n_given} given were "
                            "skipped or low-information): there is nothing to compare against")
    detector = get_detector(settings.detector or index.manifest.detector.spec, device=settings.device,
                            content=index.manifest.detector.content)
    check_detector(index.manifest, detector.info, str(index_dir))
    return Corpus(str(index_dir), index, detector)


def match_eval_sets(corpus: Corpus, evals: Iterable[tuple[str, object]], settings: MatchSettings | None = None, *,
                    scorers: Mapping[str, ZeroShotScorer] | None = None,
                    cache_dir: str | os.PathLike | None = None,
                    min_similarity: Mapping[str, float] | None = None) -> dict[str, EvalMatch]:
    """Embed each evaluation set with the corpus's detector and find each item's ``settings.k`` nearest
    corpus items. A set's scorer in ``scorers`` is fed its images in the same decoding pass.

    ``min_similarity`` (set name -> similarity) is the lowest similarity the caller's decision uses; a
    ``mih`` index is searched with it (a radius search instead of a scan of every hash) and leaves out the
    less similar neighbours (id None, similarity NaN); any other index, and the exact stream, cost the same
    either way and return every neighbour.

    With ``cache_dir`` a set's embeddings and neighbours are read from the evaluation cache (``evalcache``)
    when its key matches (same index, detector, settings and item bytes), and written there otherwise; a set
    with a scorer is always decoded (the model needs its pixels), and its result still stored."""
    settings = settings or MatchSettings()
    scorers = scorers or {}
    identity = (index_identity(corpus.manifest.to_dict(), corpus.detector.info.to_dict()) if cache_dir is not None
                else None)
    # only a mih index answers faster with a floor; elsewhere the neighbours beyond it are kept for the report
    # (its gallery and splits show each example's nearest item, however far)
    radius_pays = corpus.manifest.index_type == "mih" and not settings.exact
    out: dict[str, EvalMatch] = {}
    for name, spec in evals:
        source = as_source(spec, name=name, labels_from_folders=True)
        started = time.perf_counter()
        floor = None
        if min_similarity is not None and name in min_similarity and radius_pays:
            floor = float(min_similarity[name])
        key = set_key(source, identity, settings) if identity is not None and cacheable(source) else None
        if key is not None and name not in scorers:
            hit = load_cached(cache_dir, key, floor)
            if hit is not None:
                _log.debug("%s: %d item(s) from the evaluation cache %s", name, key.n_items, cache_dir)
                out[name] = EvalMatch(name, hit[0], at_least(hit[1], floor), cached=True,
                                      seconds={"embed": time.perf_counter() - started, "search": 0.0})
                continue
        # query views pay only beside corpus views (alone they find no more: BENCHMARKS.md, "Corpus views")
        crops = settings.query_crops() if corpus.manifest.views else ()
        emb = embed_source(source, corpus.detector, batch_size=settings.batch_size, workers=settings.workers,
                           max_pixels=settings.max_pixels, progress=settings.progress, scorer=scorers.get(name),
                           views=settings.views, limits=settings.limits, crops=crops)
        embedded = time.perf_counter()
        neighbors = search(corpus.index, emb.ids, emb.vectors, k=settings.k, device=settings.device,
                           exact_stream=settings.exact, ray_address=settings.ray_address, min_similarity=floor,
                           progress=settings.progress)
        if emb.whole_rows is not None:
            whole = search(corpus.index, [emb.ids[r] for r in emb.whole_rows], emb.whole_vectors, k=settings.k,
                           device=settings.device, exact_stream=settings.exact, ray_address=settings.ray_address,
                           min_similarity=floor, progress=settings.progress)
            neighbors = merge_views(neighbors, whole, emb.whole_rows)
        cut = view_cut(settings, corpus.detector)
        rows = viewed_rows(emb)
        for c, area in enumerate(crops if emb.crop_vectors is not None and len(rows) else ()):
            crop = search(corpus.index, [emb.ids[r] for r in rows], emb.crop_vectors[rows, c], k=settings.k,
                          device=settings.device, exact_stream=settings.exact, ray_address=settings.ray_address,
                          min_similarity=floor, progress=settings.progress)
            crop = Neighbors(crop.query_ids, crop.ids, (crop.similarities - np.float32(cut)).astype(np.float32))
            neighbors = merge_views(neighbors, crop, rows, area.tag if isinstance(area, Turn) else view_tag(area))
        if key is not None:
            save_cached(cache_dir, key, emb, neighbors, floor)
        out[name] = EvalMatch(name, emb, neighbors, seconds={"embed": embedded - started,
                                                             "search": time.perf_counter() - embedded})
        _log.debug("%s: %d item(s) embedded in %.2f s, searched in %.2f s", name, len(emb) + len(emb.skipped),
                   *out[name].seconds.values())
    return out


def viewed_rows(emb: Embeddings) -> np.ndarray:
    """The rows whose query views (centre crops, turns) are searched: those whose content box was not trimmed.
    A query with a margin shows its whole content, which its content box already holds whatever was cropped
    around it; its crops and turns only add look-alikes (on the clip-art development set they found no copy
    that its content box did not, BENCHMARKS.md "Corpus views")."""
    trimmed = np.zeros(len(emb.ids), bool)
    for r, box in enumerate(emb.boxes or ()):
        trimmed[r] = box is not None and bool(box.trimmed)
    return np.flatnonzero(~trimmed)


def view_cut(settings: MatchSettings, detector) -> np.float32:
    """How much less similar a match through a query view (a centre crop or a turn) counts than the detector
    finds it: ``MatchSettings.view_discount`` of the gap between a perfect match and the detector's threshold.
    Searching many views of each query raises an unrelated image's best similarity; the discount keeps the
    threshold and verification's grade where they were measured. A detector without a default threshold (a
    checkpoint not yet calibrated) has no gap to scale: no discount."""
    threshold = detector.info.default_threshold
    if threshold is None:
        return np.float32(0.0)
    return np.float32(float(settings.view_discount) * (1.0 - float(threshold)))


def at_least(neighbors: Neighbors, min_similarity: float | None) -> Neighbors:
    """The neighbours at least ``min_similarity`` similar (the others: id None, similarity NaN), as a search
    with that floor gives them: a query left with none is counted under its trimmed view, as ``merge_views``
    counts a query whose views all found none."""
    if min_similarity is None:
        return neighbors
    sims = neighbors.similarities
    with np.errstate(invalid="ignore"):
        cut = ~(sims >= np.float32(min_similarity))
    ids = neighbors.ids.copy()
    ids[cut] = None
    views = neighbors.views
    if views is not None and neighbors.k:
        views = ["trimmed" if cut[r, 0] else v for r, v in enumerate(views)]
    return Neighbors(neighbors.query_ids, ids, np.where(cut, np.nan, sims).astype(np.float32), views=views)


def merge_views(trimmed: Neighbors, other: Neighbors, rows, name: str = "whole") -> Neighbors:
    """Per query, the k most similar corpus items over its views, each item once at its highest similarity:
    ``trimmed`` has every query (its content box, or the views merged into it so far), ``other`` the queries
    ``rows`` in another view (their whole image, or a centre crop: ``name``). A query's view is the one its
    nearest item came through; a tie keeps the earlier (the item and view of ``trimmed``). Merging the lists,
    rather than keeping the list of the view with the better nearest item, keeps a source that is second in
    one view and first in none among the items verification judges."""
    k = trimmed.k
    views = list(trimmed.views) if trimmed.views is not None else ["trimmed"] * len(trimmed.query_ids)
    ids, sims = trimmed.ids.copy(), trimmed.similarities.copy()
    if not k or not len(rows):
        return Neighbors(trimmed.query_ids, ids, sims, views=views)
    rows = np.asarray(rows)
    both_ids = np.concatenate([ids[rows], other.ids], axis=1)
    both = np.nan_to_num(np.concatenate([sims[rows], other.similarities], axis=1), nan=-np.inf)
    both[np.equal(both_ids, None)] = -np.inf
    # most similar first; among equals the earlier list's, then the earlier rank (a stable sort)
    order = np.argsort(-both, axis=1, kind="stable")
    both_ids, both = np.take_along_axis(both_ids, order, axis=1), np.take_along_axis(both, order, axis=1)
    # an item already listed (more similar, or as similar and earlier) is dropped
    same = both_ids[:, :, None] == both_ids[:, None, :]
    seen = np.tril(same, k=-1).any(axis=2) & np.isfinite(both)
    both[seen] = -np.inf
    keep = np.argsort(-both, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(both, keep, axis=1)
    found = np.isfinite(top)
    ids[rows] = np.where(found, np.take_along_axis(both_ids, keep, axis=1), None)
    sims[rows] = np.where(found, top, np.nan).astype(sims.dtype)
    came = np.nan_to_num(other.similarities[:, 0], nan=-np.inf) > np.nan_to_num(trimmed.similarities[rows, 0],
                                                                                 nan=-np.inf)
    for j in np.flatnonzero(came):
        views[int(rows[j])] = name
    return Neighbors(trimmed.query_ids, ids, sims, views=views)
