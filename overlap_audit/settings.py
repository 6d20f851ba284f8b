"""The settings of each job as frozen dataclasses, and the choice lists their fields take: defined once here,
read by the stages and by the command line (this module stays light so that ``overlap-audit --help`` does
not import numpy, torch or FAISS)."""

from __future__ import annotations

import math
import numbers

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from .errors import OverlapAuditError, SettingsError, param, render
from .limits import DEFAULT_MAX_PIXELS, InputLimits

DEVICES = ("auto", "cpu", "cuda")
CONTENT_MODES = ("trim", "whole")  # an image's content box (``content.trim``) or the image as it is
INDEX_TYPES = ("auto", "flat", "ivfpq", "hnsw", "mih")  # see ``index.ann``
CORRECTIONS = ("bonferroni", "holm")  # family-wise corrections (``stats.overlap.family_correction``)
INPUT_MODES = ("rgb", "luma", "value", "maxmin", "value-or-min", "maxchroma")  # clipdup inputs (detectors.clipdup)
# the copy strengths (``augment.STRENGTHS`` holds each one's parameters) and the detector architectures
# (``detectors.clipdup_net.ARCHS`` holds each one's layout) by name; tests/test_settings.py keeps them equal
COPY_STRENGTHS = ("mild", "medium", "strong")
TRAIN_STRENGTHS = (*COPY_STRENGTHS, "mixed")  # mixed: each copy's strength drawn from the three
DETECTOR_ARCHS = ("small", "resnet50")
SCHEDULES = ("constant", "cosine")
SAME_PICTURE_RULES = ("mean16", "z32")
CAPTION_RULES = ("caption", "path", "auto")  # where the small CLIP's captions come from
DEFAULT_GALLERY = 300  # matched pairs report.html shows per dataset


def check_choice(name: str, value, choices: tuple, error: type[Exception] = SettingsError) -> None:
    """Raise ``error`` when ``value`` of the parameter ``name`` is not one of ``choices``."""
    if value not in choices:
        message = f"{param(name)} must be one of {', '.join(choices)} (got {value!r})"
        # only our own errors carry the parameter marks for the CLI to render; any other shows the Python name
        raise error(message if issubclass(error, OverlapAuditError) else render(message))


