"""How the report writes its numbers as text; report.md, report.html and the CLI all use these.

An undefined value (None, or NaN) is written "–".
"""

from __future__ import annotations

import math

from .value import DatasetReport

DASH = "–"


def _undefined(x) -> bool:
    return x is None or math.isnan(x)


def percent(x: float | None) -> str:
    """A fraction in percent, one decimal: 0.123 -> "12.3"."""
    return DASH if _undefined(x) else f"{100 * x:.1f}"


def signed_percent(x: float | None) -> str:
    """A difference in percentage points with its sign: 0.05 -> "+5.0"."""
    return DASH if _undefined(x) else f"{100 * x:+.1f}"


def interval(ci: tuple[float, float] | None, signed: bool = False) -> str:
    """An interval in percent: "[12.3, 45.6]" (or signed points)."""
    if ci is None:
        return DASH
    f = signed_percent if signed else percent
    return f"[{f(ci[0])}, {f(ci[1])}]"


def pvalue(p: float | None) -> str:
    """A p-value: three decimals, or scientific below 0.001."""
    if p is None:
        return DASH
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def yes_no(flag: bool | None) -> str:
    """"yes", "no", or "–" when undecided."""
    return DASH if flag is None else ("yes" if flag else "no")


def similarity_text(x: float) -> str:
    """A similarity or threshold, four decimals."""
    return f"{x:.4f}"


def ci_level_text(level: float) -> str:
    """A confidence level in percent: 0.995 -> "99.5%"."""
    return f"{100 * level:g}%"


def dataset_cells(d: DatasetReport) -> dict[str, str]:
    """The per-dataset table's cells as text, keyed by column."""
    s = d.stats
    return {
        "threshold": similarity_text(d.threshold),
        "n": str(s.n_all),
        "overlap_rate": percent(s.overlap_rate),
        "acc_all": percent(s.acc_all),
        "acc_clean": percent(s.acc_clean),
        "acc_overlap": percent(s.acc_overlap),
        "delta": signed_percent(s.delta),
        "p_value": pvalue(s.p_value),
        "p_value_adjusted": pvalue(d.p_value_adjusted),
        "significant": yes_no(d.significant),
        "ci_overlap": interval(s.ci_overlap),
        "ci_clean": interval(s.ci_clean),
        "ci_delta": interval(s.ci_delta, signed=True),
    }


def corpus_set_aside(index: dict) -> str:
    """What the index could not judge, as a parenthesis after its item count ("" when nothing)."""
    parts = []
    if index.get("n_low_information"):
        parts.append(f"{index['n_low_information']} more set aside as low-information (never matched)")
    if index.get("n_skipped"):
        parts.append(f"{index['n_skipped']} skipped (unreadable)")
    return f" ({'; '.join(parts)})" if parts else ""


def recall_line(recall: dict) -> str:
    """What an approximate search may have missed, in one line."""
    if not recall or recall.get("exact"):
        return "exact search (nothing missed)"
    if not recall.get("n_queries"):
        return f"approximate search, recall not measured ({recall.get('note', 'no queries')})"
    k = recall["k"]
    return (f"approximate search: recall@1 {percent(recall['recall_at_1'])}%, recall@{k} "
            f"{percent(recall['recall_at_k'])}% against exact search on {recall['n_queries']} augmented corpus "
            f"copies (source found in top {k}: {percent(recall['source_found_at_k'])}%, exact: "
            f"{percent(recall['source_found_at_k_exact'])}%)")


def model_line(model: dict) -> str:
    """What report --model scored, in one line."""
    templates = model.get("templates", {})
    counts = {t["count"] for t in templates.values()}
    if len(counts) == 1:
        which = f"{counts.pop()} prompt template(s) per class"
    else:  # sets with different templates: say which set had how many
        which = "prompt templates per class: " + ", ".join(f"{n} {t['count']}" for n, t in templates.items())
    return (f"Model `{model['spec']}` (weights sha256 {model['weights_sha256'][:12]}…, {model['device']}) scored "
            f"zero-shot with {which}; its predictions are in predictions.parquet.")


def verification_line(verify: dict) -> str:
    """What verification did, in one sentence (report.md and report.html)."""
    relax = verify.get("relax")
    first = (f"1 − {relax:g} (1 − threshold) of each dataset" if verify.get("first_stage") is None and relax
             else similarity_text(verify["first_stage"]))
    return (f"Verification: every example whose nearest corpus item scores at least the first stage ({first}) "
            f"was compared with it densely on the content-trimmed views (overlap_audit.decide.verify); Overlap is the "
            f"pairs scoring at least {verify['threshold']:.4f}; a pair whose images could not be read keeps the "
            f"detector's decision." + _own_points(verify))


