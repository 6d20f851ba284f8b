"""What the benchmark scripts and the weight recipes share: the data they fetch, the detector benchmark's
images, queries and tables, and the paired bootstrap that compares two detectors on the same images.

Every precision target goes through the one rule of ``overlap_audit.decide.thresholds`` (the lowest threshold,
among the positives' scores, whose precision is at least the target); ``weighted_recall_at_precision`` is
the same rule when images carry bootstrap weights.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from overlap_audit.decide.thresholds import PrecisionPoint, recall_at_precision, threshold_at_precision

TARGET = 0.99  # the precision every benchmark table and shipped default threshold is stated at


# --- data ------------------------------------------------------------------------------------------------

def cache_dir(path: str | None = None) -> Path:
    """``path``, or the project's cache folder (overlap_audit.demos.realdata.default_cache_dir)."""
    from overlap_audit.demos.realdata import default_cache_dir

    return Path(path) if path else default_cache_dir()


def fetch_deb(package: str, cache: Path, inner: str) -> Path:
    """The folder ``inner`` of a Debian package fetched and unpacked once (overlap_audit.demos.realdata)."""
    from overlap_audit.demos.realdata import fetch_debian_package

    return fetch_debian_package(package, cache) / inner


def fetch_openclipart(cache: Path) -> Path:
    """The folder of Debian's openclipart-png drawings (8,121 public-domain PNGs)."""
    return fetch_deb("openclipart-png", cache, "usr/share/openclipart/png")


# --- the detector benchmark's images and queries ---------------------------------------------------------

def held_out_images(size: int = 128, photos: dict | None = None) -> list:
    """The benchmark's images: 4x4 tiles of every photo (default: those bundled in scikit-image and scikit-learn)."""
    from overlap_audit.demos.synthetic import bundled_photos, tiles

    return [t for p in (bundled_photos() if photos is None else photos).values() for t in tiles(p, 4, size)]


def held_out_photo_of_each(size: int = 128, photos: dict | None = None) -> np.ndarray:
    """For each of held_out_images' tiles, the index of the photo it was cut from (the bootstrap's unit)."""
    from overlap_audit.demos.synthetic import bundled_photos, tiles

    photos = bundled_photos() if photos is None else photos
    return np.array([k for k, p in enumerate(photos.values()) for _ in tiles(p, 4, size)])


def query_sets(images: list, strengths=None, margins: bool = False, edits: bool = False):
    """Yield (family, strength, copies): one augmented copy per image, per family and "all", per strength
    (default: every strength); with ``margins`` the margin families too (after "all"), with ``edits`` the edit
    families (after those)."""
    from overlap_audit.augment import (EDIT_FAMILIES, FAMILIES, MARGIN_FAMILIES, STRENGTHS, augment_all,
                                       augment_family)

    for strength in STRENGTHS if strengths is None else strengths:
        for family in (*FAMILIES, "all", *(MARGIN_FAMILIES if margins else ()), *(EDIT_FAMILIES if edits else ())):
            # a stable seed per query set (Python's str hash changes from run to run)
            rng = np.random.default_rng(zlib.crc32(f"{family}/{strength}".encode()))
            seeds = rng.integers(2**32, size=len(images))
            if family == "all":
                copies = [augment_all(im, strength, np.random.default_rng(int(s))) for im, s in zip(images, seeds)]
            else:
                copies = [augment_family(im, family, strength, np.random.default_rng(int(s)))
                          for im, s in zip(images, seeds)]
            yield family, strength, copies


def low_information(det, images: list) -> np.ndarray:
    """The detector's own low-information flags (the split never counts such an image as Overlap)."""
    from overlap_audit.detectors.base import prepare

    return np.asarray(det.low_information(np.stack([prepare(det, im.convert("RGB"))[0] for im in images])), bool)


def similarity_matrix(det, base: np.ndarray, copies: list, base_low: np.ndarray | None = None) -> np.ndarray:
    """Similarities of every copy (rows) to every image (columns); the diagonal holds the true pairs.

    As in the audit, a pair with a low-information side never matches: its similarity becomes -inf (a missed
    positive, a negative that cannot be a false match).
    """
    sims = det.similarity(det.embed_images(copies), base).astype(np.float64)
    low = low_information(det, copies)
    sims[low, :] = -np.inf
    if base_low is not None:
        sims[:, base_low] = -np.inf
    return sims


