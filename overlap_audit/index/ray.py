"""Many machines, on Ray: per-shard work run on a cluster. Ray is an optional extra
(``pip install overlap-audit[ray]``), imported only inside these functions.

The work itself is the single-machine code: ``embed_shards`` runs a per-shard embedding function
(``overlap_audit.index.build.embed_shard``) on a pool of detector actors (one per GPU where the cluster
has GPUs, else one per CPU), handing out shards in waves; ``map_shards`` runs a per-shard function
(``overlap_audit.index.search.shard_topk``) as a ray.data map with one shared value in the object store.
So a distributed run writes the same shard files and gives the single-process results.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..errors import OverlapAuditError, param


class RayError(OverlapAuditError):
    """Ray is missing or its cluster cannot be reached."""


def connect(address: str) -> dict:
    """Start (``local``) or join (``ray://…``, ``auto``, ``HOST:PORT``) a Ray cluster; returns its resources."""
    try:
        import ray
    except ImportError:
        raise RayError(f"{param('ray_address')} needs Ray: pip install 'overlap-audit[ray]'") from None
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


class _ShardActor:
    """Holds one detector; runs ``work(detector, items, shard_no)`` on each shard it is given."""

    def __init__(self, detector: str, device: str, work: Callable, content: str | None = None):
        from ..detectors import get_detector

        self.detector = get_detector(detector, device=device, content=content)
        self.work = work

    def __call__(self, batch: dict) -> dict:
        done, sizes = [], []
        for shard_no, payload in zip(batch["shard_no"], batch["items"]):
            items = pickle.loads(payload)
            self.work(self.detector, items, int(shard_no))
            done.append(int(shard_no))
            sizes.append(len(items))
        return {"shard_no": np.array(done, dtype=np.int64), "n_items": np.array(sizes, dtype=np.int64)}


def embed_shards(shards: Iterable[tuple[int, list]], work: Callable, *, detector: str, device: str,
                 on_shard: Callable[[int, int], None] | None = None, content: str | None = None) -> None:
    """Run ``work(detector, items, shard_no)`` for each (shard number, raw items) pair on detector actors.

    ``on_shard(shard_number, items in the shards finished so far in this call)`` follows each shard.
    """
    import ray
    import ray.data

    resources = ray.cluster_resources()
    on_gpu = int(resources.get("GPU", 0)) > 0 and device != "cpu"
    actors = int(resources["GPU"]) if on_gpu else max(1, int(resources.get("CPU", 1)))
    wave = 2 * actors
    pending: list[dict] = []
    finished_items = 0

    def run(specs: list[dict]) -> None:
        nonlocal finished_items
        out = ray.data.from_items(specs).map_batches(
            _ShardActor, batch_size=1, concurrency=min(actors, len(specs)),
            num_gpus=1 if on_gpu else 0, num_cpus=0 if on_gpu else 1,
            fn_constructor_kwargs={"detector": detector, "device": "cuda" if on_gpu else "cpu", "work": work,
                                   "content": content})
        for row in out.iter_rows():
            finished_items += int(row["n_items"])
            if on_shard is not None:
                on_shard(int(row["shard_no"]), finished_items)

    for shard_no, items in shards:
        pending.append({"shard_no": shard_no, "items": pickle.dumps(items)})
        if len(pending) >= wave:
            run(pending)
            pending = []
    if pending:
        run(pending)


def _apply(batch: dict, work: Callable, shared_ref) -> dict:
    import ray

    shared = ray.get(shared_ref)
    results = [work(dict(zip(batch, values)), shared) for values in zip(*batch.values())]
    return {name: np.stack([r[name] for r in results]) for name in results[0]}


def map_shards(specs: list[dict], work: Callable[[dict, object], dict], shared) -> Iterator[dict]:
    """``work(spec, shared)`` for every spec as a ray.data map (``shared`` goes to the object store once);
    yields each result, a dict of arrays, in no particular order."""
    import ray
    import ray.data

    if not specs:
        return
    shared_ref = ray.put(shared)
    ds = ray.data.from_items(specs).map_batches(_apply, batch_size=1,
                                                fn_kwargs={"work": work, "shared_ref": shared_ref})
    for part in ds.iter_batches(batch_size=None, batch_format="numpy"):
        names = list(part)
        for values in zip(*(part[n] for n in names)):
            yield dict(zip(names, values))
