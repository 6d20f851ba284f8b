"""Holding an index directory to its manifest: the files (sizes, rows, checksums), the FAISS index, the
full check behind ``overlap-audit check`` (``check_index``), the files a killed build left behind, and whether
a detector's embeddings are comparable with the index's.

Every reader checks what it loads (``check_files``), at a cost that does not grow with the corpus but for one
``stat`` per file: the shard set and every file's size always; checksums (and row counts) of what it reads
whole (the FAISS index when it is loaded: the checksum adds one pass over bytes in memory, xxh3 at several
GB/s), of the index's own files up to ``SMALL_FILE`` bytes, and of every file of an index up to ``SMALL_INDEX``
bytes in all. The rest check what they give as they are read: shards their vectors
(``shards.read_shard_vectors``), the item table each row's key against the hash beside its offset
(``items.KeysByRow``).
``check_index`` checks every checksum, then holds
the index to the shards (``check_against_shards``): the ids in row order, and a sample of vectors, so a
manifest edited to match damaged files does not pass.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexDamagedError, IndexMismatchError
from ..values import DetectorInfo
from .manifest import GENERATION_FILE_RE, MANIFEST, REPAIR, SHARD_DIR, IndexManifest, checksum_file, load_manifest
from .items import is_item_table
from .shards import shard_paths

SMALL_FILE = 4 << 20  # the index's own files (not those beside each shard) up to this size: checksummed on every load
SMALL_INDEX = 16 << 20  # an index up to this size in all (some 10^4 items) has every file checksummed on every load
# the FAISS classes each index type is built as (``overlap_audit.index.ann.new_index``): binary, float
FAISS_CLASSES = {"flat": ("IndexBinaryFlat", "IndexFlatIP"), "ivfpq": ("IndexBinaryIVF", "IndexIVFPQFastScan"),
                 "hnsw": ("IndexBinaryHNSW", "IndexHNSWFlat"),
                 "mih": ("IndexBinaryFlat", "")}  # mih: 64-bit hashes only, the tables in index.gG.mih


def _damaged(path: Path, what: str, file: str = "") -> IndexDamagedError:
    # a shard holds embeddings nothing else has: no --resume brings them back (it refuses such a directory)
    repair = "rebuild the index in a new directory" if file.startswith(f"{SHARD_DIR}/") else REPAIR
    return IndexDamagedError(f"{path} is damaged: {what}; {repair}", file)


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def check_files(index_dir: str | os.PathLike, manifest: IndexManifest, *, full: bool = False,
                read: tuple[str, ...] = ()) -> tuple[int, int]:
    """Check the files of an index directory against its manifest; returns (files, bytes checksummed).

    Always: the shard set is exactly the recorded one, every recorded file exists with its recorded size, and
    the counts the manifest records agree with each other. Checksums, and the rows of Parquet and .npy files:
    every file with ``full``; else the files named in ``read`` (those the caller reads whole), the index's own
    files (at its top level, not one per shard) up to ``SMALL_FILE`` bytes, and every file of an index up to
    ``SMALL_INDEX`` bytes in all. The first mismatch raises IndexDirError.
    """
    path = Path(index_dir)
    on_disk = {f"{SHARD_DIR}/{p.name}" for p in shard_paths(path)}
    recorded = {name for name in manifest.files if name.startswith(f"{SHARD_DIR}/")}
    if on_disk != recorded:
        missing, extra = sorted(recorded - on_disk), sorted(on_disk - recorded)
        what = f"{missing[0]} is missing" if missing else f"{extra[0]} is not one of its recorded shards"
        raise _damaged(path, what + f" ({len(recorded)} shards recorded, {len(on_disk)} present)",
                       (missing or extra)[0])
    for name in (manifest.index_file, manifest.ids_file, manifest.vectors_file, manifest.items_file):
        if name is not None and name not in manifest.files:
            raise _damaged(path, f"its manifest names {name} but records no size or checksum for it")
    if manifest.n_shards != len(recorded):
        raise _damaged(path, f"the manifest counts {manifest.n_shards} shards but records {len(recorded)}")
    small_index = sum(rec.size for rec in manifest.files.values()) <= SMALL_INDEX
    checked = 0
    for name, rec in manifest.files.items():
        file = path / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise _damaged(path, f"{name} is missing", name) from None
        if size != rec.size:
            raise _damaged(path, f"{name} is {size} bytes where the manifest records {rec.size}", name)
        if full or small_index or name in read or (size <= SMALL_FILE and "/" not in name):
            _check_rows(path, name, rec)
            if checksum_file(file) != rec.xxh3:
                raise _damaged(path, f"{name} does not have the checksum the manifest records (its content "
                                     "changed)", name)
            checked += size
    if full and is_item_table(path, manifest.items_file):  # a table of another format: refused, so rebuilt
        from .items import ItemTable

        ItemTable(path, manifest.items_file).close()
    shard_rows = sum(rec.rows or 0 for name, rec in manifest.files.items() if name in recorded)
    if shard_rows != manifest.n_given:
        raise _damaged(path, f"its shards hold {shard_rows} items where the manifest counts {manifest.n_given}")
    for name in (manifest.ids_file, manifest.index_file):
        rows = manifest.files[name].rows
        if rows is not None and rows != manifest.n_indexed:
            raise _damaged(path, f"{name} records {rows} rows where the manifest counts {manifest.n_indexed} "
                                 "indexed items")
    return len(manifest.files), checked


def _check_rows(path: Path, name: str, rec) -> None:
    """Refuse a Parquet or .npy file that does not hold the rows the manifest records for it."""
    if rec.rows is None or not name.endswith((".parquet", ".npy")):
        return
    file = path / name
    try:
        rows = _parquet_rows(file) if name.endswith(".parquet") else len(np.load(file, mmap_mode="r"))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad footer, numpy a few
        what = "Parquet file" if name.endswith(".parquet") else "array"
        raise _damaged(path, f"{name} is not a readable {what} ({type(exc).__name__})", name) from None
    if rows != rec.rows:
        raise _damaged(path, f"{name} holds {rows} rows where the manifest records {rec.rows}", name)


def check_faiss(index_dir: str | os.PathLike, manifest: IndexManifest, index) -> None:
    """Refuse a FAISS index whose class, metric or size is not what the manifest records."""
    path = Path(index_dir)
    cls = type(index).__name__
    binary = manifest.detector.metric == "hamming"
    expected = FAISS_CLASSES.get(manifest.index_type)
    if expected is None:
        raise _damaged(path, f"its manifest names an unknown index type {manifest.index_type!r}", MANIFEST)
    if cls != expected[0 if binary else 1]:
        raise _damaged(path, f"{manifest.index_file} is a {cls} where the manifest records a "
                             f"{manifest.index_type} index ({expected[0 if binary else 1]})", manifest.index_file)
    if not binary:
        import faiss

        if index.metric_type != faiss.METRIC_INNER_PRODUCT or index.d != manifest.detector.dim:
            raise _damaged(path, f"{manifest.index_file} has metric {index.metric_type} and dimension {index.d} "
                                 f"where the manifest records inner product over {manifest.detector.dim}",
                           manifest.index_file)
    elif index.d != manifest.detector.dim:
        raise _damaged(path, f"{manifest.index_file} has {index.d} bits where the manifest records "
                             f"{manifest.detector.dim}", manifest.index_file)
    if index.ntotal != manifest.n_indexed:
        raise _damaged(path, f"{manifest.index_file} holds {index.ntotal} vectors where the manifest counts "
                             f"{manifest.n_indexed} indexed items", manifest.index_file)


def read_faiss_index(path: Path, manifest: IndexManifest):
    """The FAISS index the manifest names, read; an unreadable file is IndexDamagedError."""
    import faiss

    reader = faiss.read_index_binary if manifest.detector.metric == "hamming" else faiss.read_index
    try:
        return reader(str(path / manifest.index_file))
    except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError with a long C++ message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _damaged(path, f"cannot read {manifest.index_file} ({first[:200]})", manifest.index_file) from None


def read_id_column(path: Path, manifest: IndexManifest):
    """The corpus key of each index row (ids.parquet) as one Arrow string array; an unreadable file or a wrong
    count is IndexDamagedError."""
    import pyarrow.parquet as pq

    try:
        keys = pq.read_table(path / manifest.ids_file, columns=["key"])["key"].combine_chunks()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise _damaged(path, f"cannot read {manifest.ids_file} ({type(exc).__name__})") from None
    if len(keys) != manifest.n_indexed:
        raise _damaged(path, f"{manifest.ids_file} holds {len(keys)} ids where the manifest counts "
                             f"{manifest.n_indexed} indexed items")
    return keys


@dataclass(frozen=True)
class CheckResult:
    """An index directory whose every file was checked."""

    path: Path
    generation: int
    index_type: str
    n_indexed: int
    n_files: int
    n_bytes: int
    seconds: float
    # files of another generation the manifest does not use (a rebuild killed before or after its switch);
    # the next ``index --resume`` removes them
    stale: tuple[str, ...] = ()
    views: tuple[float, ...] = ()  # the corpus views' areas (``overlap_audit.index.views``)


SAMPLE_ROWS = 1000  # index rows whose vectors ``check_against_shards`` compares with the shards'


def _sample_rows(n: int, size: int = SAMPLE_ROWS) -> np.ndarray:
    """Up to ``size`` rows spread over [0, n), first and last included (deterministic)."""
    return np.unique(np.linspace(0, n - 1, num=min(size, n)).round().astype(np.int64)) if n else np.zeros(0, np.int64)


def _stored_vectors(index, rows: np.ndarray) -> np.ndarray | None:
    """The vectors a FAISS index stores for ``rows`` (codes for a binary index), or None for an index that
    stores them only approximately (IVF-PQ over floats)."""
    import faiss

    if isinstance(index, faiss.IndexIVFPQFastScan):
        return None
    if isinstance(index, faiss.IndexBinaryIVF):
        index.make_direct_map()
    return np.stack([index.reconstruct(int(r)) for r in rows])


def _ids_in_blocks(path: Path, manifest: IndexManifest):
    """ids.parquet's keys a row group at a time (a damaged file is IndexDamagedError)."""
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path / manifest.ids_file) as ids:
            for batch in ids.iter_batches(columns=["key"]):
                yield batch.column(0).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise _damaged(path, f"cannot read {manifest.ids_file} ({type(exc).__name__})") from None


