"""Thresholds from human review, as the CLIP paper set them: look at the pairs near the threshold, label
them, keep precision high while maximising recall.

``review_pairs`` writes the candidate pairs nearest a threshold as an HTML review sheet (pairs.html) and a
CSV (pairs.csv) with an empty ``is_duplicate`` column. Each pair is judged by the report's own decision rule
(``decide.rule.DecisionRule.judge_pairs``): its verification score and verdict, and the decision at the
threshold under review, and its verdict at the lowest photo accept; pairs.json beside them records that rule.
``pick_thresholds`` reads the filled-in CSV and gives, per dataset, the operating point of the decision (the
threshold, the first stage, the photo accept; the recorded verdicts) that keeps the most labelled duplicates
at a labelled precision at or above a target, each knob besides the threshold moved from the sheet's value
only where the labels support it (``MIN_GAIN``), with its recall among the labelled duplicates and
Clopper–Pearson intervals. ``write_thresholds`` writes the points for ``report --thresholds``
(``decide.points``), and the evidence beside them.
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

from .decide.photo import ACCEPT as DEFAULT_ACCEPT
from .decide.photo import REJECT as FLOOR_ACCEPT  # a photo score under it is evidence against, never for
from .decide.rule import VerifySettings

if TYPE_CHECKING:
    from .settings import MatchSettings

PAIRS_CSV = "pairs.csv"
PAIRS_HTML = "pairs.html"
PAIRS_RULE = "pairs.json"  # the decision rule the sheet's pairs were judged by
# verify_score, verdict and overlap are the decision rule's; a labels file without them still reads (its
# threshold is then the similarity's alone, as `report --no-verify` decides)
# verdict_floor: the verdict at the lowest photo accept ``threshold`` may choose (FLOOR_ACCEPT), from which a
# lower accept's verdict follows (``_verdicts_at``)
FLOOR_COLUMN = "verdict_floor"
CSV_COLUMNS = ("pair", "dataset", "eval_id", "corpus_id", "similarity", "verify_score", "verdict", FLOOR_COLUMN,
               "overlap", "is_duplicate")
# a verdict as pairs.csv writes it: the same picture, evidence against, nothing to say either way, images that
# could not be read back (kept as nothing to say: the threshold decides, as in a report); empty: not judged
VERDICT_WORDS = {True: "same", False: "different", None: "none"}
UNREADABLE = "unreadable"
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
    rule: Path  # pairs.json
    around: float
    n_pairs: dict[str, int]  # per dataset
    n_overlap: dict[str, int]  # of them, Overlap by the decision at ``around``
    verified: bool  # whether the pairs were verified (the rule has verification)


def nearest_rows(similarities, around: float, n: int) -> list[int]:
    """The ``n`` rows whose similarity is nearest ``around`` (ties by row), most similar first."""
    sims = np.asarray(similarities, dtype=np.float64)
    rows = np.nonzero(~np.isnan(sims))[0]
    near = rows[np.lexsort((rows, np.abs(sims[rows] - around)))][:max(0, n)]
    return [int(r) for r in near[np.lexsort((near, -sims[near]))]]


def review_pairs(index_dir: str | os.PathLike, evals: Iterable[tuple[str, str]], out_dir: str | os.PathLike, *,
                 around: float | None = None, n: int = 200, match: MatchSettings | None = None,
                 verify: VerifySettings | None = VerifySettings(),
                 cache_dir: str | os.PathLike | None = None) -> ReviewSheet:
    """Embed each evaluation set, find each example's nearest corpus item, and write the ``n`` pairs per
    dataset nearest ``around`` (default: the detector's threshold) as pairs.csv and pairs.html, each judged by
    the report's decision rule at ``around`` (``DecisionRule.for_detector`` with ``verify``, by default
    ``VerifySettings()``; None: the threshold alone, as ``report --no-verify``), and the
    rule as pairs.json. Each row shows the example's match as the rule names it (``DecisionRule.judge_examples``:
    the item verification accepted among its ``VerifySettings.neighbours`` nearest, else the nearest; the
    examples are picked by the nearest item's similarity). ``match`` says how the sets are embedded and
    searched (its ``k`` aside: the rule's neighbours are searched). With ``cache_dir`` the sets' embeddings and
    neighbours and the pairs' comparisons are read from and kept in that cache, as ``report`` does
    (``evalcache``, ``decide.verdicts``)."""
    from .decide.rule import DECISION_VERSION, DecisionRule
    from .index import corpus_items
    from .match import check_eval_sets, check_report_apart, match_eval_sets, open_corpus
    from .settings import MatchSettings
    from .report.html import Gallery, GalleryPair, esc, render_review_html, thumbnail
    from .atomic import atomic_write, atomic_write_json, atomic_write_text
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
    settings = replace(match or MatchSettings(), k=verify.neighbours if verify is not None else 1)
    max_pixels = settings.max_pixels
    corpus = open_corpus(index_dir, settings)
    if around is None:
        if corpus.detector.default_threshold is None:
            raise ThresholdError(f"this detector has no default threshold: pass {param('around')}")
        around = corpus.detector.default_threshold
    around = float(around)
    if not math.isfinite(around):
        raise ThresholdError(f"{param('around')} must be a finite number")

    # eval id, its neighbours' (corpus key, similarity), low-info
    picked: dict[str, list[tuple[str, list[tuple[str, float]], bool]]] = {}
    for name, matched in match_eval_sets(corpus, evals, settings, cache_dir=cache_dir).items():
        emb, nb = matched.embeddings, matched.neighbors
        sims = nb.similarities[:, 0]
        low = np.asarray(emb.low_information, dtype=bool)
        picked[name] = [(emb.ids[r], [(str(nb.ids[r, j]), float(nb.similarities[r, j])) for j in range(nb.k)
                                      if nb.ids[r, j] is not None and np.isfinite(nb.similarities[r, j])],
                         bool(low[r]))
                        for r in nearest_rows(np.where(low, np.nan, sims), around, n)]

    rule = DecisionRule.for_detector(corpus.detector, {name: around for name in picked}, verify)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus_found = corpus_items(index_dir, {key for rows in picked.values() for _, near, _ in rows
                                            for key, _ in near})
    lines, galleries, number, n_overlap = [], [], 0, {}
    for name, spec in evals:
        eval_found = fetch_items(as_source(spec, name=name, labels_from_folders=True),
                                 [e for e, _, _ in picked[name]])
        how = dict(max_pixels=max_pixels, workers=settings.workers, progress=settings.progress, cache_dir=cache_dir)
        judged = rule.judge_examples(name, [(eval_found.get(e), [(corpus_found.get(key), sim) for key, sim in near])
                                            for e, near, _ in picked[name]], **how)
        # each row shows the example's match (the item verified, else the nearest)
        shown = [near[col] for (_, near, _), (col, _) in zip(picked[name], judged)]
        given = [(eval_found.get(e), corpus_found.get(key), sim) for (e, _, _), (key, sim) in zip(picked[name], shown)]
        judged = [j for _, j in judged]
        # the verdicts at the lowest photo accept, from which every accept above it follows: judged again only
        # where a lower accept could change the verdict (the comparisons come from the cache when one is kept)
        floor = {i: j.verdict for i, j in enumerate(judged)}
        again = [i for i, j in enumerate(judged) if j.readable is True and j.verdict is not True]
        if again:
            low_rule = DecisionRule(rule.thresholds, replace(rule.verify, accept=FLOOR_ACCEPT))
            floor.update(zip(again, (j.verdict for j in low_rule.judge_pairs(name, [given[i] for i in again],
                                                                             **how))))
        n_overlap[name] = sum(j.overlap for j in judged)
        pairs = []
        for r, ((eval_id, _, _), (key, sim), j) in enumerate(zip(picked[name], shown, judged)):
            number += 1
            checked = j.readable is True
            verdict = "" if j.readable is None else VERDICT_WORDS[j.verdict] if checked else UNREADABLE
            at_floor = "" if j.readable is None else VERDICT_WORDS[floor[r]] if checked else UNREADABLE
            lines.append([number, csv_cell(name), csv_cell(eval_id), csv_cell(key), repr(sim),
                          repr(j.verify_score) if checked else "", verdict, at_floor,
                          "true" if j.overlap else "false", ""])
            ev, co = eval_found.get(eval_id), corpus_found.get(key)
            e_uri, e_why = thumbnail(ev, max_pixels=max_pixels)
            c_uri, c_why = thumbnail(co, max_pixels=max_pixels)
            pairs.append(GalleryPair(eval_id=eval_id, eval_label=ev.label if ev else None,
                                     eval_caption=ev.caption if ev else None, corpus_key=key,
                                     corpus_caption=co.caption if co else None, similarity=sim,
                                     overlap=j.overlap, low_information=False, eval_thumb=e_uri,
                                     eval_problem=e_why, corpus_thumb=c_uri, corpus_problem=c_why,
                                     deciding=False, number=number,
                                     verify_score=j.verify_score if checked else None,
                                     verified=j.verdict if checked else None))
        galleries.append(Gallery(name, around, pairs, 0, 0))
    csv_path = out / PAIRS_CSV

    def write_csv(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_COLUMNS)
            w.writerows(lines)

    # the rule first: a pairs.csv is never left beside the record of another rule
    rule_path = out / PAIRS_RULE
    atomic_write_json(rule_path, {"decision_version": DECISION_VERSION, "detector": corpus.detector.info.spec,
                                  "around": around, "verify": rule.verify.to_dict() if rule.verify else None})
    atomic_write(csv_path, write_csv)
    html_path = out / PAIRS_HTML
    atomic_write_text(html_path, render_review_html(galleries, around, esc(PAIRS_CSV)))
    return ReviewSheet(csv_path, html_path, rule_path, around, {name: len(rows) for name, rows in picked.items()},
                       n_overlap, rule.verify is not None)


@dataclass(frozen=True)
class KnobChoice:
    """One knob of the decision as ``threshold`` set it: its value, the report's value, and why."""

    name: str  # "first_stage", "accept" or "verify_threshold" (``decide.points.KNOBS``)
    value: float
    default: float  # the value the review sheet's rule gives it at the chosen threshold
    moved: bool
    reason: str


@dataclass(frozen=True)
class ThresholdChoice:
    """One dataset's operating point from labelled pairs, and the evidence for it: the counts, precision and
    recall are those of the decision at that point (with verification: its first stage, photo accept and
    the recorded verdicts), on the labelled pairs."""

    dataset: str
    target_precision: float
    threshold: float | None  # None: no operating point keeps the labelled precision at the target
    tp: int  # labelled duplicates the decision calls Overlap
    fp: int  # labelled non-duplicates the decision calls Overlap
    n_positive: int
    n_negative: int
    n_unlabelled: int
    precision: float | None
    precision_ci: tuple[float, float] | None
    recall: float | None  # among the labelled duplicates
    recall_ci: tuple[float, float] | None
    ci_level: float
    note: str = ""
    first_stage: float | None = None  # the first stage of the point (None: no verification)
    # the rule measured: {"decision_version", "verify": its settings or None}; None: the labels carry no
    # verdicts, so the similarity's decision alone was measured (as `report --no-verify` decides)
    decision: dict | None = None
    accept: float | None = None  # the photo accept of the point (None: no verification)
    verify_threshold: float | None = None  # the drawing comparison's score of the point (None: no verification)
    knobs: tuple[KnobChoice, ...] = ()  # each knob besides the threshold: chosen or left, and why

    def point(self) -> dict[str, float | None]:
        """The operating point as the thresholds file holds it (``decide.points``)."""
        return {"threshold": self.threshold, "first_stage": self.first_stage, "accept": self.accept,
                "verify_threshold": self.verify_threshold}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["precision_ci"] = list(self.precision_ci) if self.precision_ci else None
        d["recall_ci"] = list(self.recall_ci) if self.recall_ci else None
        d["knobs"] = [asdict(k) for k in self.knobs]
        # counts in the form `report --detector-error` reads
        d["precision_counts"] = [self.tp, self.tp + self.fp] if self.threshold is not None else None
        d["recall_counts"] = [self.tp, self.n_positive] if self.threshold is not None else None
        return d


@dataclass(frozen=True)
class LabelledPairs:
    """One dataset's labelled pairs of a pairs.csv, in file order."""

    similarities: list[float]
    labels: list[bool]
    verdicts: list[bool | None] | None  # None: the file has no verdict column (a sheet from before verdicts)
    n_unlabelled: int
    # the verification scores (NaN: none) and the verdicts at the lowest photo accept (``FLOOR_ACCEPT``);
    # None: the file has no such column (a sheet from before them)
    scores: list[float] | None = None
    floor_verdicts: list[bool | None] | None = None


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


_VERDICTS = {w: v for v, w in VERDICT_WORDS.items()} | {UNREADABLE: None, "": None}


def _verdict(value: str, line: int, path) -> bool | None:
    v = value.strip().lower()
    if v not in _VERDICTS:
        raise ThresholdError(f"{path}, line {line}: verdict {value!r} is not one `overlap-audit pairs` writes "
                             f"({', '.join(w for w in _VERDICTS if w)} or empty)")
    return _VERDICTS[v]


def read_labels(path: str | os.PathLike) -> dict[str, LabelledPairs]:
    """Per dataset (in file order): the labelled pairs' similarities, labels and verdicts, and the unlabelled
    count. A file without the verdict column reads too (its ``verdicts`` are None)."""
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ThresholdError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    out: dict[str, LabelledPairs] = {}
    try:
        with fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("dataset", "similarity", "is_duplicate") if c not in (reader.fieldnames or [])]
            if missing:
                raise ThresholdError(f"{path} lacks the column(s) {', '.join(missing)}: use the pairs.csv that "
                                     "`overlap-audit pairs` wrote, with is_duplicate filled in")
            has_verdicts = "verdict" in (reader.fieldnames or [])
            has_floor = has_verdicts and {"verify_score", FLOOR_COLUMN} <= set(reader.fieldnames or [])
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
                got = out.setdefault(name, LabelledPairs([], [], [] if has_verdicts else None, 0,
                                                         [] if has_floor else None, [] if has_floor else None))
                label = _label(row["is_duplicate"] or "", line, path)
                if label is None:
                    out[name] = replace(got, n_unlabelled=got.n_unlabelled + 1)
                    continue
                try:
                    sim = float(row["similarity"])
                except (TypeError, ValueError):
                    sim = float("nan")
                if not math.isfinite(sim):
                    raise ThresholdError(f"{path}, line {line}: similarity {row['similarity']!r} is not a number")
                got.similarities.append(sim)
                got.labels.append(label)
                if has_verdicts:
                    got.verdicts.append(_verdict(row["verdict"] or "", line, path))
                if has_floor:
                    got.floor_verdicts.append(_verdict(row[FLOOR_COLUMN] or "", line, path))
                    try:
                        got.scores.append(float(row["verify_score"] or "nan"))
                    except ValueError:
                        raise ThresholdError(f"{path}, line {line}: verify_score {row['verify_score']!r} is not a "
                                             "number") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ThresholdError(f"cannot read labels file {path}: it is not a UTF-8 CSV ({exc}); save it from the "
                             "spreadsheet as CSV UTF-8") from None
    return out


