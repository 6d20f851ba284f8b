"""Indexing against the decoder: `index` with the default detector (phash, trimming) end to end, as a ratio
of PIL's decode-only rate on the same files, the same number of worker processes, in the same run.

    python benchmarks/bench_index_speed.py [--png 2000] [--jpeg 1000] [--workers 2] [--repeats 2]

The corpora (development data; nothing here chooses a threshold or rule):
- PNG: the first ``--png`` drawings of Debian's openclipart-png in path order (its symbolic links left out);
- JPEG: ``--jpeg`` crops of the photographs of Debian's mate-backgrounds and the photos bundled in
  scikit-image / scikit-learn, at web sizes (long side 320-1600 px, seeded), saved at JPEG quality 75-95,
  written once into the cache folder.

Decode-only: a pool of ``--workers`` processes reads each file and decodes it with PIL as the detector's
decoder does (a JPEG in draft mode down to the size the trimming detector asks for, ``decode_size`` x
``TRIM_DECODE_SCALE``), nothing else. `index`: ``build_index`` with default settings (phash, trimming,
checksums, shards, the FAISS index), timed end to end; "loop" leaves out the start-up and the finish (detector,
worker start, FAISS index and manifest), measured on a one-image run. The runs alternate (decode, index,
decode, index, ...) so both see the same load; each rate is the best of ``--repeats``.

Beside the rates, the CPU time (user + system, every process of the run: the pool's or the decoder's workers
and this process) per image of each, and their ratio (per repeat also the main process's share of `index`): on
a machine shared with other jobs the wall-clock rates move with the load, the CPU time much less. Each is the
least of ``--repeats``.

It also prints where one worker's time goes (decode, EXIF orientation, RGB conversion, content box,
the detector's preprocessing), each as a multiple of the decoding time, measured in this process.

``--digest`` prints a checksum of every shard's vectors, low-information flags and content boxes, and one of
the corpus views' vectors: equal digests before and after a change mean the change left every embedding as it
was.

``--baseline DIR`` also times `index` with the code of another checkout (DIR, e.g. a git worktree of the commit
before a change) in each repeat, right after this code's run, in a fresh process that imports the package from
DIR and times the same ``build_index`` call after a warm-up (its start-up left out, as this process's is): its
CPU time per image and ratio are printed beside this code's, and its digest with ``--digest``.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/bench_index_speed.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_index_speed", *sys.argv[1:]])

import argparse
import io
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import cache_dir, fetch_deb

JPEG_VERSION = 1  # bump when the JPEG corpus's recipe changes (its folder is rebuilt)


def png_corpus(cache: Path, n: int, work: Path) -> Path:
    """A folder of the first ``n`` openclipart-png drawings, symbolic links left out (hard-linked, else copied)."""
    src = fetch_deb("openclipart-png", cache, "usr/share/openclipart/png")
    files = sorted(p for p in src.rglob("*.png") if not p.is_symlink())[:n]  # links repeat drawings
    out = work / "png"
    out.mkdir(parents=True)
    for i, f in enumerate(files):
        dst = out / f"{i:05d}.png"
        try:
            os.link(f, dst)
        except OSError:
            shutil.copyfile(f, dst)
    return out


def jpeg_corpus(cache: Path, n: int) -> Path:
    """``n`` seeded JPEG crops of the development photographs at web sizes, written once into the cache."""
    out = cache / f"bench-index-jpeg-v{JPEG_VERSION}-{n}"
    if (out / ".done").exists():
        return out
    from overlap_audit.demos.synthetic import bundled_photos

    photos = list(bundled_photos().values())
    mate = fetch_deb("mate-backgrounds", cache, "usr/share/backgrounds/mate")
    for path in sorted(mate.rglob("*.jpg")):
        with Image.open(path) as im:
            im.draft("RGB", (2048, 2048))  # the wallpapers are up to 5640 px: a 2048-px source is plenty
            photos.append(im.convert("RGB"))
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix=".jpeg-", dir=cache))
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        w, h = photo.size
        frac = rng.uniform(0.5, 1.0)
        cw, ch = max(32, int(w * frac)), max(32, int(h * frac * rng.uniform(0.75, 1.33)))
        cw, ch = min(cw, w), min(ch, h)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x, y, x + cw, y + ch))
        longest = int(rng.integers(320, 1601))
        scale = min(1.0, longest / max(crop.size))
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                           Image.Resampling.BICUBIC)
        crop.save(tmp / f"{i:05d}.jpg", quality=int(rng.integers(75, 96)))
    (tmp / ".done").write_text("")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _decode(path: str, min_size: int) -> int:
    with open(path, "rb") as fh:
        data = fh.read()
    im = Image.open(io.BytesIO(data))
    if im.format == "JPEG":
        im.draft(im.mode, (min_size, min_size))
    im.load()
    return im.width


def decode_rate(files: list[str], workers: int, min_size: int) -> float:
    """Images per second PIL decodes ``files`` at in a pool of ``workers`` processes (pool start not timed)."""
    from functools import partial

    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(abs, range(workers))  # started
        t = time.perf_counter()
        for _ in pool.imap(partial(_decode, min_size=min_size), files, chunksize=32):
            pass
        return len(files) / (time.perf_counter() - t)


def stages(files: list[str], min_size: int, n: int = 300) -> dict[str, float]:
    """Where one worker's time goes, in this process on the first ``n`` files: each stage's time as a
    multiple of PIL's decoding (read and open included in it), in CPU time. "preprocess" is the crop to the
    content box and the detector's input of it and of each corpus view (``prepare_views``'s steps)."""
    from PIL import ImageOps

    from overlap_audit.content import content_box
    from overlap_audit.detectors import get_detector
    from overlap_audit.detectors.base import centre_crop
    from overlap_audit.imaging import to_rgb
    from overlap_audit.index.views import index_views

    det = get_detector("phash")
    views = index_views("phash", None)
    spent = dict.fromkeys(("decode", "exif", "rgb", "box", "preprocess"), 0.0)
    for path in files[:n]:
        t0 = time.process_time()
        with open(path, "rb") as fh:
            im = Image.open(io.BytesIO(fh.read()))
        if im.format == "JPEG":
            im.draft(im.mode, (min_size, min_size))
        im.load()
        t1 = time.process_time()
        ImageOps.exif_transpose(im, in_place=True)
        t2 = time.process_time()
        rgb = to_rgb(im)
        t3 = time.process_time()
        box = content_box(rgb)
        t4 = time.process_time()
        view = rgb.crop(box.box) if box.trimmed else rgb
        if views and det.preprocess_mode:
            view = view.convert(det.preprocess_mode)
        det.preprocess(view)
        for area in views:
            det.preprocess(centre_crop(view, area))
        t5 = time.process_time()
        for key, a, b in zip(spent, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            spent[key] += b - a
    return {key: value / spent["decode"] for key, value in spent.items()}


def fmt(seconds: list[float], n: int) -> str:
    return " / ".join(f"{v / n * 1e3:.2f}" for v in seconds)


def cpu_seconds(own_only: bool = False) -> float:
    """CPU time (user + system) of this process and of its children that have ended (``own_only``: this
    process's alone)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + (0 if own_only else children.ru_utime + children.ru_stime)


def index_seconds(folder: Path, out: Path, workers: int) -> float:
    from overlap_audit.index import build_index
    from overlap_audit.settings import IndexSettings

    t = time.perf_counter()
    build_index([str(folder)], out, IndexSettings(workers=workers))
    return time.perf_counter() - t


_BASELINE_RUN = """
import resource, sys, time
from pathlib import Path
from overlap_audit.index import build_index
from overlap_audit.settings import IndexSettings

def cpu():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

folder, one, out, workers = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
build_index([one], out / "warm", IndexSettings(workers=workers))  # imports, the detector: not timed
c, t = cpu(), time.perf_counter()
build_index([folder], out / "index", IndexSettings(workers=workers))
print(time.perf_counter() - t, cpu() - c)
"""


def baseline_index(code: Path, folder: Path, one: Path, out: Path, workers: int) -> tuple[float, float]:
    """(seconds, CPU seconds) of `index` on ``folder`` with the package of the checkout ``code``, in a fresh
    process (its imports and a one-image warm-up not counted); the index is left in ``out / "index"``."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", _BASELINE_RUN, str(folder), str(one), str(out), str(workers)],
                          env=env, check=True, capture_output=True, text=True, cwd=code)
    seconds, cpu = (float(v) for v in done.stdout.split()[-2:])
    return seconds, cpu


def digest(index_dir: Path) -> str:
    """xxh3 of every shard's vectors, low-information flags and content boxes, in row order; then, apart, xxh3
    of the corpus views' vectors (``views/``)."""
    import pyarrow.parquet as pq
    import xxhash

    from overlap_audit.index.shards import shard_paths
    from overlap_audit.index.views import view_shard_path

    h, v = xxhash.xxh3_64(), xxhash.xxh3_64()
    for path in shard_paths(index_dir):
        t = pq.read_table(path, columns=["key", "vector", "low_information", "content_box", "skip_reason"])
        for column in t.column_names:
            h.update(repr(t[column].to_pylist()).encode())
        views = view_shard_path(path)
        if views.exists():
            v.update(np.load(views).tobytes())
    return f"{h.hexdigest()} (views {v.hexdigest()})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--png", type=int, default=2000, help="openclipart-png drawings")
    ap.add_argument("--jpeg", type=int, default=1000, help="JPEG photo crops (0: none)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache", default=None, help="default: the project's cache folder")
    ap.add_argument("--digest", action="store_true", help="print a checksum of the shards' embeddings")
    ap.add_argument("--baseline", default=None, help="a checkout whose `index` is timed beside this code's")
    args = ap.parse_args()

    from overlap_audit.detectors import get_detector
    from overlap_audit.detectors.base import TRIM_DECODE_SCALE

    det = get_detector("phash")
    min_size = int(det.decode_size * TRIM_DECODE_SCALE)
    cache = cache_dir(args.cache)
    work = Path(tempfile.mkdtemp(prefix="bench-index-speed-"))
    try:
        if args.png < 1:
            ap.error("--png must be at least 1 (the one-image run that measures start-up is one of them)")
        corpora = {"PNG (openclipart-png)": png_corpus(cache, args.png, work)}
        if args.jpeg > 0:  # --jpeg 0: the PNGs only
            corpora["JPEG (photo crops)"] = jpeg_corpus(cache, args.jpeg)
        one = work / "one"
        one.mkdir()
        shutil.copyfile(sorted(corpora["PNG (openclipart-png)"].iterdir())[0], one / "0.png")
        index_seconds(one, work / "warm", args.workers)  # imports; not timed
        overhead = min(index_seconds(one, work / f"one-{r}", args.workers) for r in range(args.repeats))
        print(f"load average before: {os.getloadavg()}; cores: {len(os.sched_getaffinity(0))}; "
              f"start-up + finish (one image): {overhead:.2f} s")
        print("| corpus | images | PIL decode-only img/s | index end to end img/s | ratio | index loop img/s "
              "| ratio (loop) | decode-only CPU ms/img | index CPU ms/img | ratio (CPU) |"
              + (" baseline index CPU ms/img | baseline ratio (CPU) |" if args.baseline else ""))
        print("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if args.baseline else ""))
        for name, folder in corpora.items():
            files = sorted(str(p) for p in folder.iterdir() if not p.name.startswith("."))
            pil, idx, pil_cpu, idx_cpu, base_cpu, main_cpu = [], [], [], [], [], []
            for r in range(args.repeats):
                c0 = cpu_seconds()
                pil.append(decode_rate(files, args.workers, min_size))
                c1, m1 = cpu_seconds(), cpu_seconds(own_only=True)
                out = work / f"index-{len(idx)}-{folder.name}"
                idx.append(index_seconds(folder, out, args.workers))
                c2, m2 = cpu_seconds(), cpu_seconds(own_only=True)
                pil_cpu.append(c1 - c0)
                idx_cpu.append(c2 - c1)
                main_cpu.append(m2 - m1)
                if args.digest and r == 0:
                    print(f"digest {name}: {digest(out)}")
                shutil.rmtree(out)
                if args.baseline:
                    base = work / f"baseline-{len(base_cpu)}-{folder.name}"
                    base_cpu.append(baseline_index(Path(args.baseline), folder, one, base, args.workers)[1])
                    if args.digest and r == 0:
                        print(f"digest {name} (baseline): {digest(base / 'index')}")
                    shutil.rmtree(base)
            share = stages(files, min_size)
            print(f"stages {name} (x PIL decode, one process): " + ", ".join(f"{k} {v:.2f}" for k, v in share.items()))
            best_pil, best = max(pil), min(idx)
            loop = len(files) / max(1e-9, best - overhead)
            cpu_ratio = min(pil_cpu) / min(idx_cpu)
            row = (f"| {name} | {len(files)} | {best_pil:,.0f} | {len(files) / best:,.0f} | "
                   f"{len(files) / best / best_pil:.2f}x | {loop:,.0f} | {loop / best_pil:.2f}x | "
                   f"{min(pil_cpu) / len(files) * 1e3:.2f} | {min(idx_cpu) / len(files) * 1e3:.2f} | {cpu_ratio:.2f}x |")
            if base_cpu:
                row += f" {min(base_cpu) / len(files) * 1e3:.2f} | {min(pil_cpu) / min(base_cpu):.2f}x |"
            print(row)
            print(f"  per repeat, CPU ms/img: decode-only {fmt(pil_cpu, len(files))}; index {fmt(idx_cpu, len(files))}"
                  f" (its main process {fmt(main_cpu, len(files))})"
                  + (f"; baseline index {fmt(base_cpu, len(files))}" if base_cpu else ""))
        print(f"load average after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