def check_against_shards(index_dir: str | os.PathLike, manifest: IndexManifest, index) -> int:
    """Hold the index to its shards (each read whole, checking its own vectors): ids.parquet's keys are the
    shards' indexed keys in row order (both read a block at a time), and a sample of rows (``SAMPLE_ROWS``) has
    the shards' vectors in the FAISS index and in vectors.npy; returns the rows compared. The first mismatch
    raises IndexDamagedError."""
    from .shards import iter_shard_vectors, read_shard, shard_paths

    path = Path(index_dir)
    info = manifest.detector
    ids, held, row = _ids_in_blocks(path, manifest), [], 0
    for p in shard_paths(path):
        rows = read_shard(p, info)
        for key in (k for k, m in zip(rows.keys, rows.usable) if m):
            while not held:
                held = next(ids, None)
                if held is None:
                    break
                held.reverse()  # popped from the end
            if held is None or held.pop() != key:
                raise _damaged(path, f"{manifest.ids_file} does not list the shards' items in index order (row "
                                     f"{row})", manifest.ids_file)
            row += 1
    if held or next(ids, None):
        raise _damaged(path, f"{manifest.ids_file} does not list the shards' items in index order (row {row})",
                       manifest.ids_file)
    n = row
    sample = _sample_rows(n)
    parts = []
    for first, vectors in iter_shard_vectors(path, info):  # every shard read: each checks its own vectors
        local = sample[(sample >= first) & (sample < first + len(vectors))] - first
        if len(local):
            parts.append(np.array(vectors[local]))
    if not len(sample):
        return 0
    wanted = np.concatenate(parts)
    stored = _stored_vectors(index, sample)
    if stored is not None and (stored.shape != wanted.shape or not np.array_equal(stored, wanted)):
        differs = (stored != wanted).any(axis=1) if stored.shape == wanted.shape else np.ones(len(sample), bool)
        bad = int(sample[np.flatnonzero(differs)[0]])
        raise _damaged(path, f"{manifest.index_file} holds other vectors than the shards (row {bad})",
                       manifest.index_file)
    if manifest.vectors_file is not None:
        exact = np.load(path / manifest.vectors_file, mmap_mode="r")
        if not np.array_equal(np.asarray(exact[sample]), wanted):
            raise _damaged(path, f"{manifest.vectors_file} holds other vectors than the shards",
                           manifest.vectors_file)
    if stored is None:  # IVF-PQ: each sampled vector must find itself among its neighbours
        _check_finds_itself(path, manifest, index, sample, wanted)
    return len(sample)