def load_rule_record(path: str | os.PathLike) -> dict:
    """A review sheet's pairs.json (the decision rule its pairs were judged by), refused when it was written
    under another version of the rule."""
    import json

    from .decide.rule import check_decision_version

    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except OSError as exc:
        raise ThresholdError(f"cannot read the review sheet's rule {path}: {exc.strerror or exc}; give the "
                             f"{PAIRS_RULE} that `overlap-audit pairs` wrote beside the labelled pairs.csv "
                             f"({param('rule')})") from None
    except ValueError as exc:
        raise ThresholdError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(record, dict) or "verify" not in record:
        raise ThresholdError(f"{path} is not a review sheet's {PAIRS_RULE}")
    check_decision_version(record.get("decision_version"), where=str(path))
    return record


def _effective_thresholds(dataset: str, sims: np.ndarray, verdicts, verify: VerifySettings | None
                          ) -> np.ndarray:
    """Per pair, the highest candidate threshold at which the rule calls it Overlap (-inf: none). The
    decision only thins out as the threshold rises (the first stage rises with it), so a pair is Overlap at a
    candidate t exactly when this is >= t: ``threshold_at_precision`` then applies to it as to a score.
    Candidates: the pairs' similarities and, for a verified pair, the threshold whose first stage it sits on."""
    from .decide.rule import RELAX, DecisionRule

    candidates = set(sims.tolist())
    if verify is not None and verify.first_stage is None:
        relax = RELAX if verify.relax is None else verify.relax  # as VerifySettings.first_stage_for
        for sim, verdict in zip(sims, verdicts):
            if verdict is True:
                t = 1.0 - (1.0 - float(sim)) / relax
                for _ in range(4):  # the inverse in floating point may overshoot by an ulp
                    if DecisionRule({dataset: t}, verify).overlap(dataset, [sim], [True])[0]:
                        candidates.add(t)
                        break
                    t = float(np.nextafter(t, -np.inf))
    best = np.full(len(sims), -np.inf)
    for t in sorted(candidates):
        called = DecisionRule({dataset: t}, verify).overlap(dataset, sims, verdicts)
        best[called] = t
    return best


