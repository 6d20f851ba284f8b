"""The verification rows of score_devset.py --verify: the report's decision (``overlap_audit.decide.rule``) on the
development set's pairs.

For each detector (and view), the scored pairs are those of score_devset.score: the labelled duplicate pairs and
every other pair among each stamp's top k. ``DecisionRule.for_detector`` gives the first stage and the drawing
comparison's threshold, as ``run_report`` makes them with default settings; every pair at or above the first stage
is judged by ``photo.verify_photo`` (drawings go to ``verify.verify_prepared`` inside it) and its verdict taken at
that threshold; a pair is then called a duplicate as ``rule._verify_splits`` calls an example Overlap: when its
verdict is True, or when it is at or above the detector's threshold and its verdict is not False (the rule's "a
confident match stays Overlap unless verification holds evidence against it"). Each pair is decided on its own
(the report verifies each example's nearest corpus item only); the low-information flag is not applied. Images are
decoded once, reduced as for the detectors (384 px unless ``--full-size``; the report decodes them whole, and
``prepare_photo`` reduces both to its own sizes), and prepared once; the cost per pair is ``verify_photo``'s, on
one core.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from overlap_audit.decide.photo import prepare_photo, verify_photo
from overlap_audit.decide.rule import DecisionRule
from overlap_audit.imaging import ImageRejected, decode_image

VERIFY_HEAD = ("| detector | default threshold: recall / precision | first stage (threshold): recall / precision "
               "| the report's decision: recall / precision | pairs verified | positives' verdicts: same / "
               "against / nothing to say | copies not called Overlap | look-alikes called Overlap |\n"
               "|---|---|---|---|---|---|---|---|")


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


def _why(sim: float, first_stage: float, v) -> str:
    """Why a pair was not called: below the first stage, or its verification's scores."""
    if sim < first_stage:
        return f"{sim:.4f}, below the first stage"
    if v is None:
        return f"{sim:.4f}, unreadable"
    return f"{sim:.4f}, photo score {v.score:.2f}, drawing score {v.pair_score:.3f}"


def verify_table(sims, detectors, stamps, corpus, labels, *, k, stamp_path, corpus_path, work_size,
                 thresholds: dict | None = None) -> None:
    """The decision's table; ``thresholds`` (detector spec -> threshold) replaces a detector's default."""
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
            prepared[key] = prepare_photo(img)
            prep_seconds.append(time.perf_counter() - t)
        return prepared[key]

    judged: dict[tuple[str, str], object] = {}
    pair_seconds: list[float] = []
    rows = []
    for (spec, trim), sim in sims.items():
        det = detectors[spec]
        t0 = float((thresholds or {}).get(spec, det.default_threshold))
        rule = DecisionRule.for_detector(det, {"devset": t0})
        first_t = rule.first_stage("devset")
        pairs = _pairs(sim, stamps, corpus, labels, k)
        s = np.array([sim[i, j] for i, j, _ in pairs])
        label = np.array([lab for _, _, lab in pairs])
        first = s >= first_t
        verdicts = np.full(len(pairs), None, object)
        for n in np.flatnonzero(first):
            i, j, _ = pairs[n]
            key = (str(stamp_path(stamps[i])), str(corpus_path(corpus[j])))
            if key not in judged:
                a, b = get(key[0]), get(key[1])
                t = time.perf_counter()
                judged[key] = None if a is None or b is None else verify_photo(a, b)
                pair_seconds.append(time.perf_counter() - t)
            verdicts[n] = judged[key]
        verdict = [None if v is None else v.verdict_at(rule.verify.threshold, rule.verify.accept_for(float(s[n])))
                   for n, v in enumerate(verdicts)]  # as rule._judge at each pair's similarity
        called = rule.overlap("devset", s, verdict)  # rule._verify_splits' Overlap, pair by pair
        r0, p0 = _rp(s >= t0, label)
        r1, p1 = _rp(first, label)
        r2, p2 = _rp(called, label)
        on_pos = [verdict[n] for n in np.flatnonzero(first & (label == 1))]
        missed = ", ".join(f"{stamps[pairs[n][0]]} ({_why(s[n], first_t, verdicts[n])})"
                           for n in np.flatnonzero(~called & (label == 1)))
        looks = ", ".join(f"{stamps[pairs[n][0]]} ~ {corpus[pairs[n][1]]}"
                          for n in np.flatnonzero(called & (label == 0)))
        rows.append(f"| {spec}{', trimmed' if trim else ''} | {r0:.3f} / {p0:.3f} ({t0:.4f}) | {r1:.3f} / {p1:.3f} "
                    f"({first_t:.4f}) | {r2:.3f} / {p2:.3f} | {int(first.sum())} of {len(pairs)} | "
                    f"{on_pos.count(True)} / {on_pos.count(False)} / {on_pos.count(None)} | {missed or '-'} | "
                    f"{looks or '-'} |")
    print(f"\nthe report's decision (overlap_audit.decide.rule.DecisionRule, default VerifySettings: pair threshold "
          f"{rule.verify.threshold})")
    print(VERIFY_HEAD)
    print("\n".join(rows))
    ps = np.array(pair_seconds) * 1000
    if len(ps):
        print(f"\nverify_photo per pair: median {np.median(ps):.1f} ms, mean {ps.mean():.1f} ms, 95th percentile "
              f"{np.percentile(ps, 95):.1f} ms over {len(ps)} pairs; prepare_photo per image: median "
              f"{np.median(np.array(prep_seconds) * 1000):.1f} ms over {len(prep_seconds)} images (one core)")
