"""A detector's threshold from evidence: a user's own held-out images, their augmented copies as
positives and every other image as negatives, and the lowest threshold whose precision reaches a target
(the rule of ``overlap_audit.decide.thresholds``).

For n images, positives are the n pairs (copy_i, image_i); negatives are the n·(n − 1) pairs
(copy_i, image_j), j ≠ i — every pair a search could wrongly call a duplicate. At threshold t,
precision = TP / (TP + FP) and recall = TP / n. Images flagged low-information are left out (the split
never calls them Overlap anyway).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


# calibration may relax a set's threshold down to the default's first stage at this relaxation, the range it was
# measured over (phash 0.7188-0.8594). It is fixed apart from verification's own relaxation: a threshold below it
# would also move that set's first stage (``DecisionRule.first_stage``), and the two would compound.
CALIBRATION_RELAX = 2.0


def lowest_threshold(default: float, *, verifying: bool = False) -> float:
    """The lowest threshold calibration may choose for a detector whose default is ``default``: with
    verification (``verifying``) the default itself, and calibration only estimates the decision's precision
    and recall there. A threshold below the default would keep, unverified, the pairs between the two that
    verification has nothing to say about; the transposed images calibration measures precision with are
    chance matches, not the look-alikes verification exists to judge (on the clip-art development set the
    threshold calibration chose, 0.8125, let a look-alike through that the default kept out), and the lower
    threshold would also lower the set's first stage, verifying more pairs. Without verification, the
    default's first stage at ``CALIBRATION_RELAX``."""
    from .decide.rule import first_stage_threshold

    return float(default) if verifying else first_stage_threshold(default, CALIBRATION_RELAX)


