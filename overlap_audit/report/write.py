"""Writing a report directory as one unit: splits.parquet, report.md, report.json and report.html."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_write, atomic_write_json, atomic_write_text, exchange, fsync_dir, hold_lock
from ..content import box_arrow_type
from ..errors import OutputDirError, ReportError, param
from ..values import Split
from .markdown import format_markdown
from .value import CORPUS_MATCHES, REPORT_HTML, REPORT_JSON, REPORT_MD, SPLITS, Report

if TYPE_CHECKING:
    from .html import Gallery


def splits_table(splits: dict[str, Split], correct: dict[str, np.ndarray]):
    """splits.parquet's table (pyarrow): one row per evaluated example, its neighbours, similarity (the
    nearest item's), the rank of its match among the neighbours, Overlap flag and correctness."""
    import pyarrow as pa

    cols: dict[str, list] = {k: [] for k in ("dataset", "id", "label", "neighbor_ids", "neighbor_similarities",
                                             "similarity", "overlap", "low_information", "correct", "view",
                                             "content_box", "neighbor_content_box", "verify_score", "verified",
                                             "match_rank")}
    for name, sp in splits.items():
        sims = sp.neighbors.similarities
        views = sp.neighbors.views
        for i, ident in enumerate(sp.ids):
            cols["view"].append(views[i] if views else None)
            box = sp.boxes[i] if sp.boxes else None
            near = sp.neighbor_boxes[i] if sp.neighbor_boxes else None
            cols["content_box"].append(None if box is None else box.to_dict())
            cols["neighbor_content_box"].append(None if near is None else near.to_dict())
            row_sims = [None if np.isnan(x) else float(x) for x in sims[i]]
            checked = sp.verify_scores is not None and not np.isnan(sp.verify_scores[i])
            cols["verify_score"].append(float(sp.verify_scores[i]) if checked else None)
            cols["verified"].append(bool(sp.verified[i]) if checked else None)
            cols["dataset"].append(name)
            cols["id"].append(ident)
            cols["label"].append(sp.labels[i])
            cols["neighbor_ids"].append(list(sp.neighbors.ids[i]))
            cols["neighbor_similarities"].append(row_sims)
            cols["similarity"].append(row_sims[0] if row_sims else None)
            cols["match_rank"].append(int(sp.match_column[i]) + 1 if row_sims else None)
            cols["overlap"].append(bool(sp.overlap[i]))
            cols["low_information"].append(bool(sp.low_information[i]))
            cols["correct"].append(bool(correct[name][i]))
    return pa.table({
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
        "content_box": pa.array(cols["content_box"], box_arrow_type()),
        "neighbor_content_box": pa.array(cols["neighbor_content_box"], box_arrow_type()),
        # verification (report --verify): the pair's score and decision; null where it was not verified
        "verify_score": pa.array(cols["verify_score"], pa.float32()),
        "verified": pa.array(cols["verified"], pa.bool_()),
        # the rank among neighbor_ids of the corpus item the decision names (1: the nearest; a later one where
        # verification accepted it and not the nearest); neighbor_content_box, verify_score and verified are its
        "match_rank": pa.array(cols["match_rank"], pa.int32()),
    })


