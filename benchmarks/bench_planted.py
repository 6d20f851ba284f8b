"""Planted copies among unrelated photo tiles: the audit's decision at each detector's default threshold, and
with verification (a relaxed first stage, then ``overlap_audit.decide.verify``).

Corpus: the checkerboard half of 4x4 tiles of every photo (96 px, as ``phash_quality.py`` and the demo cut
them). Queries: one planted copy of every corpus tile, under all of: resized to a random 60-95%, up to 5% of
each side cropped (drawn per side), brightness x0.9-1.1, JPEG quality 40-85 (seeded); and as many unrelated
queries, the tiles of the other checkerboard half (same photos, disjoint regions: the hardest unrelated tiles
there are). Each query is an example of the audit: it is Overlap when its nearest corpus item is at or above
the threshold. Positives: the planted queries; negatives: the unrelated ones.

As the audit runs it: each detector embeds its content-trimmed view (``detectors.base.prepare``; ``@whole``:
the whole image), a trimmed query also searches with its whole image and keeps the view whose nearest item is
closer (``pipeline.best_view``), low-information corpus tiles are left out of the index and low-information
queries are never Overlap, and the nearest items come from a FAISS flat index (``index.ann.new_index``,
``index.search.search_index``).

Reported per detector: recall and precision at its default threshold, recall at 95% precision (the rule of
``overlap_audit.decide.thresholds``), how many planted queries found a corpus tile other than their own; then with
verification: the first stage at ``first_stage_threshold`` of the default, each proposed (query, nearest item)
pair decided by ``verify_prepared`` at ``VERIFY_THRESHOLD`` (recall and precision; recall at 95% precision
when the first stage's pairs are ranked by their verification score), and its cost per pair on this process's
threads (median and 95th percentile; ``OMP_NUM_THREADS=1`` for one core).

Photo sets: "bundled" (scikit-image's and scikit-learn's photos: the development set, the one the default
thresholds are set on) and "debian" (bench_detectors.DEBIAN_PHOTOS, downloaded once: held out, nothing is
chosen on it).

    python -m benchmarks.bench_planted [--photos bundled debian] [--detectors phash pdq clipdup phash@whole]
        [--size 96] [--seed 0] [--limit N] [--json FILE]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/bench_planted.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_planted", *sys.argv[1:]])

import argparse
import io
import json
import time
import zlib
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageEnhance

from overlap_audit.decide.thresholds import recall_at_precision

PRECISION = 0.95  # the goal's precision
SIZE = 96


@dataclass(frozen=True)
class PlantedSet:
    """A corpus of tiles, a planted copy of each (``planted[i]`` copies ``corpus[i]``) and unrelated tiles."""

    corpus: list
    planted: list
    unrelated: list


@dataclass(frozen=True)
class PlantedScore:
    """One detector's figures on one planted set (recalls and precisions in [0, 1])."""

    detector: str
    threshold: float
    n_planted: int
    n_unrelated: int
    recall: float  # at the default threshold
    precision: float
    recall_p95: float  # at the lowest threshold with precision >= PRECISION
    wrong_source: int  # planted queries at/above the default threshold whose nearest item is not their tile
    first_stage: float
    first_stage_recall: float
    n_verified: int  # pairs the first stage proposed
    verified_recall: float
    verified_precision: float
    verified_recall_p95: float
    verify_ms_median: float
    verify_ms_p95: float


