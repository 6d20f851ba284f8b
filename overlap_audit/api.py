"""The two jobs end to end: ``build_index`` (corpus -> index directory) and ``run_report``
(index + evaluation sets + predictions -> report). The CLI calls exactly these; notebooks can too,
or start at any stage (``embed_source``, ``search``, ``split``, ``overlap_stats``)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import atomic_write, create_temporary
from .calibrate import calibrate_sets, fixed_threshold, lowest_threshold
from .decide.edge import UNIFORM_STD, edge_flags, measure_overlap
from .decide.rule import DECISION_VERSION, DecisionRule, VerifySettings, check_decision_version, verification_pool
from .decide.points import OperatingPoints, load_points
from .decide.split import resolve_thresholds, threshold_origins
from .evalcache import default_cache_dir
from .errors import EmptyEvalSetError, OutputDirError, SourceError, ThresholdError, param
from .evidence import build_galleries
from .index import build_index, content_boxes, views_line
from .match import check_eval_sets, check_report_apart, match_eval_sets, open_corpus
from .matched import corpus_matches
from .predictions import PREDICTIONS
from .report import CORPUS_MATCHES, DatasetReport, Report, check_report_dir, load_report, report_lock, write_report
from .report.write import splits_table
from .score import prepare_scoring, score
from .settings import (CORRECTIONS, DEFAULT_GALLERY, CalibrationSettings, MatchSettings, StatsSettings,
                       ZeroShotSettings, check_datasets_named)
from .sources import source_spec
from .stats.edge import edge_cases
from .stats.overlap import RateEstimate, extended_stats, family_correction, overlap_stats
from .stats.stratified import disagreements, stratify
from .values import Split

__all__ = ["ReportSettings", "build_index", "run_report"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportSettings:
    """Everything ``run_report`` needs besides the index and the evaluation sets.

    Give exactly one of ``predictions`` (the model's per-example results: a Parquet or CSV file, a pandas
    DataFrame or a pyarrow Table) and ``zero_shot`` (score a model here; its predictions are written to
    ``out_dir/predictions.parquet`` and read back exactly as a ``predictions`` file would be). ``out_dir`` must be new, empty or an earlier report
    directory; it is replaced as a whole once the new report is complete. ``gallery`` caps the matched pairs report.html shows per
    dataset (None: the report's default). ``verify`` (a ``VerifySettings``, on by default; None turns it off)
    verifies each example whose nearest corpus item is at or above a relaxed first stage, and Overlap becomes
    the verified ones. The report directory
    always holds ``corpus_matches.parquet`` (``matches.corpus_matches``); ``corpus_matches`` names a further
    copy of it, outside ``out_dir``. ``cache_dir`` keeps each evaluation set's embeddings and neighbours
    (``evalcache``) and the verified pairs' comparisons (``decide.verdicts``) between runs (default
    ``evalcache.default_cache_dir()``, None: no cache).
    """

    out_dir: str | os.PathLike
    predictions: str | os.PathLike | object | None = None  # a file, a pandas DataFrame or a pyarrow Table
    zero_shot: ZeroShotSettings | None = None
    match: MatchSettings = field(default_factory=MatchSettings)
    stats: StatsSettings = field(default_factory=StatsSettings)
    gallery: int | None = None
    verify: VerifySettings | None = field(default_factory=VerifySettings)  # None: no verification
    # each set's threshold calibrated on its own images where neither --thresholds nor --threshold gives one;
    # None: the detector's default threshold
    calibrate: CalibrationSettings | None = field(default_factory=CalibrationSettings)
    corpus_matches: str | os.PathLike | None = None
    ignore_extra_sets: bool = False  # predictions for sets not evaluated are left out instead of refused
    cache_dir: str | os.PathLike | None = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        if self.corpus_matches is not None and _inside(Path(self.corpus_matches), Path(self.out_dir)):
            raise OutputDirError(f"{param('corpus_matches', self.corpus_matches)} lies inside "
                                 f"{param('out_dir', self.out_dir)}, which holds "
                                 f"only the report's own files (it has {CORPUS_MATCHES} already): give a path "
                                 "outside it")
        if (self.predictions is None) == (self.zero_shot is None):
            raise SourceError(f"give exactly one of {param('predictions')} (the model's per-example results) and "
                              f"{param('zero_shot')} (score a CLIP model zero-shot here)")


def _inside(path: Path, directory: Path) -> bool:
    path, directory = path.expanduser().absolute(), directory.expanduser().absolute()
    return directory == path or directory in path.parents


def run_report(index_dir: str | os.PathLike, evals: Iterable[tuple[str, object]],
               settings: ReportSettings) -> Report:
    """Embed each evaluation set with the index's detector, split it, score it and write the report to
    ``settings.out_dir``; returns the Report, whose ``splits_table()`` and ``corpus_matches_table()`` read
    the directory's tables.

    ``evals`` are (name, source) pairs: a source spec (a path, as ``--eval`` takes) or an in-memory source
    (``memory.memory_source``).
    """
    if not isinstance(settings, ReportSettings):
        raise TypeError("run_report() needs settings=ReportSettings(out_dir=...)")
    out_dir = Path(settings.out_dir)
    evals = check_eval_sets(evals)
    check_report_apart(out_dir, index_dir, evals)  # before the lock file is made beside out_dir
    check_report_dir(out_dir)  # before any work: a directory of someone else's files is refused, not cleared
    with report_lock(out_dir):  # one run at a time on an --out; leftovers of killed runs cleaned
        return _run_report(index_dir, evals, settings)


class _Phases:
    """Seconds per phase of one run, each logged as it ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = self._last = time.perf_counter()

    def done(self, phase: str, note: str = "") -> None:
        spent = (now := time.perf_counter()) - self._last
        self.seconds[phase], self._last = round(spent, 3), now
        _log.debug("phase %s: %.2f s%s", phase, spent, note and f" ({note})")

    def table(self, sets: dict) -> dict:
        return {"seconds": dict(self.seconds, total=round(time.perf_counter() - self.start, 3)), "sets": sets}