def _own_points(verify: dict) -> str:
    """How many datasets the thresholds file gave their own verification (``decide.points``), in one sentence."""
    own = [d["settings"] for d in (verify.get("datasets") or {}).values() if d.get("settings")]
    if not own:
        return ""
    accepts = sorted({similarity_text(s["accept"]) for s in own if s.get("accept") is not None})
    return (f" The thresholds file set the first stage and the photo accept (the photo score that verifies a "
            f"photograph pair at the detector's threshold: {', '.join(accepts) or 'the default'}) of {len(own)} "
            "dataset(s) (report.json's verify record holds each).")


_ORIGIN_TEXT = {"file": "from the thresholds file", "threshold": "from --threshold",
                "default": "the detector's default", "calibrated": "calibrated on this set"}


def threshold_origin_parts(report) -> list[tuple[str, str]]:
    """Per dataset (name, text): its threshold, where it came from and, where calibrated, the estimated
    precision and recall of its Overlap split with their intervals (report.md and report.html; the name is
    returned apart so that each page makes it inert its own way)."""
    cal = report.calibration or {}
    origins, per_set = cal.get("origins", {}), cal.get("datasets", {})
    out = []
    for d in report.datasets:
        origin = origins.get(d.name)
        text = f"{similarity_text(d.threshold)} ({_ORIGIN_TEXT.get(origin, 'origin not recorded')}"
        c = per_set.get(d.name)
        if c is not None:
            if c["threshold"] is None:
                text += (f": calibration found no threshold from {similarity_text(c['bounds'][0])} up whose "
                         f"estimated precision reaches {cal['target_precision']:g}")
            p, r = c["precision"], c["recall"]
            level = ci_level_text(cal["ci_level"])
            text += "; estimated precision " + (
                f"{p['value']:.3f} [{p['low']:.3f}, {p['high']:.3f}] ({p['false_matches']} false matches of "
                f"{p['n_negatives']} transposed images)" if p else "not known (nothing called Overlap)")
            if r:
                text += (f", recall of {cal['strength']} App. C copies {r['value']:.3f} [{r['low']:.3f}, "
                         f"{r['high']:.3f}] ({r['successes']} of {r['trials']})")
            text += f", intervals at {level}; seed {cal['seed']}"
        out.append((d.name, text + ")"))
    return out


def edge_head(report) -> list[str]:
    """The headings of the edge-case table (``edge_cells``), with the report's size and uniformity limits."""
    edges = [d.edge for d in report.datasets if d.edge is not None]
    side = next((e.measured_min_side for e in edges if e.measured_min_side is not None), None)
    std = edges[0].uniform_std if edges else None
    return ["Dataset", f"Overlap under {side} px" if side is not None else "Overlap small (size limit unknown)",
            f"Overlap nearly uniform (grey s.d. < {std:g})" if std is not None else "Overlap nearly uniform",
            "left out", "not read back", "Overlap % with / without", "All − Clean with / without",
            "p with / without", "p adjusted with / without", "significant with / without"]


def edge_cells(d: DatasetReport) -> list[str]:
    """One set's row of the edge-case table: counts, then the paper's statistics with and without the flagged
    Overlap examples (in percent and points)."""
    e, s = d.edge, d.stats
    w = e.without
    return [d.name, str(e.n_small), str(e.n_uniform), str(e.n_flagged), str(e.n_unread),
            f"{percent(s.overlap_rate)} / {percent(w.overlap_rate)}",
            f"{signed_percent(s.delta)} / {signed_percent(w.delta)}",
            f"{pvalue(s.p_value)} / {pvalue(w.p_value)}",
            f"{pvalue(d.p_value_adjusted)} / {pvalue(e.p_value_adjusted_without)}",
            f"{yes_no(d.significant)} / {yes_no(e.significant_without)}"]


def edge_sentence(d: DatasetReport) -> str | None:
    """One sentence when leaving the edge-case pairs out changes the set's conclusion (None when it does not)."""
    e = d.edge
    if e is None or e.n_flagged == 0 or d.significant is None or e.significant_without is None:
        return None
    if d.significant == e.significant_without:
        return None
    now = "significant" if d.significant else "not significant"
    then = "significant" if e.significant_without else "not significant"
    return (f"{d.name}: {now} with its {e.n_flagged} edge-case Overlap pair(s), {then} without them: the "
            "conclusion rests on the pairs the detector is least sure of; review them by eye.")


EDGE_TEXT = ("Overlap pairs whose evaluation image is smaller on its shorter side than the sizes the detector's "
             "decision was measured at, or nearly uniform (little to match on), are the least certain Overlap. "
             "\"without\": the paper's statistics with those examples left out of the set (counted neither "
             "Overlap nor Clean); p adjusted by the report's correction across the sets either way.")
