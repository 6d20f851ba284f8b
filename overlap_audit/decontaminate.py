"""A training pool without the items an audit matched: the blocklist, and filtered copies of img2dataset's
Parquet files.

``decontaminate(report_dir, out_dir)`` reads the report's ``corpus_matches.parquet`` and the corpus sources
its index records, and writes to ``out_dir``:

- ``blocklist.parquet`` and ``blocklist.csv``: one row per matched corpus item, keyed as the corpus is
  (``BLOCK_COLUMNS``: ``source``, ``key`` = the item's id in its source, img2dataset's ``key``, ``url``,
  ``uid``, ``shard``, ``member``, ``row``, ``path``, ``item_xxh3``, the ``datasets`` it matched and its
  highest ``similarity``). The CSV's text cells are made inert for spreadsheets (``inert.csv_cell``); the
  Parquet file holds the exact values.
- ``SOURCE/FILE.parquet``: a copy of each local Parquet file of the corpus without the matched rows: the
  files of a Parquet source (images included), and for a WebDataset source the metadata file img2dataset
  writes beside each tar (``00000.parquet`` beside ``00000.tar``). Tars are not rewritten: a reader skips
  the blocklist's keys (docs/formats.md).
- ``decontamination.json``: what was dropped and kept, per file and in all.

A row whose id is null is kept: only matched items are dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write, atomic_write_json
from .errors import OutputDirError, ReportError, param
from .index import load_manifest
from .inert import csv_cell
from .matched import metadata_beside
from .outputs import check_output_apart
from .report import CORPUS_MATCHES, load_report
from .sources import PARQUET_ID_COLUMNS
from .sources.parquet import parquet_file
from .sources.remote import is_pipe, is_url

__all__ = ["BLOCKLIST", "BLOCK_COLUMNS", "SUMMARY", "Decontamination", "FilteredFile", "blocklist_table",
           "decontaminate"]

BLOCKLIST = "blocklist"  # .parquet and .csv
SUMMARY = "decontamination.json"
BLOCK_COLUMNS = ("source", "key", "url", "uid", "shard", "member", "row", "path", "item_xxh3", "datasets",
                 "similarity")


@dataclass(frozen=True)
class FilteredFile:
    """One corpus Parquet file and its filtered copy: rows kept and dropped."""

    source: str
    original: str
    written: str
    kept: int
    dropped: int

    def to_dict(self) -> dict:
        return {"source": self.source, "original": self.original, "written": self.written, "kept": self.kept,
                "dropped": self.dropped}


@dataclass(frozen=True)
class Decontamination:
    """What ``decontaminate`` wrote: the blocklist's size, each filtered file, and the blocked items that no
    filtered file held (a folder corpus, a WebDataset shard without a metadata file, a remote file)."""

    out_dir: str
    n_blocked: int
    files: tuple[FilteredFile, ...]
    n_not_in_files: int

    @property
    def kept(self) -> int:
        return sum(f.kept for f in self.files)

    @property
    def dropped(self) -> int:
        return sum(f.dropped for f in self.files)

    def to_dict(self) -> dict:
        return {"n_blocked": self.n_blocked, "kept": self.kept, "dropped": self.dropped,
                "n_not_in_files": self.n_not_in_files, "files": [f.to_dict() for f in self.files]}


def blocklist_table(matches):
    """One row per matched corpus item (``BLOCK_COLUMNS``) of a ``corpus_matches`` table, sorted by source
    and key."""
    import pyarrow as pa

    items: dict[tuple[str, str], dict] = {}
    for r in matches.to_pylist():
        if r["source"] is None or r["id"] is None:  # a key no shard holds any more: nothing to name
            continue
        entry = items.setdefault((r["source"], r["id"]), {
            "source": r["source"], "key": r["id"], "url": r["url"], "uid": r["uid"], "shard": r["shard"],
            "member": r["member"], "row": r["row"], "path": r["path"], "item_xxh3": r["item_xxh3"],
            "datasets": set(), "similarity": r["similarity"]})
        entry["datasets"].add(r["dataset"])
        if r["similarity"] is not None and (entry["similarity"] is None or r["similarity"] > entry["similarity"]):
            entry["similarity"] = r["similarity"]
    rows = [items[k] for k in sorted(items)]
    text = ("source", "key", "url", "uid", "shard", "member")
    return pa.table({
        **{c: pa.array([r[c] for r in rows], pa.string()) for c in text},
        "row": pa.array([r["row"] for r in rows], pa.int64()),
        "path": pa.array([r["path"] for r in rows], pa.string()),
        "item_xxh3": pa.array([r["item_xxh3"] for r in rows], pa.string()),
        "datasets": pa.array([",".join(sorted(r["datasets"])) for r in rows], pa.string()),
        "similarity": pa.array([r["similarity"] for r in rows], pa.float32()),
    })


def _csv_table(table):
    import pyarrow as pa

    return pa.table({c: pa.array([None if v is None else csv_cell(v) for v in table[c].to_pylist()], pa.string())
                     if pa.types.is_string(table[c].type) else table[c] for c in table.column_names})


def _corpus_files(entry: dict) -> list[str]:
    """The local Parquet files of a recorded source that list its items: its own files, or the metadata
    files beside its tars."""
    paths = [str(p) for p in entry.get("paths", ())]
    if entry.get("kind") == "parquet":
        return [p for p in paths if not is_url(p) and not is_pipe(p)]
    if entry.get("kind") == "wds":
        return [m for m in (metadata_beside(p) for p in paths) if m is not None]
    return []


def _filter_file(path: str, out: Path, blocked) -> tuple[int, int, set[str]] | None:
    """Write ``path`` without the rows whose id is in ``blocked`` to ``out``: (kept, dropped, dropped ids);
    None for a file without an id column (left out)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    counts = [0, 0]
    dropped_ids: set[str] = set()
    with parquet_file(path) as pf:
        schema = pf.schema_arrow
        ident = next((c for c in PARQUET_ID_COLUMNS if c in schema.names), None)
        if ident is None:
            return None

        def write(tmp: str) -> None:
            counts[:] = [0, 0]
            with pq.ParquetWriter(tmp, schema) as writer:
                for batch in pf.iter_batches(batch_size=1024):
                    ids = pc.cast(batch.column(ident), pa.string())
                    drop = pc.is_in(ids, value_set=blocked).fill_null(False)  # a null id is no match
                    kept = batch.filter(pc.invert(drop))
                    dropped_ids.update(ids.filter(drop).to_pylist())
                    writer.write_table(pa.Table.from_batches([kept], schema=schema))
                    counts[0] += kept.num_rows
                    counts[1] += batch.num_rows - kept.num_rows

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, write)
    return counts[0], counts[1], dropped_ids


