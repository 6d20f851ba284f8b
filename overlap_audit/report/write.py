"""Writing a report directory: splits.parquet, report.md, report.json and report.html."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write, atomic_write_json, atomic_write_text
from ..errors import ReportError
from ..values import Split
from .markdown import format_markdown
from .model import REPORT_HTML, REPORT_JSON, REPORT_MD, SPLITS, Report


def _BOX_TYPE():
    import pyarrow as pa

    return pa.struct([(f, pa.int32()) for f in ("left", "top", "right", "bottom", "width", "height")]
                     + [("trimmed", pa.bool_())])


def _box(box) -> dict | None:
    if box is None:
        return None
    return {"left": box.left, "top": box.top, "right": box.right, "bottom": box.bottom, "width": box.width,
            "height": box.height, "trimmed": bool(box.trimmed)}


def write_splits(path: str | os.PathLike, splits: dict[str, Split], correct: dict[str, np.ndarray]) -> None:
    """One row per evaluated example: its neighbours, similarity, Overlap flag and correctness."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list] = {k: [] for k in ("dataset", "id", "label", "neighbor_ids", "neighbor_similarities",
                                             "similarity", "overlap", "low_information", "correct", "view",
                                             "content_box", "neighbor_content_box")}
    for name, sp in splits.items():
        sims = sp.neighbors.similarities
        views = sp.neighbors.views
        for i, ident in enumerate(sp.ids):
            cols["view"].append(views[i] if views else None)
            cols["content_box"].append(_box(sp.boxes[i] if sp.boxes else None))
            cols["neighbor_content_box"].append(_box(sp.neighbor_boxes[i] if sp.neighbor_boxes else None))
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
        # a trimming detector: the query view that matched, and both sides' content boxes
        "view": pa.array(cols["view"], pa.string()),
        "content_box": pa.array(cols["content_box"], _BOX_TYPE()),
        "neighbor_content_box": pa.array(cols["neighbor_content_box"], _BOX_TYPE()),
    })
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_report(out_dir: str | os.PathLike, report: Report, splits: dict[str, Split],
                 correct: dict[str, np.ndarray], *, gallery: int | None = None,
                 max_pixels: int | None = None) -> Path:
    """Write report.json, report.md, splits.parquet and report.html into ``out_dir``; returns the directory.

    ``gallery`` caps the matched pairs report.html shows per dataset (default ``html.DEFAULT_GALLERY``).
    """
    from ..imaging import DEFAULT_MAX_PIXELS  # the page needs Pillow; importing the package does not
    from .html import DEFAULT_GALLERY, write_html_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = out / REPORT_HTML
    if html.exists():
        html.unlink()  # a page from an earlier report must never sit beside this report.json
    write_splits(out / SPLITS, splits, correct)
    atomic_write_text(out / REPORT_MD, format_markdown(report))
    atomic_write_json(out / REPORT_JSON, report.to_dict())
    try:
        write_html_report(out, gallery=DEFAULT_GALLERY if gallery is None else gallery,
                          max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ReportError(f"report.json, report.md and splits.parquet are written in {out}, but report.html could "
                          f"not be drawn ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                          "redraw it with overlap_audit.report.html.write_html_report") from None
    return out
