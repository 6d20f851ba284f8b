"""The images of matched pairs, fetched for display: each dataset's gallery for report.html, read back from
the evaluation sources and the corpus index, and ``write_html_report`` to draw a report directory's page
again.

A source or an index that cannot be read leaves a note on the page instead of its thumbnails: the report's
numbers never depend on them.

A report directory records its evaluation sources as specs, which are data: one that runs a command
(``pipe:``) is read back only when the caller passes it again (``recorded_evals``), never from report.json.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .errors import FetchError, ModelError, OverlapAuditError
from .limits import DEFAULT_MAX_PIXELS
from .settings import DEFAULT_GALLERY
from .index import corpus_items
from .report.html import (DEFAULT_AROUND, Gallery, GalleryPair, gallery_order, render_html,
                          thumbnail)
from .report.value import REPORT_HTML, SPLITS, Report, load_report
from .sources import Source, as_source, fetch_items, source_spec
from .values import RawItem

__all__ = ["build_galleries", "eval_items", "matched", "recorded_evals", "write_html_report"]

# the splits.parquet columns a gallery shows (the optional ones only where the report has them: a trimming
# detector, a verified report; without match_rank the match is the nearest item)
GALLERY_COLUMNS = ("dataset", "id", "label", "neighbor_ids", "neighbor_similarities", "similarity",
                   "overlap", "low_information")
OPTIONAL_COLUMNS = ("view", "content_box", "neighbor_content_box", "verify_score", "verified", "match_rank")


def matched(row: dict) -> tuple[str | None, float | None]:
    """The corpus key and similarity of a splits.parquet row's match (the item the decision names)."""
    j = (row.get("match_rank") or 1) - 1
    ids, sims = row["neighbor_ids"] or [], row["neighbor_similarities"] or []
    return (ids[j] if j < len(ids) else None), (sims[j] if j < len(sims) else None)


def _class_names(report: Report, dataset: str) -> dict[str, str]:
    """{label: name} from the classnames file a ``--model`` report records for ``dataset``; empty when it
    records none or the file cannot be read any more."""
    from .zeroshot.scoring import load_classnames

    path = ((report.model or {}).get("classnames") or {}).get(dataset)
    if not path or not os.path.isfile(path):
        return {}
    try:
        return load_classnames(path)
    except ModelError:
        return {}


def _runs_command(spec: str, name: str) -> bool:
    """Whether reading a recorded spec would run a command (a ``pipe:`` source)."""
    from .sources.remote import is_pipe

    try:
        paths = as_source(spec, name=name).paths
    except OverlapAuditError:
        return spec.lstrip().startswith("pipe:")
    return any(is_pipe(p) for p in paths) or spec.lstrip().startswith("pipe:")


def _recorded(report: Report, name: str, given: dict) -> object:
    if name in given:
        return given[name]
    spec = report.evals[name]
    if _runs_command(str(spec), name):
        raise FetchError(f"the evaluation source {name!r} recorded in report.json is a command ({spec!r}); "
                         f"a recorded command is never run: pass the source again ({{{name!r}: ...}})")
    return spec


def recorded_evals(report: Report, given: dict[str, object] | None = None) -> dict[str, object]:
    """The evaluation sources of ``report`` to read back: each one ``given`` (name -> spec or in-memory source,
    typed by the caller) as given, else the spec report.json records, unless that spec runs a command.

    A recorded ``pipe:`` spec is never run (report.json is data, and a shared report directory must not be
    able to run a command): it raises FetchError unless the caller passes that source in ``given``.
    """
    given = dict(given or {})
    return {name: _recorded(report, name, given) for name in report.evals} | given


def eval_items(report: Report, name: str, ids, source: object | None = None) -> dict[str, RawItem]:
    """The items ``ids`` of ``report``'s evaluation set ``name``, read from ``source`` (a spec or in-memory
    source the caller gives) or else from the spec report.json records, which is never run as a command
    (``recorded_evals``)."""
    if source is None and name not in report.evals:
        raise FetchError(f"the report records no evaluation set {name!r} ({', '.join(report.evals) or 'none'})")
    spec = _recorded(report, name, {} if source is None else {name: source})
    src = spec if isinstance(spec, Source) else as_source(spec, name=name, labels_from_folders=True)
    return fetch_items(src, list(ids))