def write_splits(path: str | os.PathLike, splits: dict[str, Split], correct: dict[str, np.ndarray]) -> None:
    """Write splits.parquet (``splits_table``)."""
    import pyarrow.parquet as pq

    table = splits_table(splits, correct)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _owned_files(out: Path) -> set[str]:
    """The names an earlier run recorded in ``out/report.json`` as written by it (empty: none)."""
    try:
        data = json.loads((out / REPORT_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(data, dict):
        return set()
    files = data.get("files")
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return {f for f in files if f and "/" not in f and f not in (".", "..")} | {REPORT_JSON}
    if "datasets" in data and "detector" in data:  # a report.json written before reports listed their files
        return {REPORT_JSON, REPORT_MD, REPORT_HTML, SPLITS} | ({"predictions.parquet"} if data.get("model") else set())
    return set()


def check_report_dir(out_dir: str | os.PathLike) -> None:
    """Refuse an output directory that holds anything an earlier report did not write (named in the error).

    New, empty, and earlier report directories pass; nothing is changed.
    """
    out = Path(out_dir)
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise OutputDirError(f"{param('out_dir', out)} exists and is not a directory; give a new directory or an earlier "
                             "report directory")
    entries = sorted(os.listdir(out))
    foreign = [e for e in entries if e not in _owned_files(out)] if entries else []
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OutputDirError(f"{param('out_dir', out)} holds {str(out / foreign[0])!r}{more}, which no earlier report wrote; "
                             "overlap-audit never deletes or overwrites such files: give a new or empty directory, "
                             "or move them away")


def _switch_in(stage: Path, out: Path) -> None:
    """Put the finished directory ``stage`` at ``out``, replacing an earlier report there as a whole.

    Where the system can (Linux's renameat2 RENAME_EXCHANGE), the two directories swap in one step, so
    ``out`` is never absent; elsewhere the old report moves aside into ``.NAME.old-*`` first, and a run
    killed between the two renames is put right by the next run (``clean_leftovers``).
    """
    check_report_dir(out)  # again: files may have appeared while the report was computed
    if not os.path.lexists(out):
        os.rename(stage, out)
        fsync_dir(out.parent)
        return
    if exchange(stage, out):
        fsync_dir(out.parent)
        shutil.rmtree(stage, ignore_errors=True)  # the old report, now under the staging name
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.rename(stage, out)
        fsync_dir(out.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    os.rename(stage, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def clean_leftovers(out_dir: str | os.PathLike) -> list[Path]:
    """Remove what killed report runs left beside ``out_dir`` (their staging directories ``.NAME.tmp-*``, the
    corpus-matches temporaries ``.NAME-corpus_matches.parquet.tmp-*``), after putting back an earlier report
    that a kill between the fallback's two renames left only in ``.NAME.old-*``; returns what was removed.
    Call it holding the lock (``report_lock``): a running report's staging files look the same."""
    out = Path(out_dir)
    parent = out.parent
    if not parent.is_dir():
        return []
    removed = []
    for old in sorted(parent.glob(glob_escape(f".{out.name}.old-") + "*")):
        kept = old / out.name
        if not os.path.lexists(out) and kept.is_dir() and not kept.is_symlink():
            os.rename(kept, out)  # the earlier report, back in place
            fsync_dir(parent)
    for prefix in (f".{out.name}.old-", f".{out.name}.tmp-", f".{out.name}-{CORPUS_MATCHES}.tmp-"):
        for p in parent.glob(glob_escape(prefix) + "*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextmanager
def report_lock(out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of a report's ``--out`` for the length of a run (a second run there is refused with
    BusyError), after cleaning what killed runs left beside it (``clean_leftovers``)."""
    with hold_lock(out_dir, "report"):
        clean_leftovers(out_dir)
        yield


def write_report(out_dir: str | os.PathLike, report: Report, splits: dict[str, Split],
                 correct: dict[str, np.ndarray], *, galleries: Sequence[Gallery] = (),
                 extra_files: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Write report.json, report.md, splits.parquet and report.html (and a copy of each ``extra_files``
    ``{name: path}``) as one directory at ``out_dir``; returns it.

    The files are written into a new directory beside ``out_dir`` that is renamed into place once complete,
    so ``out_dir`` never mixes two runs. An earlier report there is replaced as a whole; a directory holding
    anything else is refused (``check_report_dir``). report.json lists the files. report.html shows
    ``galleries``, the matched pairs with their images (``evidence.build_galleries`` fetches them).
    """
    from .html import render_html  # the page needs matplotlib; importing the package does not

    out = Path(out_dir)
    check_report_dir(out)
    extra = dict(extra_files or {})
    names = sorted({REPORT_JSON, REPORT_MD, REPORT_HTML, SPLITS, *extra})
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
        for name, src in extra.items():
            atomic_write(stage / name, lambda tmp, src=src: shutil.copyfile(src, tmp))
        write_splits(stage / SPLITS, splits, correct)
        atomic_write_text(stage / REPORT_MD, format_markdown(report))
        written = replace(report, files=tuple(names))
        atomic_write_json(stage / REPORT_JSON, written.to_dict())
        try:
            atomic_write_text(stage / REPORT_HTML, render_html(written, list(galleries)))
        except (OSError, ValueError, RuntimeError) as exc:
            names.remove(REPORT_HTML)
            atomic_write_json(stage / REPORT_JSON, replace(report, files=tuple(names)).to_dict())
            _switch_in(stage, out)
            raise ReportError(f"report.json, report.md and splits.parquet are written in {out}, but report.html "
                              f"could not be drawn ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); "
                              "redraw it with overlap_audit.evidence.write_html_report") from None
        _switch_in(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out