def _check_finds_itself(path: Path, manifest: IndexManifest, index, sample: np.ndarray, wanted: np.ndarray) -> None:
    """An approximate index whose vectors are not stored exactly: most sampled vectors must be found at their
    own row within the nearest 10 (random or shuffled data finds almost none)."""
    import faiss

    probe = faiss.extract_index_ivf(index)
    nprobe, probe.nprobe = probe.nprobe, max(probe.nprobe, 16)
    try:
        _, rows = index.search(np.ascontiguousarray(wanted, np.float32), min(10, index.ntotal))
    finally:
        probe.nprobe = nprobe
    found = float((rows == sample[:, None]).any(axis=1).mean())
    if found < 0.5:
        raise _damaged(path, f"{manifest.index_file} finds only {found:.0%} of sampled corpus vectors at their own "
                             "rows (it does not index the shards' vectors)", manifest.index_file)


def check_index(index_dir: str | os.PathLike) -> CheckResult:
    """Check every file of an index directory against its manifest (sizes, row counts and all checksums),
    the FAISS index's class, metric and size, and the index against its shards (``check_against_shards``);
    the first mismatch raises IndexDirError."""
    started = time.monotonic()
    path = Path(index_dir)
    manifest = load_manifest(path)
    n_files, n_bytes = check_files(path, manifest, full=True)
    index = read_faiss_index(path, manifest)
    check_faiss(path, manifest, index)
    check_against_shards(path, manifest, index)
    if is_item_table(path, manifest.items_file):  # an item table of an earlier layout is not read, only checksummed
        from .items import check_items
        from .shards import shard_paths

        check_items(path, manifest.items_file, shard_paths(path))
    stale = tuple(sorted(p.name for p in stale_generation_files(path, manifest)))
    return CheckResult(path, manifest.generation, manifest.index_type, manifest.n_indexed, n_files, n_bytes,
                       time.monotonic() - started, stale, manifest.views)