def pairs(det, base: np.ndarray, copies: list, base_low: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of (copy, its image) — positives — and (copy, every other image) — negatives."""
    sims = similarity_matrix(det, base, copies, base_low)
    return np.diag(sims), sims[~np.eye(len(base), dtype=bool)]


def benchmark_threshold(det, size: int = 128, target: float = TARGET) -> PrecisionPoint | None:
    """A detector's default threshold: the lowest with ``target`` precision on all the benchmark's queries
    pooled (every family and "all", every strength, on the bundled photos' tiles); None if none reaches it."""
    images = held_out_images(size)
    base, base_low = det.embed_images(images), low_information(det, images)
    pos, neg = zip(*(pairs(det, base, copies, base_low) for _, _, copies in query_sets(images)))
    return threshold_at_precision(np.concatenate(pos), np.concatenate(neg), target)


# --- table cells -----------------------------------------------------------------------------------------

def average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision of all pairs ranked by score (ties: negatives first, the pessimistic order)."""
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    hits = labels[np.lexsort((labels, -scores))]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / max(1, len(pos)))


def recall_and_ap(pos: np.ndarray, neg: np.ndarray) -> str:
    """A table cell: "recall at TARGET precision / average precision", in percent."""
    return f"{100 * recall_at_precision(pos, neg, TARGET):.1f} / {100 * average_precision(pos, neg):.1f}"


def at_shipped_threshold(det, pos: np.ndarray, neg: np.ndarray) -> str:
    """Table cells "threshold | precision / recall" at the detector's shipped default ("– | –" without one)."""
    shipped = getattr(det, "default_threshold", None)
    if shipped is None:
        return "– | –"
    tp, fp = int((pos >= shipped).sum()), int((neg >= shipped).sum())
    return f"{shipped:.4f} | {100 * tp / max(1, tp + fp):.2f}% / {100 * tp / len(pos):.1f}%"


def print_family_table(by_family: dict) -> None:
    """Per family, every strength's queries pooled: recall at 99% precision / AP. ``by_family``: {family:
    {detector: ([positives...], [negatives...])}}, one array per strength."""
    if not by_family:
        return
    names = list(next(iter(by_family.values())))
    print("\n# per family, its strengths pooled; recall at 99% precision / average precision")
    print("| family | " + " | ".join(names) + " |\n|" + "---|" * (1 + len(names)))
    for family, per_det in by_family.items():
        cells = []
        for name in names:
            pos, neg = (np.concatenate(x) for x in per_det[name])
            cells.append(recall_and_ap(pos, neg))
        print(f"| {family} | " + " | ".join(cells) + " |", flush=True)


def print_bootstrap(compared: list, versus: str, replicates: int, groups: np.ndarray, unit: str = "photos") -> None:
    """Per cell: each detector's recall at 99% precision and AP minus ``versus``'s, with 95% paired bootstrap
    intervals over the photos (a cell's recall is decided by a few pairs: is a difference more than luck?)."""
    others = [name for name in (compared[0][2] if compared else {}) if name != versus]
    if not compared or versus not in compared[0][2] or not others:
        print(f"\n(--bootstrap: need --versus {versus} and another detector among --detectors)")
        return
    for metric, label in (("recall", "recall at 99% precision"), ("ap", "average precision")):
        print(f"\n# {label} minus {versus}'s, in points: difference [95% interval] P(better); "
              f"{replicates} paired resamples of the {len(np.unique(groups))} {unit}"
              + (" (all tiles of a drawn photo)" if unit == "photos" else ""))
        print("| family | strength | " + " | ".join(others) + " |\n|" + "---|" * (2 + len(others)))
        for family, strength, matrices in compared:
            cells = []
            for name in others:
                b = paired_bootstrap(matrices[name], matrices[versus], metric=metric, replicates=replicates,
                                     target=TARGET, groups=groups)
                cells.append(f"{100 * b.difference:+.1f} [{100 * b.low:+.1f}, {100 * b.high:+.1f}] "
                             f"{b.p_a_better:.2f}")
            print(f"| {family} | {strength} | " + " | ".join(cells) + " |", flush=True)


# --- openclipart drawings held out from clipdup's training ------------------------------------------------

def thumbnail_z(image) -> np.ndarray:
    """A 32x32 thumbnail of max(R, G, B) or min(R, G, B) (clipdup's value-or-min: hue-free), standardised.

    Two files whose thumbnails differ by less than SAME_PICTURE_Z (0.1) on average are the same picture: on
    these drawings a mild JPEG, rescaled or recoloured copy lies at a median 0.02-0.04 from its file and 90% of
    them within 0.06-0.09, so two *different* files closer than that are duplicates for any detector that reads
    pixels (clipdup's hard-negative mining uses the same rule with --same-picture z32)."""
    from overlap_audit.detectors.clipdup import standardised_thumbnails, to_tensor_array

    return standardised_thumbnails(to_tensor_array(image, 32, "value-or-min")[None], 32)[0].numpy()


def candidate_files(cache: Path, first_unused: int = 4000, seed: int = 1, candidates: int = 900) -> list[Path]:
    """The openclipart files the drawings benchmark draws from (a seeded sample past the first_unused-th)."""
    files = sorted(fetch_openclipart(cache).rglob("*.png"))
    pick = np.random.default_rng(seed).permutation(len(files) - first_unused)[:candidates] + first_unused
    return [files[i] for i in sorted(pick)]


def read_drawing(path: Path, size: int = 128):
    """A drawing as an RGB thumbnail on white, or None for a decompression bomb or an unreadable file."""
    from PIL import Image

    from overlap_audit.imaging import to_rgb

    try:
        with Image.open(path) as im:
            if im.width * im.height > 20e6:  # the decompression bombs (the audit skips them too)
                return None
            im = to_rgb(im)
            im.thumbnail((size, size))
            return im.copy()  # loaded here: the file closes at the end of the block
    except (OSError, Image.DecompressionBombError):
        return None


# --- paired bootstrap of two detectors on the same images --------------------------------------------------

def sorted_pairs(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, rows, columns) of every cell of a square similarity matrix, highest score first; among equal
    scores the negatives (off the diagonal) come first."""
    n = len(sims)
    flat = np.asarray(sims, np.float64).ravel()
    order = np.lexsort((np.eye(n, dtype=bool).ravel(), -flat))
    return flat[order], (order // n).astype(np.int64), (order % n).astype(np.int64)


def weighted_recall_at_precision(order_scores: np.ndarray, order_rows: np.ndarray, order_cols: np.ndarray,
                                 weights: np.ndarray, target: float = TARGET) -> float:
    """Recall at the lowest threshold, among the positives' scores, whose precision is >= target (the rule
    of ``overlap_audit.decide.thresholds``), for weighted query images; 0.0 where no threshold reaches the target.

    The pairs of one n×n similarity matrix (row = query copy, column = image; the diagonal holds the
    positives) come sorted by score, highest first (:func:`sorted_pairs`); image i counts ``weights[i]``
    times (a bootstrap resample), so positive (i, i) weighs w_i and negative (i, j) weighs w_i·w_j. A
    threshold keeps every pair scoring at or above it, ties included. With every weight 1 this equals
    ``thresholds.recall_at_precision`` on the diagonal and the other cells.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    total = float(weights.sum())  # every image has one positive: its copy
    if total <= 0:
        return 0.0
    # precision >= target needs FP <= TP·(1 − target)/target <= total·(1 − target)/target: past the pair where
    # FP exceeds that, no threshold qualifies. Look at a prefix of the pairs, longer only while FP stays
    # within the bound (at high targets the top few thousand pairs decide).
    most_fp = total * (1.0 - target) / target * (1 + 1e-9) + 1e-9  # the slack only makes it look further
    n_pairs = len(order_scores)
    length = min(n_pairs, 4096)
    while True:
        scores, r, c = order_scores[:length], order_rows[:length], order_cols[:length]
        positive = r == c
        w = weights[r]
        # a resampled image brings its copy once (not w_i² positives); two drawings of one image never pair up
        tp = np.cumsum(np.where(positive, w, 0.0))
        fp = np.cumsum(np.where(positive, 0.0, w * weights[c]))
        full = length == n_pairs
        if full or fp[-1] > most_fp:
            break
        length = min(n_pairs, 4 * length)
    # the last pair of each run of equal scores (a run cut off by the prefix is not complete: left out, and
    # its FP exceeds the bound anyway)
    change = scores[1:] != scores[:-1]
    ends = np.nonzero(np.append(change, full or order_scores[length] != order_scores[length - 1]))[0]
    # candidates: the runs that hold a positive of an image drawn at least once
    run = np.concatenate([[0], np.cumsum(change)])
    candidate = np.zeros(len(change) + 1, bool)
    candidate[np.unique(run[positive & (w > 0)])] = True
    ends = ends[candidate[run[ends]]]
    ok = ends[tp[ends] / (tp[ends] + fp[ends]) >= target]
    return float(tp[ok[-1]] / total) if len(ok) else 0.0  # the lowest qualifying threshold: the last one


def weighted_average_precision(order_scores: np.ndarray, order_rows: np.ndarray, order_cols: np.ndarray,
                               weights: np.ndarray) -> float:
    """Average precision of the pairs of one n×n similarity matrix (sorted as :func:`sorted_pairs` sorts
    them: ties with negatives first, the pessimistic order) when image i counts ``weights[i]`` times."""
    total = float(weights.sum())
    if total <= 0:
        return 0.0
    positive = order_rows == order_cols
    wr = weights[order_rows]
    tp = np.cumsum(np.where(positive, wr, 0.0))
    fp = np.cumsum(np.where(positive, 0.0, wr * weights[order_cols]))
    at = np.nonzero(positive & (wr > 0))[0]
    return float((wr[at] * tp[at] / (tp[at] + fp[at])).sum() / total)


@dataclass(frozen=True)
class PairedBootstrap:
    """A metric of detector A minus the same metric of detector B on the same images, with a bootstrap
    interval (metric: "recall" at a precision, or "ap", average precision)."""

    metric: str
    difference: float  # on the images as they are
    low: float  # percentile interval of the resampled differences
    high: float
    p_a_better: float  # share of resamples in which A's metric is strictly higher
    replicates: int
    level: float


def paired_bootstrap(sims_a: np.ndarray, sims_b: np.ndarray, *, metric: str = "recall", replicates: int = 1000,
                     target: float = TARGET, level: float = 0.95, seed: int = 0,
                     groups: np.ndarray | None = None) -> PairedBootstrap:
    """Resample the images (with replacement, the same resample for both detectors) and recompute the
    difference in ``metric`` (recall at ``target`` precision, or "ap"); the images are the unit that varies,
    not the pairs. With ``groups`` (one label per image, e.g. the photo a tile was cut from) whole groups are
    resampled: images of one group are not independent (the tiles of one brick wall all look alike)."""
    if sims_a.shape != sims_b.shape or sims_a.ndim != 2 or sims_a.shape[0] != sims_a.shape[1]:
        raise ValueError(f"need two square similarity matrices of one shape, got {sims_a.shape} and {sims_b.shape}")
    if groups is not None and len(groups) != len(sims_a):
        raise ValueError(f"need one group label per image: {len(groups)} labels for {len(sims_a)} images")
    if metric == "recall":
        def score(ranked, w):
            return weighted_recall_at_precision(*ranked, w, target)
    elif metric == "ap":
        def score(ranked, w):
            return weighted_average_precision(*ranked, w)
    else:
        raise ValueError(f"metric must be 'recall' or 'ap', got {metric!r}")
    n = len(sims_a)
    a, b = sorted_pairs(sims_a), sorted_pairs(sims_b)
    ones = np.ones(n)
    point = score(a, ones) - score(b, ones)
    rng = np.random.default_rng(seed)
    diffs = np.empty(replicates)
    labels, member = np.unique(np.arange(n) if groups is None else np.asarray(groups), return_inverse=True)
    for k in range(replicates):
        drawn = np.bincount(rng.integers(len(labels), size=len(labels)), minlength=len(labels))
        w = drawn[member].astype(np.float64)  # an image counts as often as its group was drawn
        diffs[k] = score(a, w) - score(b, w)
    tail = (1 - level) / 2
    return PairedBootstrap(metric=metric, difference=float(point), low=float(np.quantile(diffs, tail)),
                           high=float(np.quantile(diffs, 1 - tail)), p_a_better=float((diffs > 0).mean()),
                           replicates=replicates, level=level)


def bench_detector(spec: str):
    """A detector from a benchmark spec: a detector spec, optionally ``@trim`` or ``@whole`` for its content
    normalisation (``clipdup@whole``: clipdup on the whole image)."""
    from overlap_audit.detectors import get_detector

    name, _, content = spec.partition("@")
    return get_detector(name, content=content or None)
