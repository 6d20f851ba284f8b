"""Radius search over 64-bit hashes by multi-index hashing (Norouzi, Punjani and Fleet, CVPR 2012).

The 64 bits are split into m disjoint substrings. By the pigeonhole principle, a code within Hamming
distance r of the query agrees with it within ⌊r/m⌋ bits on at least one substring; sharper (their
Proposition 2), with r = m·t + a, on one of the first a + 1 substrings within t bits or on one of the others
within t − 1. Each substring has a table: the corpus codes sorted by that substring, their rows, and a
directory of where each substring value's run starts. A query enumerates the substring values within the
table's radius of its own, reads those runs (contiguous, so the candidates' full codes are read
sequentially rather than gathered from the corpus array), and keeps the candidates whose full distance is
within r. So every corpus item within r is found and its distance is exact.

Cost per query against n uniform codes: Σ_i V(s_i, t_i) directory lookups and n·Σ_i V(s_i, t_i)/2^s_i
candidates (V(s, t): the substring values within t bits); ``choose_substrings`` picks m for n and r from
that. Memory: 12 bytes per item per table (the code and a 4-byte row) plus 2^s 8-byte directory entries.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import IndexDamagedError, IndexDirError

BITS = 64
MAX_SUBSTRING_BITS = 26  # a directory of 2^26 entries is 512 MB: longer substrings are never worth it
CANDIDATE_BLOCK = 1 << 20  # candidates verified per numpy pass: bounds the search's working memory
# relative cost of one directory lookup against one candidate check, measured with this module's numpy passes
# (bench_hash_scale.py: both are a handful of vectorised operations; a lookup also pays its repeat/arange setup)
LOOKUP_COST = 1.5
# one code of FAISS's flat popcount scan against one candidate check here (one thread, numpy): 0.6 ns on 2 idle
# cores (issue 27's probe: 163 queries/s at 10^7) against ~25-40 ns (bench_hash_scale.py); on a loaded machine
# with one FAISS thread the scan was 4-9 ns, so near the boundary either choice costs about the same
SCAN_COST = 1 / 40


@dataclass(frozen=True, eq=False)
class MultiIndexHash:
    """Multi-index hash tables over n 64-bit codes: per substring, the codes sorted by it, their rows, and
    the directory (``starts[v]`` = the first sorted position whose substring is v; length 2^bits + 1)."""

    shifts: tuple[int, ...]
    widths: tuple[int, ...]
    codes: tuple[np.ndarray, ...]  # uint64 [n] each
    rows: tuple[np.ndarray, ...]  # uint32 (int64 above 2^32 items) [n] each
    starts: tuple[np.ndarray, ...]  # int64 [2^width + 1] each

    def __len__(self) -> int:
        return len(self.codes[0]) if self.codes else 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for group in (self.codes, self.rows, self.starts) for a in group)


def as_words(codes: np.ndarray) -> np.ndarray:
    """Packed 64-bit hashes ([n, 8] uint8, FAISS's layout) as one uint64 per code (or uint64 as they are)."""
    codes = np.asarray(codes)
    if codes.dtype == np.uint64 and codes.ndim == 1:
        return codes
    if codes.ndim != 2 or codes.shape[1] != BITS // 8 or codes.dtype != np.uint8:
        raise IndexDirError(f"multi-index hashing takes 64-bit hashes as [n, 8] uint8 (got {codes.dtype} "
                            f"{list(codes.shape)})")
    return np.ascontiguousarray(codes).view("<u8").reshape(-1)


def substring_widths(m: int) -> tuple[int, ...]:
    """Widths of m near-equal substrings of 64 bits, the longer ones first."""
    if not 1 <= m <= BITS:
        raise IndexDirError(f"the number of substrings must be 1..{BITS} (got {m})")
    base, extra = divmod(BITS, m)
    return tuple(base + 1 if i < extra else base for i in range(m))


def table_radii(m: int, radius: int) -> tuple[int, ...]:
    """Per table, the substring radius that makes the search exact within ``radius`` (Proposition 2 of
    Norouzi et al.): with radius = m·t + a, the first a + 1 tables search t bits, the others t − 1
    (−1: the table is not read)."""
    t, a = divmod(int(radius), m)
    return tuple(t if i <= a else t - 1 for i in range(m))


def ball_size(bits: int, t: int) -> int:
    """Values within t bits of a bits-wide value: Σ_{i ≤ t} C(bits, i)."""
    return sum(math.comb(bits, i) for i in range(0, min(t, bits) + 1)) if t >= 0 else 0


def expected_cost(n: int, m: int, radius: int) -> tuple[float, float]:
    """(directory lookups, candidates) per query against n uniform codes."""
    lookups = candidates = 0.0
    for width, t in zip(substring_widths(m), table_radii(m, radius)):
        v = ball_size(width, t)
        lookups += v
        candidates += v * n / 2.0 ** width
    return lookups, candidates


def choose_substrings(n: int, radius: int) -> int:
    """The number of substrings with the lowest modelled cost for n codes searched within ``radius``
    (about 64 / log2 n for small radii, as Norouzi et al. recommend, but costed rather than rounded)."""
    best, best_cost = None, math.inf
    for m in range(1, BITS + 1):
        if max(substring_widths(m)) > MAX_SUBSTRING_BITS:
            continue
        lookups, candidates = expected_cost(max(n, 1), m, radius)
        cost = LOOKUP_COST * lookups + candidates
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def tables_pay(n: int, m: int, radius: int) -> bool:
    """Whether a radius search through m tables is modelled to cost less than scanning all n codes."""
    lookups, candidates = expected_cost(n, m, max(radius, 0))
    return LOOKUP_COST * lookups + candidates < SCAN_COST * n


@dataclass(frozen=True, eq=False)
class Table:
    """One substring's table: the codes sorted by it, their rows, the directory (see ``MultiIndexHash``)."""

    shift: int
    width: int
    codes: np.ndarray
    rows: np.ndarray
    starts: np.ndarray


def _row_dtype(n: int) -> np.dtype:
    return np.dtype(np.uint32 if n <= 1 << 32 else np.int64)


def iter_tables(codes: np.ndarray, m: int) -> Iterator[Table]:
    """The m substrings' tables over the codes (row i = codes[i]), one at a time: a caller that writes each
    before asking for the next holds one table, not m."""
    words = as_words(codes)
    n = len(words)
    widths = substring_widths(m)
    if max(widths) > MAX_SUBSTRING_BITS:
        raise IndexDirError(f"{m} substrings are {max(widths)} bits wide; use at least "
                            f"{math.ceil(BITS / MAX_SUBSTRING_BITS)} so a directory stays under 2^{MAX_SUBSTRING_BITS}")
    row_bits = max(1, int(n - 1).bit_length())
    shift = 0
    for width in widths:
        mask = np.uint64((1 << width) - 1)
        sub = (words >> np.uint64(shift)) & mask
        if row_bits + width <= 64:
            # one uint64 sort of (substring, row) pairs: faster than an argsort, and rows ascend within a run
            packed = (sub << np.uint64(row_bits)) | np.arange(n, dtype=np.uint64)
            del sub
            packed.sort()
            order = (packed & np.uint64((1 << row_bits) - 1)).view(np.int64)  # rows < 2^63: a view, no copy
            counts = np.bincount((packed >> np.uint64(row_bits)).astype(np.int64), minlength=1 << width)
            del packed
        else:
            order = np.argsort(sub, kind="stable")
            counts = np.bincount(sub.astype(np.int64), minlength=1 << width)
            del sub
        starts = np.zeros((1 << width) + 1, np.int64)
        np.cumsum(counts, out=starts[1:])
        table = Table(shift, width, words[order], order.astype(_row_dtype(n)), starts)
        del order, counts
        yield table
        del table
        shift += width


def flat_codes(index) -> np.ndarray:
    """A FAISS binary flat index's codes as [n, code_size] uint8, a view of the index's own memory (no copy:
    10^8 codes are 800 MB); valid while the index lives."""
    import faiss

    if index.ntotal == 0:  # no buffer to view (FAISS hands back an empty float array for a null pointer)
        return np.zeros((0, index.code_size), np.uint8)
    return faiss.rev_swig_ptr(index.xb.data(), index.xb.size()).reshape(-1, index.code_size)


def build_mih(codes: np.ndarray, m: int) -> MultiIndexHash:
    """Multi-index hash tables of m substrings over the codes (row i = codes[i]), in memory."""
    tables = list(iter_tables(codes, m))
    return MultiIndexHash(tuple(t.shift for t in tables), tuple(t.width for t in tables),
                          tuple(t.codes for t in tables), tuple(t.rows for t in tables),
                          tuple(t.starts for t in tables))


@functools.lru_cache(maxsize=64)
def _flip_masks(width: int, t: int) -> np.ndarray:
    """Every width-bit mask with at most t bits set, as int64 (read-only; cached)."""
    if width <= 24:
        values = np.arange(1 << width, dtype=np.int64)
        masks = values[np.bitwise_count(values) <= t]
    else:
        masks = np.array([0] + [sum(1 << b for b in bits) for c in range(1, min(t, width) + 1)
                                for bits in itertools.combinations(range(width), c)], dtype=np.int64)
    masks.flags.writeable = False
    return masks


def radius_search(mih: MultiIndexHash, queries: np.ndarray, k: int, radius: int, *,
                  batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest codes within ``radius`` bits of each query: (distances int32 [q, k], rows int64 [q, k]),
    by distance then row ascending (the tie rule of ``overlap_audit.index.search``). Where fewer than k lie
    within the radius the remaining slots hold distance −1 and row −1; nothing beyond the radius is
    returned."""
    q_words = as_words(queries)
    nq = len(q_words)
    dist = np.full((nq, k), -1, np.int32)
    rows = np.full((nq, k), -1, np.int64)
    radius = int(radius)
    if nq == 0 or k < 1 or len(mih) == 0 or radius < 0:
        return dist, rows
    m = len(mih.widths)
    plan = [(i, _flip_masks(w, t)) for i, (w, t) in enumerate(zip(mih.widths, table_radii(m, radius))) if t >= 0]
    # at large radii a query enumerates 10^5 substring values per table: fewer queries per pass bound memory
    batch = max(1, min(batch, CANDIDATE_BLOCK // max(len(masks) for _, masks in plan)))
    for start in range(0, nq, batch):
        qw = q_words[start:start + batch]
        found: list[np.ndarray] = []
        for i, masks in plan:
            sub = ((qw >> np.uint64(mih.shifts[i])) & np.uint64((1 << mih.widths[i]) - 1)).astype(np.int64)
            keys = (sub[:, None] ^ masks[None, :]).ravel()
            lo = mih.starts[i][keys]
            cnt = mih.starts[i][keys + 1] - lo
            hit = np.flatnonzero(cnt)
            lo, cnt = lo[hit], cnt[hit]
            owner = hit // len(masks)  # the query (within the batch) of each non-empty run
            found += _verify_runs(mih.codes[i], mih.rows[i], qw, owner, lo, cnt, radius)
        if not found:
            continue
        # (query, distance, row) packed in one uint64: one sort orders by the tie rule and drops the repeats
        # of an item found through several tables
        packed = np.unique(np.concatenate(found))
        qi = (packed >> np.uint64(_Q_SHIFT)).astype(np.int64)
        first = np.searchsorted(qi, np.arange(len(qw)))
        rank = np.arange(len(packed)) - first[qi]
        keep = rank < k
        qi, rank, packed = qi[keep], rank[keep], packed[keep]
        dist[start + qi, rank] = ((packed >> np.uint64(_ROW_BITS)) & np.uint64(127)).astype(np.int32)
        rows[start + qi, rank] = (packed & np.uint64((1 << _ROW_BITS) - 1)).astype(np.int64)
    return dist, rows


_ROW_BITS = 36  # rows below 2^36 (6.9·10^10 items)
_Q_SHIFT = _ROW_BITS + 7  # distances 0..64 take 7 bits; 21 bits remain for the query within a batch


def _verify_runs(codes: np.ndarray, rows: np.ndarray, qw: np.ndarray, owner: np.ndarray, lo: np.ndarray,
                 cnt: np.ndarray, radius: int) -> list[np.ndarray]:
    """Check the candidates of the runs (start ``lo``, length ``cnt``, query ``owner``) against their
    queries in blocks of about ``CANDIDATE_BLOCK``: the packed (query, distance, row) of those within radius."""
    out = []
    ends = np.cumsum(cnt)
    cut = 0
    while cut < len(cnt):
        stop = int(np.searchsorted(ends, (ends[cut - 1] if cut else 0) + CANDIDATE_BLOCK, side="right"))
        stop = max(stop, cut + 1)
        c, l, o = cnt[cut:stop], lo[cut:stop], owner[cut:stop]
        total = int(c.sum())
        offsets = np.cumsum(c) - c
        pos = np.repeat(l - offsets, c) + np.arange(total)
        q = np.repeat(o, c)
        d = np.bitwise_count(codes[pos] ^ qw[q])
        ok = np.flatnonzero(d <= radius)
        if len(ok):
            key = ((q[ok].astype(np.uint64) << np.uint64(_Q_SHIFT))
                   | (d[ok].astype(np.uint64) << np.uint64(_ROW_BITS))
                   | rows[pos[ok]].astype(np.uint64))
            out.append(key)
        cut = stop
    return out


# ------------------------------------------------------------------------------------------ on disk

_MAGIC = b"overlap-audit multi-index hash\n"
_HEADER = 4096  # bytes: the JSON layout, padded, then the arrays at 64-byte aligned offsets


def tables_name(index_file: str) -> str:
    """The tables' file beside a FAISS index file of the same generation: index.faiss -> index.mih."""
    stem = index_file[:-len(".faiss")] if index_file.endswith(".faiss") else index_file
    return stem + ".mih"


def write_mih(path: str | os.PathLike, codes: np.ndarray, m: int) -> None:
    """Build the m substrings' tables over the codes and write them to one file (atomically): a JSON layout,
    then the raw arrays. Each table is written as soon as it is built, so the build holds one table at a time
    (at 10^8 codes a table is 1.2 GB)."""
    n = len(as_words(codes))
    widths = substring_widths(m)
    sizes = {"codes": (np.dtype(np.uint64), [n] * m), "rows": (_row_dtype(n), [n] * m),
             "starts": (np.dtype(np.int64), [(1 << w) + 1 for w in widths])}
    arrays, offset = {}, _HEADER
    for group, (dtype, lengths) in sizes.items():
        for i, length in enumerate(lengths):
            arrays[f"{group}{i}"] = {"name": f"{group}{i}", "dtype": dtype.str, "length": length, "offset": offset}
            offset += -(-length * dtype.itemsize // 64) * 64
    shifts = [sum(widths[:i]) for i in range(m)]
    layout = json.dumps({"format": 1, "n": n, "shifts": shifts, "widths": list(widths),
                         "arrays": list(arrays.values())}).encode()
    if len(_MAGIC) + len(layout) + 1 > _HEADER:
        raise IndexDirError("multi-index hash layout does not fit its header")

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write((_MAGIC + layout + b"\n").ljust(_HEADER, b" "))
            for i, table in enumerate(iter_tables(codes, m)):
                for group in ("codes", "rows", "starts"):
                    fh.seek(arrays[f"{group}{i}"]["offset"])
                    fh.write(memoryview(np.ascontiguousarray(getattr(table, group))).cast("B"))
                del table
            fh.truncate(offset)

    atomic_write(Path(path), write)


def read_mih(path: str | os.PathLike) -> MultiIndexHash:
    """The tables written by ``write_mih``, memory-mapped (read-only); a malformed file is IndexDamagedError."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER)
        if not head.startswith(_MAGIC):
            raise ValueError("not a multi-index hash file")
        layout = json.loads(head[len(_MAGIC):].split(b"\n", 1)[0])
        if layout.get("format") != 1:
            raise ValueError(f"unknown format {layout.get('format')!r}")
        arrays = {a["name"]: np.memmap(path, dtype=np.dtype(a["dtype"]), mode="r", offset=a["offset"],
                                       shape=(a["length"],)) for a in layout["arrays"]}
        m = len(layout["widths"])
        mih = MultiIndexHash(tuple(layout["shifts"]), tuple(layout["widths"]),
                             tuple(arrays[f"codes{i}"] for i in range(m)), tuple(arrays[f"rows{i}"] for i in range(m)),
                             tuple(arrays[f"starts{i}"] for i in range(m)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexDamagedError(f"{path} is damaged: cannot read its multi-index hash tables ({exc}); rebuild "
                                "the index", path.name) from None
    if any(len(c) != layout["n"] for c in mih.codes + mih.rows) or any(
            len(s) != (1 << w) + 1 for s, w in zip(mih.starts, mih.widths)):
        raise IndexDamagedError(f"{path} is damaged: its multi-index hash tables have inconsistent sizes; "
                                "rebuild the index", path.name)
    return mih
