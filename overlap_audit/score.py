"""The score stage of a report: whether the audited model got each evaluated example right.

Either the model's predictions are given (a file or a table, read by ``predictions.read_predictions``), or
a CLIP model is scored zero-shot here (``ZeroShotSettings``): ``prepare_scoring`` checks the inputs and
loads the model before anything is embedded, its ``scorers`` ride along the embedding pass, and ``score``
writes what they predicted as a predictions file, reads it back exactly as a given one, and matches it to
the splits.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import create_temporary
from .devices import torch_device
from .errors import ModelError, param
from .settings import ZeroShotSettings, check_datasets_named
from .predictions import PREDICTIONS, check_predictions, match_predictions, read_predictions, write_predictions
from .sources import as_source
from .sources.remote import is_pipe, is_url
from .values import Predictions, Skipped, Split
from .zeroshot.scoring import TemplateSet, ZeroShotModel, ZeroShotScorer, load_classnames


@dataclass(frozen=True, eq=False)
class ZeroShotSetup:
    """The model a report scores, and each dataset's class names and templates."""

    spec: str
    weights_sha256: str
    device: str
    model: ZeroShotModel
    classnames: dict[str, dict[str, str] | None]    # per dataset: {label: name} from a file or the set, or None
    classnames_files: dict[str, str | None]         # per dataset: the file, or a note naming the set's own
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
    check_datasets_named(value, names, param(option), ModelError)
    return {n: (None if value.get(n) is None else str(value[n])) for n in names}


def prepare_zero_shot(settings: ZeroShotSettings, evals: list[tuple[str, object]], device: str) -> ZeroShotSetup:
    """Check the classnames and templates files, then load the model (files before the slow part). A set
    given no file uses the class names and templates its own layout ships (``Source.classnames``,
    ``Source.templates``), if any."""
    from .zeroshot.loaders import load_model, parse_model_spec, weights_sha256

    spec = settings.model
    names = [n for n, _ in evals]
    class_files = _per_dataset(settings.classnames, names, "classnames")
    template_files = _per_dataset(settings.templates, names, "templates")
    names_by = {n: (load_classnames(f) if f else None) for n, f in class_files.items()}
    templates_by = {n: TemplateSet.load(f) for n, f in template_files.items()}
    for n, given in evals:
        if class_files[n] is not None and template_files[n] is not None:
            continue
        src = as_source(given, name=n, labels_from_folders=True)
        if class_files[n] is None and src.classnames:
            names_by[n] = {str(i): name for i, name in enumerate(src.classnames)}
            class_files[n] = f"{src.spec} (the evaluation set's own class names)"
        if template_files[n] is None and src.templates:
            templates_by[n] = TemplateSet.of(src.templates, f"{src.spec} (the evaluation set's own templates)")
    source = parse_model_spec(spec)
    dev = torch_device(device)
    model = load_model(spec, dev)
    return ZeroShotSetup(spec=spec, weights_sha256=weights_sha256(source.weights), device=dev, model=model,
                         classnames=names_by, classnames_files=class_files, templates=templates_by)


@dataclass(frozen=True, eq=False)
class Scoring:
    """How a report's examples are scored: ``predictions`` read already (from the file ``path``, or from a
    table in memory: None), or ``zero_shot`` with one scorer per evaluation set (``scorers``, for
    ``match.match_eval_sets``). ``source`` is what report.json records of given predictions."""

    predictions: Predictions | None
    source: str
    path: Path | None = None
    zero_shot: ZeroShotSetup | None = None
    scorers: dict[str, ZeroShotScorer] | None = None


def open_eval_sets(evals: list[tuple[str, object]]) -> dict[str, object]:
    """Each evaluation set opened as a source (its files found and its layout checked), by name."""
    return {n: as_source(given, name=n, labels_from_folders=True) for n, given in evals}


