"""Many machines, on Ray: embedding a corpus as a ray.data pipeline, and exact streaming search as a map
over shards with a top-k merge. Ray is an optional extra (``pip install overlap-audit[ray]``), imported
only here.

The unit of work is the same shard as on one machine (items [i·S, (i+1)·S) of the sources in order), so a
distributed run writes the same shard files, resumes from the same finished shards, and gives results
equal to the single-process path's. The driver reads the sources (paths, or bytes for Parquet and
WebDataset) and hands out shards in waves; a pool of detector actors (one per GPU where the cluster has
GPUs, else one per CPU) decodes, embeds and writes each shard atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import OverlapAuditError


class RayError(OverlapAuditError):
    """Ray is missing or its cluster cannot be reached."""


def connect(address: str) -> dict:
    """Start (``local``) or join (``ray://…``, ``auto``, ``HOST:PORT``) a Ray cluster; returns its resources."""
    try:
        import ray
    except ImportError:
        raise RayError("--ray needs Ray: pip install 'overlap-audit[ray]'") from None
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        try:
            if address == "local":
                ray.init(**kwargs)
            else:
                ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - connection failures come in several types
            raise RayError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    return ray.cluster_resources()


class _EmbedShard:
    """A detector actor: embeds whole shards and writes them (atomically) into the index directory."""

    def __init__(self, detector: str, out_dir: str, max_pixels: int, batch_size: int, n_sources: int,
                 copies_per_shard: int, device: str):
        from ..detectors import get_detector

        self.detector = get_detector(detector, device=device)
        self.out_dir = Path(out_dir)
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.n_sources = n_sources
        self.copies_per_shard = copies_per_shard

    def __call__(self, batch: dict) -> dict:
        import pickle

        from ..embed import Decoder, embed_decoded
        from . import SHARD_DIR, _copy_picks, _write_shard, corpus_key

        done, sizes = [], []
        for shard_no, payload in zip(batch["shard_no"], batch["items"]):
            items = pickle.loads(payload)
            with Decoder(self.detector, workers=0, max_pixels=self.max_pixels) as decoder:
                decoded = decoder.decode(items, copies=_copy_picks(items, self.copies_per_shard))
                r = embed_decoded(decoded, self.detector, batch_size=self.batch_size)
            _write_shard(self.out_dir / SHARD_DIR / f"shard-{int(shard_no):06d}.parquet", self.detector.info,
                         keys=[corpus_key(it.source, it.id, self.n_sources) for it in r.items],
                         sources=[it.source for it in r.items], ids=[it.id for it in r.items],
                         captions=[it.caption for it in r.items], labels=[it.label for it in r.items],
                         vectors=r.vectors, low_information=r.low_information, reasons=r.reasons, copies=r.copies)
            done.append(int(shard_no))
            sizes.append(len(items))
        return {"shard_no": np.array(done, dtype=np.int64), "n_items": np.array(sizes, dtype=np.int64)}


def embed_shards(shards: Iterator[tuple[int, list]], *, detector: str, out_dir: str | os.PathLike, max_pixels: int,
                 batch_size: int, n_sources: int, copies_per_shard: int, device: str,
                 on_shard=None, wave: int | None = None) -> None:
    """Embed (shard number, raw items) pairs on the cluster as ray.data map_batches over detector actors."""
    import pickle

    import ray
    import ray.data

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    actors = gpus if gpus and device != "cpu" else max(1, int(resources.get("CPU", 1)))
    wave = wave or 2 * actors
    pending: list[dict] = []
    finished_items = 0

    def run(specs: list[dict]) -> None:
        ds = ray.data.from_items(specs)
        out = ds.map_batches(
            _EmbedShard, batch_size=1, concurrency=min(actors, len(specs)),
            num_gpus=1 if gpus and device != "cpu" else 0, num_cpus=0 if gpus and device != "cpu" else 1,
            fn_constructor_kwargs={"detector": detector, "out_dir": str(out_dir), "max_pixels": max_pixels,
                                   "batch_size": batch_size, "n_sources": n_sources,
                                   "copies_per_shard": copies_per_shard,
                                   "device": "cuda" if gpus and device != "cpu" else "cpu"})
        nonlocal finished_items
        for row in out.iter_rows():
            finished_items += int(row["n_items"])
            if on_shard is not None:  # (shard number, items in the shards finished so far in this run)
                on_shard(int(row["shard_no"]), finished_items)

    for shard_no, items in shards:
        pending.append({"shard_no": shard_no, "items": pickle.dumps(items)})
        if len(pending) >= wave:
            run(pending)
            pending = []
    if pending:
        run(pending)


def _search_shard(batch: dict, queries_ref, k: int, metric: str, dim: int, info_dict: dict) -> dict:
    import ray

    from . import _column_vectors, _usable_mask
    from .search import knn_block
    from ..values import DetectorInfo

    import pyarrow.parquet as pq

    queries = ray.get(queries_ref)
    info = DetectorInfo.from_dict(info_dict)
    sims, rows, order = [], [], []
    for path, first_row in zip(batch["path"], batch["first_row"]):
        table = pq.read_table(path, columns=["vector", "low_information", "skip_reason"], memory_map=True)
        mask = _usable_mask(table)
        vectors = _column_vectors(table["vector"], info)[mask]
        if len(vectors) == 0:
            continue
        s, r = knn_block(queries, vectors, k, metric, dim)
        pad = k - s.shape[1]
        if pad:
            s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
            r = np.pad(r, ((0, 0), (0, pad)), constant_values=-1)
        sims.append(s)
        rows.append(np.where(r < 0, -1, r + int(first_row)))
        order.append(int(first_row))
    return {"first_row": np.array(order, dtype=np.int64),
            "sims": np.array(sims, dtype=np.float32).reshape(len(order), len(queries), k),
            "rows": np.array(rows, dtype=np.int64).reshape(len(order), len(queries), k)}


def stream_search(index_dir: str | os.PathLike, info, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact streaming search as a ray.data map over the shards and a top-k merge on the driver."""
    import pyarrow.parquet as pq
    import ray
    import ray.data

    from . import _shard_paths, _usable_mask
    from .search import NO_ROW, merge_topk

    specs, row = [], 0
    for path in _shard_paths(Path(index_dir)):
        specs.append({"path": str(path), "first_row": row})
        row += int(_usable_mask(pq.read_table(path, columns=["low_information", "skip_reason"])).sum())
    n = len(queries)
    best = (np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), NO_ROW, dtype=np.int64))
    if not specs or n == 0:
        return best
    queries_ref = ray.put(np.ascontiguousarray(queries))
    ds = ray.data.from_items(specs).map_batches(
        _search_shard, batch_size=1,
        fn_kwargs={"queries_ref": queries_ref, "k": k, "metric": info.metric, "dim": info.dim,
                   "info_dict": info.to_dict()})
    for part in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for sims, rows in zip(part["sims"], part["rows"]):
            best = merge_topk(best, (sims, rows), k)
    return best