def fixed_threshold(default: float | None, *, verifying: bool) -> float | None:
    """The threshold a set's calibration ends at whatever it measures, where it has only one to choose from
    (with verification: the detector's default, ``lowest_threshold``); None where it chooses."""
    if default is None or lowest_threshold(default, verifying=verifying) < float(default):
        return None
    return float(default)


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold and the precision/recall curve it came from."""

    detector: str
    target_precision: float
    threshold: float | None
    precision: float | None
    recall: float | None
    n_images: int
    n_low_information: int
    strength: str
    curve: list[dict] = field(default_factory=list)  # threshold, precision, recall

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def curve_rows(thresholds: np.ndarray, precision: np.ndarray, target: float, *, n: int = 20,
               dense: int = 20) -> list[int]:
    """Which rows of a precision/recall curve to show (ascending): ``n`` spread over the whole curve, plus up
    to ``dense`` spread over where precision lies between 0.5 and max(0.999, target) and every row next to
    where precision first reaches ``target`` (the region that decides the threshold: most thresholds of a
    calibration sit among the negatives, far below it)."""
    m = len(thresholds)
    if m == 0:
        return []
    rows = set(range(0, m, max(1, m // n))) | {m - 1}
    region = np.nonzero((precision >= min(0.5, target)) & (precision <= max(0.999, target)))[0]
    if len(region):
        rows |= {int(region[i]) for i in np.linspace(0, len(region) - 1, min(dense, len(region))).round().astype(int)}
    reached = np.nonzero(precision >= target)[0]
    if len(reached):
        first = int(reached[0])
        rows |= set(range(max(0, first - 2), min(m, first + 3)))
    return sorted(rows)


def calibrate(source: str, detector: str = "phash", *, target_precision: float = 0.99, strength: str = "medium",
              seed: int = 0, max_images: int = 2000, workers: int | None = None) -> Calibration:
    """Embed held-out images and their augmented copies; the lowest threshold with precision >= target."""
    from .augment import augment_all
    from .detectors import get_detector
    from .detectors.base import prepare
    from .embed import Decoder
    from .errors import SourceError
    from .sources import open_source
    from .decide.thresholds import precision_recall, threshold_at_precision

    det = get_detector(detector)

    class _Keep:  # decode in the worker pool, keep a bounded RGB copy of each image
        decode_size = 512

        def preprocess(self, image):
            image = image.copy()
            image.thumbnail((512, 512))
            return np.asarray(image, dtype=np.uint8)

    from PIL import Image

    images = []
    with Decoder(_Keep(), workers=workers) as decoder:
        for decoded in decoder.decode(open_source(source).iter_items()):
            if decoded.array is not None:
                images.append(Image.fromarray(decoded.array))
            if len(images) >= max_images:
                break
    if len(images) < 3:
        raise SourceError(f"calibration needs at least 3 readable images in {source!r}; found {len(images)}")
    rng = np.random.default_rng(seed)
    copies = [augment_all(im, strength, rng) for im in images]
    a = np.stack([prepare(det, im)[0] for im in images])
    b = np.stack([prepare(det, im)[0] for im in copies])
    keep = ~det.low_information(a)
    va, vb = det.embed(a)[keep], det.embed(b)[keep]
    sims = det.similarity(vb, va)
    n = len(va)
    pos = np.diag(sims).astype(np.float64)
    neg = sims[~np.eye(n, dtype=bool)].astype(np.float64)
    thresholds, precision, recall = precision_recall(pos, neg)
    point = threshold_at_precision(pos, neg, target_precision)
    curve = [{"threshold": float(thresholds[i]), "precision": float(precision[i]), "recall": float(recall[i])}
             for i in curve_rows(thresholds, precision, target_precision)]
    return Calibration(
        detector=det.spec, target_precision=target_precision,
        threshold=None if point is None else point.threshold,
        precision=None if point is None else point.precision,
        recall=None if point is None else point.recall,
        n_images=int(n), n_low_information=int((~keep).sum()), strength=strength, curve=curve,
    )



# ---------------------------------------------------------------- each evaluation set's threshold in a report

# images are reduced to this longest side before they are copied or turned (the detectors look at far less)
CALIBRATION_SIDE = 1024


@dataclass(frozen=True, eq=False)
class SetCalibration:
    """One evaluation set's calibration: the threshold chosen (``threshold``; None: none in [``lower``,
    ``upper``] reached the target, and ``used`` is the detector's default), and what the whole decision did
    with the positives (each an App. C copy against its source image) and the negatives (transposed images
    against their nearest corpus item) at ``used``."""

    dataset: str
    threshold: float | None
    used: float
    lower: float
    upper: float
    target_precision: float
    n_eval: int
    positive_overlap: np.ndarray  # bool per positive: called Overlap by the decision at ``used``
    negative_overlap: np.ndarray  # bool per negative: a false match at ``used``
    seconds: float
    # both generated sets' embeddings (and the transposes' neighbours) read from the evaluation cache
    embeddings_cached: bool = False

    def estimates(self, n_overlap: int, level: float) -> dict:
        """The estimated precision and recall of the set's Overlap split (``n_overlap`` examples) with their
        Clopper-Pearson intervals at ``level``."""
        from .decide.calibrate_set import clopper_pearson, estimate_precision

        k, n = int(self.positive_overlap.sum()), len(self.positive_overlap)
        recall = None
        if n:
            low, high = clopper_pearson(k, n, level)
            recall = {"value": k / n, "low": low, "high": high, "successes": k, "trials": n, "level": level}
        precision = estimate_precision(int(self.negative_overlap.sum()), len(self.negative_overlap), n_overlap,
                                       self.n_eval, level)
        return {"precision": None if precision is None else precision.to_dict(), "recall": recall}


def _reduced(image):
    image = image.convert("RGB")
    image.thumbnail((CALIBRATION_SIDE, CALIBRATION_SIDE))
    return image


def _embedded(corpus, source, match_settings, cache_dir, *, views: bool = False,
              crops: tuple[float, ...] = ()) -> tuple:
    """(embeddings, read from the cache) of an in-memory set of generated images that is compared pair by pair
    and never searched; with ``cache_dir`` kept in the evaluation cache (``evalcache``) under the images'
    bytes. ``views`` and ``crops``: as ``embed.embed_source``'s (the views a report's search compares)."""
    from .embed import embed_source
    from .evalcache import index_identity, load_cached, save_cached, set_key
    from .values import Neighbors

    key = None
    if cache_dir is not None:
        identity = index_identity(corpus.manifest.to_dict(), corpus.detector.info.to_dict())
        key = set_key(source, identity, match_settings,
                      purpose=f"calibration: embeddings only; whole {bool(views)}; crops {tuple(crops)}")
        hit = load_cached(cache_dir, key)
        if hit is not None:
            return hit[0], True
    emb = embed_source(source, corpus.detector, workers=match_settings.workers, max_pixels=match_settings.max_pixels,
                       limits=match_settings.limits, views=views, crops=crops)
    if key is not None:
        n = len(emb.ids)
        save_cached(cache_dir, key, emb, Neighbors(list(emb.ids), np.empty((n, 0), object),
                                                   np.empty((n, 0), np.float32)))
    return emb, False


def _view_similarity(det, copies, a: int, sources, b: int, cut: float = 0.0) -> float:
    """The similarity a report's search gives copy ``a`` and corpus item ``b``: the most similar of the copy's
    views (its vector; its whole image where trimmed; where not, its centre crops and turns, less ``cut``:
    ``match.view_cut``, ``match.viewed_rows``) against the item's (its vector and its corpus views), as
    ``match.merge_views`` and ``index.search.with_views`` take them."""
    from .match import viewed_rows

    query = [copies.vectors[a:a + 1]]
    if copies.whole_rows is not None:
        hit = np.flatnonzero(np.asarray(copies.whole_rows) == a)
        if len(hit):
            query.append(copies.whole_vectors[hit[0]:hit[0] + 1])
    item = np.concatenate([sources.vectors[b:b + 1]] + ([sources.crop_vectors[b]] if sources.crop_vectors is not None
                                                        else []))
    best = float(np.max(det.similarity(np.concatenate(query), item)))
    if copies.crop_vectors is not None and a in viewed_rows(copies):
        best = max(best, float(np.float32(np.max(det.similarity(copies.crop_vectors[a], item))) - np.float32(cut)))
    return best


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=0)  # lossless and fast: the bytes stay in memory
    return buf.getvalue()


def calibrate_sets(corpus, index_dir, matches: dict, evals: dict, rule_for, settings, match_settings, *,
                   cache_dir: str | os.PathLike | None = None, pool=None) -> dict[str, SetCalibration]:
    """Each evaluation set's threshold (``decide.calibrate_set.pick_threshold``) and what the decision does at
    it with known copies and known non-copies.

    ``corpus`` is the opened index (``match.Corpus``), ``matches`` the sets' ``match.EvalMatch`` by name,
    ``evals`` their sources by name, ``rule_for(thresholds)`` the report's ``DecisionRule`` at the given
    thresholds, ``settings`` a ``settings.CalibrationSettings``, ``match_settings`` the report's
    ``MatchSettings`` (the negatives are searched as the set's own images were); with ``cache_dir`` the
    generated images' embeddings and the transposes' neighbours (``evalcache``) and the pairs' comparisons
    (``decide.verdicts``) are kept there between reports, keyed by the generated images' bytes (the copies and
    transposes are seeded, so their bytes repeat); with ``pool`` (``decide.rule.verification_pool``) the pairs
    are judged over its workers. A set's sample is drawn with
    ``np.random.default_rng([seed, crc32(name)])`` among its examples that are not low-information: the
    ``positives`` first, each with one App. C copy (``augment.appc_copy``) compared with its image by the
    detector (through the views a report's search compares, ``_view_similarity``) and, with verification, judged by the rule; the ``negatives`` (a superset of those images) each
    transposed along either diagonal (turned by 90 degrees and mirrored), searched in the corpus and, at or above
    the lowest threshold tried, judged against their nearest corpus item. The threshold lies between
    ``lowest_threshold`` (with verification: the default) and the default."""
    import time
    import zlib

    from PIL import Image

    from .augment import APPC_STRENGTHS, appc_copy
    from .decide.calibrate_set import pick_threshold, threshold_candidates
    from .errors import ThresholdError, param
    from .imaging import ImageRejected, decode_image
    from .index import corpus_items
    from .match import match_eval_sets, view_cut
    from .sources import as_source, fetch_items
    from .sources.memory import MemorySource
    from .values import RawItem

    det = corpus.detector
    default = det.default_threshold
    verifying = rule_for({}).verify is not None
    lower = 0.0 if default is None else lowest_threshold(default, verifying=verifying)
    upper = 1.0 if default is None else float(default)
    out = {}
    for name, m in matches.items():
        started = time.perf_counter()
        emb, nb = m.embeddings, m.neighbors
        top = (nb.similarities[:, 0] if nb.k else np.full(len(emb), np.nan, np.float32)).astype(np.float32)
        low = np.asarray(emb.low_information, bool)
        observed = np.where(low, np.nan, top)
        rng = np.random.default_rng([settings.seed, zlib.crc32(name.encode())])
        rows = rng.permutation(np.flatnonzero(~low))[:max(settings.positives, settings.negatives)]
        fetched = fetch_items(as_source(evals[name], name=name, labels_from_folders=True),
                              [emb.ids[i] for i in rows])
        images, originals, kept = [], [], []
        for i in rows:
            item = fetched.get(emb.ids[i])
            if item is None or item.skip_reason:
                continue
            try:
                images.append(_reduced(decode_image(item.data, item.path, max_pixels=match_settings.max_pixels)))
            except ImageRejected:
                continue
            originals.append(RawItem(name, str(len(originals)), data=item.data, path=item.path))
            kept.append(int(i))
        tag = f"{name} (calibration)"
        if not images:  # nothing to sample (every example low-information or unreadable): the default stays
            if default is None:
                raise ThresholdError(f"{name}: no image to calibrate a threshold on and this detector has no "
                                     f"default: pass {param('threshold')} or a {param('thresholds')} file")
            out[name] = SetCalibration(name, None, float(default), float(lower), upper, settings.target_precision,
                                       len(emb), np.zeros(0, bool), np.zeros(0, bool), time.perf_counter() - started)
            continue
        turned = []
        # each image turned by 90 degrees and mirrored (transposed along one diagonal or the other): a mirror
        # alone of a left-right symmetric scene is another part of the same scene, which may be in the corpus
        for j, im in enumerate(images[:settings.negatives]):
            turned.append(RawItem(tag, f"t{j}", data=_png(im.transpose(Image.Transpose.TRANSPOSE))))
            turned.append(RawItem(tag, f"v{j}", data=_png(im.transpose(Image.Transpose.TRANSVERSE))))
        neg = match_eval_sets(corpus, [(tag, MemorySource(tuple(turned), tag))], match_settings,
                              cache_dir=cache_dir)[tag]
        neg_top = (neg.neighbors.similarities[:, 0] if neg.neighbors.k else
                   np.full(len(neg.embeddings), np.nan, np.float32))
        neg_low = np.asarray(neg.embeddings.low_information, bool)
        neg_sims = np.where(neg_low, np.nan, neg_top)
        # a transposed image the detector still finds close to the image it came from is no known non-copy (a
        # symmetric picture) and is left out
        own = {f"{k}{j}": r for j, r in enumerate(kept[:settings.negatives]) for k in "tv"}
        source_rows = np.array([own[i] for i in neg.embeddings.ids], int)
        to_own = np.array([det.similarity(neg.embeddings.vectors[r:r + 1],
                                          emb.vectors[source_rows[r]:source_rows[r] + 1])[0, 0]
                           for r in range(len(neg_sims))], np.float32)
        distinct = to_own < lower
        neg_sims, neg_low = neg_sims[distinct], neg_low[distinct]
        neg_rows = np.flatnonzero(distinct)
        # the negatives from the lowest threshold up, judged against their nearest corpus item (a verdict does not
        # depend on the threshold: ``VerifySettings.accept_for`` is anchored at the detector's default). Those
        # below it, down to its first stage, are not judged, to save the time: verification would have to accept
        # a pair of two different pictures there on strong evidence (none of 286 mirrored or turned images of the
        # demo's sets were)
        lowest_rule = rule_for({name: lower})
        first = lowest_rule.first_stage(name)
        verdicts: list = [None] * len(neg_sims)
        if first is not None:
            todo = [r for r in range(len(neg_sims)) if np.nan_to_num(neg_sims[r], nan=-np.inf) >= lower]
            keys = {str(neg.neighbors.ids[neg_rows[r], 0]) for r in todo}
            items = corpus_items(index_dir, keys) if keys else {}
            by_id = {it.id: it for it in turned}
            judged_neg = lowest_rule.judge_pairs(
                name, [(by_id[neg.embeddings.ids[neg_rows[r]]], items[str(neg.neighbors.ids[neg_rows[r], 0])],
                        float(neg_sims[r])) for r in todo],
                max_pixels=match_settings.max_pixels, workers=match_settings.workers, cache_dir=cache_dir,
                progress=match_settings.progress, desc=f"verify {name} (calibration negatives)", pool=pool)
            for r, p in zip(todo, judged_neg):
                verdicts[r] = p.verdict

        def false_matches(t: float) -> np.ndarray:
            return np.asarray(rule_for({name: float(t)}).overlap(name, neg_sims, verdicts, neg_low), bool)

        candidates = threshold_candidates(neg_sims, observed, lower=lower, upper=upper)
        chosen = pick_threshold(candidates, [int(false_matches(t).sum()) for t in candidates], len(neg_sims),
                                [int((observed >= np.float32(t)).sum()) for t in candidates], len(emb),
                                settings.target_precision)
        used = chosen if chosen is not None else default
        if used is None:
            raise ThresholdError(f"{name}: no threshold reached the estimated precision "
                                 f"{settings.target_precision} and this detector has no default: pass "
                                 f"{param('threshold')} or a {param('thresholds')} file")
        rule = rule_for({name: used})
        negative_overlap = false_matches(used)

        # the positives: one App. C copy of each image, compared with it and judged by the rule
        params = APPC_STRENGTHS[settings.strength]
        n_pos = min(settings.positives, len(images))
        copies = [RawItem(tag, f"c{j}", data=_png(appc_copy(images[j], params, rng))) for j in range(n_pos)]
        sources = [RawItem(tag, f"s{j}", data=o.data, path=o.path) for j, o in enumerate(originals[:n_pos])]
        # each copy as a report embeds a query (its whole image where trimmed, its centre crops beside an index
        # with corpus views), each image as the index embeds a corpus item (its corpus views)
        views = tuple(corpus.manifest.views)
        embedded_copies, copies_cached = _embedded(
            corpus, MemorySource(tuple(copies), tag), match_settings, cache_dir, views=match_settings.views,
            crops=match_settings.query_crops() if views else ())
        embedded_sources, sources_cached = _embedded(corpus, MemorySource(tuple(sources), tag), match_settings,
                                                     cache_dir, crops=views)
        copy_row = {ident: r for r, ident in enumerate(embedded_copies.ids)}
        source_row = {ident: r for r, ident in enumerate(embedded_sources.ids)}
        pairs, pos_low = [], []
        for j in range(n_pos):
            a, b = copy_row.get(f"c{j}"), source_row.get(f"s{j}")
            sim = (_view_similarity(det, embedded_copies, a, embedded_sources, b, view_cut(match_settings, det))
                   if a is not None and b is not None else float("nan"))
            pairs.append((copies[j], sources[j], sim))
            pos_low.append(a is None or bool(embedded_copies.low_information[a]))
        # below the first stage a copy is Clean whatever verification would say: only those above are judged
        pos_sims = np.array([p[2] for p in pairs], np.float64)
        todo = [j for j in range(n_pos) if np.nan_to_num(pos_sims[j], nan=-np.inf) >= rule.first_stage(name)] \
            if rule.verify is not None else []
        pos_verdicts: list = [None] * n_pos
        for j, p in zip(todo, rule.judge_pairs(name, [pairs[j] for j in todo],
                                               low_information=[pos_low[j] for j in todo],
                                               max_pixels=match_settings.max_pixels, workers=match_settings.workers,
                                               cache_dir=cache_dir, progress=match_settings.progress,
                                               desc=f"verify {name} (calibration positives)", pool=pool)):
            pos_verdicts[j] = p.verdict
        positive_overlap = np.asarray(rule.overlap(name, pos_sims, pos_verdicts, pos_low), bool)
        out[name] = SetCalibration(name, chosen, float(used), float(lower), upper, settings.target_precision,
                                   len(emb), positive_overlap, np.asarray(negative_overlap, bool),
                                   time.perf_counter() - started, embeddings_cached=neg.cached and copies_cached and sources_cached)
    return out
