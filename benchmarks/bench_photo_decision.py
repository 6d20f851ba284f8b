"""The audit's whole decision on the photograph families of ``benchmarks.photos``: detector top-k neighbours ->
threshold -> relaxed first stage -> verification, for each detector and view, at the default threshold and at a
threshold calibrated at 99% precision; beside it, the ranking's recall at 99% precision.

Positives: the copies (``source >= 0``), Overlap whatever corpus item they matched (the audit decides per
example); negatives: the distractors (other quadrants / other tiles of the same photos). "wrong" counts
positives called Overlap through a corpus item other than their source.

Calibrated threshold (b): from App. C copies (medium, another seed) of the evaluation images themselves: the
positives are each copy's similarity to its own evaluation image, the negatives its similarity to the most
similar evaluation image of *another photo* (known distinct); ``thresholds.threshold_at_precision`` at 0.99.

    python -m benchmarks.bench_photo_decision [--photos dev|heldout] [--families ...] [--detectors ...]
        [--json FILE]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_photo_decision", *sys.argv[1:]])

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from overlap_audit.decide.thresholds import recall_at_precision, threshold_at_precision

K = 5
TARGET = 0.99


def embed(det, images: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from benchmarks.bench_planted import _views

    return _views(det, images)


def neighbours(det, corpus: list, queries: list, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k nearest corpus items (similarity, corpus row; -inf / -1 where none or the query is
    low-information), with the audit's two query views (the view whose nearest item is closer wins)."""
    from overlap_audit.index.ann import IndexPlan, new_index
    from overlap_audit.index.search import search_index

    info = det.info
    cv, clow, _, _ = embed(det, corpus)
    keep = np.flatnonzero(~clow)
    index = new_index(IndexPlan("flat"), info)
    index.add(np.ascontiguousarray(cv[keep]))
    qv, qlow, rows, wv = embed(det, queries)
    k = min(k, len(keep))
    sims, found = search_index(index, qv, k, info.metric, info.dim)
    sims, found = sims.astype(np.float64), found.copy()
    if len(rows):
        ws, wf = search_index(index, wv, k, info.metric, info.dim)
        better = ws[:, 0] > sims[rows, 0]
        sims[rows[better]], found[rows[better]] = ws[better], wf[better]
    corpus_row = np.where(found >= 0, keep[np.maximum(found, 0)], -1)
    sims[qlow] = -np.inf
    sims[found < 0] = -np.inf
    return sims, corpus_row


def calibrated_threshold(det, data, seed: int = 1) -> float | None:
    """The threshold at 99% precision from medium App. C copies of the evaluation images against the
    evaluation images of other photos (see the module docstring)."""
    from benchmarks.photos import MEDIUM, appc_copy

    rng = np.random.default_rng(seed)
    copies = [appc_copy(q, MEDIUM, rng) for q in data.queries]
    ev, elow, _, _ = embed(det, data.queries)
    cv, clow, _, _ = embed(det, copies)
    if det.info.metric == "hamming":
        bits = np.unpackbits(ev, axis=1).astype(np.float32)
        cb = np.unpackbits(cv, axis=1).astype(np.float32)
        sim = 1 - (cb[:, None, :] != bits[None, :, :]).mean(axis=2)
    else:
        sim = cv @ ev.T
    group = np.asarray(data.group)
    ok = ~(elow | clow)
    pos = np.diag(sim)[ok]
    other = np.where(group[:, None] != group[None, :], sim, -np.inf)
    other[:, elow] = -np.inf
    neg = other.max(axis=1)[ok]
    point = threshold_at_precision(pos, neg, TARGET)
    return None if point is None else point.threshold


@dataclass(frozen=True)
class Decision:
    name: str
    threshold: float
    recall: float
    precision: float
    tp: int
    fp: int
    wrong: int


def decide(name, called, source, rows_used, threshold) -> Decision:
    pos = source >= 0
    tp, fp = int((called & pos).sum()), int((called & ~pos).sum())
    wrong = int((called & pos & (rows_used != source)).sum())
    return Decision(name, float(threshold), tp / max(1, int(pos.sum())), tp / (tp + fp) if tp + fp else 1.0,
                    tp, fp, wrong)