def _run_report(index_dir, evals: list, settings: ReportSettings) -> Report:
    match, st = settings.match, settings.stats
    out_dir = Path(settings.out_dir)
    names = [n for n, _ in evals]
    phases = _Phases()
    corpus = open_corpus(index_dir, match)
    phases.done("open_index")
    det = corpus.detector
    # before any embedding: a malformed predictions file, classnames or templates file fails first
    scoring = prepare_scoring(settings.predictions, settings.zero_shot, evals, device=match.device,
                              ignore_extra_sets=settings.ignore_extra_sets)
    thresholds = st.thresholds
    points = (load_points(thresholds) if isinstance(thresholds, (str, os.PathLike))
              else OperatingPoints(dict(thresholds or {})))
    per_dataset = points.thresholds
    if points.detector is not None and points.detector != det.info.spec:
        raise ThresholdError(f"{param('thresholds', thresholds)} was chosen for the detector {points.detector}, and "
                             f"this index is {det.info.spec}: its similarities are not on the same scale")
    if points.verify and settings.verify is None:
        raise ThresholdError(f"{param('thresholds', thresholds)} sets the verification of "
                             f"{', '.join(points.verify)}, and this report has no verification: verify "
                             f"(drop --no-verify), or give a file of thresholds alone")
    origins = threshold_origins(names, threshold=st.threshold, per_dataset=per_dataset)
    # a detector without a default threshold is refused here as before: calibration looks between the default's
    # first stage and the default, and has no measured range without one
    cut = resolve_thresholds(names, det.default_threshold, threshold=st.threshold, per_dataset=per_dataset)
    to_calibrate = [n for n, o in origins.items() if o == "default"] if settings.calibrate is not None else []
    errors = resolve_detector_error(names, st.precision, st.recall, st.detector_error)
    phases.done("check_inputs")

    # neighbours below both a set's threshold and its first stage cannot change its decision: a mih index is
    # searched from there, by radius, instead of scanning every hash (``match_eval_sets``)
    # a set to calibrate may end at any threshold from the first stage of the detector's default up
    # (``calibrate.calibrate_sets``): it is searched from the first stage of that lowest one
    search_cut = dict(cut) | {n: lowest_threshold(det.default_threshold, verifying=settings.verify is not None)
                              for n in to_calibrate}
    rule = DecisionRule.for_detector(det, search_cut, settings.verify, points.verify)
    floors = {n: search_cut[n] if rule.first_stage(n) is None else min(search_cut[n], rule.first_stage(n))
              for n in names}
    matches = match_eval_sets(corpus, evals, match, scorers=scoring.scorers, cache_dir=settings.cache_dir,
                              min_similarity=floors)
    for name, m in matches.items():
        phases.seconds[f"embed:{name}"] = round(m.seconds["embed"], 3)
        phases.seconds[f"search:{name}"] = round(m.seconds["search"], 3)
    phases.done("match", f"{sum(m.cached for m in matches.values())} of {len(matches)} set(s) from the cache")
    calibrations = {}
    matched = {n: (m.embeddings, m.neighbors) for n, m in matches.items()}
    deciding = dict(index_dir=index_dir, eval_sources=dict(evals), max_pixels=match.max_pixels,
                    workers=match.workers, progress=match.progress, cache_dir=settings.cache_dir)
    # one pool of verification workers for calibration's pairs and the report's own, started at the first pair
    # not in the cache; entered after the thread beside, so that on an error (an interrupt) the pool is cancelled,
    # which stops the judging in that thread, before the thread is waited for
    with ThreadPoolExecutor(1, thread_name_prefix="decide") as beside, \
            verification_pool(match.workers if settings.verify is not None else 0) as pool:
        fixed = {n: fixed_threshold(det.default_threshold, verifying=settings.verify is not None)
                 for n in to_calibrate}
        ahead = ahead_rule = None
        if pool is not None and to_calibrate and None not in fixed.values():
            # calibration cannot move these thresholds (with verification it only estimates the decision's
            # precision and recall at the default): the report's pairs are judged meanwhile, by another thread
            # over the same workers, while this one makes, embeds and searches calibration's images
            ahead_rule = DecisionRule.for_detector(det, cut | fixed, settings.verify, points.verify)
            ahead = beside.submit(ahead_rule.decide, matched, pool=pool, **deciding)
        if to_calibrate:
            calibrations = calibrate_sets(corpus, index_dir, {n: matches[n] for n in to_calibrate},
                                          dict(evals), lambda t: DecisionRule.for_detector(det, t, settings.verify),
                                          settings.calibrate, match, cache_dir=settings.cache_dir, pool=pool)
            for n, c in calibrations.items():
                cut[n] = c.used
                origins[n] = "calibrated" if c.threshold is not None else "default"
            phases.done("calibrate")
        rule = DecisionRule.for_detector(det, cut, settings.verify, points.verify)
        decision = ahead.result() if ahead is not None else None
        if decision is None or ahead_rule != rule:  # (the rules differ nowhere ``fixed_threshold`` holds)
            decision = rule.decide(matched, pool=pool, **deciding)
    splits = _with_neighbor_boxes(decision.splits, index_dir) if det.content == "trim" else decision.splits
    skipped = {n: m.skipped for n, m in matches.items()}
    _check_not_empty(splits, skipped)
    phases.done("decide")
    calibration = _calibration_record(origins, calibrations, splits, settings.calibrate, det)
    errors = _with_calibrated_errors(errors, calibration, st)
    sets = {n: {"n_items": len(m.embeddings) + len(m.skipped), "n_embedded": len(m.embeddings),
                "n_skipped": len(m.skipped), "n_overlap": int(splits[n].overlap.sum()), "from_cache": m.cached,
                "cache_dir": str(settings.cache_dir) if m.cached else None} for n, m in matches.items()}
    scores = matches_file = None
    try:
        scores = score(scoring, splits, skipped, out_dir=out_dir, progress=match.progress)
        correctness = scores.correct
        phases.done("score")
        datasets = _dataset_reports(names, splits, correctness, skipped, cut, st, errors)
        datasets = [replace(d, warnings=small_image_warnings(splits[d.name], det.measured_min_side))
                    for d in datasets]
        measured = measure_overlap(splits, dict(evals), max_pixels=match.max_pixels)
        datasets = _with_edge_cases(datasets, splits, correctness, measured, det.measured_min_side, st)
        phases.done("stats")
        m = corpus.manifest
        exact = match.exact
        report = Report(
            detector=det.info,
            index={"path": corpus.path, "n_indexed": m.n_indexed, "n_skipped": m.n_skipped,
                   "n_low_information": m.n_low_information, "index_type": m.index_type, "created": m.created,
                   "search": ("exact (streamed shards)" if exact else
                              "exact (flat index)" if m.index_type == "flat" else f"approximate ({m.index_type})")
                   + views_line(m.views, match.query_views, match.query_turns),
                   "views": list(m.views),
                   "recall": ({"exact": True, "note": "streamed"} if exact else m.extra.get("recall", {}))},
            datasets=datasets, k=match.k, alpha=st.alpha, ci_level=st.ci_level, correction=st.correction,
            predictions=scores.source, package_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            evals={n: source_spec(s, name=n) for n, s in evals},
            model=scoring.zero_shot.to_dict() if scoring.zero_shot is not None else None,
            verify=decision.verification, calibration=calibration,
        )
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        matches_file = create_temporary(out_dir.parent / f"{out_dir.name}-{CORPUS_MATCHES}", suffix=".parquet")
        import pyarrow.parquet as pq

        pq.write_table(corpus_matches(splits, index_dir), matches_file)  # a private temporary, moved in whole
        extra_files = {CORPUS_MATCHES: matches_file} | ({PREDICTIONS: scores.file} if scores.file else {})
        rows = splits_table(splits, correctness).to_pylist()
        galleries = build_galleries(report, rows, eval_sources=dict(evals), index_dir=corpus.path,
                                    limit=DEFAULT_GALLERY if settings.gallery is None else settings.gallery,
                                    max_pixels=match.max_pixels, progress=match.progress)
        phases.done("gallery")
        report = replace(report, timings=phases.table(sets))
        write_report(settings.out_dir, report, splits, correctness, galleries=galleries, extra_files=extra_files)
        if settings.corpus_matches is not None:
            atomic_write(settings.corpus_matches, lambda tmp: shutil.copyfile(out_dir / CORPUS_MATCHES, tmp))
    finally:
        if scores is not None:
            scores.discard()
        if matches_file is not None:
            matches_file.unlink(missing_ok=True)
    phases.done("write")
    return replace(report, files=load_report(out_dir).files, directory=str(out_dir), timings=phases.table(sets))


