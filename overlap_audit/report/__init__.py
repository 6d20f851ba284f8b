"""The report: report.json (everything, machine-readable), report.md (the Figure-17 table), splits.parquet,
and report.html (table, plot and matched-pair galleries; see ``overlap_audit.report.html``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ReportError
from ..atomic import atomic_write, atomic_write_json, atomic_write_text
from ..stats import ExtendedStats, OverlapStats
from ..values import DetectorInfo, Skipped, Split

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
SPLITS = "splits.parquet"


@dataclass(frozen=True)
class DatasetReport:
    """One evaluation set's line of the report."""

    name: str
    threshold: float
    stats: OverlapStats
    p_value_adjusted: float | None  # by the report's deciding correction
    significant: bool | None  # by the report's deciding correction
    n_low_information: int
    skipped: list[Skipped] = field(default_factory=list)
    extended: ExtendedStats | None = None
    # both corrections of the paper's p-value, and the deciding one applied to the two-sample p-value
    adjusted: dict[str, float | None] = field(default_factory=dict)
    significant_by: dict[str, bool | None] = field(default_factory=dict)
    two_sample_p_adjusted: float | None = None
    two_sample_significant: bool | None = None

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "threshold": self.threshold,
            **self.stats.to_dict(),
            "p_value_adjusted": self.p_value_adjusted,
            "significant": self.significant,
        }
        for method in ("bonferroni", "holm"):
            if method in self.adjusted:
                d[f"p_value_adjusted_{method}"] = self.adjusted[method]
                d[f"significant_{method}"] = self.significant_by.get(method)
        if self.extended is not None:
            d.update(self.extended.to_dict())
            d["two_sample_p_adjusted"] = self.two_sample_p_adjusted
            d["two_sample_significant"] = self.two_sample_significant
        d.update({
            "n_low_information": self.n_low_information,
            "n_skipped": len(self.skipped),
            "skipped": [s.to_dict() for s in self.skipped],
        })
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetReport":
        methods = [m for m in ("bonferroni", "holm") if f"p_value_adjusted_{m}" in d]
        return cls(
            name=d["name"],
            threshold=float(d["threshold"]),
            stats=OverlapStats.from_dict(d),
            p_value_adjusted=d["p_value_adjusted"],
            significant=d["significant"],
            n_low_information=int(d["n_low_information"]),
            skipped=[Skipped.from_dict(s) for s in d["skipped"]],
            extended=ExtendedStats.from_dict(d) if "two_sample_p" in d else None,
            adjusted={m: d[f"p_value_adjusted_{m}"] for m in methods},
            significant_by={m: d[f"significant_{m}"] for m in methods},
            two_sample_p_adjusted=d.get("two_sample_p_adjusted"),
            two_sample_significant=d.get("two_sample_significant"),
        )