def set_labels(source) -> dict[str, str | None] | None:
    """``{id: label}`` of a set's items as its source lists them (nothing is decoded); None for a set read from
    a URL or a command, which is read once, while it is embedded."""
    if any(is_url(str(p)) or is_pipe(str(p)) for p in getattr(source, "paths", ())):
        return None
    return {item.id: item.label for item in source.iter_items()}


def prepare_scoring(predictions, zero_shot: ZeroShotSettings | None, evals: list[tuple[str, object]], *,
                    device: str = "auto", ignore_extra_sets: bool = False) -> Scoring:
    """Open every evaluation set, then read ``predictions`` (a file, a pandas DataFrame or a pyarrow Table) and
    check them against the sets (``predictions.check_predictions``; ``ignore_extra_sets`` drops the rows of
    sets not evaluated), or check ``zero_shot``'s files and load its model: before any embedding, so that a
    malformed input fails early. Give exactly one."""
    sources = open_eval_sets(evals)
    if zero_shot is not None:
        setup = prepare_zero_shot(zero_shot, evals, device)
        scorers = {n: ZeroShotScorer(setup.model, n, batch_size=zero_shot.batch_size) for n, _ in evals}
        return Scoring(None, "", zero_shot=setup, scorers=scorers)
    preds = read_predictions(predictions)
    preds = check_predictions(preds, {n: set_labels(src) for n, src in sources.items()},
                              ignore_extra_sets=ignore_extra_sets,
                              classnames={n: getattr(src, "classnames", None) for n, src in sources.items()})
    if isinstance(predictions, (str, os.PathLike)):
        return Scoring(preds, str(predictions), Path(predictions))
    return Scoring(preds, f"in memory ({preds.source})")


@dataclass(frozen=True, eq=False)
class Scores:
    """Per dataset, whether the model got each example of its Split right (row-aligned), where the
    predictions came from (``source``), and a predictions file the report directory keeps (``file``; None:
    none). ``temporary`` says ``file`` is this run's own, for the caller to remove once it is copied."""

    correct: dict[str, np.ndarray]
    source: str
    file: Path | None = None
    temporary: bool = False

    def discard(self) -> None:
        """Remove ``file`` when it is this run's temporary."""
        if self.temporary and self.file is not None:
            self.file.unlink(missing_ok=True)


def score(scoring: Scoring, splits: dict[str, Split], skipped: Mapping[str, Iterable[Skipped]], *,
          out_dir: str | os.PathLike, progress: bool = False) -> Scores:
    """Each split's per-example correctness. Zero-shot results are written as a predictions file (a temporary
    beside ``out_dir``, kept in it as predictions.parquet) and read back exactly as a given file would be; a
    given file that is ``out_dir``'s own predictions.parquet (an earlier ``--model`` run) is kept too.
    Skipped examples may have rows and are left out."""
    out_dir = Path(out_dir)
    skipped_ids = {n: {s.id for s in sk} for n, sk in skipped.items()}
    if scoring.zero_shot is None:
        given, keep = scoring.path, None
        if given is not None and (out_dir / PREDICTIONS).is_file() and os.path.samefile(out_dir / PREDICTIONS, given):
            keep = given  # an earlier --model run's file, read again: kept
        return Scores(match_predictions(scoring.predictions, splits, skipped_ids), scoring.source, keep)
    setup = scoring.zero_shot
    scored = [scorer.result(setup.classnames[n], setup.templates[n].templates, progress=progress)
              for n, scorer in scoring.scorers.items()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    file = create_temporary(out_dir.parent / f"{out_dir.name}-{PREDICTIONS}", suffix=".parquet")
    try:
        write_predictions(file, scored)
        preds = read_predictions(file)  # from here on exactly as a given --predictions file
        correct = match_predictions(preds, splits, skipped_ids)
    except BaseException:
        file.unlink(missing_ok=True)
        raise
    return Scores(correct, str(out_dir / PREDICTIONS), file, temporary=True)
