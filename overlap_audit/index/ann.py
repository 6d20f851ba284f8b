"""Index types: which FAISS index a corpus gets, with what parameters, and why.

- ``flat``: exact (IndexFlatIP over unit vectors, IndexBinaryFlat over hashes); 4·D bytes (D/8 for hashes)
  per item in memory. The default while it fits the memory budget.
- ``ivfpq``: for large corpora. Float vectors: IndexIVFPQFastScan, nlist ≈ √n inverted lists (a power of
  two) whose k-means runs on a sample of ``IVF_POINTS_PER_LIST`` points per list, product quantisation to
  D/4 four-bit codes (32 bytes per 256-d vector) scanned with SIMD lookups (about 5x the rate of 8-bit
  codes at the same recall here, bench_ivf.py), searched with ``nprobe`` lists; the first ``shortlist``
  candidates are re-ranked with the exact vectors kept on disk (vectors.npy, memory-mapped), so a reported
  similarity is always exact and only recall is approximate. Hashes: IndexBinaryIVF (hashes are already
  compact; distances are exact). ``nprobe`` and ``shortlist`` are not fixed: ``calibrate_probes`` sets them
  when the index is built, the cheapest pair whose recall@1 on near-duplicate copies of corpus items
  reaches ``RECALL_TARGET``.
- ``hnsw``: graph search (IndexHNSWFlat / IndexBinaryHNSW, M = 32): exact codes, fastest queries, the
  most memory (the vectors plus 2·M links of 4 bytes per item) — where memory allows and latency matters.
- ``mih``: 64-bit hashes only: the exact codes (IndexBinaryFlat) plus multi-index hash tables
  (``overlap_audit.index.mih``: m substrings, m chosen for n and the detector threshold's radius; 8 + 12·m
  bytes per item), so a search that only needs neighbours within a radius reads a small fraction of the
  corpus. Exact: every item within the radius is found with its exact distance; a search without a radius,
  or one whose radius makes the tables cost more than a scan, runs the flat scan.
- ``auto``: for 64-bit hashes, mih from ``MIH_MIN_ITEMS`` items while it fits the budget; otherwise flat
  while it fits the budget, otherwise ivfpq. The choice and its reason go in the manifest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import IndexDirError, param
from ..settings import INDEX_TYPES, check_choice
from ..values import DetectorInfo
from .mih import choose_substrings

DEFAULT_BUDGET = 8 * 1024 ** 3
HNSW_M = 32
MIN_IVF_ITEMS = 1000
# from here the tables pay for themselves at the threshold's radius (9 bits for phash): at 10^6 codes they
# answered 14x the flat scan's rate, one thread each (BENCHMARKS.md, bench_hash_scale.py); below, the flat
# scan is fast and saves the tables' memory
MIH_MIN_ITEMS = 1_000_000
# k-means of the coarse quantiser: training points per list (FAISS warns below 39; its rule of thumb is
# 30-256) and iterations; the sample, not the corpus, sets the training time
IVF_POINTS_PER_LIST = 64
IVF_KMEANS_ITER = 10
# recall@1 (the exact nearest item found) that calibration asks of an IVF index, on copies of corpus items
RECALL_TARGET = 0.99
RECALL_CONFIDENCE = 0.95
SHORTLISTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# a re-ranked candidate (a 1 KB row gathered from the memory-mapped vectors and its dot product) costs
# about as much as scanning this many PQ codes
RERANK_COST = 64
PQ_BITS = 4  # fast-scan codes: 16 centroids per sub-quantiser, looked up in SIMD registers


def parse_bytes(value: int | str | None) -> int:
    """'8GB', '512MiB', '2e9' or an int -> bytes (decimal and binary units both count as powers of 1024)."""
    if value is None:
        return DEFAULT_BUDGET
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?B)?\s*", value.upper().replace("IB", "B"))
    if not m:
        raise IndexDirError(f"memory budget {value!r} is not a size like 8GB or 512MB")
    try:
        number = float(m.group(1))
    except ValueError:
        raise IndexDirError(f"memory budget {value!r} is not a size like 8GB or 512MB") from None
    scale = 1024 ** " KMGT".index(m.group(2) or " ")
    return int(number * scale)


@dataclass(frozen=True)
class IndexPlan:
    index_type: str
    params: dict = field(default_factory=dict)
    reason: str = ""

    @property
    def approximate(self) -> bool:
        return self.index_type not in ("flat", "mih")

    @property
    def needs_training(self) -> bool:
        return self.index_type == "ivfpq"


def bytes_per_item(index_type: str, info: DetectorInfo, params: dict | None = None) -> float:
    """Memory an index type needs per item (codes plus FAISS's 8-byte ids where it stores them)."""
    params = params or {}
    code = info.dim / 8 if info.metric == "hamming" else 4 * info.dim
    if index_type == "flat":
        return code
    if index_type == "mih":
        return code + params.get("substrings", 3) * (code + 4)
    if index_type == "hnsw":
        return code + 2 * params.get("M", HNSW_M) * 4
    if info.metric == "hamming":
        return code + 8
    return params.get("pq_m", _pq_m(info.dim)) * PQ_BITS / 8 + 8


def _pq_m(dim: int) -> int:
    """Sub-quantisers: one 4-bit code per 4 dimensions, an even divisor of dim (fast scan packs pairs)."""
    m = max(2, dim // 4)
    while dim % m or m % 2:
        m -= 1
    return max(1, m)


def _ivf_params(n: int, info: DetectorInfo) -> dict:
    # √n lists balance the lists scanned per query (n/nlist each) against the coarse search (nlist) and keep
    # the assignment of n items to lists (n·nlist) affordable at 10^7 on a few cores
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    nlist = int(max(1, min(nlist, 65536, n // 39)))  # FAISS wants ~39 training points per list
    # until calibrated (an index built without recall queries keeps these)
    params = {"nlist": nlist, "nprobe": int(min(nlist, max(16, nlist // 8))),
              "train_size": int(min(n, IVF_POINTS_PER_LIST * nlist)), "kmeans_iter": IVF_KMEANS_ITER}
    if info.metric == "cosine":
        params.update({"pq_m": _pq_m(info.dim), "pq_bits": PQ_BITS, "shortlist": 64})
    return params


def calibrate_probes(candidates: Callable[[int, int], np.ndarray], best: np.ndarray, *, n: int, nlist: int,
                     shortlists: tuple[int, ...] = SHORTLISTS, target: float = RECALL_TARGET,
                     confidence: float = RECALL_CONFIDENCE, tolerance: float = 1e-5) -> dict:
    """The cheapest (nprobe, shortlist) of an IVF index whose recall@1 reaches ``target`` with one-sided
    ``confidence`` (the Clopper–Pearson lower bound of the calibration queries' recall; with 500 queries at
    most one may be missed for 0.99).

    ``candidates(nprobe, shortlist)`` gives, for each calibration query, the exact similarities of the
    index's first ``shortlist`` candidates in the index's order (−inf where none); ``best`` is each query's
    exact nearest similarity. A query is found at shortlist L when one of its first L candidates is as
    similar as its exact nearest (ties count). nprobe doubles from 1 to nlist; a pair costs the codes it
    scans (nprobe·n/nlist) plus ``RERANK_COST`` per re-ranked candidate. Where no pair reaches the target,
    the one with the highest recall (then the cheapest) is chosen and ``reached`` is False.
    """
    from scipy.stats import beta

    best = np.asarray(best, np.float32)
    n_queries = len(best)
    longest = max(shortlists)
    trials = []
    chosen = None
    nprobe = 1
    while True:
        sims = np.asarray(candidates(nprobe, longest), np.float32)
        hit = np.maximum.accumulate(sims >= best[:, None] - tolerance, axis=1)  # found within the first L
        scanned = nprobe * n / nlist
        for length in shortlists:
            found = int(hit[:, min(length, hit.shape[1]) - 1].sum()) if hit.shape[1] else 0
            lower = float(beta.ppf(1 - confidence, found, n_queries - found + 1)) if found else 0.0
            trial = {"nprobe": nprobe, "shortlist": length, "recall_at_1": found / max(1, n_queries),
                     "lower": lower, "cost": scanned + RERANK_COST * length}
            trials.append(trial)
            if lower >= target and (chosen is None or trial["cost"] < chosen["cost"]):
                chosen = trial
        if nprobe >= nlist or (chosen is not None and scanned >= chosen["cost"]):
            break  # more lists cannot be cheaper than what reached the target
        nprobe = min(nlist, 2 * nprobe)
    reached = chosen is not None
    if not reached:
        chosen = max(trials, key=lambda t: (t["recall_at_1"], -t["cost"]))
    return {"nprobe": chosen["nprobe"], "shortlist": chosen["shortlist"], "target": target,
            "confidence": confidence, "reached": reached, "calibration_recall_at_1": chosen["recall_at_1"],
            "calibration_lower_bound": round(chosen["lower"], 4), "n_calibration_queries": int(n_queries),
            "trials": [[t["nprobe"], t["shortlist"], round(t["recall_at_1"], 4)] for t in trials]}


def hash_radius(similarity: float, bits: int) -> int:
    """The largest Hamming distance whose similarity 1 − d/bits is at least ``similarity`` (−1: none)."""
    return min(bits, int(math.floor((1.0 - float(similarity)) * bits + 1e-9)))


def _mih_params(n: int, info: DetectorInfo) -> dict:
    threshold = 1.0 if info.default_threshold is None else info.default_threshold
    radius = hash_radius(threshold, info.dim)
    params = {"substrings": choose_substrings(n, max(radius, 0)), "radius": radius}
    params["bytes_per_item"] = bytes_per_item("mih", info, params)
    return params


def choose_index(index_type: str, n: int, info: DetectorInfo, memory_budget: int | str | None) -> IndexPlan:
    """The index a corpus of n items gets: as asked, or by size and budget for ``auto``."""
    check_choice("index_type", index_type, INDEX_TYPES, IndexDirError)
    budget = parse_bytes(memory_budget)
    flat_bytes = n * bytes_per_item("flat", info)
    hashes64 = info.metric == "hamming" and info.dim == 64
    if index_type == "mih" and not hashes64:
        raise IndexDirError(f"{param('index_type', 'mih')} is for 64-bit hashes (this detector gives {info.dim}-"
                            f"{'bit hashes' if info.metric == 'hamming' else 'd vectors'}); use flat or ivfpq")
    if index_type == "auto" and hashes64 and n >= MIH_MIN_ITEMS:
        params = _mih_params(n, info)
        if n * params["bytes_per_item"] <= budget:
            return IndexPlan("mih", params, f"auto: 64-bit hashes, {n:,} items: multi-index hash tables "
                                            f"({n * params['bytes_per_item'] / 1e9:.3g} GB of {budget / 1e9:.3g} GB)")
    if index_type == "auto":
        if flat_bytes <= budget or n < MIN_IVF_ITEMS:
            index_type, reason = "flat", (f"auto: exact flat search fits the budget "
                                          f"({flat_bytes / 1e9:.3g} GB of {budget / 1e9:.3g} GB)")
        else:
            index_type, reason = "ivfpq", (f"auto: flat would need {flat_bytes / 1e9:.3g} GB, over the budget of "
                                           f"{budget / 1e9:.3g} GB")
    else:
        reason = f"asked for {index_type}"
    if index_type == "flat":
        return IndexPlan("flat", {"bytes_per_item": bytes_per_item("flat", info)}, reason)
    if index_type == "mih":
        return IndexPlan("mih", _mih_params(n, info), reason)
    if index_type == "hnsw":
        params = {"M": HNSW_M, "ef_construction": 80, "ef_search": 128}
        params["bytes_per_item"] = bytes_per_item("hnsw", info, params)
        return IndexPlan("hnsw", params, reason)
    if n < MIN_IVF_ITEMS:
        raise IndexDirError(f"ivfpq needs at least {MIN_IVF_ITEMS:,} indexed items to train on (this corpus has "
                            f"{n:,}); use {param('index_type', 'flat')}")
    params = _ivf_params(n, info)
    params["bytes_per_item"] = bytes_per_item("ivfpq", info, params)
    need = n * params["bytes_per_item"]
    if need > budget:
        reason += f"; note: even ivfpq needs {need / 1e9:.3g} GB, over the budget"
    return IndexPlan("ivfpq", params, reason)


def new_index(plan: IndexPlan, info: DetectorInfo):
    """An empty FAISS index for the plan."""
    import faiss

    p = plan.params
    if info.metric == "hamming":
        if plan.index_type in ("flat", "mih"):  # mih: the exact codes; its tables are built from them
            return faiss.IndexBinaryFlat(info.dim)
        if plan.index_type == "hnsw":
            index = faiss.IndexBinaryHNSW(info.dim, p["M"])
            index.hnsw.efConstruction = p["ef_construction"]
            return index
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(info.dim), info.dim, p["nlist"])
        index.cp.niter = p.get("kmeans_iter", IVF_KMEANS_ITER)
        return index
    if plan.index_type == "flat":
        return faiss.IndexFlatIP(info.dim)
    if plan.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(info.dim, p["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p["ef_construction"]
        return index
    quantizer = faiss.IndexFlatIP(info.dim)
    index = faiss.IndexIVFPQFastScan(quantizer, info.dim, p["nlist"], p["pq_m"], p["pq_bits"],
                                     faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    index.cp.niter = p.get("kmeans_iter", IVF_KMEANS_ITER)
    return index