def stale_generation_files(index_dir: str | os.PathLike, manifest: IndexManifest | None) -> list[Path]:
    """Files the builder wrote that the manifest does not use: the superseded generation's (a kill after
    the switch leaves them) and any later generation's (a kill before it)."""
    path = Path(index_dir)
    if manifest is None:
        return []
    named = {manifest.index_file, manifest.ids_file, manifest.vectors_file, manifest.items_file,
             *(name for name in manifest.files if not name.startswith(f"{SHARD_DIR}/"))}
    out = [path / name for name in manifest.superseded if name not in named and (path / name).exists()]
    for p in path.iterdir():
        m = GENERATION_FILE_RE.match(p.name)
        if m and int(m.group(2)) > manifest.generation and p.name not in named:
            out.append(p)
    return out


def check_detector(manifest: IndexManifest, detector: DetectorInfo, index_dir: str = "") -> None:
    """Refuse a detector whose embeddings are not comparable with the index's."""
    built = manifest.detector
    problems = []
    if built.name != detector.name:
        problems.append(f"detector {built.name!r} (asked: {detector.name!r})")
    if built.version != detector.version:
        note = ""
        if built.content != detector.content:
            was = "no content normalisation" if built.content is None else f"content {built.content!r}"
            note = f", i.e. {was} where this detector uses content {detector.content!r}"
        problems.append(f"detector version {built.version!r} (installed: {detector.version!r}{note})")
    if built.dim != detector.dim:
        problems.append(f"dimension {built.dim} (asked: {detector.dim})")
    if built.metric != detector.metric:
        problems.append(f"metric {built.metric!r} (asked: {detector.metric!r})")
    if problems:
        raise IndexMismatchError(
            f"the index {index_dir} was built with {'; '.join(problems)}: its embeddings cannot be compared "
            "with this detector's. Rebuild the index with this detector, or report with the index's own."
        )

