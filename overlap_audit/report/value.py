"""The Report value (one DatasetReport per evaluation set), the report's file names, and load_report."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ReportError
from ..settings import CORRECTIONS
from ..stats.edge import EdgeCases
from ..stats.overlap import ExtendedStats, OverlapStats
from ..stats.stratified import Disagreement, Stratified
from ..values import DetectorInfo, Skipped

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
SPLITS = "splits.parquet"
REPORT_HTML = "report.html"
CORPUS_MATCHES = "corpus_matches.parquet"
# report.json's format version: written with every report and checked when one is read (like the index's)
# 3: "timings" (seconds per phase, per-set counts and whether the evaluation cache was used)
REPORT_FORMAT = 3
# the per-class table's columns (``Report.class_table``), in order
# the summary table's columns (``Report.summary_table``), in order: one row per dataset
# (threshold_origin: "file", "threshold", "calibrated" or "default"; the calibrated set's estimated precision and
# recall of its Overlap split; n_edge and the *_without_edge columns: the set without its edge-case Overlap pairs)
SUMMARY_COLUMNS = ("dataset", "threshold", "threshold_origin", "n", "n_overlap", "n_clean", "overlap_rate", "acc_all",
                   "acc_overlap", "acc_clean", "delta", "ci_delta_low", "ci_delta_high", "p_value", "p_value_adjusted",
                   "significant", "n_low_information", "n_skipped", "estimated_precision", "estimated_recall",
                   "n_edge", "delta_without_edge", "significant_without_edge")
CLASS_TABLE_COLUMNS = ("label", "n", "n_overlap", "n_clean", "k_overlap", "k_clean", "acc_overlap", "acc_clean", "gap",
                       "informative", "mix_residual", "inflation")


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
    # within classes (``stats.stratified``); None where no example has a label
    stratified: Stratified | None = None
    # the pooled against the within-class comparison, with the report's correction; None without labels
    disagreement: Disagreement | None = None
    # Overlap pairs under the detector's measured size or nearly uniform, and the statistics without them;
    # None where they were not measured
    edge: EdgeCases | None = None
    warnings: list[str] = field(default_factory=list)  # what a reader must know before trusting the numbers

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "threshold": self.threshold,
            **self.stats.to_dict(),
            "p_value_adjusted": self.p_value_adjusted,
            "significant": self.significant,
        }
        for method in CORRECTIONS:
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
            "stratified": self.stratified.to_dict() if self.stratified is not None else None,
            "pooled_vs_stratified": self.disagreement.to_dict() if self.disagreement is not None else None,
            "edge_cases": self.edge.to_dict() if self.edge is not None else None,
            "warnings": list(self.warnings),
        })
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetReport":
        methods = [m for m in CORRECTIONS if f"p_value_adjusted_{m}" in d]
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
            stratified=Stratified.from_dict(d["stratified"]) if d["stratified"] is not None else None,
            disagreement=(Disagreement.from_dict(d["pooled_vs_stratified"]) if d["pooled_vs_stratified"] is not None
                          else None),
            edge=EdgeCases.from_dict(d["edge_cases"]) if d["edge_cases"] is not None else None,
            warnings=[str(w) for w in d["warnings"]],
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
    files: tuple[str, ...] = ()  # every file the report directory holds, all written by this run
    verify: dict | None = None  # verification: its threshold, first stage and per-dataset counts (None: off)
    # where each dataset's threshold came from ("origins") and, per calibrated set, its estimates; None: not known
    calibration: dict | None = None
    # seconds per phase ("seconds") and, per set, its counts, seconds and whether the evaluation cache was used
    # ("sets"); report.json holds every phase up to the write, the returned value the write too
    # seconds per phase and per-set counts: how this run went, not what it found (the returned Report also
    # times the writing, which report.json cannot hold), so two Reports of the same audit compare equal
    timings: dict = field(default_factory=dict, compare=False)
    # the report directory this value was written to or read from (not part of report.json); None: not known
    directory: str | None = field(default=None, compare=False)

    def _table(self, name: str):
        import pyarrow.parquet as pq

        if self.directory is None:
            raise ReportError(f"this Report does not know its directory; read {name} with "
                              "load_report(REPORT_DIR) and its tables, or pyarrow.parquet.read_table")
        path = Path(self.directory) / name
        try:
            return pq.read_table(path)
        except OSError as exc:
            raise ReportError(f"cannot read {path}: {exc}") from None

    def splits_table(self):
        """splits.parquet of the report directory as a pyarrow Table: one row per evaluated example (its
        neighbours, similarity, Overlap flag, correctness). ``.to_pandas()`` gives a DataFrame."""
        return self._table(SPLITS)

    def corpus_matches_table(self):
        """corpus_matches.parquet of the report directory as a pyarrow Table: one row per (corpus item,
        evaluation example) pair at or above the dataset's threshold, the list decontamination filters by."""
        return self._table(CORPUS_MATCHES)

    def class_table(self, name: str):
        """The per-class table of dataset ``name`` as a pyarrow Table (one row per class, most Overlap
        examples first; columns ``CLASS_TABLE_COLUMNS``). ``.to_pandas()`` gives a DataFrame."""
        import pyarrow as pa

        d = self.dataset(name)
        if d.stratified is None:
            raise ReportError(f"dataset {name!r} has no per-class table: none of its examples has a label")
        rows = d.stratified.table.rows
        types = {"label": pa.string(), "informative": pa.bool_(),
                 **{c: pa.int64() for c in ("n", "n_overlap", "n_clean", "k_overlap", "k_clean")}}
        return pa.table({c: pa.array([getattr(r, c) for r in rows], types.get(c, pa.float64()))
                         for c in CLASS_TABLE_COLUMNS})

    def summary_table(self):
        """The report's main table as a pyarrow Table: one row per dataset (columns ``SUMMARY_COLUMNS``;
        rates as fractions, null where undefined). ``.to_pandas()`` gives a DataFrame."""
        import pyarrow as pa

        cal = self.calibration or {}

        def row(d: DatasetReport) -> dict:
            s = d.stats
            ci = s.ci_delta or (None, None)
            est = cal.get("datasets", {}).get(d.name) or {}
            e = d.edge
            return {"dataset": d.name, "threshold": d.threshold,
                    "threshold_origin": cal.get("origins", {}).get(d.name),
                    "estimated_precision": (est.get("precision") or {}).get("value"),
                    "estimated_recall": (est.get("recall") or {}).get("value"),
                    "n_edge": e.n_flagged if e is not None else None,
                    "delta_without_edge": e.without.delta if e is not None else None,
                    "significant_without_edge": e.significant_without if e is not None else None,
                    "n": s.n_all, "n_overlap": s.n_overlap,
                    "n_clean": s.n_clean, "overlap_rate": s.overlap_rate, "acc_all": s.acc_all,
                    "acc_overlap": s.acc_overlap, "acc_clean": s.acc_clean, "delta": s.delta,
                    "ci_delta_low": ci[0], "ci_delta_high": ci[1], "p_value": s.p_value,
                    "p_value_adjusted": d.p_value_adjusted, "significant": d.significant,
                    "n_low_information": d.n_low_information, "n_skipped": len(d.skipped)}

        rows = [row(d) for d in self.datasets]
        types = {"dataset": pa.string(), "threshold_origin": pa.string(), "significant": pa.bool_(),
                 "significant_without_edge": pa.bool_(),
                 **{c: pa.int64() for c in ("n", "n_overlap", "n_clean", "n_low_information", "n_skipped", "n_edge")}}
        return pa.table({c: pa.array([r[c] for r in rows], types.get(c, pa.float64())) for c in SUMMARY_COLUMNS})

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
            "format": REPORT_FORMAT,
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
            **({"verify": self.verify} if self.verify is not None else {}),
            **({"calibration": self.calibration} if self.calibration is not None else {}),
            **({"files": list(self.files)} if self.files else {}),
            **({"timings": self.timings} if self.timings else {}),
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
            files=tuple(d.get("files", ())),
            verify=d.get("verify"),
            calibration=d.get("calibration"),
            timings=dict(d.get("timings", {})),
        )


def load_report(path: str | os.PathLike) -> Report:
    """Read report.json (or the directory holding it) back into a Report."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReportError(f"{path} is not an overlap-audit report: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != REPORT_FORMAT:
        found = raw.get("format", "none") if isinstance(raw, dict) else "none"
        raise ReportError(f"{path} is a report of format {found}, and this overlap-audit reads format "
                          f"{REPORT_FORMAT} only: run `overlap-audit report` again")
    try:
        report = Report.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{path} is not an overlap-audit report: {exc}") from None
    return replace(report, directory=str(path.parent))