# A knob other than the threshold moves from the review sheet's value only when the labelled pairs support it:
# the best point with it moved keeps at least MIN_GAIN more labelled duplicates, at the precision target, than
# the best point with it at the sheet's value (the other knob as it is there), and the Clopper–Pearson lower
# bound of its labelled precision is no lower than that of the point at the sheet's values. One duplicate more
# is what a single mislabelled or lucky pair gives.
MIN_GAIN = 2
# candidate values tried per knob besides the sheet's: the values at which labelled duplicates change, at most
# this many, spread evenly over them (the highest, nearest the sheet's, and the lowest always among them)
MAX_CANDIDATES = 12


@dataclass(frozen=True)
class _Point:
    """One operating point measured on the labelled pairs."""

    threshold: float
    first_stage: float | None  # explicit first stage (None: the sheet's, following the threshold)
    accept: float | None  # photo accept (None: the sheet's)
    tp: int
    fp: int
    lower: float  # the lower bound of the labelled precision's interval

    def key(self) -> tuple:
        """Better first: more duplicates, fewer false ones, then knobs nearest the sheet's values."""
        return (self.tp, -self.fp, -np.inf if self.first_stage is None else self.first_stage,
                np.inf if self.accept is None else self.accept)


def _spread(values, n: int = MAX_CANDIDATES) -> list[float]:
    """At most ``n`` of the distinct ``values``, highest first, evenly spread (the highest and lowest kept)."""
    v = sorted(set(values), reverse=True)
    if len(v) <= n:
        return v
    return [v[i] for i in sorted({round(j * (len(v) - 1) / (n - 1)) for j in range(n)})]