def small_image_warnings(sp: Split, measured_min_side: int | None) -> list[str]:
    """A warning when most of a set's images are smaller (shorter side, as decoded) than the smallest size at
    which the detector's decision was measured; none where the sizes are not known (an untrimmed view)."""
    sides = [min(b.width, b.height) for b in sp.boxes if b is not None]
    if not sides or measured_min_side is None:
        return []
    median = float(np.median(sides))
    if median >= measured_min_side:
        return []
    return [f"half of the images are under {median:g} px on their shorter side, smaller than the "
            f"{measured_min_side} px at which this detector's decision was measured: its precision and recall "
            "here are unknown; review the pairs by eye"]


def _with_edge_cases(datasets: list[DatasetReport], splits: dict[str, Split], correct: dict[str, np.ndarray],
                     measured: dict, measured_min_side: int | None, st: StatsSettings) -> list[DatasetReport]:
    """Each dataset with its edge-case Overlap pairs (``decide.edge``) and the statistics without them, the
    paper's p-values without them corrected across the sets as the report's are."""
    edges = {}
    for d in datasets:
        sp = splits[d.name]
        f = edge_flags(sp, measured.get(d.name, {}), measured_min_side)
        edges[d.name] = edge_cases(sp.ids, sp.overlap, correct[d.name], f.small, f.uniform, f.unread,
                                   measured_min_side=measured_min_side, uniform_std=UNIFORM_STD,
                                   ci_level=st.ci_level)
    fam = family_correction([edges[d.name].without.p_value for d in datasets], st.alpha, st.correction)
    return [replace(d, edge=replace(edges[d.name], p_value_adjusted_without=fam.adjusted[i],
                                    significant_without=fam.significant[i]))
            for i, d in enumerate(datasets)]