def main(argv=None):
    from benchmarks.common import bench_detector
    from benchmarks.photos import FAMILIES, dev_photos, family_set, heldout_photos
    from overlap_audit.decide import verify

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", choices=("dev", "heldout"), default="dev")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--detectors", nargs="+", default=["phash", "phash@whole", "clipdup", "clipdup@whole"])
    ap.add_argument("--verifiers", nargs="+", default=["pair", "photo"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=3, help="verify the nearest k items (at or above the first stage)")
    ap.add_argument("--save", default=None, help="save the raw arrays (npz) under this folder")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    photos = dev_photos() if args.photos == "dev" else heldout_photos()
    results = []
    for family in args.families:
        data = family_set(photos, family, args.seed)
        prepared: dict = {}
        for spec in args.detectors:
            det = bench_detector(spec)
            t0 = float(det.default_threshold)
            sims, rows = neighbours(det, data.corpus, data.queries)
            src = data.source
            pos = src >= 0
            top = sims[:, 0]
            t_cal = calibrated_threshold(det, data)
            line = {"photos": args.photos, "family": family, "detector": spec, "n_true": int(pos.sum()),
                    "n_distractors": int((~pos).sum()), "default_threshold": t0, "calibrated_threshold": t_cal,
                    "ranking_recall_p99": recall_at_precision(top[pos], top[~pos], TARGET),
                    "source_in_topk": int(((rows == src[:, None]).any(1) & pos).sum()),
                    "source_top1": int(((rows[:, 0] == src) & pos).sum()), "decisions": []}
            relax = verify.relax_for(det)
            scores = {}
            for vname in args.verifiers:
                fn = _verifier(vname)
                sc = np.full(sims.shape, None, object) if vname == "photo" else np.full(sims.shape, np.nan)
                ms = []
                lo = verify.first_stage_threshold(min(t0, t_cal if t_cal is not None else t0), relax)
                for q, j in zip(*np.nonzero(sims[:, :args.k] >= lo)):
                    key = (vname, "pair", q, rows[q, j])
                    if key not in prepared:
                        a = _prep(prepared, vname, data.queries[q], ("q", q))
                        b = _prep(prepared, vname, data.corpus[rows[q, j]], ("c", rows[q, j]))
                        t = time.perf_counter()
                        prepared[key] = fn.score(a, b)
                        ms.append(1000 * (time.perf_counter() - t))
                    sc[q, j] = prepared[key]
                scores[vname] = sc
                line[f"{vname}_ms_median"] = float(np.median(ms)) if ms else None
                line[f"{vname}_pairs"] = len(ms)
            for tname, t in (("default", t0), ("calibrated", t_cal)):
                if t is None:
                    continue
                line["decisions"].append(asdict(decide(f"{tname}, no verification", top >= t, src, rows[:, 0], t)))
                first = verify.first_stage_threshold(t, relax)
                for vname in args.verifiers:
                    fn, sc = _verifier(vname), scores[vname]
                    for kk in (1, args.k):
                        called, used = fn.decide(sims[:, :kk], sc[:, :kk], rows[:, :kk], t, first)
                        line["decisions"].append(asdict(decide(f"{tname}, {vname} top-{kk}", called, src, used, t)))
            results.append(line)
            if args.save:
                import pickle

                with open(f"{args.save}/{args.photos}-{family}-{spec}.pkl", "wb") as fh:
                    pickle.dump(dict(sims=sims, rows=rows, source=src, t0=t0, t_cal=t_cal, relax=relax,
                                     group=data.group, scores=scores), fh)
            _print(line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
    return results


def _print(line):
    print(f"\n## {line['photos']} {line['family']} {line['detector']}: {line['n_true']} copies, "
          f"{line['n_distractors']} distractors; source in top-{K} {line['source_in_topk']}, top-1 "
          f"{line['source_top1']}; ranking recall@99%P {line['ranking_recall_p99']:.3f}; thresholds default "
          f"{line['default_threshold']:.4f}, calibrated {line['calibrated_threshold']}; verify ms median "
          + ", ".join(f"{k[:-10]} {v:.1f}" for k, v in line.items() if k.endswith("_ms_median") and v is not None))
    for d in line["decisions"]:
        print(f"  {d['name']:<34} t={d['threshold']:.4f}  recall {d['recall']:.3f}  precision {d['precision']:.3f}"
              f"  (tp {d['tp']}, fp {d['fp']}, wrong source {d['wrong']})", flush=True)


class _PairVerifier:
    """Today's rule: verify_prepared of the top item(s) at VERIFY_THRESHOLD, between first stage and anything."""

    @staticmethod
    def prepare(image):
        from overlap_audit.decide.verify import prepare

        return prepare(image)

    @staticmethod
    def score(a, b):
        from overlap_audit.decide.verify import verify_prepared

        return verify_prepared(a, b).score

    @staticmethod
    def decide(sims, sc, rows, t, first):
        from overlap_audit.decide.verify import VERIFY_THRESHOLD

        ok = (sims >= first) & (np.nan_to_num(sc, nan=-1) >= VERIFY_THRESHOLD)
        hit = ok.any(axis=1)
        used = rows[np.arange(len(rows)), np.argmax(ok, axis=1)]
        return hit, used


class _PhotoVerifier:
    @staticmethod
    def prepare(image):
        from overlap_audit.decide.photo import prepare_photo

        return prepare_photo(image)

    @staticmethod
    def score(a, b):
        from overlap_audit.decide.photo import verify_photo

        return verify_photo(a, b)  # the whole PhotoVerification

    @staticmethod
    def decide(sims, sc, rows, t, first):
        return decide_top_k(sims, sc, rows, t, first)


def decide_top_k(sims, verdicts, rows, threshold, first_stage):
    """A research variant of the report's rule (``overlap_audit.decide.rule``) over each query's k nearest items,
    for measuring whether verifying more than the nearest pays (the report verifies the nearest only):
    Overlap when a verified item at or above ``first_stage`` is the same picture, or when the nearest item is at
    or above ``threshold`` and verification holds no evidence against it. Returns (overlap, the row decided on)."""
    n, k = sims.shape
    overlap = np.zeros(n, bool)
    used = rows[:, 0].copy()
    for q in range(n):
        for j in range(k):
            v = verdicts[q, j]
            if sims[q, j] >= first_stage and v is not None and v.verdict is True:
                overlap[q], used[q] = True, rows[q, j]
                break
        else:
            v = verdicts[q, 0]
            overlap[q] = bool(sims[q, 0] >= threshold and (v is None or v.verdict is not False))
    return overlap, used


def _verifier(name):
    return {"pair": _PairVerifier, "photo": _PhotoVerifier}[name]


def _prep(cache, vname, image, key):
    if (vname, key) not in cache:
        cache[(vname, key)] = _verifier(vname).prepare(image)
    return cache[(vname, key)]


if __name__ == "__main__":
    main()