def planted_copy(tile: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``tile`` resized to 60-95%, 0-5% cropped off each side, brightness x0.9-1.1, JPEG quality 40-85."""
    w, h = tile.size
    s = rng.uniform(0.6, 0.95)
    im = tile.resize((max(8, round(w * s)), max(8, round(h * s))), Image.Resampling.BILINEAR)
    w, h = im.size
    left, top, right, bottom = rng.uniform(0.0, 0.05, 4)
    im = im.crop((round(left * w), round(top * h), w - round(right * w), h - round(bottom * h)))
    im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.9, 1.1)))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(40, 86)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def planted_set(photos: dict, size: int = SIZE, seed: int = 0, limit: int | None = None) -> PlantedSet:
    """Checkerboard halves of each photo's 4x4 tiles: the corpus (with a planted copy of each tile, seeded
    per photo and tile) and the unrelated tiles; ``limit``: only the first photos' tiles, up to that many."""
    from overlap_audit.demos.synthetic import tiles

    corpus, planted, unrelated = [], [], []
    for name, photo in photos.items():
        for t, tile in enumerate(tiles(photo, 4, size)):
            if (t // 4 + t % 4) % 2 == 0:
                corpus.append(tile)
                rng = np.random.default_rng([seed, zlib.crc32(f"{name}/{t}".encode())])
                planted.append(planted_copy(tile, rng))
            else:
                unrelated.append(tile)
    if limit is not None:
        corpus, planted, unrelated = corpus[:limit], planted[:limit], unrelated[:limit]
    return PlantedSet(corpus, planted, unrelated)


def _views(det, images: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(trimmed-view embeddings, low-information flags, rows with a trimmed box, their whole-image embeddings),
    as ``embed.embed_source`` makes them with views on."""
    from overlap_audit.detectors.base import prepare

    inputs, whole, rows = [], [], []
    for i, im in enumerate(images):
        x, box = prepare(det, im.convert("RGB"))
        inputs.append(x)
        if box is not None and box.trimmed:
            rows.append(i)
            whole.append(det.preprocess(im.convert("RGB")))
    batch = np.stack(inputs)
    vectors, low = det.embed(batch), np.asarray(det.low_information(batch), bool)
    whole_vectors = det.embed(np.stack(whole)) if whole else vectors[:0]
    return vectors, low, np.asarray(rows, np.int64), whole_vectors


def nearest(det, corpus: list, queries: list) -> tuple[np.ndarray, np.ndarray]:
    """Each query's nearest corpus tile through a FAISS flat index: (similarity, corpus row), -inf / -1 for
    a low-information query or none found."""
    from overlap_audit.index.ann import IndexPlan, new_index
    from overlap_audit.index.search import search_index

    info = det.info
    cv, clow, _, _ = _views(det, corpus)
    keep = np.flatnonzero(~clow)  # low-information corpus items are not indexed
    index = new_index(IndexPlan("flat"), info)
    index.add(np.ascontiguousarray(cv[keep]))
    qv, qlow, rows, wv = _views(det, queries)
    sims, found = search_index(index, qv, 1, info.metric, info.dim)
    sims, found = sims[:, 0].astype(np.float64), found[:, 0]
    if len(rows):
        ws, wf = search_index(index, wv, 1, info.metric, info.dim)
        better = ws[:, 0] > sims[rows]  # pipeline.best_view: the closer view, the trimmed one on a tie
        sims[rows[better]], found[rows[better]] = ws[better, 0], wf[better, 0]
    corpus_row = np.where(found >= 0, keep[np.maximum(found, 0)], -1)
    sims[qlow | (found < 0)] = -np.inf
    return sims, corpus_row


def _recall_precision(pos: np.ndarray, neg: np.ndarray, t: float) -> tuple[float, float]:
    tp, fp = int((pos >= t).sum()), int((neg >= t).sum())
    return tp / max(1, len(pos)), (tp / (tp + fp) if tp + fp else 1.0)


def score_detector(spec: str, data: PlantedSet, prepared: dict | None = None) -> PlantedScore:
    """``spec``'s figures on ``data`` (a benchmark spec: ``phash``, ``clipdup@whole``, ...). ``prepared``
    caches ``verify.prepare`` of the images across detectors (keyed by id)."""
    from benchmarks.common import bench_detector
    from overlap_audit.decide.rule import first_stage_threshold, relax_for
    from overlap_audit.decide.verify import VERIFY_THRESHOLD, prepare, verify_prepared

    det = bench_detector(spec)
    t0 = float(det.default_threshold)
    queries = data.planted + data.unrelated
    sims, rows = nearest(det, data.corpus, queries)
    n = len(data.planted)
    pos, neg = sims[:n], sims[n:]
    recall, precision = _recall_precision(pos, neg, t0)
    wrong = int(((pos >= t0) & (rows[:n] != np.arange(n))).sum())
    relaxed = first_stage_threshold(t0, relax_for(det))
    prepared = {} if prepared is None else prepared

    def prep(im):
        if id(im) not in prepared:
            prepared[id(im)] = prepare(im)
        return prepared[id(im)]

    vscore = np.full(len(queries), -np.inf)
    ms = []
    for q in np.flatnonzero(sims >= relaxed):
        a, b = prep(queries[q]), prep(data.corpus[rows[q]])
        t = time.perf_counter()
        vscore[q] = verify_prepared(a, b).score
        ms.append(1000 * (time.perf_counter() - t))
    vpos, vneg = vscore[:n], vscore[n:]
    v_recall, v_precision = _recall_precision(vpos, vneg, VERIFY_THRESHOLD)
    return PlantedScore(
        detector=spec, threshold=t0, n_planted=n, n_unrelated=len(neg), recall=recall, precision=precision,
        recall_p95=recall_at_precision(pos, neg, PRECISION), wrong_source=wrong, first_stage=relaxed,
        first_stage_recall=float((pos >= relaxed).mean()) if n else 0.0, n_verified=len(ms),
        verified_recall=v_recall, verified_precision=v_precision,
        verified_recall_p95=recall_at_precision(vpos, vneg, PRECISION),
        verify_ms_median=float(np.median(ms)) if ms else float("nan"),
        verify_ms_p95=float(np.percentile(ms, 95)) if ms else float("nan"))


HEAD = ("| set | detector | default threshold: recall / precision | recall at 95% precision | wrong source "
        "| first stage (threshold): recall | + verification: recall / precision | + verification: recall at "
        "95% precision | pairs verified | verify ms per pair: median / p95 |\n|" + "---|" * 10)


def row(set_name: str, s: PlantedScore) -> str:
    return (f"| {set_name} | {s.detector} | {s.recall:.3f} / {s.precision:.3f} ({s.threshold:.4f}) | "
            f"{s.recall_p95:.3f} | {s.wrong_source} | {s.first_stage_recall:.3f} ({s.first_stage:.4f}) | "
            f"{s.verified_recall:.3f} / {s.verified_precision:.3f} | {s.verified_recall_p95:.3f} | "
            f"{s.n_verified} | {s.verify_ms_median:.1f} / {s.verify_ms_p95:.1f} |")


SET_NAMES = {"bundled": "bundled (development)", "debian": "debian (held out)"}


def main(argv: list[str] | None = None) -> list[tuple[str, PlantedScore]]:
    from benchmarks.bench_detectors import PHOTO_SETS, photo_set
    from overlap_audit.decide.rule import RELAX
    from overlap_audit.decide.verify import VERIFY_THRESHOLD

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", nargs="+", choices=PHOTO_SETS, default=list(PHOTO_SETS))
    ap.add_argument("--detectors", nargs="+", default=["phash", "pdq", "clipdup", "phash@whole"],
                    help="benchmark specs (SPEC@whole: the whole image, no content trimming)")
    ap.add_argument("--size", type=int, default=SIZE, help="tile size, px")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="at most this many corpus tiles (a quick run)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    out = []
    print(f"# planted copies among unrelated {args.size}-px photo tiles; verification: relax {RELAX} (or the "
          f"detector's own: clipdup 5), VERIFY_THRESHOLD {VERIFY_THRESHOLD}")
    print(HEAD, flush=True)
    for which in args.photos:
        data = planted_set(photo_set(which), args.size, args.seed, args.limit)
        prepared: dict = {}
        for spec in args.detectors:
            try:
                s = score_detector(spec, data, prepared)
            except Exception as exc:  # noqa: BLE001 - e.g. no clipdup weights: report and go on
                print(f"({spec} skipped: {exc})")
                continue
            out.append((SET_NAMES[which], s))
            print(row(SET_NAMES[which], s), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump([{"set": n, **asdict(s)} for n, s in out], fh, indent=1)
    return out


if __name__ == "__main__":
    main()
