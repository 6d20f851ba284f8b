"""The two jobs end to end: ``build_index`` (corpus -> index directory) and ``run_report``
(index + evaluation sets + predictions -> report). The CLI calls exactly these; notebooks can too,
or start at any stage (``embed_source``, ``search``, ``split``, ``overlap_stats``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .detectors import get_detector
from .embed import embed_source
from .errors import ModelError, SourceError
from .imaging import DEFAULT_MAX_PIXELS
from .devices import faiss_device, torch_device
from .index import build_index, check_detector, load_index, search
from .predictions import PREDICTIONS, match_predictions, read_predictions, write_predictions
from .report import DatasetReport, Report, write_report
from .zeroshot.scoring import TemplateSet, ZeroShotModel, ZeroShotScorer, load_classnames
from .sources import open_source
from .split import load_thresholds, resolve_thresholds, split
from .stats import RateEstimate, extended_stats, family_correction, overlap_stats

__all__ = ["build_index", "run_report"]


def run_report(index_dir: str | os.PathLike, evals: Iterable[tuple[str, str]], predictions: str | os.PathLike | None,
               out_dir: str | os.PathLike, *, model: str | None = None,
               classnames: str | os.PathLike | dict[str, str | os.PathLike] | None = None,
               templates: str | os.PathLike | dict[str, str | os.PathLike] | None = None,
               model_batch_size: int = 128, threshold: float | None = None,
               thresholds: str | os.PathLike | dict[str, float] | None = None, k: int = 5, alpha: float = 0.05,
               ci_level: float = 0.995, detector: str | None = None, batch_size: int = 256,
               workers: int | None = None, device: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
               progress: bool = False, correction: str = "bonferroni",
               precision: RateEstimate | str | None = None, recall: RateEstimate | str | None = None,
               detector_error: str | os.PathLike | dict | None = None, power: float = 0.8,
               n_boot: int = 4000, seed: int = 0, exact: bool = False, ray_address: str | None = None,
               gallery: int | None = None) -> Report:
    """Embed each evaluation set with the index's detector, split it, score it and write the report.

    ``correction`` (bonferroni or holm) decides ``significant``; both are reported. ``precision`` and
    ``recall`` of the Overlap split (numbers or "k/n" counts), for every dataset, or ``detector_error``
    (a dict or JSON file ``{"NAME": {"precision": ..., "recall": ...}}``) per dataset, add the
    detector-error correction. ``exact`` streams the corpus shards past the evaluation embeddings instead
    of searching the index (exact whatever the index type); with ``ray_address`` that stream runs on a
    Ray cluster. ``gallery`` caps the matched pairs report.html shows per dataset.

    Give exactly one of ``predictions`` (a file) and ``model`` (a spec for ``models.load_model``): a model
    is scored zero-shot on each evaluation set in the same decoding pass as the detector, with the
    set's labels as classes (``classnames``: a file, or one per dataset, maps labels to readable names)
    and ``templates`` (a file, or one per dataset; default the CLIP paper's 80 ImageNet templates); its
    predictions are written to ``out_dir/predictions.parquet`` and then read back exactly as a
    ``predictions`` file would be.
    """
    if (predictions is None) == (model is None):
        raise SourceError("give exactly one of --predictions FILE (the model's per-example results) and "
                          "--model SPEC (score a CLIP model zero-shot here)")
    if correction not in ("bonferroni", "holm"):
        raise SourceError(f"--correction must be bonferroni or holm (got {correction!r})")
    evals = list(evals)
    names = [n for n, _ in evals]
    if not evals:
        raise SourceError("give at least one evaluation set (--eval NAME=SOURCE)")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SourceError(f"evaluation set names must be distinct; repeated: {', '.join(dup)}")
    faiss_device(device)  # a GPU asked of a CPU-only FAISS fails now, not after every set is embedded
    corpus = load_index(index_dir, load_faiss=not exact)
    if len(corpus) == 0:
        from .errors import IndexDirError

        raise IndexDirError(f"the index {index_dir} holds no items (all {corpus.manifest.n_given} given were "
                            "skipped or low-information): there is nothing to compare against")
    det = get_detector(detector or corpus.manifest.detector.spec, device=device)
    check_detector(corpus.manifest, det.info, str(index_dir))
    zero_shot = _prepare_zero_shot(model, names, classnames, templates, device) if model is not None else None
    # read early: a malformed file fails before any embedding
    preds = read_predictions(predictions) if predictions is not None else None

    per_dataset = load_thresholds(thresholds) if isinstance(thresholds, (str, os.PathLike)) else thresholds
    cut = resolve_thresholds(names, det.default_threshold, threshold=threshold, per_dataset=per_dataset)
    errors = resolve_detector_error(names, precision, recall, detector_error)

    splits, skipped, scored = {}, {}, []
    for name, spec in evals:
        source = open_source(spec, name=name, labels_from_folders=True)
        scorer = ZeroShotScorer(zero_shot.model, name, batch_size=model_batch_size) if zero_shot else None
        emb = embed_source(source, det, batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                           progress=progress, scorer=scorer)
        if scorer is not None:
            scored.append(scorer.result(zero_shot.classnames[name], zero_shot.templates[name].templates,
                                        progress=progress))
        neighbors = search(corpus, emb.ids, emb.vectors, k=k, device=device, exact_stream=exact,
                           ray_address=ray_address)
        splits[name] = split(name, emb, neighbors, cut[name])
        skipped[name] = emb.skipped
    if zero_shot is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        predictions = Path(out_dir) / PREDICTIONS
        write_predictions(predictions, scored)
        preds = read_predictions(predictions)  # from here on exactly as a given --predictions file
    else:
        stale = Path(out_dir) / PREDICTIONS
        if stale.exists() and not os.path.samefile(stale, predictions):
            stale.unlink()  # an earlier --model run's predictions must not sit beside this report
    correctness = match_predictions(preds, splits, {n: {s.id for s in sk} for n, sk in skipped.items()})

    stats = {}
    for name, sp in splits.items():
        ok = correctness[name]
        stats[name] = overlap_stats(int(ok.sum()), len(ok), int(ok[sp.overlap].sum()), int(sp.overlap.sum()),
                                    ci_level=ci_level)
    p_values = [stats[n].p_value for n in names]
    both = {m: family_correction(p_values, alpha, m) for m in ("bonferroni", "holm")}
    deciding = both[correction]
    power_alpha = alpha / max(1, deciding.m)  # the per-dataset level of Bonferroni and of Holm's first step
    extended = {n: extended_stats(stats[n], power_alpha=power_alpha, power=power, precision=errors[n][0],
                                  recall=errors[n][1], n_boot=n_boot, seed=seed) for n in names}
    two_sample = family_correction([extended[n].two_sample_p for n in names], alpha, correction)
    datasets = [
        DatasetReport(name=n, threshold=cut[n], stats=stats[n], p_value_adjusted=deciding.adjusted[i],
                      significant=deciding.significant[i],
                      n_low_information=int(np.asarray(splits[n].low_information).sum()), skipped=skipped[n],
                      extended=extended[n], adjusted={m: r.adjusted[i] for m, r in both.items()},
                      significant_by={m: r.significant[i] for m, r in both.items()},
                      two_sample_p_adjusted=two_sample.adjusted[i], two_sample_significant=two_sample.significant[i])
        for i, n in enumerate(names)
    ]
    m = corpus.manifest
    report = Report(
        detector=det.info,
        index={"path": str(index_dir), "n_indexed": m.n_indexed, "n_skipped": m.n_skipped,
               "n_low_information": m.n_low_information, "index_type": m.index_type, "created": m.created,
               "search": ("exact (streamed shards)" if exact else
                          "exact (flat index)" if m.index_type == "flat" else f"approximate ({m.index_type})"),
               "recall": ({"exact": True, "note": "streamed"} if exact else m.extra.get("recall", {}))},
        datasets=datasets, k=k, alpha=alpha, ci_level=ci_level, correction=correction,
        predictions=str(predictions), package_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        evals=dict(evals),
        model=zero_shot.to_dict() if zero_shot is not None else None,
    )
    write_report(out_dir, report, splits, correctness, gallery=gallery, max_pixels=max_pixels)
    return report


@dataclass(frozen=True, eq=False)
class ZeroShotSetup:
    """The model a report scores, and each dataset's class names and templates."""

    spec: str
    weights_sha256: str
    device: str
    model: ZeroShotModel
    classnames: dict[str, dict[str, str] | None]    # per dataset: {label: name} from a file, or None
    classnames_files: dict[str, str | None]
    templates: dict[str, TemplateSet]

    def to_dict(self) -> dict:
        return {
            "spec": self.spec, "weights_sha256": self.weights_sha256, "device": self.device,
            "templates": {n: t.to_dict() for n, t in self.templates.items()},
            "classnames": {n: (f or "the evaluation set's labels (underscores and hyphens read as spaces)")
                           for n, f in self.classnames_files.items()},
        }


def _per_dataset(value, names: list[str], option: str) -> dict[str, str | None]:
    if value is None or isinstance(value, (str, os.PathLike)):
        return {n: (None if value is None else str(value)) for n in names}
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ModelError(f"{option} names datasets that are not evaluated: {', '.join(unknown)}")
    return {n: (None if value.get(n) is None else str(value[n])) for n in names}


def _prepare_zero_shot(spec: str, names: list[str], classnames, templates, device: str) -> ZeroShotSetup:
    """Check the classnames and templates files, then load the model (files before the slow part)."""
    from .zeroshot.models import load_model, parse_model_spec, weights_sha256

    class_files = _per_dataset(classnames, names, "--classnames")
    template_files = _per_dataset(templates, names, "--templates")
    names_by = {n: (load_classnames(f) if f else None) for n, f in class_files.items()}
    templates_by = {n: TemplateSet.load(f) for n, f in template_files.items()}
    source = parse_model_spec(spec)
    dev = torch_device(device)
    model = load_model(spec, dev)
    return ZeroShotSetup(spec=spec, weights_sha256=weights_sha256(source.weights), device=dev, model=model,
                         classnames=names_by, classnames_files=class_files, templates=templates_by)


# precision/recall (a rate or [K, N]), plus the fields of `overlap-audit threshold`'s evidence file
_DETECTOR_ERROR_KEYS = {"precision", "recall", "precision_counts", "recall_counts", "dataset", "target_precision",
                        "threshold", "tp", "fp", "n_positive", "n_negative", "n_unlabelled", "precision_ci",
                        "recall_ci", "ci_level", "note"}


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
    unknown = sorted(set(per_dataset) - set(names))
    if unknown:
        raise ThresholdError(f"the detector-error file names datasets that are not evaluated: {', '.join(unknown)}")
    out = {}
    for n in names:
        entry = per_dataset.get(n, {})
        unknown_keys = sorted(set(entry) - _DETECTOR_ERROR_KEYS)
        if unknown_keys:
            raise ThresholdError(f"the detector-error file's entry for {n} has unknown keys: {', '.join(unknown_keys)}")

        def pick(key: str, default):
            # counts carry their uncertainty: `threshold`'s evidence file holds both a rate and [K, N]
            for field in (f"{key}_counts", key):
                if entry.get(field) is not None:
                    return entry[field]
            return default  # a null (e.g. a dataset without a threshold) means "not given"

        out[n] = (parse(pick("precision", precision), "precision", n), parse(pick("recall", recall), "recall", n))
    return out
