"""Thresholds from human review, as the CLIP paper set them: look at the pairs near the threshold, label
them, keep precision high while maximising recall.

``review_pairs`` writes the candidate pairs nearest a threshold as an HTML review sheet (pairs.html) and a
CSV (pairs.csv) with an empty ``is_duplicate`` column. ``pick_thresholds`` reads the filled-in CSV and
gives, per dataset, the lowest threshold whose labelled precision is at or above a target, with the recall
among the labelled duplicates and Clopper–Pearson intervals. ``write_thresholds`` writes the
``{"NAME": t}`` file ``report --thresholds`` reads, and the evidence beside it.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .inert import csv_cell, csv_value
from .errors import ThresholdError, param

if TYPE_CHECKING:
    from .settings import MatchSettings

PAIRS_CSV = "pairs.csv"
PAIRS_HTML = "pairs.html"
CSV_COLUMNS = ("pair", "dataset", "eval_id", "corpus_id", "similarity", "is_duplicate")
TRUE_WORDS = {"1", "y", "yes", "true", "dup", "duplicate"}
FALSE_WORDS = {"0", "n", "no", "false"}


def _has_labels(path: Path) -> bool:
    """Whether a pairs.csv has any is_duplicate filled in."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return any((row.get("is_duplicate") or "").strip() for row in csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return True  # unreadable: do not overwrite what may be someone's work


@dataclass(frozen=True)
class ReviewSheet:
    """What ``review_pairs`` wrote."""

    csv: Path
    html: Path
    around: float
    n_pairs: dict[str, int]  # per dataset


def nearest_rows(similarities, around: float, n: int) -> list[int]:
    """The ``n`` rows whose similarity is nearest ``around`` (ties by row), most similar first."""
    sims = np.asarray(similarities, dtype=np.float64)
    rows = np.nonzero(~np.isnan(sims))[0]
    near = rows[np.lexsort((rows, np.abs(sims[rows] - around)))][:max(0, n)]
    return [int(r) for r in near[np.lexsort((near, -sims[near]))]]


def review_pairs(index_dir: str | os.PathLike, evals: Iterable[tuple[str, str]], out_dir: str | os.PathLike, *,
                 around: float | None = None, n: int = 200, match: MatchSettings | None = None) -> ReviewSheet:
    """Embed each evaluation set, find each example's nearest corpus item, and write the ``n`` pairs per
    dataset nearest ``around`` (default: the detector's threshold) as pairs.csv and pairs.html. ``match`` says
    how the sets are embedded and searched (its ``k`` aside: only the nearest item is reviewed)."""
    from .index import corpus_items
    from .match import check_eval_sets, check_report_apart, match_eval_sets, open_corpus
    from .settings import MatchSettings
    from .report.html import Gallery, GalleryPair, esc, render_review_html, thumbnail
    from .atomic import atomic_write, atomic_write_text
    from .sources import as_source, fetch_items

    evals = check_eval_sets(evals)
    check_report_apart(out_dir, index_dir, evals)
    if n < 1:
        raise ThresholdError(f"{param('n')} must be at least 1")
    existing = Path(out_dir) / PAIRS_CSV
    if existing.exists() and _has_labels(existing):
        raise ThresholdError(f"{existing} already holds labels (is_duplicate filled in); give another "
                             f"{param('out_dir')}, or move it away first: writing the review sheet again would "
                             "erase them")
    settings = replace(match or MatchSettings(), k=1)
    max_pixels = settings.max_pixels
    corpus = open_corpus(index_dir, settings)
    if around is None:
        if corpus.detector.default_threshold is None:
            raise ThresholdError(f"this detector has no default threshold: pass {param('around')}")
        around = corpus.detector.default_threshold
    around = float(around)
    if not math.isfinite(around):
        raise ThresholdError(f"{param('around')} must be a finite number")

    picked: dict[str, list[tuple[str, str, float, bool]]] = {}  # eval id, corpus key, similarity, low-info
    for name, matched in match_eval_sets(corpus, evals, settings).items():
        emb, nb = matched.embeddings, matched.neighbors
        sims = nb.similarities[:, 0]
        low = np.asarray(emb.low_information, dtype=bool)
        picked[name] = [(emb.ids[r], nb.ids[r, 0], float(sims[r]), bool(low[r]))
                        for r in nearest_rows(np.where(low, np.nan, sims), around, n)]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus_found = corpus_items(index_dir, {key for rows in picked.values() for _, key, _, _ in rows})
    lines, galleries, number = [], [], 0
    for name, spec in evals:
        eval_found = fetch_items(as_source(spec, name=name, labels_from_folders=True),
                                 [e for e, _, _, _ in picked[name]])
        pairs = []
        for eval_id, key, sim, _ in picked[name]:
            number += 1
            lines.append([number, csv_cell(name), csv_cell(eval_id), csv_cell(key), repr(sim), ""])
            ev, co = eval_found.get(eval_id), corpus_found.get(key)
            e_uri, e_why = thumbnail(ev, max_pixels=max_pixels)
            c_uri, c_why = thumbnail(co, max_pixels=max_pixels)
            pairs.append(GalleryPair(eval_id=eval_id, eval_label=ev.label if ev else None,
                                     eval_caption=ev.caption if ev else None, corpus_key=key,
                                     corpus_caption=co.caption if co else None, similarity=sim,
                                     overlap=bool(np.float32(sim) >= np.float32(around)), low_information=False, eval_thumb=e_uri,
                                     eval_problem=e_why, corpus_thumb=c_uri, corpus_problem=c_why,
                                     deciding=False, number=number))
        galleries.append(Gallery(name, around, pairs, 0, 0))
    csv_path = out / PAIRS_CSV

    def write_csv(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_COLUMNS)
            w.writerows(lines)

    atomic_write(csv_path, write_csv)
    html_path = out / PAIRS_HTML
    atomic_write_text(html_path, render_review_html(galleries, around, esc(PAIRS_CSV)))
    return ReviewSheet(csv_path, html_path, around, {name: len(rows) for name, rows in picked.items()})