def _verdicts_at(verify: VerifySettings, accept: float | None, sims, verdicts, floor, scores) -> list:
    """The verdicts at photo accept ``accept`` (None: as recorded): a pair the comparison verifies at the
    lowest accept is verified at ``accept`` when its photo score reaches what ``accept`` asks at its
    similarity (``VerifySettings.accept_for``, as the report compares); any other keeps its recorded verdict."""
    if accept is None:
        return list(verdicts)
    at = replace(verify, accept=accept)
    return [True if f is True and s >= at.accept_for(float(sim)) else v
            for sim, v, f, s in zip(sims, verdicts, floor, scores)]


def _accept_from(verify: VerifySettings, sim: float, score: float) -> float:
    """The highest photo accept at which a pair of similarity ``sim`` and photo score ``score`` is verified."""
    a = score - (verify.accept_for(float(sim)) - _accept(verify))  # accept_for adds its grade to the accept
    for _ in range(8):  # the inverse in floating point may overshoot by an ulp
        if score >= replace(verify, accept=a).accept_for(float(sim)):
            break
        a = float(np.nextafter(a, -np.inf))
    return a


def _accept(verify: VerifySettings) -> float:
    """``verify``'s photo accept."""
    return DEFAULT_ACCEPT if verify.accept is None else verify.accept