def check_similarity(what: str, value, error: type[Exception] = SettingsError) -> None:
    """Raise ``error`` when ``value`` (a similarity: a threshold, a first stage) is not a finite number in
    [0, 1]; ``what`` names it in the message (a ``param`` mark, or words). A value that looks like a percentage
    is named as one (85.9 -> 0.859?)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise error(f"{what} must be a number in [0, 1] (got {value!r})")
    if not 0.0 <= value <= 1.0:
        hint = f"; a percentage? {value / 100:g}" if 1.0 < value <= 100.0 else ""
        raise error(f"{what} must be a similarity in [0, 1] (got {value:g}{hint})")


@dataclass(frozen=True)
class IndexSettings:
    """How ``index.build_index`` embeds and indexes a corpus.

    ``index_type`` is one of ``INDEX_TYPES`` (see ``overlap_audit.index.ann``); ``memory_budget`` a
    size such as "8GB" (None: the default budget). With ``resume`` the finished shards of an interrupted
    run with the same settings are kept. With ``ray_address`` (``local``, ``auto`` or a cluster address)
    the shards are embedded on a Ray cluster: same shards, same resumption, same result. ``content`` is the
    detector's content normalisation (``CONTENT_MODES``; None: the detector's own default). ``limits`` caps
    what one item may cost (bytes read, decoding seconds); an item over a cap is recorded as skipped.
    """

    detector: str = "phash"
    content: str | None = None
    batch_size: int = 256
    workers: int | None = None
    device: str = "auto"
    resume: bool = False
    shard_size: int = 10_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    index_type: str = "auto"
    memory_budget: int | str | None = None
    ray_address: str | None = None
    limits: InputLimits = field(default_factory=InputLimits)
    # corpus views (``index.views``): one more vector per item for the centre crop of each of these fractions
    # of its area; None: the detector's default (``index.views.DEFAULT_VIEWS``), () none
    views: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Turn:
    """A query view: the query turned by ``angle`` degrees (counter-clockwise) about its centre, cut to the
    largest centred rectangle of its own shape that the turned image fills (``detectors.base.turned_crop``)."""

    angle: float

    @property
    def tag(self) -> str:
        """Its name in reports: ``turn+3`` for 3 degrees counter-clockwise."""
        return f"turn{self.angle:+g}"


@dataclass(frozen=True)
class MatchSettings:
    """How evaluation sets are embedded and searched against the corpus (``match.match_eval_sets``).

    ``detector`` None means the index's own. ``exact`` streams the stored corpus shards past the evaluation
    embeddings instead of searching the index (exact whatever the index type); ``ray_address`` runs that
    stream on a Ray cluster and so needs ``exact``. ``limits`` caps what one evaluation item may cost
    (bytes read, decoding seconds); an item over a cap is skipped.
    """

    detector: str | None = None
    device: str = "auto"
    k: int = 5
    batch_size: int = 256
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = False
    exact: bool = False
    ray_address: str | None = None
    views: bool = True  # a trimming detector also searches the whole image of each trimmed query
    # against an index with corpus views, each query's centre crop at these fractions of its area is searched too,
    # and the query turned by each of these angles both ways (degrees; its centre, clear of the turned corners):
    # an App. C copy is often a crop of its source, and turned by a few degrees (BENCHMARKS.md, "Corpus views")
    query_views: tuple[float, ...] = (0.9, 0.8)
    query_turns: tuple[float, ...] = (3.0, 5.0)
    # a match through one of those views counts as less similar by this share of (1 - the detector's threshold)
    # (phash: about one bit of 64): the best of many views of an unrelated image lies higher than one view's (two
    # tiles of one brick wall in the synthetic demo, one bit apart, through a turned view)
    view_discount: float = 0.12
    limits: InputLimits = field(default_factory=InputLimits)

    def query_crops(self) -> tuple:
        """The views of each query searched beside an index with corpus views, as ``detectors.base.prepare_views``
        takes them: each centre crop's area, then each turn both ways (``Turn``)."""
        return tuple(self.query_views) + tuple(Turn(s * float(a)) for a in self.query_turns for s in (-1, 1))

    def __post_init__(self) -> None:
        if not 0 <= float(self.view_discount) <= 1:
            raise SettingsError(f"{param('view_discount', self.view_discount)} must lie in [0, 1] (a share of the "
                                f"gap between a perfect match and the detector's threshold)")
        if any(not 0 < float(a) <= 15 for a in self.query_turns):
            raise SettingsError(f"{param('query_turns', self.query_turns)}: each turn must lie in (0, 15] degrees")
        if self.ray_address and not self.exact:
            raise SettingsError(f"{param('ray_address', self.ray_address)} runs the exact stream over the corpus "
                                f"shards on a Ray cluster: give {param('exact', True)} with it")


@dataclass(frozen=True)
class StatsSettings:
    """Where each dataset is split into Overlap / Clean, and how the statistics are tested.

    ``thresholds`` (a ``{"NAME": t}`` dict, or a thresholds file in either form of ``decide.points``: a file
    of operating points also sets those datasets' verification) overrides ``threshold`` per dataset; both
    default to the detector's threshold. ``correction`` (one of ``CORRECTIONS``) decides ``significant``; all are reported.
    ``precision`` and ``recall`` of the Overlap split (numbers or "k/n" counts) for every dataset, or
    ``detector_error`` (a dict or JSON file ``{"NAME": {"precision": ..., "recall": ...}}``) per dataset,
    add the detector-error correction.
    """

    threshold: float | None = None
    thresholds: str | os.PathLike | Mapping[str, float] | None = None
    alpha: float = 0.05
    ci_level: float = 0.995
    correction: str = "bonferroni"
    precision: object | str | None = None  # a stats.overlap.RateEstimate, a number or "k/n"
    recall: object | str | None = None
    detector_error: str | os.PathLike | Mapping | None = None

    def __post_init__(self) -> None:
        check_choice("correction", self.correction, CORRECTIONS)
        if self.threshold is not None:
            check_similarity(param("threshold"), self.threshold)


@dataclass(frozen=True)
class CalibrationSettings:
    """How ``report`` calibrates each evaluation set's threshold (``calibrate.calibrate_sets``): the lowest
    threshold whose estimated precision reaches ``target_precision``, from ``positives`` of the set's images
    (a seeded sample; each with one App. C copy of ``strength`` compared with it: the recall estimate) and
    ``negatives`` of them transposed (turned by 90 degrees and mirrored) and searched in the corpus (no copy of
    them can be there: the false-match rate). ``ci_level`` is the level of the intervals reported with the estimates."""

    target_precision: float = 0.99
    positives: int = 50
    negatives: int = 200
    strength: str = "medium"
    seed: int = 0
    ci_level: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < self.target_precision <= 1.0:
            raise SettingsError(f"{param('calibrate.target_precision', self.target_precision)} must be in (0, 1]")
        if self.positives < 1 or self.negatives < 1:
            raise SettingsError(f"{param('calibrate.positives')} and {param('calibrate.negatives')} must be at "
                                "least 1")
        check_choice("calibrate.strength", self.strength, ("medium", "strong"))
        if not 0.0 < self.ci_level < 1.0:
            raise SettingsError(f"{param('calibrate.ci_level', self.ci_level)} must be in (0, 1)")


