"""The Overlap decision, as one object: each dataset's threshold, then (with verification) a relaxed first
stage whose pairs are compared (``photo.verify_photo``), then Overlap / Clean.

``DecisionRule`` holds the decision's settings; ``DecisionRule.decide`` turns the matches of a report's
evaluation sets into their ``Split``s; the report, ``pairs``/``threshold``, the notebooks and the benchmarks
all decide through it. Without verification an example is Overlap when its nearest corpus item is at or
above its dataset's threshold (``split.split``). With it, an example is compared with its nearest corpus items
that are at or above the first stage (``VerifySettings.first_stage_for``), at most
``VerifySettings.neighbours`` of them, most similar first, until one is verified as the same picture. Overlap
is an example with a verified item, or whose nearest item is at or above the threshold and verification holds
no evidence against that pair (a photograph pair with too little texture, a sky, says nothing either way and
keeps the detector's decision; a drawing pair is judged by ``verify.verify_prepared``: the same picture at
``VerifySettings.threshold``, evidence against under ``verify.VERIFY_REJECT``, which rejects look-alikes). The example's match (``Split.match``) is
the item verified, else the nearest. Low-information examples are never Overlap (``DecisionRule.choose``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..content import ContentBox
from ..errors import ReportError
from ..values import Embeddings, Neighbors, RawItem, Split
from .split import split
from .photo import PhotoVerification, prepare_photo, verify_photo
from .verify import KEEP as PAIR_KEEP, VERIFY_THRESHOLD

_log = logging.getLogger(__name__)

# the first stage proposes pairs at a relaxed threshold: a distance from 1 RELAX times the detector's,
# 1 - RELAX * (1 - t); a detector may declare its own (``verify_relax``, detectors/base.py). On the clip-art
# development set (trimmed views) 2 kept 74 of the 75 true copies for phash (0.7188) and for pdq (0.5391).
# App. C copies of photographs (crop, squash, rotation) keep less of their hash: on the photo development set
# most of the medium copies phash missed lay below 0.7188 (bench_photo_report --breakdown), and 2.5 (42 of 64
# bits) takes medium recall from 0.708 to 0.806 at precision 0.996, verifying 502 pairs where 2 verified 264.
# Verification, not the similarity, keeps precision (BENCHMARKS.md).
RELAX = 2.5

# The version of the rule below; report.json's "verify" record and the review sheet (pairs.json) carry it, and
# whatever decides again from them (the notebooks, ``threshold``) refuses another. Raise it whenever the same
# similarities and verdicts could decide differently.
DECISION_VERSION = 5

# How many of an example's nearest corpus items (at or above the first stage) verification may compare with it.
# An App. C copy's source is often not its nearest item under phash (a squashed, cropped photograph lands nearer
# another picture). On the photo development set (BENCHMARKS.md, "Verifying more than the nearest item") 3 found
# 8 more medium and 7 more strong copies of 288 (5: 8 and 9) at the same precision, comparing 1.5x the pairs
# (5: 1.5x; on the tile families, where every distractor has several candidates, 2.0x against 2.6x).
NEIGHBOURS = 3


def relax_for(detector) -> float:
    """The first stage's relaxation for ``detector``: its own ``verify_relax`` when it declares one, else
    ``RELAX``."""
    relax = getattr(detector, "verify_relax", None)
    return RELAX if relax is None else float(relax)


def first_stage_threshold(detector_threshold: float, relax: float = RELAX) -> float:
    """The relaxed first-stage threshold for a detector threshold: 1 - relax * (1 - t)."""
    return 1.0 - relax * (1.0 - float(detector_threshold))


@dataclass(frozen=True)
class VerifySettings:
    """Verification of a report's matches: the examples whose nearest corpus item is at or above the first
    stage (``first_stage``; None: ``first_stage_threshold`` of each dataset's threshold with ``relax``, which
    ``DecisionRule.for_detector`` takes from the detector's ``verify_relax`` when it is None) are verified, and
    Overlap is those whose pair scores at least ``threshold``; every other example is Clean."""

    threshold: float = VERIFY_THRESHOLD
    first_stage: float | None = None
    relax: float | None = None  # the first stage's relaxation when ``first_stage`` is None (None: ``RELAX``)
    # the detector's own threshold: a photograph pair whose similarity lies below it needs a photo score that
    # grows towards ``photo.ACCEPT + photo.GRADE`` at that threshold's first stage (``accept_for``); None: flat
    anchor: float | None = None
    accept: float | None = None  # the photo score that verifies a pair at or above ``anchor`` (None: ``photo.ACCEPT``)
    neighbours: int = NEIGHBOURS  # an example's nearest items verified at most, most similar first

    def accept_for(self, similarity: float) -> float:
        """The photo score a photograph pair at ``similarity`` needs to be verified as the same picture: the
        less similar the detector finds the pair, the stronger the evidence verification needs (two tiles of
        one brick wall or one tray of coins correlate about as well as a strongly edited copy)."""
        from .photo import ACCEPT, GRADE, GRADE_SPAN

        base = ACCEPT if self.accept is None else self.accept
        if self.anchor is None or not math.isfinite(similarity) or similarity >= self.anchor:
            return base
        low = first_stage_threshold(self.anchor, GRADE_SPAN)
        share = min(1.0, (self.anchor - similarity) / max(self.anchor - low, 1e-9))
        return base + GRADE * share

    def near(self, similarity: float) -> bool:
        """Whether a pair at ``similarity`` lies above the low end of ``accept_for``'s grade (always, without an
        ``anchor``): only there may a featureless pair be verified (``photo.FEATURELESS_ACCEPT``)."""
        from .photo import GRADE_SPAN

        if self.anchor is None or not math.isfinite(similarity):
            return self.anchor is None
        return similarity > first_stage_threshold(self.anchor, GRADE_SPAN)

    def __post_init__(self) -> None:
        from ..errors import SettingsError, param
        from ..settings import check_similarity

        check_similarity(param("verify.threshold"), self.threshold)
        if self.first_stage is not None:
            check_similarity(param("verify.first_stage"), self.first_stage)
        if self.accept is not None:
            check_similarity(param("verify.accept"), self.accept)
        if isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int) or self.neighbours < 1:
            raise SettingsError(f"{param('verify.neighbours')} must be a whole number of at least 1, "
                                f"not {self.neighbours!r}")

    def first_stage_for(self, dataset_threshold: float) -> float:
        if self.first_stage is not None:
            return float(self.first_stage)
        return first_stage_threshold(dataset_threshold, RELAX if self.relax is None else self.relax)

    def to_dict(self, splits: dict | None = None, unreadable: dict[str, int] | None = None,
                changed: dict[str, int] | None = None, cached: dict[str, int] | None = None,
                pairs: dict[str, int] | None = None) -> dict:
        """The settings, and per dataset of ``splits`` (verified ones) its first stage and counts
        (``n_verified``: examples whose match has a score; ``n_pairs``: pairs compared, all neighbours;
        ``n_by_neighbour``: Overlap examples whose match is not their nearest item; ``n_changed``: the
        unreadable pairs whose corpus image changed since it was indexed; ``n_cached``: the pairs whose
        comparison an earlier run had stored, ``verdicts``)."""
        d = {"threshold": self.threshold,
             "relax": (RELAX if self.relax is None else self.relax) if self.first_stage is None else None,
             "first_stage": self.first_stage, "anchor": self.anchor, "accept": self.accept,
             "neighbours": self.neighbours,
             "decision_version": DECISION_VERSION}
        if splits:
            d["datasets"] = {n: {"first_stage": self.first_stage_for(sp.threshold),
                                 "n_verified": int(np.isfinite(sp.verify_scores).sum()),
                                 "n_pairs": int((pairs or {}).get(n, 0)),
                                 "n_accepted": int(np.asarray(sp.verified).sum()),
                                 "n_overlap": int(np.asarray(sp.overlap).sum()),
                                 "n_by_neighbour": int((np.asarray(sp.overlap, bool) & (sp.match_column > 0)).sum()),
                                 "n_unreadable": int((unreadable or {}).get(n, 0)),
                                 "n_changed": int((changed or {}).get(n, 0)),
                                 "n_cached": int((cached or {}).get(n, 0))}
                             for n, sp in splits.items() if sp.verify_scores is not None}
        return d


@dataclass(frozen=True)
class Decision:
    """What a ``DecisionRule`` decided: each dataset's Split, and with verification the report's record of it
    (``VerifySettings.to_dict`` with each dataset's first stage and counts; None without verification)."""

    splits: dict[str, Split]
    verification: dict | None = None


@dataclass(frozen=True)
class DecisionRule:
    """The rule that makes an evaluation example Overlap: its dataset's threshold (``thresholds``, one per
    dataset) and, unless ``verify`` is None, pair verification from a relaxed first stage (a dataset of
    ``per_set`` under its own verification settings)."""

    thresholds: Mapping[str, float]
    verify: VerifySettings | None = field(default_factory=VerifySettings)
    # a dataset's own verification settings in place of ``verify`` (a thresholds file that ``threshold``
    # wrote: its first stage and photo accept); unused without verification
    per_set: Mapping[str, VerifySettings] = field(default_factory=dict)

    @classmethod
    def for_detector(cls, detector, thresholds: Mapping[str, float],
                     verify: VerifySettings | None = VerifySettings(),
                     per_set: Mapping[str, Mapping[str, float]] | None = None) -> DecisionRule:
        """The rule for ``detector``'s matches: a ``verify`` without its own ``relax`` takes the detector's
        (``relax_for``). ``per_set``: per dataset, the ``VerifySettings`` fields it sets in place of
        ``verify``'s (``decide.points``)."""
        if verify is not None and verify.relax is None:
            verify = replace(verify, relax=relax_for(detector))
        if verify is not None and verify.anchor is None and detector.default_threshold is not None:
            verify = replace(verify, anchor=float(detector.default_threshold))
        own = {n: replace(verify, **knobs) for n, knobs in (per_set or {}).items()} if verify is not None else {}
        return cls(dict(thresholds), verify, own)

    def verify_for(self, dataset: str) -> VerifySettings | None:
        """``dataset``'s verification settings (None: no verification)."""
        return None if self.verify is None else self.per_set.get(dataset, self.verify)

    def first_stage(self, dataset: str) -> float | None:
        """The similarity from which ``dataset``'s examples are verified (None: no verification)."""
        verify = self.verify_for(dataset)
        return None if verify is None else verify.first_stage_for(self.thresholds[dataset])

    def decide(self, matches: Mapping[str, tuple[Embeddings, Neighbors]], *, index_dir: str | os.PathLike | None,
               eval_sources: Mapping[str, object], max_pixels: int | None = None, workers: int | None = None,
               progress: bool = False, cache_dir: str | os.PathLike | None = None,
               pool: VerifyPool | None = None) -> Decision:
        """Split each evaluation set's (embeddings, neighbours) into Overlap / Clean. Verification reads the
        pairs' images back: the corpus items from ``index_dir``, the examples from ``eval_sources`` (name ->
        spec or in-memory source); ``max_pixels`` caps their decoding; the pairs are judged over ``workers``
        processes (None: one per CPU, at most 8; 0: in this process), or over ``pool``'s
        (``verification_pool``) when it is given; with ``cache_dir`` the comparisons of an earlier run there
        are reused (``verdicts``), and new ones stored."""
        splits = {n: split(n, emb, nb, self.thresholds[n]) for n, (emb, nb) in matches.items()}
        if self.verify is None:
            return Decision(splits)
        splits, unreadable, changed, cached, pairs = _verify_splits(
            self, splits, index_dir, eval_sources, max_pixels=max_pixels, workers=workers, progress=progress,
            cache_dir=cache_dir, pool=pool)
        record = self.verify.to_dict()
        # each dataset's counts under its own settings (a thresholds file that ``threshold`` wrote)
        counted = {n: self.verify_for(n).to_dict({n: sp}, unreadable, changed, cached, pairs)["datasets"][n]
                   for n, sp in splits.items()}
        record["datasets"] = {n: c | ({"settings": _own_settings(self.per_set[n])} if n in self.per_set else {})
                              for n, c in counted.items()}
        return Decision(splits, record)

    def choose(self, dataset: str, similarities, verdicts: Mapping[tuple[int, int], bool | None],
               low_information=None, photo: Mapping[int, bool] | None = None) -> Choice:
        """The decision from the verdicts known so far: ``similarities`` [N, k] are each example's neighbours',
        most similar first (NaN: none); ``verdicts`` maps (row, column) to a pair's verdict (True: the same
        picture; False: evidence against; None: nothing to say, or unreadable). A row is decided once the pairs
        it needs are known; the rest are listed in ``Choice.todo`` (at most one per row, the next to compare):
        judge those and call again, until ``todo`` is empty. The nearest pair decides first: verified, or at
        or above the threshold with no evidence against, it is the match; otherwise the first verified of the
        next items at or above the first stage (``VerifySettings.neighbours`` in all); the callers pass those items'
        verdicts through ``beyond_nearest``. Only a row whose nearest pair was compared as photographs
        (``photo[row]``, from its judgement; None: every row) goes past the nearest: a drawing's look-alikes
        crowd the first stage (on the real-data demo nearly every stamp has three items there), and comparing
        them tripled the pairs without finding a copy (BENCHMARKS.md, "Verifying more than the nearest item")."""
        sims = np.nan_to_num(np.asarray(similarities, np.float32), nan=-np.inf)
        if sims.ndim != 2:
            raise ValueError("similarities must be [examples, neighbours]")
        n, k = sims.shape
        low = np.zeros(n, bool) if low_information is None else np.asarray(low_information, bool)
        if len(low) != n:
            raise ValueError("similarities and low_information are not row-aligned")
        # as ``split.split`` compares: float32 similarities
        confident = sims[:, 0] >= self.thresholds[dataset] if k else np.zeros(n, bool)
        match = np.zeros(n, np.int64)
        if self.verify is None or not k:
            return Choice(confident & ~low, match, [])
        depth = min(k, self.verify_for(dataset).neighbours)
        candidate = sims[:, :depth].astype(np.float64) >= self.first_stage(dataset)
        overlap = confident & ~candidate[:, 0] & ~low  # a first stage above the threshold: as without it
        todo: list[tuple[int, int]] = []
        for i in np.flatnonzero(candidate[:, 0] & ~low):
            i = int(i)
            for j in range(depth):
                if not candidate[i, j]:
                    break
                if (i, j) not in verdicts:
                    todo.append((i, j))
                    break
                v = verdicts[(i, j)]
                if v is True or (j == 0 and confident[i] and v is not False):
                    overlap[i], match[i] = True, j
                    break
                if j == 0 and photo is not None and not photo.get(i, False):
                    break
        return Choice(overlap, match, todo)

    def overlap(self, dataset: str, similarities, verdicts: Sequence[bool | None],
                low_information=None) -> np.ndarray:
        """The decision for nearest pairs whose verdicts are known (True: the same picture; False: evidence
        against; None: nothing to say, not judged or unreadable): a verdict counts only at or above
        ``dataset``'s first stage, as in ``decide`` (``choose`` with one neighbour)."""
        sims = np.asarray(similarities, np.float32).reshape(-1, 1)
        v = list(verdicts)
        if len(v) != len(sims):
            raise ValueError("similarities and verdicts are not row-aligned")
        return self.choose(dataset, sims, {(i, 0): x for i, x in enumerate(v)}, low_information).overlap

    def judge_pairs(self, dataset: str, pairs: Sequence[tuple[RawItem | None, RawItem | None, float]], *,
                    low_information=None, max_pixels: int | None = None, workers: int | None = None,
                    progress: bool = False, cache_dir: str | os.PathLike | None = None,
                    desc: str = "verify", pool: VerifyPool | None = None) -> list[PairJudgement]:
        """Verify each (evaluation item, corpus item, similarity) pair, whatever its similarity (so that its
        verdict serves other thresholds too), and decide it at ``dataset``'s threshold (``overlap``). Without
        verification no pair is judged. Low-information pairs are not judged and never Overlap. ``cache_dir``
        and ``pool``: as for ``decide``; ``desc`` labels the progress bar."""
        from ..limits import DEFAULT_MAX_PIXELS

        low = (np.zeros(len(pairs), bool) if low_information is None else np.asarray(low_information, bool))
        todo, judged = [], {}
        verify = self.verify_for(dataset)
        if verify is not None:
            for i, (a, b, _) in enumerate(pairs):
                if low[i]:
                    continue
                if _usable(a) and _usable(b):
                    todo.append((i, _Pair(a.data, a.path, b.data, b.path, max_pixels or DEFAULT_MAX_PIXELS,
                                          verify.threshold, verify.accept_for(float(pairs[i][2])),
                                          verify.near(float(pairs[i][2])))))
                else:
                    judged[i] = (float("nan"), None, False, False)
            found, _ = _judge_all([p for _, p in todo], workers, progress, cache_dir, desc, pool)
            judged.update(zip([i for i, _ in todo], found))
        sims = [float(s) for _, _, s in pairs]
        verdicts = [judged[i][1] if i in judged else None for i in range(len(pairs))]
        overlap = self.overlap(dataset, sims, verdicts, low)
        return [PairJudgement(sims[i], judged[i][0] if i in judged else float("nan"), verdicts[i],
                              judged[i][2] if i in judged else None, bool(overlap[i]),
                              bool(judged[i][3]) if i in judged else False)
                for i in range(len(pairs))]

    def judge_examples(self, dataset: str,
                       examples: Sequence[tuple[RawItem | None, Sequence[tuple[RawItem | None, float]]]], *,
                       low_information=None, max_pixels: int | None = None, workers: int | None = None,
                       progress: bool = False, cache_dir: str | os.PathLike | None = None
                       ) -> list[tuple[int, PairJudgement]]:
        """Decide each (evaluation item, its nearest (corpus item, similarity) pairs, most similar first) as
        ``decide`` does: every nearest pair is judged (``judge_pairs``, whatever its similarity, so that its
        verdict serves other thresholds too), then the pairs ``choose`` asks for, round by round. Returns per
        example the column of its match and the match's judgement, whose ``overlap`` is the example's
        decision."""
        n = len(examples)
        k = max((len(near) for _, near in examples), default=0)
        sims = np.full((n, k), np.nan, np.float32)
        for i, (_, near) in enumerate(examples):
            sims[i, :len(near)] = [s for _, s in near]
        low = np.zeros(n, bool) if low_information is None else np.asarray(low_information, bool)
        judged: dict[tuple[int, int], PairJudgement] = {}
        todo = [(i, 0) for i in range(n) if examples[i][1] and not low[i]] if self.verify is not None else []
        while todo:
            found = self.judge_pairs(dataset, [(examples[i][0], *examples[i][1][j]) for i, j in todo],
                                     max_pixels=max_pixels, workers=workers, progress=progress,
                                     cache_dir=cache_dir)
            judged.update(zip(todo, found))
            todo = self.choose(dataset, sims, self._verdicts(dataset, judged), low, _photo_rows(judged)).todo
        choice = self.choose(dataset, sims, self._verdicts(dataset, judged), low, _photo_rows(judged))
        out = []
        for i in range(n):
            j = int(choice.match[i])
            found = judged.get((i, j)) or PairJudgement(float(sims[i, j]) if k else float("nan"), float("nan"),
                                                        None, None, False, False)
            out.append((j, replace(found, overlap=bool(choice.overlap[i]))))
        return out

    def _verdicts(self, dataset: str, judged: Mapping[tuple[int, int], PairJudgement]
                  ) -> dict[tuple[int, int], bool | None]:
        """The verdicts ``choose`` takes from judged (row, column) pairs (``beyond_nearest`` past the nearest)."""
        verify = self.verify_for(dataset)
        return {p: j.verdict if p[1] == 0 else
                beyond_nearest(j.verify_score, j.verdict, verify.accept_for(j.similarity)) for p, j in judged.items()}


def beyond_nearest(score: float, verdict: bool | None, accept: float) -> bool | None:
    """The verdict on a corpus item other than an example's nearest: the same picture only where the pair's
    score reaches the photograph acceptance ``accept`` as well. Each further item compared is another chance of
    a false acceptance; a drawing comparison's acceptance of two featureless photo tiles (photo score 0.0 and
    0.28) made two tiles of the synthetic demo Overlap through their second and third items, while the
    photograph copies found past the nearest scored 0.92-0.99 (bench_photo_report)."""
    if verdict is True:
        return True if score >= accept else None
    return verdict


def _photo_rows(judged: Mapping[tuple[int, int], PairJudgement]) -> dict[int, bool]:
    """Per row whose nearest pair is judged: whether it was compared as photographs (``choose``'s ``photo``)."""
    return {i: j.photo for (i, c), j in judged.items() if c == 0}


@dataclass(frozen=True)
class Choice:
    """``DecisionRule.choose``'s result: per example Overlap and its match (the column of the corpus item the
    decision names), and the (row, column) pairs still to compare before every example is decided."""

    overlap: np.ndarray  # bool [N]
    match: np.ndarray  # int [N]
    todo: list[tuple[int, int]]


@dataclass(frozen=True)
class PairJudgement:
    """One pair as ``DecisionRule.judge_pairs`` judged it."""

    similarity: float
    verify_score: float  # NaN: not judged, or unreadable
    verdict: bool | None  # True: the same picture; False: evidence against; None: nothing to say / not judged
    readable: bool | None  # None: not judged (no verification, or low-information)
    overlap: bool  # the decision at the rule's threshold
    photo: bool = False  # compared as photographs (``photo.verify_photo``'s own comparison applied)


def rule_from_record(verify: dict | None, thresholds: Mapping[str, float], *, where: str) -> DecisionRule:
    """The rule a report or review sheet recorded (its "verify" record; None: no verification) at
    ``thresholds``; one recorded by another version of the rule is refused (``where`` names the file)."""
    if verify is None:
        return DecisionRule(dict(thresholds), None)
    check_decision_version(verify.get("decision_version"), where=where)

    def settings(d: dict) -> VerifySettings:
        return VerifySettings(threshold=float(d["threshold"]), first_stage=d.get("first_stage"),
                              relax=d.get("relax"), anchor=d.get("anchor"), accept=d.get("accept"),
                              neighbours=int(d["neighbours"]))

    per_set = {n: settings(d["settings"]) for n, d in (verify.get("datasets") or {}).items() if d.get("settings")}
    return DecisionRule(dict(thresholds), settings(verify), per_set)


def _own_settings(verify: VerifySettings) -> dict:
    """A dataset's own verification settings as the report records them (``rule_from_record`` reads them)."""
    return {k: v for k, v in verify.to_dict().items() if k != "decision_version"}


def check_decision_version(version, *, where: str) -> None:
    """Refuse what another version of the rule decided (``where`` names it)."""
    if version != DECISION_VERSION:
        raise ReportError(f"{where} was decided by another version of the Overlap decision rule "
                          f"({version or 'unversioned'}; this is {DECISION_VERSION}): make it again with this version")


def _usable(item) -> bool:
    return item is not None and not item.skip_reason and (item.data is not None or item.path is not None)


# Pairs verified per task sent to a worker process (pairs that share a corpus image stay in one task, which
# prepares it once), and the fewest pairs worth starting workers for.
VERIFY_CHUNK = 8
VERIFY_PARALLEL_FROM = 24
# The long side images are decoded at (at least; by an integer factor, ``imaging.decode_image``): the
# comparisons work on views of at most ``photo.KEEP`` (the whole image) and ``verify.KEEP`` pixels (its content
# box), so twice ``verify.KEEP`` keeps a content box of half the image's side at full detail.
DECODE_SIDE = 2 * PAIR_KEEP


@dataclass(frozen=True)
class _Pair:
    """One candidate pair as a worker judges it: both images' bytes (decoded there) and the caps."""

    eval_data: bytes | None  # None: read from eval_path
    eval_path: str | None
    corpus_data: bytes | None
    corpus_path: str | None
    max_pixels: int
    pair_threshold: float
    accept: float  # the photo score that verifies this pair (``VerifySettings.accept_for`` its similarity)
    near: bool = True  # ``VerifySettings.near`` its similarity
    # each image's content box as recorded when it was embedded (``content.ContentBox``; None: not recorded),
    # so that preparing it does not search for the box again (``verify.prepare``)
    eval_box: ContentBox | None = None
    corpus_box: ContentBox | None = None


_IDENTICAL = "identical"  # the comparison of byte-identical images: the same picture, whatever their shape


def _prepared(data: bytes, max_pixels: int, box=None):
    """The view ``photo.verify_photo`` compares, decoded at ``DECODE_SIDE`` (``box``: its recorded content box,
    ``verify.prepare``); None when it cannot be decoded."""
    from ..imaging import ImageRejected, decode_image

    try:
        return prepare_photo(decode_image(data, max_pixels=max_pixels, long_side=DECODE_SIDE), box)
    except ImageRejected:
        return None


def _compare(pair: _Pair, views: dict | None = None, names: tuple[str, str] | None = None):
    """The comparison of one pair whose bytes are given: ``photo.verify_photo``'s result, ``_IDENTICAL``, or
    None when an image cannot be decoded. ``views`` keeps prepared views by ``names`` (the images'
    fingerprints) for the pairs that follow."""
    if pair.eval_data == pair.corpus_data:
        return _IDENTICAL
    views = {} if views is None else views
    names = names or ("eval", "corpus")
    for name, data, box in zip(names, (pair.eval_data, pair.corpus_data), (pair.eval_box, pair.corpus_box)):
        if name not in views:
            views[name] = _prepared(data, pair.max_pixels, box)
    a, b = views[names[0]], views[names[1]]
    return None if a is None or b is None else verify_photo(a, b)


def _outcome(pair: _Pair, comparison) -> tuple[float, bool | None, bool, bool]:
    """(score, verdict, readable, photo) of a pair from its comparison (``_compare``) under the pair's settings:
    the photo score, or the drawing comparison's where the photo comparison does not apply (``photo`` False);
    the verdict at the pair's drawing threshold and photo acceptance (``PhotoVerification.verdict_at``)."""
    if comparison is None:
        return float("nan"), None, False, False
    if comparison == _IDENTICAL:
        return 1.0, True, True, True
    v = comparison
    return ((v.score if v.applies else v.pair_score), v.verdict_at(pair.pair_threshold, pair.accept, pair.near),
            True, bool(v.applies))


def _with_bytes(pair: _Pair) -> _Pair | None:
    """``pair`` with both images' bytes read (files once, here); None when one cannot be read."""
    from ..limits import DEFAULT_LIMITS, ReadRefused, read_file

    try:
        data = [d if d is not None else read_file(p, DEFAULT_LIMITS.max_file_bytes)
                for d, p in ((pair.eval_data, pair.eval_path), (pair.corpus_data, pair.corpus_path))]
    except (OSError, ReadRefused):
        return None
    return replace(pair, eval_data=data[0], corpus_data=data[1])


def _judge(pair: _Pair) -> tuple[float, bool | None, bool, bool]:
    """(score, verdict, readable) of one pair: ``photo.verify_photo``'s verdict (True: the same picture;
    False: evidence that it is not; None: nothing to say), its score (the photo score, or the drawing
    comparison's where the photo comparison does not apply). Byte-identical images are the same picture
    whatever their shape (a 3000 x 10 strip has too little grid for the comparison)."""
    read = _with_bytes(pair)
    return _outcome(pair, None if read is None else _compare(read))


def _compare_task(task: list[tuple[_Pair, str, str]]) -> list:
    """``_compare`` of each (pair, eval fingerprint, corpus fingerprint) of one worker task, each image
    prepared once."""
    views: dict = {}
    return [_compare(pair, views, (e, c)) for pair, e, c in task]


def _one_blas_thread() -> None:
    """A verification worker's BLAS runs on one thread: a pair's matrices are small (96 px), and threads that
    wait for each other made a pair ten times slower on a busy machine."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def _worker_started(one_blas_thread: bool) -> None:
    """A verification worker's start: an interrupt is the parent's to handle (a terminal's Ctrl-C reaches every
    process of its group, and a worker's KeyboardInterrupt would print its traceback and break the pool); with
    ``one_blas_thread``, ``_one_blas_thread`` (a forked worker inherits the limit instead)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if one_blas_thread:
        _one_blas_thread()


def _comparison_imports() -> None:
    """Import here what a comparison imports on its first use. Workers may be forked while another thread is
    importing one of these modules (a report's pool starts at its first pair, ``VerifyPool``): a forked worker
    would wait forever for that import's lock."""
    import pyarrow  # noqa: F401 - a content box reads an image's pixels through its Arrow export
    import scipy.fft  # noqa: F401
    import scipy.ndimage  # noqa: F401
    from PIL import Image

    Image.init()  # the image plugins, which decoding imports on first use


def _start_workers(workers: int):
    """A ``ProcessPoolExecutor`` of ``workers`` processes for ``_compare_task``, each running BLAS on one thread
    (``_one_blas_thread``) and leaving interrupts to this process (``_worker_started``)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from threadpoolctl import threadpool_limits

    from ..embed import default_start_method

    # as the decoding workers start (fork on Linux): in milliseconds, with the comparison's modules already
    # imported, and without importing the caller's __main__ again. Forked workers inherit the limit set here
    # (threadpoolctl's first call in a process takes a tenth of a second, paid again by each worker of each
    # pool); others set it themselves. Forked ones are all started here, so that this process's own limit is
    # back within the milliseconds the forks take (a report's calibration may be working in another thread)
    method = default_start_method()
    if method == "fork":
        _comparison_imports()
    with threadpool_limits(limits=1):
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                                       initializer=_worker_started, initargs=(method != "fork",))
        try:
            if method == "fork":
                executor.submit(int).result()  # a forking pool starts every worker at its first task
        except BaseException:
            executor.shutdown(wait=True, cancel_futures=True)
            raise
    _log.debug("verification: %d worker processes started (%s)", workers, method)
    return executor


class VerifyPool:
    """Worker processes that judge the pairs of several judging runs (``verification_pool``), which may be
    given pairs from more than one thread at once: each run keeps only a few tasks queued, so that another's
    tasks are not left waiting behind all of its own. The processes start at the first task: a run whose
    comparisons all come from the cache (``verdicts``) starts none."""

    def __init__(self, workers: int) -> None:
        import threading

        self.workers = workers
        self.cancelled = False
        self._executor = None
        self._lock = threading.Lock()  # one start, and none once cancelled or closed

    @property
    def started(self) -> bool:
        """Whether the worker processes were started."""
        return self._executor is not None

    def cancel(self) -> None:
        """Take no more tasks: a run waiting for its tasks stops (CancelledError), dropping those not started
        (``_over``)."""
        self.cancelled = True

    def close(self, stop: bool = False) -> None:
        """Take no more tasks (a run waiting for its tasks stops, as after ``cancel``), drop those queued, and
        wait for the worker processes (if started) to end; with ``stop`` (an interrupt, an error) end them
        first instead of waiting for the tasks they are running (a task holds every pair of one corpus image,
        which may be many)."""
        with self._lock:
            self.cancelled = True
            executor = self._executor
        if executor is None:
            return
        if stop:
            # the executor has no call for this; its processes are its own (a dict since Python 3.2)
            for process in list((getattr(executor, "_processes", None) or {}).values()):
                if process.is_alive():
                    process.terminate()
        executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, task: list):
        """``_compare_task(task)`` in a worker (started at the first task): its future."""
        from concurrent.futures import CancelledError

        with self._lock:
            if self.cancelled:
                raise CancelledError("the verification pool was cancelled")
            if self._executor is None:
                self._executor = _start_workers(self.workers)
            executor = self._executor
        try:
            return executor.submit(_compare_task, task)
        except RuntimeError:  # closed between the check and the call
            if self.cancelled:
                raise CancelledError("the verification pool was cancelled") from None
            raise


@contextlib.contextmanager
def verification_pool(workers: int | None) -> Iterator[VerifyPool | None]:
    """One pool of ``workers`` processes (None: one per CPU, at most 8) for all the judging runs of a report
    (``DecisionRule.decide``'s and ``judge_pairs``'s ``pool``): calibration's pairs and the report's own can
    be judged at once, from two threads, without more processes than CPUs. None where ``workers`` is 0 or 1
    (the pairs are judged in the calling process). The processes start with the first pair to compare
    (``VerifyPool``). Leaving the block stops the runs still waiting on the pool, drops the queued tasks and
    waits for the processes to end; on an error (an interrupt) it ends them without waiting for their tasks."""
    workers = _worker_count(workers)
    if workers <= 1:
        yield None
        return
    pool = VerifyPool(workers)
    try:
        yield pool
    except BaseException:
        pool.close(stop=True)
        raise
    pool.close()


def _worker_count(workers: int | None) -> int:
    return min(8, os.cpu_count() or 1) if workers is None else workers


def _tasks(todo: list[tuple[int, _Pair, str, str]]) -> list[list[tuple[int, _Pair, str, str]]]:
    """``todo`` cut into worker tasks of about ``VERIFY_CHUNK`` pairs, the pairs of one corpus image together."""
    by_corpus: dict[str, list] = {}
    for t in todo:
        by_corpus.setdefault(t[3], []).append(t)
    tasks, task = [], []
    for group in by_corpus.values():
        if task and len(task) + len(group) > VERIFY_CHUNK:
            tasks.append(task)
            task = []
        task = task + group
    return tasks + ([task] if task else [])


def _judge_all(pairs: list[_Pair], workers: int | None, progress: bool,
               cache_dir: str | os.PathLike | None = None, desc: str = "verify",
               pool: VerifyPool | None = None) -> tuple[list[tuple[float, bool | None, bool]], list[bool]]:
    """``_judge`` of every pair, over ``workers`` processes (None: one per CPU, at most 8; 0: here) or over
    ``pool``'s, with a progress bar labelled ``desc``; with ``cache_dir``, comparisons stored there by an
    earlier run are used (``verdicts``), and new ones stored. Returns the outcomes and, per pair, whether its
    comparison came from the cache."""
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    from .verdicts import VerdictCache, comparison_key, fingerprint

    workers = _worker_count(workers)
    out: list = [(float("nan"), None, False, False)] * len(pairs)
    from_cache = [False] * len(pairs)
    todo: list[tuple[int, _Pair, str, str]] = []
    for i, pair in enumerate(pairs):  # each file read once, here: the bytes compared are the bytes keyed
        read = _with_bytes(pair)
        if read is None:
            continue
        if read.eval_data == read.corpus_data:
            out[i] = _outcome(read, _IDENTICAL)
            continue
        todo.append((i, read, fingerprint(read.eval_data), fingerprint(read.corpus_data)))
    cache = VerdictCache(cache_dir) if cache_dir is not None else None
    keys = {i: comparison_key(e, c, max_pixels=p.max_pixels, long_side=DECODE_SIDE,
                              decision_version=DECISION_VERSION) for i, p, e, c in todo} if cache is not None else {}
    stored = cache.get(list(keys.values())) if cache is not None else {}
    if cache is not None:
        cache.close()  # no open database in the workers forked below; ``put`` opens it again
    for i, pair, _, _ in todo:
        if keys.get(i) in stored:
            out[i], from_cache[i] = _outcome(pair, stored[keys[i]]), True
    todo = [t for t in todo if not from_cache[t[0]]]
    tasks = _tasks(todo)
    bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc=desc, unit="pair", disable=not progress,
               leave=False)
    new: dict[str, object] = {}

    def take(task, found) -> None:
        for (i, pair, _, _), comparison in zip(task, found):
            out[i] = _outcome(pair, comparison)
            if cache is not None and isinstance(comparison, PhotoVerification):
                new[keys[i]] = comparison
        bar.update(len(task))

    try:
        if pool is not None and tasks:
            _over(pool, tasks, take)
        elif workers <= 1 or len(todo) < VERIFY_PARALLEL_FROM:
            with threadpool_limits(limits=1):  # a pair's matrices are small: BLAS threads only wait
                for task in tasks:
                    take(task, _compare_task([(p, e, c) for _, p, e, c in task]))
        else:
            with verification_pool(workers) as own:
                _over(own, tasks, take)
        if cache is not None:
            cache.put(new)
    finally:
        bar.close()
        if cache is not None:
            cache.close()
    return out, from_cache


# Tasks a judging run keeps queued per worker of its pool: enough that no worker waits for the next (the main
# process hands out the next as one ends), few enough that another run's tasks are taken soon
QUEUED_PER_WORKER = 2


def _over(pool: VerifyPool, tasks: list, take) -> None:
    """``_compare_task`` of each task over ``pool``, ``take(task, comparisons)`` as each ends; at most
    ``QUEUED_PER_WORKER`` tasks per worker are queued at a time."""
    from concurrent.futures import FIRST_COMPLETED, CancelledError, wait

    waiting = iter(tasks)
    running: dict = {}

    def feed() -> None:
        for task in waiting:
            running[pool.submit([(p, e, c) for _, p, e, c in task])] = task
            if len(running) >= QUEUED_PER_WORKER * pool.workers:
                return

    try:
        feed()
        while running:
            # with a timeout: a future the pool's shutdown cancelled never counts as done for ``wait``
            done, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
            if pool.cancelled:
                raise CancelledError("the verification pool was cancelled")
            for future in done:
                take(running.pop(future), future.result())
            feed()
    finally:
        for future in running:  # an error: the tasks not started are not left to the pool
            future.cancel()


def _verify_splits(rule: DecisionRule, splits: dict[str, Split], index_dir, eval_sources: Mapping[str, object], *,
                   max_pixels: int | None = None, workers: int | None = None, progress: bool = False,
                   cache_dir: str | os.PathLike | None = None, pool: VerifyPool | None = None
                   ) -> tuple[dict[str, Split], dict, dict, dict, dict]:
    """Decide each split by ``rule.choose``, comparing in rounds the pairs it asks for (first every candidate's
    nearest pair, then the next neighbour of the examples still undecided). Returns the splits with
    ``verify_scores`` and ``verified`` (of each example's match), ``overlap`` and ``match``, and per dataset
    the number of pairs whose images could not be read, of those whose corpus image changed since it was
    indexed (``index.is_changed``: counted unreadable too, never compared), of those whose comparison came
    from ``cache_dir``, and of all pairs compared. An unreadable pair has nothing to say: a nearest item at or
    above the threshold stays Overlap (an image that cannot be read back never hides overlap)."""
    from ..index import content_boxes, corpus_items, is_changed
    from ..limits import DEFAULT_MAX_PIXELS
    from ..sources import as_source, fetch_items

    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    zero = {n: 0 for n in splits}
    unreadable, changed, cached, n_pairs = dict(zero), dict(zero), dict(zero), dict(zero)
    judged: dict[str, dict[tuple[int, int], tuple[float, bool | None, bool, bool]]] = {n: {} for n in splits}
    accept: dict[str, dict[tuple[int, int], float]] = {n: {} for n in splits}
    evals: dict[str, dict] = {n: {} for n in splits}
    fetched: dict[str, set] = {n: set() for n in splits}
    corpus: dict = {}
    boxes: dict = {}  # the corpus items' recorded content boxes

    def choices() -> dict[str, Choice]:
        return {n: rule.choose(n, sp.neighbors.similarities,
                               {p: r[1] if p[1] == 0 else beyond_nearest(r[0], r[1], accept[n][p])
                                for p, r in judged[n].items()}, sp.low_information,
                               {i: r[3] for (i, j), r in judged[n].items() if j == 0})
                for n, sp in splits.items()}

    chosen = choices()
    while any(c.todo for c in chosen.values()):
        keys = {str(splits[n].neighbors.ids[i, j]) for n, c in chosen.items() for i, j in c.todo} - corpus.keys()
        corpus.update(corpus_items(index_dir, keys) if keys else {})
        boxes.update(content_boxes(index_dir, keys) if keys else {})
        pairs: list[_Pair] = []
        where: list[tuple[str, int, int]] = []
        for name, c in chosen.items():
            sp, settings = splits[name], rule.verify_for(name)
            want = sorted({sp.ids[i] for i, _ in c.todo} - fetched[name])
            if want:  # each example read once, whichever round first compares it
                evals[name].update(fetch_items(as_source(eval_sources[name], name=name, labels_from_folders=True),
                                               want))
                fetched[name].update(want)
            for i, j in c.todo:
                key = str(sp.neighbors.ids[i, j])
                a, b = evals[name].get(sp.ids[i]), corpus.get(key)
                if not (_usable(a) and _usable(b)):
                    judged[name][(i, j)] = (float("nan"), None, False, False)
                    unreadable[name] += 1
                    changed[name] += key in corpus and is_changed(corpus[key])
                    continue
                accept[name][(i, j)] = settings.accept_for(float(sp.neighbors.similarities[i, j]))
                sim = float(sp.neighbors.similarities[i, j])
                pairs.append(_Pair(a.data, a.path, b.data, b.path, max_pixels, settings.threshold,
                                   accept[name][(i, j)], settings.near(sim), sp.boxes[i] if sp.boxes else None,
                                   boxes.get(key)))
                where.append((name, i, j))
        found, from_cache = _judge_all(pairs, workers, progress, cache_dir, pool=pool)
        for (name, i, j), outcome, hit in zip(where, found, from_cache):
            judged[name][(i, j)] = outcome
            n_pairs[name] += 1
            cached[name] += hit
            unreadable[name] += not outcome[2]
        chosen = choices()

    out = {}
    for name, sp in splits.items():
        c = chosen[name]
        scores = np.full(len(sp.ids), np.nan, np.float32)
        verified = np.zeros(len(sp.ids), bool)
        for (i, j), (score, verdict, readable, _) in judged[name].items():
            if j == c.match[i] and readable:
                scores[i], verified[i] = score, verdict is True
        out[name] = replace(sp, verify_scores=scores, verified=verified, overlap=c.overlap, match=c.match)
    return out, unreadable, changed, cached, n_pairs