def _measure(dataset: str, sims: np.ndarray, lab: np.ndarray, verdicts, verify: VerifySettings | None,
             target: float, ci_level: float) -> tuple[float, int, int, float] | None:
    """The lowest threshold at which the rule (``verify``, with these verdicts) keeps the labelled precision at
    ``target``, and its counts and precision's lower bound; None where none does."""
    from .decide.rule import DecisionRule
    from .decide.thresholds import threshold_at_precision
    from .stats.overlap import clopper_pearson

    reach = _effective_thresholds(dataset, sims, verdicts, verify)
    found = np.isfinite(reach)  # a pair verification holds evidence against is Overlap at no threshold
    point = threshold_at_precision(reach[lab & found], reach[~lab & found], target)
    if point is None:
        return None
    called = DecisionRule({dataset: point.threshold}, verify).overlap(dataset, sims, verdicts)
    k, f = int((called & lab).sum()), int((called & ~lab).sum())
    return point.threshold, k, f, clopper_pearson(k, k + f, ci_level)[0]


def choose_threshold(dataset: str, similarities, labels, *, verdicts=None, verify: VerifySettings | None = None,
                     decision: dict | None = None, target_precision: float = 0.99, ci_level: float = 0.995,
                     n_unlabelled: int = 0, floor_verdicts=None, scores=None) -> ThresholdChoice:
    """The operating point of the decision that keeps the most labelled duplicates at a labelled precision
    >= ``target_precision``: the lowest threshold reaching it (``decide.thresholds.threshold_at_precision``),
    and with verification the first stage and the photo accept, each moved from ``verify``'s value only as
    ``MIN_GAIN`` says. The decision at a point is the report's (``DecisionRule.overlap``): a pair verified as
    the same picture at or above the first stage, or a pair at or above the threshold whose verdict is not
    against it. Without ``verdicts`` (or ``verify``), the similarity alone decides. A lower photo accept needs
    ``floor_verdicts`` and ``scores`` (pairs.csv's verdict_floor and verify_score). ``decision`` is recorded
    as the rule measured."""
    from .decide.rule import DecisionRule
    from .stats.overlap import clopper_pearson

    if not 0.0 < target_precision <= 1.0:
        raise ThresholdError(f"{param('target_precision')} must be in (0, 1], got {target_precision}")
    sims = np.asarray(similarities, dtype=np.float64)
    lab = np.asarray(labels, dtype=bool)
    if verdicts is None:
        verdicts, verify, decision = [None] * len(sims), None, None
    if verify is None:  # no verification: the similarity decides, whatever the verdicts
        verdicts, floor_verdicts = [None] * len(sims), None
    elif len(verdicts) != len(sims):
        raise ValueError("similarities and verdicts are not row-aligned")
    verdicts = list(verdicts)
    base = dict(dataset=dataset, target_precision=target_precision, n_positive=int(lab.sum()),
                n_negative=int((~lab).sum()), n_unlabelled=n_unlabelled, ci_level=ci_level, decision=decision)
    none = dict(threshold=None, tp=0, fp=0, precision=None, precision_ci=None, recall=None, recall_ci=None)
    if not lab.any():
        return ThresholdChoice(**base, **none, note="no pair labelled a duplicate: no threshold keeps precision; "
                               "label pairs nearer the duplicates (or keep the default threshold)")

    # every point tried, by which knobs it moves: (first stage moved, accept moved)
    stages: list[float | None] = [None]
    accepts: list[float | None] = [None]
    if verify is not None:
        stages += _spread(sims[lab].astype(np.float32).tolist())  # the rule compares float32 similarities
        if floor_verdicts is not None:
            accepts += _spread([_accept_from(verify, sims[i], scores[i]) for i in np.flatnonzero(lab)
                                if floor_verdicts[i] is True and verdicts[i] is not True
                                and math.isfinite(scores[i])])
    best: dict[tuple[bool, bool], _Point] = {}
    for accept in accepts:
        at = _verdicts_at(verify, accept, sims, verdicts, floor_verdicts, scores) if verify is not None else verdicts
        for stage in stages:
            v = verify
            if verify is not None:
                v = replace(verify, **({} if stage is None else {"first_stage": stage}),
                            **({} if accept is None else {"accept": accept}))
            got = _measure(dataset, sims, lab, at, v, target_precision, ci_level)
            if got is None:
                continue
            p = _Point(got[0], stage, accept, got[1], got[2], got[3])
            cls = (stage is not None, accept is not None)
            if cls not in best or p.key() > best[cls].key():
                best[cls] = p
    sheet = best.get((False, False))
    if not best:
        return ThresholdChoice(**base, **none, note=f"no threshold reaches precision {target_precision:g} on the "
                               "labelled pairs" + (" (verification holds evidence against every duplicate)"
                                                   if all(x is False for x, y in zip(verdicts, lab) if y) else ""))
    supported = {(False, False)} if sheet is not None else set()

    def gain(cls: tuple[bool, bool], against: tuple[bool, bool]) -> int:
        return best[cls].tp - (best[against].tp if against in best else 0)

    def bound_ok(cls) -> bool:
        return sheet is None or best[cls].lower >= sheet.lower

    for cls in ((True, False), (False, True)):
        if cls in best and gain(cls, (False, False)) >= MIN_GAIN and bound_ok(cls):
            supported.add(cls)
    both = (True, True)
    if (both in best and gain(both, (False, True)) >= MIN_GAIN and gain(both, (True, False)) >= MIN_GAIN
            and bound_ok(both)):
        supported.add(both)
    if not supported:
        return ThresholdChoice(**base, **none, note=f"no threshold reaches precision {target_precision:g} on the "
                               f"labelled pairs at the review sheet's first stage and photo accept, and moving them "
                               f"gains fewer than {MIN_GAIN} labelled duplicates")
    order = [(False, False), (False, True), (True, False), both]  # ties: the fewest knobs moved
    cls = max((c for c in order if c in supported), key=lambda c: (best[c].tp, -order.index(c)))
    p = best[cls]
    v = None
    if verify is not None:
        v = replace(verify, **({} if p.first_stage is None else {"first_stage": p.first_stage}),
                    **({} if p.accept is None else {"accept": p.accept}))
    rule = DecisionRule({dataset: p.threshold}, v)
    at = _verdicts_at(verify, p.accept, sims, verdicts, floor_verdicts, scores) if verify is not None else verdicts
    called = rule.overlap(dataset, sims, at)  # the decision itself, counted
    k, f, n_pos = int((called & lab).sum()), int((called & ~lab).sum()), int(lab.sum())
    knobs = () if verify is None else _knobs(dataset, cls, best, sheet, p, verify, sims, lab, verdicts,
                                            floor_verdicts, target_precision)
    return ThresholdChoice(**base, threshold=p.threshold, tp=k, fp=f, precision=k / (k + f),
                           precision_ci=clopper_pearson(k, k + f, ci_level), recall=k / n_pos,
                           recall_ci=clopper_pearson(k, n_pos, ci_level), first_stage=rule.first_stage(dataset),
                           accept=None if v is None else _accept(v),
                           verify_threshold=None if v is None else v.threshold, knobs=knobs)


