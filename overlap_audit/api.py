"""The two jobs end to end: ``build_index`` (corpus -> index directory) and ``run_report``
(index + evaluation sets + predictions -> report). The CLI calls exactly these; notebooks can too,
or start at any stage (``embed_source``, ``search``, ``split``, ``overlap_stats``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime, timezone

import numpy as np

from . import __version__
from .detectors import get_detector
from .embed import embed_source
from .errors import SourceError
from .imaging import DEFAULT_MAX_PIXELS
from .index import build_index, check_detector, load_index, search
from .predictions import match_predictions, read_predictions
from .report import DatasetReport, Report, write_report
from .sources import open_source
from .split import load_thresholds, resolve_thresholds, split
from .stats import bonferroni, overlap_stats

__all__ = ["build_index", "run_report"]


def run_report(index_dir: str | os.PathLike, evals: Iterable[tuple[str, str]], predictions: str | os.PathLike,
               out_dir: str | os.PathLike, *, threshold: float | None = None,
               thresholds: str | os.PathLike | dict[str, float] | None = None, k: int = 5, alpha: float = 0.05,
               ci_level: float = 0.995, detector: str | None = None, batch_size: int = 256,
               workers: int | None = None, device: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
               progress: bool = False) -> Report:
    """Embed each evaluation set with the index's detector, split it, score it and write the report."""
    evals = list(evals)
    names = [n for n, _ in evals]
    if not evals:
        raise SourceError("give at least one evaluation set (--eval NAME=SOURCE)")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SourceError(f"evaluation set names must be distinct; repeated: {', '.join(dup)}")
    corpus = load_index(index_dir)
    det = get_detector(detector or corpus.manifest.detector.spec, device=device)
    check_detector(corpus.manifest, det.info, str(index_dir))
    preds = read_predictions(predictions)  # read early: a malformed file fails before any embedding

    per_dataset = load_thresholds(thresholds) if isinstance(thresholds, (str, os.PathLike)) else thresholds
    cut = resolve_thresholds(names, det.default_threshold, threshold=threshold, per_dataset=per_dataset)

    splits, skipped = {}, {}
    for name, spec in evals:
        source = open_source(spec, name=name, labels_from_folders=True)
        emb = embed_source(source, det, batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                           progress=progress)
        neighbors = search(corpus, emb.ids, emb.vectors, k=k, device=device)
        splits[name] = split(name, emb, neighbors, cut[name])
        skipped[name] = emb.skipped
    correct = match_predictions(preds, splits, {n: {s.id for s in sk} for n, sk in skipped.items()})

    stats = {}
    for name, sp in splits.items():
        ok = correct[name]
        stats[name] = overlap_stats(int(ok.sum()), len(ok), int(ok[sp.overlap].sum()), int(sp.overlap.sum()),
                                    ci_level=ci_level)
    correction = bonferroni([stats[n].p_value for n in names], alpha)
    datasets = [
        DatasetReport(name=n, threshold=cut[n], stats=stats[n], p_value_adjusted=correction.adjusted[i],
                      significant=correction.significant[i],
                      n_low_information=int(np.asarray(splits[n].low_information).sum()), skipped=skipped[n])
        for i, n in enumerate(names)
    ]
    m = corpus.manifest
    report = Report(
        detector=det.info,
        index={"path": str(index_dir), "n_indexed": m.n_indexed, "n_skipped": m.n_skipped,
               "n_low_information": m.n_low_information, "index_type": m.index_type, "created": m.created,
               "search": "exact"},
        datasets=datasets, k=k, alpha=alpha, ci_level=ci_level, correction=correction.method,
        predictions=str(predictions), package_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_report(out_dir, report, splits, correct)
    return report
