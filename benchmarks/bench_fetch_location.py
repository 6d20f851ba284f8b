"""Reading a report's matched corpus items back: at the location the index recorded, against looking them up in
the sources (the scanning path, which an index without locations takes).

Two synthetic corpora of real PNG images (4x4 seeded random blocks of ``--side`` pixels with mild noise, each
distinct):
a WebDataset corpus of ``--shards`` uncompressed tars of ``--per-shard`` samples (``.png``, ``.txt``,
``.json``), and a Parquet corpus of ``--files`` files of ``--rows`` rows in row groups of ``--row-group``
(``key``, ``png``, ``caption``). Each is indexed twice through the index format (``write_shard`` then
``finish_index``, 64-bit codes, no detector run): once with each item's location and fingerprint as ``index``
records them, once with the fingerprint only (an index written before locations were recorded). Then
``index.corpus_items`` of ``--items`` seeded random keys (what verification, the gallery and ``pairs`` call),
both indexes interleaved, ``--repeats`` times: cold (the corpus files evicted from the page cache just before,
``posix_fadvise(DONTNEED)``; the index's own files stay cached) and warm (the same call again). Reported: median
seconds, and the bytes the process read (``/proc/self/io`` rchar, page cache included).

    OMP_NUM_THREADS=1 python benchmarks/bench_fetch_location.py [--shards 200 --per-shard 500] [--work-dir DIR]
    OMP_NUM_THREADS=1 python benchmarks/bench_fetch_location.py --kinds parquet --files 1000 --rows 100 --row-group 100
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np


def png(seed: int, side: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(16, 240, (4, 4, 3)).repeat(side // 4, axis=0).repeat(side // 4, axis=1)
    # mild noise, so that a PNG weighs what a small photo does (about 9 KB at 64 px) rather than a few hundred bytes
    pixels = np.clip(blocks + rng.integers(-12, 13, blocks.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(pixels)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_tars(root: Path, shards: int, per_shard: int, side: int) -> None:
    root.mkdir(parents=True)
    for s in range(shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                parts = {"png": png(s * per_shard + i, side), "txt": f"picture {key}".encode(),
                         "json": json.dumps({"key": key, "url": f"https://example.org/{key}.png"}).encode()}
                for ext, data in parts.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def write_parquet(root: Path, files: int, rows: int, row_group: int, side: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    for f in range(files):
        keys = [f"{f:05d}{i:05d}" for i in range(rows)]
        pq.write_table(pa.table({"key": keys, "png": [png(10**7 + f * rows + i, side) for i in range(rows)],
                                 "caption": [f"picture {k}" for k in keys]}),
                       root / f"{f:05d}.parquet", row_group_size=row_group)


def index_twice(spec: str, out: Path, shard_size: int = 100_000) -> list[str]:
    """Two indexes of the source ``spec`` (``out``/located, ``out``/scanned); returns every key."""
    from overlap_audit.index.finish import finish_index
    from overlap_audit.index.manifest import SHARD_DIR, checksum_bytes
    from overlap_audit.index.shards import ItemBytes, shard_path, write_shard
    from overlap_audit.sources import open_source
    from overlap_audit.values import DetectorInfo, RawItem

    src = open_source(spec)
    items, prints = [], []  # the items without their bytes, which are fingerprinted as they stream past
    for it in src.iter_items():
        assert it.location is not None and it.skip_reason is None
        prints.append(ItemBytes(len(it.data), checksum_bytes(it.data)))
        items.append(RawItem(it.source, it.id, caption=it.caption, location=it.location))
    info = DetectorInfo(spec="vectors", name="vectors", version="1", dim=64, metric="hamming",
                        default_threshold=0.85)
    codes = np.random.default_rng(0).integers(0, 256, (len(items), 8), dtype=np.uint8)
    for variant in ("located", "scanned"):
        root = out / variant
        (root / SHARD_DIR).mkdir(parents=True)
        for s, start in enumerate(range(0, len(items), shard_size)):
            part = items[start:start + shard_size]
            m = len(part)
            write_shard(shard_path(root, s), info, keys=[it.id for it in part], sources=[src.name] * m,
                        ids=[it.id for it in part], captions=[it.caption for it in part], labels=[None] * m,
                        vectors=list(codes[start:start + m]), low_information=[False] * m, reasons=[None] * m,
                        copies=[None] * m, fingerprints=prints[start:start + m],
                        locations=[it.location for it in part] if variant == "located" else None)
        finish_index(root, info, [src.to_dict()], shard_size, "cpu", 0.0, index_type="flat")
    return [it.id for it in items]


def evict(files: list[Path]) -> None:
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def rchar() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar"))


def measure(name: str, out: Path, corpus_files: list[Path], keys: list[str], repeats: int) -> dict:
    from overlap_audit.index import corpus_items

    for variant in ("located", "scanned"):
        corpus_items(out / variant, [])  # imports and the index's files, not counted
    times = {(v, c): [] for v in ("located", "scanned") for c in ("cold", "warm")}
    read = {}
    for r in range(repeats):
        order = ("located", "scanned") if r % 2 == 0 else ("scanned", "located")
        for variant in order:
            for cache in ("cold", "warm"):
                if cache == "cold":
                    evict(corpus_files)
                before, t = rchar(), time.perf_counter()
                got = corpus_items(out / variant, keys)
                times[(variant, cache)].append(time.perf_counter() - t)
                read[(variant, cache)] = rchar() - before
                bad = [k for k, it in got.items() if it.data is None]
                assert not bad, (variant, bad[:3], got[bad[0]].skip_reason)
    rows = {}
    for (variant, cache), ts in times.items():
        rows[f"{variant}/{cache}"] = {"median_s": statistics.median(ts), "min_s": min(ts),
                                      "read_mb": read[(variant, cache)] / 1e6}
    for cache in ("cold", "warm"):
        rows[f"ratio/{cache}"] = rows[f"scanned/{cache}"]["median_s"] / rows[f"located/{cache}"]["median_s"]
    print(f"## {name}")
    for k, v in rows.items():
        print(f"{k:16s} {v if isinstance(v, float) else json.dumps({a: round(b, 4) for a, b in v.items()})}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--row-group", type=int, default=500)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--kinds", nargs="+", default=["wds", "parquet"], choices=["wds", "parquet"])
    ap.add_argument("--json", default=None, help="write the figures here too")
    a = ap.parse_args()
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="bench-fetch-location-"))
    results = {"args": vars(a)}
    rng = np.random.default_rng(2026)

    t = time.perf_counter()
    if "wds" in a.kinds and not (work / "wds").exists():  # a work dir of an interrupted run keeps its corpora
        write_tars(work / "wds", a.shards, a.per_shard, a.side)
    if "parquet" in a.kinds and not (work / "parquet").exists():
        write_parquet(work / "parquet", a.files, a.rows, a.row_group, a.side)
    results["write_s"] = time.perf_counter() - t
    for kind in a.kinds:
        files = sorted((work / kind).iterdir())
        t = time.perf_counter()
        keys = index_twice(str(work / kind), work / f"index-{kind}")
        results[f"{kind}_index_s"] = time.perf_counter() - t
        results[f"{kind}_corpus_mb"] = sum(p.stat().st_size for p in files) / 1e6
        picked = sorted(rng.choice(keys, a.items, replace=False).tolist())
        name = (f"WebDataset: {a.shards} tars x {a.per_shard} samples ({results['wds_corpus_mb']:.0f} MB)"
                if kind == "wds" else
                f"Parquet: {a.files} files x {a.rows} rows, row groups of {a.row_group} "
                f"({results['parquet_corpus_mb']:.0f} MB)")
        results[kind] = measure(name, work / f"index-{kind}", files, picked, a.repeats)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k not in ("wds", "parquet")}, indent=1))


if __name__ == "__main__":
    main()