def _with_neighbor_boxes(splits: dict[str, Split], index_dir) -> dict[str, Split]:
    """The splits with each matched pair's corpus side's content box (a trimming detector), for the report to
    show."""
    boxes = content_boxes(index_dir, {sp.match_key(i) for sp in splits.values() for i in range(len(sp.ids))}
                          - {None})
    return {n: replace(sp, neighbor_boxes=[boxes.get(sp.match_key(i)) for i in range(len(sp.ids))])
            for n, sp in splits.items()}


def _dataset_reports(names: list[str], splits: dict[str, Split], correct: dict[str, np.ndarray], skipped: dict,
                     cut: dict[str, float], st: StatsSettings, errors: dict) -> list[DatasetReport]:
    """Each dataset's statistics, with the family-wise corrections across datasets."""
    stats = {}
    for name, sp in splits.items():
        ok = correct[name]
        stats[name] = overlap_stats(int(ok.sum()), len(ok), int(ok[sp.overlap].sum()), int(sp.overlap.sum()),
                                    ci_level=st.ci_level)
    p_values = [stats[n].p_value for n in names]
    both = {m: family_correction(p_values, st.alpha, m) for m in CORRECTIONS}
    deciding = both[st.correction]
    power_alpha = st.alpha / max(1, deciding.m)  # the per-dataset level of Bonferroni and of Holm's first step
    extended = {n: extended_stats(stats[n], power_alpha=power_alpha, precision=errors[n][0], recall=errors[n][1])
                for n in names}
    two_sample = family_correction([extended[n].two_sample_p for n in names], st.alpha, st.correction)
    # within classes wherever a label is known; a set without any label has no per-class comparison (None)
    strat = {n: stratify(splits[n].labels, splits[n].overlap, correct[n], alpha=st.alpha, ci_level=st.ci_level)
             if any(lab is not None for lab in splits[n].labels) else None for n in names}
    rule = disagreements(names, p_values, [extended[n].gap for n in names], [strat[n] for n in names],
                         alpha=st.alpha, correction=st.correction)
    return [
        DatasetReport(name=n, threshold=cut[n], stats=stats[n], p_value_adjusted=deciding.adjusted[i],
                      significant=deciding.significant[i],
                      n_low_information=int(np.asarray(splits[n].low_information).sum()), skipped=skipped[n],
                      extended=extended[n], adjusted={m: r.adjusted[i] for m, r in both.items()},
                      significant_by={m: r.significant[i] for m, r in both.items()},
                      two_sample_p_adjusted=two_sample.adjusted[i], two_sample_significant=two_sample.significant[i],
                      stratified=strat[n], disagreement=rule[i] if strat[n] is not None else None)
        for i, n in enumerate(names)
    ]