def build_galleries(report: Report, rows: list[dict], *, eval_sources: dict[str, object],
                    index_dir: str | os.PathLike | None, limit: int = DEFAULT_GALLERY, around: int = DEFAULT_AROUND,
                    max_pixels: int = DEFAULT_MAX_PIXELS, eval_notes: dict[str, str] | None = None,
                    progress: bool = False) -> list[Gallery]:
    """The gallery of every dataset of ``report`` from its splits rows (as in splits.parquet), with the
    images read from ``eval_sources`` (name -> spec or in-memory source) and the index at ``index_dir``;
    ``eval_notes`` says why a dataset's source is not read; ``progress`` shows a bar over the pairs drawn."""
    from tqdm import tqdm

    chosen: dict[str, tuple[list[dict], int]] = {}
    for d in report.datasets:
        mine = [r for r in rows if r["dataset"] == d.name]
        sims = [np.nan if r["similarity"] is None else r["similarity"] for r in mine]
        order, n_deciding = gallery_order(sims, d.threshold, limit, around)
        chosen[d.name] = ([mine[i] for i in order], n_deciding)

    keys = {matched(r)[0] for picked, _ in chosen.values() for r in picked} - {None}
    corpus_note = None
    corpus: dict[str, RawItem] = {}
    if index_dir is None:
        corpus_note = "the index directory is not known"
    else:
        try:
            corpus = corpus_items(index_dir, keys)
        except (OSError, OverlapAuditError) as exc:
            corpus_note = f"the index {index_dir} cannot be read ({exc})"

    galleries = []
    bar = tqdm(total=sum(len(p) for p, _ in chosen.values()), desc="gallery", unit="pair", disable=not progress,
               leave=False)
    for d in report.datasets:
        picked, n_deciding = chosen[d.name]
        n_total = sum(1 for r in rows if r["dataset"] == d.name)
        n_none = sum(1 for r in rows if r["dataset"] == d.name and r["similarity"] is None)
        evals: dict[str, RawItem] = {}
        note = None
        spec = eval_sources.get(d.name)
        if spec is None:
            note = (eval_notes or {}).get(d.name, "the evaluation source is not recorded in the report")
        else:
            try:
                evals = fetch_items(as_source(spec, name=d.name, labels_from_folders=True), [r["id"] for r in picked])
            except (OSError, OverlapAuditError) as exc:
                note = f"the evaluation source {source_spec(spec, name=d.name)} cannot be read ({exc})"
        names = _class_names(report, d.name)
        pairs = []
        for i, r in enumerate(picked):
            key, sim = matched(r)
            ev = evals.get(r["id"])
            co = corpus.get(key)
            e_box, c_box = r.get("content_box"), r.get("neighbor_content_box")
            e_uri, e_why = (thumbnail(ev, max_pixels=max_pixels, box=e_box) if ev is not None
                            else (None, note or "not found"))
            c_uri, c_why = (thumbnail(co, max_pixels=max_pixels, box=c_box) if co is not None
                            else (None, corpus_note or "not found"))
            pairs.append(GalleryPair(
                eval_id=r["id"], eval_label=r.get("label"), eval_caption=ev.caption if ev else None,
                corpus_key=key, corpus_caption=co.caption if co else None, similarity=float(sim),
                overlap=bool(r["overlap"]), low_information=bool(r["low_information"]),
                eval_thumb=e_uri, eval_problem=e_why, corpus_thumb=c_uri, corpus_problem=c_why,
                deciding=i < n_deciding, view=r.get("view"), eval_box=e_box, corpus_box=c_box,
                eval_class_name=names.get(str(r.get("label"))), verify_score=r.get("verify_score"),
                verified=r.get("verified")))
            bar.update()
        galleries.append(Gallery(d.name, d.threshold, pairs, n_total - n_none - len(pairs), n_none,
                                 note or corpus_note))
    bar.close()
    return galleries


def write_html_report(report_dir: str | os.PathLike, *, gallery: int = DEFAULT_GALLERY, around: int = DEFAULT_AROUND,
                      eval_sources: dict[str, object] | None = None, index_dir: str | os.PathLike | None = None,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> Path:
    """Write report.html from a report directory's report.json and splits.parquet; returns its path.

    The evaluation sources (name -> spec, or an in-memory source) and the index default to those the report
    records; a recorded source that runs a command (``pipe:``) is not run: its gallery shows a note unless
    ``eval_sources`` gives it again.
    """
    import pyarrow.parquet as pq

    out = Path(report_dir)
    report = load_report(out)
    present = pq.read_schema(out / SPLITS).names
    columns = [*GALLERY_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in present)]
    rows = pq.read_table(out / SPLITS, columns=columns).to_pylist()
    given = dict(eval_sources or {})
    sources, notes = dict(given), {}
    for name in report.evals:  # a recorded command stays out: its gallery says it was not run
        try:
            sources[name] = _recorded(report, name, given)
        except FetchError as exc:
            notes[name] = str(exc)
    galleries = build_galleries(report, rows, eval_sources=sources, eval_notes=notes,
                                index_dir=index_dir or report.index.get("path"), limit=gallery, around=around,
                                max_pixels=max_pixels)
    path = out / REPORT_HTML
    atomic_write_text(path, render_html(report, galleries))
    return path
