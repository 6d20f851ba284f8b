"""Operating points per evaluation set: the thresholds file ``report --thresholds`` reads.

Two forms. ``{"NAME": t, ...}`` gives each named set its similarity threshold; the rest of the decision is the
report's. The form ``overlap-audit threshold`` writes gives each set the whole operating point of the decision
rule it was chosen under::

    {"decision_version": 5, "detector": "phash",
     "datasets": {"NAME": {"threshold": t, "first_stage": f, "accept": a, "verify_threshold": s}, ...}}

``first_stage`` (the similarity from which pairs are verified), ``accept`` (the photo score that verifies a
photograph pair at or above the detector's threshold) and ``verify_threshold`` (the drawing comparison's
score) are ``VerifySettings.first_stage``, ``.accept`` and ``.threshold``; a set without them (chosen without
verification) takes the report's. A file chosen under another version of the rule is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ThresholdError
from ..settings import check_similarity

# the file's names of the VerifySettings fields a set may set
KNOBS = {"first_stage": "first_stage", "accept": "accept", "verify_threshold": "threshold"}


@dataclass(frozen=True)
class OperatingPoints:
    """A thresholds file read: each named set's threshold and, where the file gives them, the
    ``VerifySettings`` fields it sets (``DecisionRule.for_detector``'s ``per_set``)."""

    thresholds: dict[str, float]
    verify: dict[str, dict[str, float]] = field(default_factory=dict)
    decision_version: int | None = None  # None: the thresholds-only form
    detector: str | None = None  # the detector the points were chosen for, where the file says


def load_points(path: str | os.PathLike) -> OperatingPoints:
    """Read a thresholds file in either form."""
    from .rule import DECISION_VERSION

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ThresholdError(f"cannot read thresholds file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ThresholdError(f"thresholds file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ThresholdError(f'thresholds file {path} must hold one object {{"NAME": threshold, ...}}')
    if not ("decision_version" in data and isinstance(data.get("datasets"), dict)):
        out = {}
        for name, value in data.items():
            check_similarity(f"thresholds file {path}: the threshold of {name!r}", value, ThresholdError)
            out[str(name)] = float(value)
        return OperatingPoints(out)
    version = data["decision_version"]
    if version != DECISION_VERSION:
        raise ThresholdError(f"thresholds file {path} was chosen under version {version} of the Overlap decision "
                             f"rule (this is {DECISION_VERSION}): run `overlap-audit pairs` and `overlap-audit "
                             "threshold` again")
    thresholds, verify = {}, {}
    for name, point in data["datasets"].items():
        if not isinstance(point, dict) or "threshold" not in point:
            raise ThresholdError(f'thresholds file {path}: the point of {name!r} must be an object with a '
                                 '"threshold"')
        unknown = sorted(set(point) - {"threshold", *KNOBS})
        if unknown:
            raise ThresholdError(f"thresholds file {path}: the point of {name!r} has unknown field(s) "
                                 f"{', '.join(unknown)}")
        check_similarity(f"thresholds file {path}: the threshold of {name!r}", point["threshold"], ThresholdError)
        thresholds[str(name)] = float(point["threshold"])
        knobs = {}
        for key, attr in KNOBS.items():
            if point.get(key) is not None:
                check_similarity(f"thresholds file {path}: the {key} of {name!r}", point[key], ThresholdError)
                knobs[attr] = float(point[key])
        if knobs:
            verify[str(name)] = knobs
    detector = data.get("detector")
    return OperatingPoints(thresholds, verify, version, detector if isinstance(detector, str) else None)


def points_record(points: Mapping[str, Mapping[str, float | None]], detector: str | None) -> dict:
    """The thresholds file's content for ``points`` (per set: "threshold" and the ``KNOBS`` it sets)."""
    from .rule import DECISION_VERSION

    return {"decision_version": DECISION_VERSION, "detector": detector,
            "datasets": {n: {k: v for k, v in p.items() if v is not None} for n, p in points.items()}}