def _calibration_record(origins: dict[str, str], calibrations: dict, splits: dict[str, Split],
                        settings: CalibrationSettings | None, det) -> dict:
    """report.json's record of where each threshold came from ("file", "threshold", "calibrated" or
    "default") and, per calibrated set, the calibration's estimates at the threshold used."""
    record: dict = {"origins": dict(origins)}
    if settings is not None:
        record.update({"target_precision": settings.target_precision, "strength": settings.strength,
                       "seed": settings.seed, "positives": settings.positives, "negatives": settings.negatives,
                       "ci_level": settings.ci_level,
                       "versions": {"package": __version__, "detector": det.info.spec,
                                    "detector_version": det.info.version, "decision_version": DECISION_VERSION}})
    if calibrations:
        record["datasets"] = {
            n: {"threshold": c.threshold, "used": c.used, "bounds": [c.lower, c.upper],
                "n_positives": len(c.positive_overlap), "n_negatives": len(c.negative_overlap),
                "seconds": round(c.seconds, 3),
                **c.estimates(int(np.asarray(splits[n].overlap).sum()), settings.ci_level)}
            for n, c in calibrations.items()}
    return record


def _with_calibrated_errors(errors: dict, calibration: dict, st: StatsSettings) -> dict:
    """The detector-error correction's (precision, recall) per set: the user's where given, else a calibrated
    set's estimates (precision as a rate, recall as counts)."""
    if st.precision is not None or st.recall is not None:
        return errors
    out = dict(errors)
    for n, c in calibration.get("datasets", {}).items():
        if out[n] != (None, None):
            continue  # the detector-error file names this set
        p, r = c["precision"], c["recall"]
        out[n] = (RateEstimate(p["value"]) if p and p["value"] > 0 else None,
                  RateEstimate.from_counts(r["successes"], r["trials"]) if r and r["successes"] > 0 else None)
    return out