@dataclass(frozen=True)
class ThresholdChoice:
    """One dataset's threshold from labelled pairs, and the evidence for it."""

    dataset: str
    target_precision: float
    threshold: float | None  # None: no threshold keeps the labelled precision at the target
    tp: int  # labelled duplicates at or above the threshold
    fp: int  # labelled non-duplicates at or above the threshold
    n_positive: int
    n_negative: int
    n_unlabelled: int
    precision: float | None
    precision_ci: tuple[float, float] | None
    recall: float | None  # among the labelled duplicates
    recall_ci: tuple[float, float] | None
    ci_level: float
    note: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["precision_ci"] = list(self.precision_ci) if self.precision_ci else None
        d["recall_ci"] = list(self.recall_ci) if self.recall_ci else None
        # counts in the form `report --detector-error` reads
        d["precision_counts"] = [self.tp, self.tp + self.fp] if self.threshold is not None else None
        d["recall_counts"] = [self.tp, self.n_positive] if self.threshold is not None else None
        return d


def _label(value: str, line: int, path) -> bool | None:
    v = value.strip().lower()
    if v == "":
        return None
    if v in TRUE_WORDS:
        return True
    if v in FALSE_WORDS:
        return False
    raise ThresholdError(f"{path}, line {line}: is_duplicate {value!r} is not 1/0, yes/no or true/false "
                         "(leave it empty for a pair not reviewed)")