@dataclass(frozen=True)
class ZeroShotSettings:
    """A CLIP model scored zero-shot on each evaluation set, in the same decoding pass as the detector.

    ``model`` is a spec for ``zeroshot.loaders.load_model``. The set's labels are its classes:
    ``classnames`` (a file, or one per dataset) maps labels to readable names; ``templates`` (a file, or
    one per dataset) are the prompts. A dataset given neither uses those its layout ships (``Source.classnames``,
    ``Source.templates``), else its labels and the CLIP paper's 80 ImageNet templates.
    """

    model: str
    classnames: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None
    templates: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None
    batch_size: int = 128


@dataclass(frozen=True)
class DetectorTrainConfig:
    """How ``training.clipdup.train`` trains the clipdup detector."""

    arch: str = "small"
    dim: int = 256
    input_size: int = 96
    batch_size: int = 64
    steps: int = 1000
    lr: float = 1e-3
    strength: str = "medium"  # or "mixed": each copy's strength drawn from mild / medium / strong
    seed: int = 0
    max_images: int = 20_000
    input_mode: str = "rgb"  # "luma" or "value": one channel, standardised per image (brightness/contrast invariant)
    schedule: str = "constant"  # or "cosine": linear warm-up over 2% of the steps, then cosine decay to 0
    # hard negatives: > 1 fills each batch with groups of this many look-alike images (each image with its
    # nearest neighbours under the current network, re-mined every mine_every steps) instead of random ones
    hard_negatives: int = 0
    mine_every: int = 100
    init: str | None = None  # start from these clipdup weights (fine-tuning) instead of random ones
    # > 0 adds batch_global_nce with this weight to InfoNCE: no pair of two different images anywhere in the
    # batch may be more similar than a true pair (the detector is used at one threshold for every query)
    global_weight: float = 0.0
    # how mining tells "the same picture again" (never a hard negative) from a look-alike: "mean16", the mean
    # absolute difference of the 16x16 inputs below SAME_PICTURE; "z32", of the standardised 32x32 inputs
    # below SAME_PICTURE_Z (contrast-free: two faint outlines on white differ by little in raw pixels, but
    # as much as two bold ones once standardised)
    same_picture: str = "mean16"
    # train on the views the audit embeds: the anchor and its copy each cropped to its content box
    # (``overlap_audit.content.trim``), the copy after it was augmented on its own canvas
    trim: bool = False
    # the chance that a copy is an edited one first (``augment_training``: one or two EDIT_FAMILIES, outline,
    # colour, shading, drop shadow, zoomed out on a canvas) before the App. C pipeline
    edit_p: float = 0.0

    def lr_at(self, step: int) -> float:
        if self.schedule == "constant":
            return self.lr
        import numpy as np  # only training calls this; the module stays light for the command line

        warmup = max(1, self.steps // 50)
        # a Python float: the optimiser state is saved in a weights-only checkpoint, which refuses numpy scalars
        return float(self.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(step, self.steps) / self.steps)))


@dataclass(frozen=True)
class PretrainConfig:
    """How ``training.smallclip.pretrain`` trains the small CLIP (the architecture is
    ``zeroshot.smallclip_net.SmallClipNetConfig``)."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    seed: int = 0
    caption_from: str = "auto"  # one of CAPTION_RULES
    max_items: int | None = None
    part_dropout: float = 0.3   # chance to keep only a random subset of a caption's comma-separated parts
    wrap: float = 0.3           # chance to put a caption into one of CAPTION_WRAPPERS
    min_crop: float = 0.6       # smallest random crop side, as a fraction of the image


def check_datasets_named(named, evaluated, what: str, error: type[Exception] = SettingsError) -> None:
    """Raise ``error`` when ``what`` (per-dataset settings or results) names a dataset not in ``evaluated``."""
    evaluated = list(evaluated)
    unknown = sorted(set(named) - set(evaluated))
    if unknown:
        more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
        raise error(f"{what} names datasets that are not evaluated: {', '.join(unknown[:10])}{more} "
                    f"(evaluated: {', '.join(evaluated)})")