def _check_out(out: Path, report_dir: Path, sources: list[dict]) -> None:
    reads = [("report directory", str(report_dir), True)]
    for entry in sources:
        for p in entry.get("paths", ()):
            if not is_url(str(p)) and not is_pipe(str(p)):
                reads.append((f"corpus source {entry.get('name')!r}", os.path.dirname(str(p)), True))
    check_output_apart(out, reads)
    if os.path.lexists(out) and (not out.is_dir() or any(out.iterdir())):
        raise OutputDirError(f"{param('out_dir')} {out} exists and is not an empty directory; give a new or empty directory")


def decontaminate(report_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  index_dir: str | os.PathLike | None = None) -> Decontamination:
    """Write the blocklist of a report's matched corpus items and filtered copies of the corpus's Parquet
    files to ``out_dir`` (new or empty); ``index_dir`` defaults to the index report.json names."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    report_dir = Path(report_dir)
    matches_path = report_dir / CORPUS_MATCHES
    if not matches_path.is_file():
        raise ReportError(f"{report_dir} has no {CORPUS_MATCHES}: give a directory written by "
                          "`overlap-audit report` (or run it again)")
    index_dir = index_dir if index_dir is not None else load_report(report_dir).index["path"]
    sources = load_manifest(index_dir).sources
    out = Path(out_dir)
    _check_out(out, report_dir, sources)

    matches = pq.read_table(matches_path)
    missing = [c for c in ("shard", "member", "row", "path", "item_xxh3") if c not in matches.column_names]
    if missing:
        raise ReportError(f"{matches_path} was written by an earlier overlap-audit (no {', '.join(missing)} "
                          "column): run `overlap-audit report` again")
    blocklist = blocklist_table(matches)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{BLOCKLIST}.parquet", lambda tmp: pq.write_table(blocklist, tmp))
    atomic_write(out / f"{BLOCKLIST}.csv", lambda tmp: pacsv.write_csv(_csv_table(blocklist), tmp))

    by_source: dict[str, list[str]] = {}
    for source, key in zip(blocklist["source"].to_pylist(), blocklist["key"].to_pylist()):
        by_source.setdefault(source, []).append(key)
    files, found = [], 0
    for entry in sources:
        name = str(entry.get("name"))
        blocked = pa.array(sorted(by_source.get(name, [])), pa.string())
        dropped_here: set[str] = set()
        for path in _corpus_files(entry):
            written = out / name / os.path.basename(path)
            result = _filter_file(path, written, blocked)
            if result is None:
                continue
            kept, dropped, ids = result
            dropped_here |= ids
            files.append(FilteredFile(name, path, str(written), kept, dropped))
        found += len(dropped_here)
    result = Decontamination(str(out), blocklist.num_rows, tuple(files), blocklist.num_rows - found)
    atomic_write_json(out / SUMMARY, result.to_dict())
    return result
