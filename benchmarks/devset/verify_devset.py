"""The verification rows of score_devset.py --verify: the relaxed first stage, then overlap_audit.decide.verify.

For each detector (and view), the scored pairs are those of score_devset.score: the labelled duplicate pairs
and every other pair among each stamp's top k. The first stage keeps the pairs at or above
``overlap_audit.decide.rule.first_stage_threshold`` of the detector's default threshold; ``verify_pair`` decides
each of them at ``VERIFY_THRESHOLD``; a pair is called a duplicate when it passes both. Each pair is decided
on its own (the report verifies each example's nearest corpus item only). Images are decoded once, reduced
as for the detectors, and ``prepare``d once; the cost per pair is ``verify_prepared``'s, on one core.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from overlap_audit.imaging import ImageRejected, decode_image
from overlap_audit.decide.rule import RELAX, first_stage_threshold, relax_for
from overlap_audit.decide.verify import VERIFY_THRESHOLD, prepare, verify_prepared

VERIFY_HEAD = ("| detector | default threshold: recall / precision | first stage (threshold): recall / precision "
               "| first stage + verification: recall / precision | pairs verified | first-stage recall at relax "
               "1.5 / 2 / 3 |\n|---|---|---|---|---|---|")


def _pairs(sim, stamps, corpus, labels, k):
    """[(i, j, label)] as score_devset.score counts them."""
    col = {c: j for j, c in enumerate(corpus)}
    out = []
    for i, stamp in enumerate(stamps):
        dup = {col[c] for (s, c), (lab, uns) in labels.items() if s == stamp and lab and not uns and c in col}
        unsure = {col[c] for (s, c), (_, uns) in labels.items() if s == stamp and uns and c in col}
        out += [(i, j, 1) for j in sorted(dup)]
        out += [(i, int(j), 0) for j in np.argsort(-sim[i], kind="stable")[:k] if int(j) not in dup | unsure]
    return out


def _rp(called: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    tp, fp = int((called & (label == 1)).sum()), int((called & (label == 0)).sum())
    return tp / max(1, int((label == 1).sum())), (tp / (tp + fp) if tp + fp else 1.0)


def verify_table(sims, detectors, stamps, corpus, labels, *, k, stamp_path, corpus_path, work_size) -> None:
    prepared: dict[str, object] = {}
    prep_seconds: list[float] = []

    def get(path) -> object:
        key = str(path)
        if key not in prepared:
            try:
                img = decode_image(path=key)
            except ImageRejected:
                prepared[key] = None
                return None
            if work_size:
                img.thumbnail((work_size,) * 2, Image.Resampling.BICUBIC, reducing_gap=2.0)
            t = time.perf_counter()
            prepared[key] = prepare(img)
            prep_seconds.append(time.perf_counter() - t)
        return prepared[key]

    pair_seconds: list[float] = []
    rows = []
    for (spec, trim), sim in sims.items():
        det = detectors[spec]
        t0 = det.default_threshold
        pairs = _pairs(sim, stamps, corpus, labels, k)
        s = np.array([sim[i, j] for i, j, _ in pairs])
        label = np.array([lab for _, _, lab in pairs])
        relaxed = first_stage_threshold(t0, relax_for(det))
        first = s >= relaxed
        verified = np.zeros(len(pairs), bool)
        for n in np.flatnonzero(first):
            i, j, _ = pairs[n]
            a, b = get(stamp_path(stamps[i])), get(corpus_path(corpus[j]))
            if a is None or b is None:
                continue
            t = time.perf_counter()
            v = verify_prepared(a, b)
            pair_seconds.append(time.perf_counter() - t)
            verified[n] = v.score >= VERIFY_THRESHOLD
        r0, p0 = _rp(s >= t0, label)
        r1, p1 = _rp(first, label)
        r2, p2 = _rp(first & verified, label)
        at = " / ".join(f"{_rp(s >= first_stage_threshold(t0, f), label)[0]:.3f}" for f in (1.5, 2.0, 3.0))
        rows.append(f"| {spec}{', trimmed' if trim else ''} | {r0:.3f} / {p0:.3f} ({t0:.4f}) | {r1:.3f} / {p1:.3f} "
                    f"({relaxed:.4f}) | {r2:.3f} / {p2:.3f} | {int(first.sum())} of {len(pairs)} | {at} |")
    print(f"\nverification: relax {RELAX} (or the detector's own: clipdup 5), VERIFY_THRESHOLD {VERIFY_THRESHOLD}")
    print(VERIFY_HEAD)
    print("\n".join(rows))
    ps = np.array(pair_seconds) * 1000
    if len(ps):
        print(f"\nverify_prepared per pair: median {np.median(ps):.1f} ms, mean {ps.mean():.1f} ms, 95th percentile "
              f"{np.percentile(ps, 95):.1f} ms over {len(ps)} pairs; prepare per image: median "
              f"{np.median(np.array(prep_seconds) * 1000):.1f} ms over {len(prep_seconds)} images (one core)")