def _knobs(dataset: str, cls, best: dict, sheet, p: _Point, verify: VerifySettings, sims, lab, verdicts, floor,
           target: float) -> tuple[KnobChoice, ...]:
    """Each knob besides the threshold: its value at ``p``, the sheet's, and why it was moved or left."""
    from .decide.rule import DecisionRule

    sheet_stage = DecisionRule({dataset: p.threshold}, verify).first_stage(dataset)
    sheet_accept = _accept(verify)
    other = {0: (False, cls[1]), 1: (cls[0], False)}  # the point with the knob at the sheet's value

    def why_left(i: int, what: str) -> str:
        moved = (True, cls[1]) if i == 0 else (cls[0], True)
        if moved not in best:
            return f"no {what} reaches precision {target:g} on the labelled pairs"
        g = best[moved].tp - (best[other[i]].tp if other[i] in best else 0)
        if g < MIN_GAIN:
            return (f"a {what} keeps {max(g, 0)} more labelled duplicate(s) at precision {target:g}, fewer than "
                    f"{MIN_GAIN}")
        if sheet is not None and best[moved].lower < sheet.lower:
            return (f"a {what} lowers the labelled precision's lower bound to {best[moved].lower:.3f} from "
                    f"{sheet.lower:.3f}")
        return (f"a {what} keeps {g} more labelled duplicate(s) only where the other knob's move then keeps "
                f"fewer than {MIN_GAIN} more")

    out = []
    below = [i for i in np.flatnonzero(lab) if sims[i] < sheet_stage]
    if cls[0]:
        g = p.tp - (best[other[0]].tp if other[0] in best else 0)
        out.append(KnobChoice("first_stage", p.first_stage, sheet_stage, True,
                              f"keeps {g} more labelled duplicate(s) than the sheet's first stage"))
    else:
        reason = ("no labelled duplicate below the first stage" if not below
                  else why_left(0, "lower first stage"))
        out.append(KnobChoice("first_stage", sheet_stage, sheet_stage, False, reason))
    if cls[1]:
        g = p.tp - (best[other[1]].tp if other[1] in best else 0)
        out.append(KnobChoice("accept", p.accept, sheet_accept, True,
                              f"keeps {g} more labelled duplicate(s) than the sheet's photo accept"))
    else:
        if floor is None:
            reason = "LABELS records no verdict at a lower photo accept (a sheet written before them)"
        elif not any(floor[i] is True and verdicts[i] is not True for i in np.flatnonzero(lab)):
            reason = "no labelled duplicate that a lower photo accept verifies"
        else:
            reason = why_left(1, "lower photo accept")
        out.append(KnobChoice("accept", sheet_accept, sheet_accept, False, reason))
    out.append(KnobChoice("verify_threshold", verify.threshold, verify.threshold, False,
                          "not chosen from labels: pairs.csv holds the drawing comparison's score only where the "
                          "photo comparison does not apply"))
    return tuple(out)