@dataclass(frozen=True)
class Report:
    """A whole report: what was compared with what, and one DatasetReport per evaluation set."""

    detector: DetectorInfo
    index: dict
    datasets: list[DatasetReport]
    k: int
    alpha: float
    ci_level: float
    correction: str
    predictions: str
    package_version: str
    created: str
    evals: dict[str, str] = field(default_factory=dict)  # name -> source spec of each evaluation set
    model: dict | None = None  # report --model: spec, weights_sha256, device, templates, classnames

    @property
    def threshold(self) -> dict[str, float]:
        return {d.name: d.threshold for d in self.datasets}

    def dataset(self, name: str) -> DatasetReport:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "package_version": self.package_version,
            "created": self.created,
            "detector": self.detector.to_dict(),
            "index": self.index,
            "predictions": self.predictions,
            "evals": self.evals,
            "threshold": self.threshold,
            "k": self.k,
            "alpha": self.alpha,
            "ci_level": self.ci_level,
            "correction": {"method": self.correction,
                           "m": sum(d.stats.p_value is not None for d in self.datasets)},
            "datasets": [d.to_dict() for d in self.datasets],
            **({"model": self.model} if self.model is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        return cls(
            detector=DetectorInfo.from_dict(d["detector"]),
            index=d["index"],
            datasets=[DatasetReport.from_dict(x) for x in d["datasets"]],
            k=int(d["k"]),
            alpha=float(d["alpha"]),
            ci_level=float(d["ci_level"]),
            correction=d["correction"]["method"],
            predictions=d["predictions"],
            package_version=d["package_version"],
            created=d["created"],
            evals=dict(d.get("evals", {})),
            model=d.get("model"),
        )


def load_report(path: str | os.PathLike) -> Report:
    """Read report.json (or the directory holding it) back into a Report."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    try:
        return Report.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{path} is not an overlap-audit report: {exc}") from None


# ---------------------------------------------------------------- Markdown


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _signed_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def _interval(ci: tuple[float, float] | None, signed: bool = False) -> str:
    if ci is None:
        return "–"
    f = _signed_pct if signed else _pct
    return f"[{f(ci[0])}, {f(ci[1])}]"


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def recall_line(recall: dict) -> str:
    """What an approximate search may have missed, in one line."""
    if not recall or recall.get("exact"):
        return "exact search (nothing missed)"
    if not recall.get("n_queries"):
        return f"approximate search, recall not measured ({recall.get('note', 'no queries')})"
    return (f"approximate search: recall@1 {100 * recall['recall_at_1']:.1f}%, recall@{recall['k']} "
            f"{100 * recall['recall_at_k']:.1f}% against exact search on {recall['n_queries']} augmented corpus "
            f"copies (source found in top {recall['k']}: {100 * recall['source_found_at_k']:.1f}%, exact: "
            f"{100 * recall['source_found_at_k_exact']:.1f}%)")


def model_line(model: dict) -> str:
    """What report --model scored, in one line."""
    counts = sorted({t["count"] for t in model.get("templates", {}).values()})
    return (f"Model `{model['spec']}` (weights sha256 {model['weights_sha256'][:12]}…, {model['device']}) scored "
            f"zero-shot with {'/'.join(map(str, counts))} prompt template(s) per class; its predictions are in "
            f"predictions.parquet.")


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a "|" or a line break in a name would split the row."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def format_table(report: Report) -> str:
    """The Figure-17 table as Markdown (accuracies and intervals in %)."""
    level = f"{100 * report.ci_level:g}%"
    head = ("| Dataset | n | Overlap % | All | Clean | Overlap | All − Clean | p-value | sig. "
            f"| {level} CI Overlap | {level} CI Clean | {level} CI All − Clean |")
    rows = [head, "|" + "---|" * 12]
    for d in report.datasets:
        s = d.stats
        sig = "–" if d.significant is None else ("yes" if d.significant else "no")
        rows.append(
            f"| {_cell(d.name)} | {s.n_all} | {_pct(s.overlap_rate)} | {_pct(s.acc_all)} | {_pct(s.acc_clean)} "
            f"| {_pct(s.acc_overlap)} | {_signed_pct(s.delta)} | {_p(s.p_value)} | {sig} "
            f"| {_interval(s.ci_overlap)} | {_interval(s.ci_clean)} | {_interval(s.ci_delta, signed=True)} |"
        )
    return "\n".join(rows)


def _gap_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def format_extended_table(report: Report) -> str:
    """The numbers beyond the paper, as Markdown (in percentage points)."""
    level = f"{100 * report.ci_level:g}%"
    rows = [
        "| Dataset | Overlap − Clean | two-sample p (test) | sig. | Newcombe "
        f"{level} CI All − Clean | p Bonferroni | p Holm | min. detectable gap (All − Clean) | "
        "corrected for detector error: overlap %, All − Clean [CI] |",
        "|" + "---|" * 9,
    ]
    for d in report.datasets:
        e = d.extended
        if e is None:
            continue
        sig = "–" if d.two_sample_significant is None else ("yes" if d.two_sample_significant else "no")
        test = f"{_p(e.two_sample_p)} ({e.two_sample_method})" if e.two_sample_method else "–"
        mdg = "none detectable" if e.min_detectable_gap is None and d.stats.p_value is not None else (
            "–" if e.min_detectable_gap is None else f"{_gap_pct(e.min_detectable_gap)} ({_gap_pct(e.min_detectable_delta)})")
        corr = "–"
        if e.detector is not None:
            c = e.detector
            corr = (f"{_pct(c.overlap_rate)}, {_signed_pct(c.delta)} {_interval(c.ci_delta, signed=True)}"
                    if c.delta is not None else f"undefined: {c.note}")
        rows.append(
            f"| {_cell(d.name)} | {_signed_pct(e.gap)} | {test} | {sig} | {_interval(e.ci_delta_newcombe, signed=True)} "
            f"| {_p(d.adjusted.get('bonferroni'))} | {_p(d.adjusted.get('holm'))} | {mdg} | {corr} |"
        )
    return "\n".join(rows)


def interpretation(report: Report) -> list[str]:
    """One sentence per dataset that reads its result the way a reader should."""
    lines = []
    for d in report.datasets:
        e, s = d.extended, d.stats
        if s.p_value is None:
            lines.append(f"- {d.name}: no test (no {'Overlap' if not s.n_overlap else 'Clean'} examples).")
            continue
        if d.significant:
            text = (f"- {d.name}: Overlap accuracy exceeds Clean accuracy ({report.correction}-significant); "
                    f"overlap inflates the reported accuracy by {_signed_pct(s.delta)} points "
                    f"({100 * report.ci_level:g}% interval {_interval(s.ci_delta, signed=True)} paper-style"
                    + (f", {_interval(e.ci_delta_newcombe, signed=True)} Newcombe" if e is not None else "") + ").")
        else:
            text = f"- {d.name}: not significant"
            if e is not None and e.min_detectable_gap is not None:
                text += (f"; the test had 80% power against an Overlap − Clean gap of {_gap_pct(e.min_detectable_gap)} "
                         f"points (All − Clean {_gap_pct(e.min_detectable_delta)}), so no effect that large was present.")
            else:
                text += "; too few Overlap examples for the test to detect any gap."
        if e is not None and e.detector is not None and e.detector.ci_delta is not None:
            text += (f" Allowing for the detector's measured error, the inflation is at most "
                     f"{_signed_pct(e.detector.ci_delta[1])} points.")
        lines.append(text)
    return lines


def format_markdown(report: Report) -> str:
    """The whole report.md."""
    det = report.detector
    lines = [
        "# Data overlap report",
        "",
        f"Detector `{det.spec}` (version {det.version}, {det.dim}-d, {det.metric}); index `{report.index.get('path')}` "
        f"with {report.index.get('n_indexed')} corpus items; k = {report.k}.",
        f"Search: {report.index.get('search', 'exact')}; {recall_line(report.index.get('recall', {}))}.",
        *([model_line(report.model)] if report.model else []),
        f"p-value: one-sided binomial test, H0 Overlap accuracy = Clean accuracy (alternative: greater). "
        f"Significance after {report.correction.capitalize()} correction at alpha = {report.alpha:g} across "
        f"{sum(d.stats.p_value is not None for d in report.datasets)} dataset(s). Intervals: Clopper–Pearson at "
        f"{100 * report.ci_level:g}%. Accuracies in %.",
        "",
        format_table(report),
        "",
        "| Dataset | threshold | low-information (never Overlap) | skipped |",
        "|---|---|---|---|",
    ]
    for d in report.datasets:
        lines.append(f"| {_cell(d.name)} | {d.threshold:.4f} | {d.n_low_information} | {len(d.skipped)} |")
    if any(d.extended is not None for d in report.datasets):
        lines += [
            "",
            "## Beyond the paper",
            "",
            "Overlap − Clean = acc_overlap − acc_clean, and All − Clean = overlap rate × (Overlap − Clean). The "
            "two-sample test (Boschloo's exact test, or Fisher's for large sets) treats Clean accuracy as an "
            "estimate too; its significance uses the same correction. Newcombe's hybrid score interval is "
            "scaled by the overlap rate. p Bonferroni / p Holm: the paper's p-value adjusted both ways. "
            "Minimum detectable gap: 80% power for the paper's test at the per-dataset level "
            "(alpha / m). In percentage points.",
            "",
            format_extended_table(report),
            "",
            *interpretation(report),
        ]
    skipped = [(d.name, s) for d in report.datasets for s in d.skipped]
    if skipped:
        lines += ["", "## Skipped evaluation items", ""]
        for name, s in skipped[:200]:
            lines.append(f"- {name}: `{s.id}`: {s.reason}")
        if len(skipped) > 200:
            lines.append(f"- … and {len(skipped) - 200} more (all listed in report.json)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- files


def write_splits(path: str | os.PathLike, splits: dict[str, Split], correct: dict[str, np.ndarray]) -> None:
    """One row per evaluated example: its neighbours, similarity, Overlap flag and correctness."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list] = {k: [] for k in ("dataset", "id", "label", "neighbor_ids", "neighbor_similarities",
                                             "similarity", "overlap", "low_information", "correct")}
    for name, sp in splits.items():
        sims = sp.neighbors.similarities
        for i, ident in enumerate(sp.ids):
            row_sims = [None if np.isnan(x) else float(x) for x in sims[i]]
            cols["dataset"].append(name)
            cols["id"].append(ident)
            cols["label"].append(sp.labels[i])
            cols["neighbor_ids"].append(list(sp.neighbors.ids[i]))
            cols["neighbor_similarities"].append(row_sims)
            cols["similarity"].append(row_sims[0] if row_sims else None)
            cols["overlap"].append(bool(sp.overlap[i]))
            cols["low_information"].append(bool(sp.low_information[i]))
            cols["correct"].append(bool(correct[name][i]))
    table = pa.table({
        "dataset": pa.array(cols["dataset"], pa.string()),
        "id": pa.array(cols["id"], pa.string()),
        "label": pa.array(cols["label"], pa.string()),
        "neighbor_ids": pa.array(cols["neighbor_ids"], pa.list_(pa.string())),
        "neighbor_similarities": pa.array(cols["neighbor_similarities"], pa.list_(pa.float32())),
        "similarity": pa.array(cols["similarity"], pa.float32()),
        "overlap": pa.array(cols["overlap"], pa.bool_()),
        "low_information": pa.array(cols["low_information"], pa.bool_()),
        "correct": pa.array(cols["correct"], pa.bool_()),
    })
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_report(out_dir: str | os.PathLike, report: Report, splits: dict[str, Split],
                 correct: dict[str, np.ndarray], *, gallery: int | None = None,
                 max_pixels: int | None = None) -> Path:
    """Write report.json, report.md, splits.parquet and report.html into ``out_dir``; returns the directory.

    ``gallery`` caps the matched pairs report.html shows per dataset (default ``html.DEFAULT_GALLERY``).
    """
    from .html import DEFAULT_GALLERY, write_html_report
    from ..imaging import DEFAULT_MAX_PIXELS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = out / "report.html"
    if html.exists():
        html.unlink()  # a page from an earlier report must never sit beside this report.json
    write_splits(out / SPLITS, splits, correct)
    atomic_write_text(out / REPORT_MD, format_markdown(report))
    atomic_write_json(out / REPORT_JSON, report.to_dict())
    try:
        write_html_report(out, gallery=DEFAULT_GALLERY if gallery is None else gallery,
                          max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    except (OSError, ValueError, RuntimeError) as exc:
        from ..errors import ReportError

        raise ReportError(f"report.json, report.md and splits.parquet are written in {out}, but report.html could "
                          f"not be drawn ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                          "redraw it with overlap_audit.report.html.write_html_report") from None
    return out