def _check_not_empty(splits: dict, skipped: dict) -> None:
    """An evaluation set with no example left is an error: its statistics would be over n = 0."""
    for name, sp in splits.items():
        if len(sp.ids) == 0:
            sk = skipped.get(name, [])
            first = f" (e.g. {sk[0].id}: {sk[0].reason})" if sk else ""
            raise EmptyEvalSetError(f"evaluation set {name!r} has no example to evaluate: {len(sk)} item(s) were "
                                    f"skipped{first}; fix its images or leave it out of {param('evals')}")


# precision/recall (a rate or [K, N]), plus the fields of `overlap-audit threshold`'s evidence file
_DETECTOR_ERROR_KEYS = {"precision", "recall", "precision_counts", "recall_counts", "dataset", "target_precision",
                        "threshold", "tp", "fp", "n_positive", "n_negative", "n_unlabelled", "precision_ci",
                        "recall_ci", "ci_level", "note", "first_stage", "decision",
                        "accept", "verify_threshold", "knobs"}


def resolve_detector_error(names: list[str], precision=None, recall=None, per_dataset=None
                           ) -> dict[str, tuple[RateEstimate | None, RateEstimate | None]]:
    """(precision, recall) of each dataset's Overlap split: the per-dataset file first, then the globals."""
    import json

    from .errors import ThresholdError

    def parse(value, what: str, where: str) -> RateEstimate | None:
        if value is None or isinstance(value, RateEstimate):
            return value
        try:
            return RateEstimate.parse(value)
        except (TypeError, ValueError) as exc:
            raise ThresholdError(f"{where}: {what} {value!r} is not a rate (0.97) or counts (97/100): {exc}") from None

    if isinstance(per_dataset, (str, os.PathLike)):
        try:
            with open(per_dataset, encoding="utf-8") as fh:
                per_dataset = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ThresholdError(f"cannot read detector-error file {per_dataset}: {exc}") from None
    per_dataset = per_dataset or {}
    if not isinstance(per_dataset, dict) or not all(isinstance(v, dict) for v in per_dataset.values()):
        raise ThresholdError('the detector-error file must hold {"NAME": {"precision": ..., "recall": ...}}')
    check_datasets_named(per_dataset, names, "the detector-error file", ThresholdError)
    out = {}
    for n in names:
        entry = per_dataset.get(n, {})
        unknown_keys = sorted(set(entry) - _DETECTOR_ERROR_KEYS)
        if unknown_keys:
            raise ThresholdError(f"the detector-error file's entry for {n} has unknown keys: {', '.join(unknown_keys)}")
        if isinstance(entry.get("decision"), dict):  # measured by `threshold`: under this rule only
            check_decision_version(entry["decision"].get("decision_version"),
                                   where=f"the detector-error file's entry for {n}")

        def pick(key: str, default):
            # counts carry their uncertainty: `threshold`'s evidence file holds both a rate and [K, N]
            for column in (f"{key}_counts", key):
                if entry.get(column) is not None:
                    return entry[column]
            return default  # a null (e.g. a dataset without a threshold) means "not given"

        out[n] = (parse(pick("precision", precision), "precision", n), parse(pick("recall", recall), "recall", n))
    return out