def pick_thresholds(path: str | os.PathLike, *, rule: str | os.PathLike | None = None, target_precision: float = 0.99,
                    ci_level: float = 0.995) -> dict[str, ThresholdChoice]:
    """``choose_threshold`` for every dataset of a filled-in pairs.csv, under the decision rule of ``rule``
    (the sheet's pairs.json; default: the one beside ``path``). A labels file without verdicts needs no rule:
    its similarities alone decide."""
    from .decide.rule import rule_from_record

    data = read_labels(path)
    verify = decision = None
    if any(d.verdicts is not None for d in data.values()):
        record = load_rule_record(rule if rule is not None else Path(path).with_name(PAIRS_RULE))
        verify = rule_from_record(record["verify"], {}, where=str(rule or PAIRS_RULE)).verify
        decision = {"decision_version": record["decision_version"], "verify": record["verify"],
                    "detector": record.get("detector")}
    return {name: choose_threshold(name, d.similarities, d.labels, verdicts=d.verdicts, verify=verify,
                                   decision=decision, target_precision=target_precision, ci_level=ci_level,
                                   n_unlabelled=d.n_unlabelled, floor_verdicts=d.floor_verdicts, scores=d.scores)
            for name, d in data.items()}


def write_thresholds(choices: dict[str, ThresholdChoice], path: str | os.PathLike) -> tuple[Path, Path]:
    """Write each dataset's operating point (datasets with a threshold only) for ``report --thresholds``
    (``decide.points``), and the evidence of every dataset beside it (``<name>.evidence.json``). Returns
    both paths."""
    from .atomic import atomic_write_json
    from .decide.points import points_record

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    evidence = path.with_name(path.stem + ".evidence.json")
    detector = next((c.decision.get("detector") for c in choices.values() if c.decision), None)
    atomic_write_json(path, points_record({n: c.point() for n, c in choices.items() if c.threshold is not None},
                                          detector))
    atomic_write_json(evidence, {n: c.to_dict() for n, c in choices.items()})
    return path, evidence