def read_labels(path: str | os.PathLike) -> dict[str, tuple[list[float], list[bool], int]]:
    """Per dataset (in file order): the labelled similarities, their labels, and the unlabelled count."""
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ThresholdError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    out: dict[str, tuple[list[float], list[bool], int]] = {}
    try:
        with fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("dataset", "similarity", "is_duplicate") if c not in (reader.fieldnames or [])]
            if missing:
                raise ThresholdError(f"{path} lacks the column(s) {', '.join(missing)}: use the pairs.csv that "
                                     "`overlap-audit pairs` wrote, with is_duplicate filled in")
            seen: dict[tuple[str, str, str], int] = {}
            for row in reader:
                line = reader.line_num
                name = csv_value((row["dataset"] or "").strip())
                if not name:
                    raise ThresholdError(f"{path}, line {line}: empty dataset")
                pair = (name, (row.get("eval_id") or "").strip(), (row.get("corpus_id") or "").strip())
                if pair[1] and pair[1:] != ("", "") and pair in seen:  # a pasted-twice row would count twice
                    raise ThresholdError(f"{path}, line {line}: the pair {pair[1]!r} / {pair[2]!r} of {name} is also on "
                                         f"line {seen[pair]}; keep one")
                seen.setdefault(pair, line)
                sims, labels, unlabelled = out.setdefault(name, ([], [], 0))
                label = _label(row["is_duplicate"] or "", line, path)
                if label is None:
                    out[name] = (sims, labels, unlabelled + 1)
                    continue
                try:
                    sim = float(row["similarity"])
                except (TypeError, ValueError):
                    sim = float("nan")
                if not math.isfinite(sim):
                    raise ThresholdError(f"{path}, line {line}: similarity {row['similarity']!r} is not a number")
                sims.append(sim)
                labels.append(label)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ThresholdError(f"cannot read labels file {path}: it is not a UTF-8 CSV ({exc}); save it from the "
                             "spreadsheet as CSV UTF-8") from None
    return out


def choose_threshold(dataset: str, similarities, labels, *, target_precision: float = 0.99,
                     ci_level: float = 0.995, n_unlabelled: int = 0) -> ThresholdChoice:
    """The lowest threshold (a labelled duplicate's similarity) at which the labelled pairs at or above it
    have precision >= ``target_precision``; recall is among the labelled duplicates."""
    from .stats.overlap import clopper_pearson
    from .decide.thresholds import threshold_at_precision

    if not 0.0 < target_precision <= 1.0:
        raise ThresholdError(f"{param('target_precision')} must be in (0, 1], got {target_precision}")
    sims = np.asarray(similarities, dtype=np.float64)
    lab = np.asarray(labels, dtype=bool)
    pos, neg = np.sort(sims[lab]), np.sort(sims[~lab])
    base = dict(dataset=dataset, target_precision=target_precision, n_positive=len(pos), n_negative=len(neg),
                n_unlabelled=n_unlabelled, ci_level=ci_level)
    none = dict(threshold=None, tp=0, fp=0, precision=None, precision_ci=None, recall=None, recall_ci=None)
    if len(pos) == 0:
        return ThresholdChoice(**base, **none, note="no pair labelled a duplicate: no threshold keeps precision; "
                               "label pairs nearer the duplicates (or keep the default threshold)")
    point = threshold_at_precision(pos, neg, target_precision)
    if point is None:
        return ThresholdChoice(**base, **none, note=f"no threshold reaches precision {target_precision:g} on the "
                               "labelled pairs")
    t, k, f = point.threshold, point.tp, point.fp
    return ThresholdChoice(**base, threshold=t, tp=k, fp=f, precision=k / (k + f),
                           precision_ci=clopper_pearson(k, k + f, ci_level), recall=k / len(pos),
                           recall_ci=clopper_pearson(k, len(pos), ci_level))


def pick_thresholds(path: str | os.PathLike, *, target_precision: float = 0.99,
                    ci_level: float = 0.995) -> dict[str, ThresholdChoice]:
    """``choose_threshold`` for every dataset of a filled-in pairs.csv."""
    return {name: choose_threshold(name, sims, labels, target_precision=target_precision, ci_level=ci_level,
                                   n_unlabelled=unlabelled)
            for name, (sims, labels, unlabelled) in read_labels(path).items()}


def write_thresholds(choices: dict[str, ThresholdChoice], path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``{"NAME": t}`` (datasets with a threshold only) for ``report --thresholds``, and the evidence
    of every dataset beside it (``<name>.evidence.json``). Returns both paths."""
    from .atomic import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    evidence = path.with_name(path.stem + ".evidence.json")
    atomic_write_json(path, {n: c.threshold for n, c in choices.items() if c.threshold is not None})
    atomic_write_json(evidence, {n: c.to_dict() for n, c in choices.items()})
    return path, evidence
