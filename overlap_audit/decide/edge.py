"""Overlap pairs at the edge of what the decision was measured on: an evaluation image smaller than the
detector's ``measured_min_side`` (its precision and recall were measured on copies down to that side,
BENCHMARKS.md), or nearly uniform (little to match on: such images are low-information a few grey levels
lower, and two nearly blank images look alike whatever they show).

Only Overlap examples are measured, on the evaluation image as read back from its source: its shorter side
as decoded, and the standard deviation of its grey levels (0–255) on a thumbnail of at most
``THUMBNAIL_SIDE`` pixels. An image that cannot be read back is counted apart and not flagged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..values import Split

# A grey-level spread under this is "nearly uniform": four times the 2.0 under which the detectors call an
# image low-information (phash's min_std, clipdup's and clip-image's cut), so such an image is at most a faint
# pattern on a flat field.
UNIFORM_STD = 8.0
THUMBNAIL_SIDE = 64


@dataclass(frozen=True, eq=False)
class EdgeFlags:
    """Per example of one split (False for Clean examples): ``small`` under the measured side, ``uniform``
    nearly uniform, ``unread`` an Overlap image that could not be read back; ``short_side`` and ``grey_std``
    measured (NaN where not)."""

    small: np.ndarray
    uniform: np.ndarray
    unread: np.ndarray
    short_side: np.ndarray
    grey_std: np.ndarray

    @property
    def flagged(self) -> np.ndarray:
        return self.small | self.uniform


def image_condition(image) -> tuple[int, float]:
    """(shorter side in pixels, grey-level standard deviation on a thumbnail) of one RGB PIL image."""
    side = min(image.size)
    thumb = image.convert("L")
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return side, float(np.asarray(thumb, dtype=np.float64).std())


def edge_flags(sp: Split, measured: Mapping[str, tuple[int, float]], measured_min_side: int | None,
               uniform_std: float = UNIFORM_STD) -> EdgeFlags:
    """Flag the Overlap examples of ``sp`` from their images' conditions (``measured``: id -> ``image_condition``;
    an Overlap id missing from it is unread)."""
    n = len(sp.ids)
    side, std = np.full(n, np.nan), np.full(n, np.nan)
    unread = np.zeros(n, bool)
    for i in np.flatnonzero(np.asarray(sp.overlap, bool)):
        if sp.ids[i] not in measured:
            unread[i] = True
            continue
        side[i], std[i] = measured[sp.ids[i]]
    with np.errstate(invalid="ignore"):
        small = (side < measured_min_side) if measured_min_side is not None else np.zeros(n, bool)
        uniform = std < uniform_std
    return EdgeFlags(small=small, uniform=uniform, unread=unread, short_side=side, grey_std=std)


def measure_overlap(splits: Mapping[str, Split], eval_sources: Mapping[str, object], *,
                    max_pixels: int | None = None) -> dict[str, dict[str, tuple[int, float]]]:
    """``image_condition`` of each split's Overlap evaluation images, read back from their sources (id ->
    (side, grey std)); an item that cannot be read or decoded is left out."""
    from ..imaging import ImageRejected, decode_image
    from ..limits import DEFAULT_MAX_PIXELS
    from ..sources import as_source, fetch_items

    out: dict[str, dict[str, tuple[int, float]]] = {}
    for name, sp in splits.items():
        ids = [sp.ids[i] for i in np.flatnonzero(np.asarray(sp.overlap, bool))]
        items = (fetch_items(as_source(eval_sources[name], name=name, labels_from_folders=True), ids)
                 if ids else {})
        out[name] = {}
        for key, item in items.items():
            if item.skip_reason or (item.data is None and item.path is None):
                continue
            try:
                image = decode_image(item.data, item.path, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
            except ImageRejected:
                continue
            out[name][key] = image_condition(image)
    return out
