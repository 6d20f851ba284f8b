"""phash throughput: our batched numpy pHash against imagehash.phash on the same images, in the same run.

Both start from decoded RGB PIL images and end with a 64-bit (or 256-bit) hash; ours preprocesses each image
(grey + Lanczos resize, the same as imagehash) and hashes the whole batch with one DCT call. The ratio is
what matters: the machine is noisy and both run back to back, repeated, taking the best of each.

    python benchmarks/bench_phash.py [--n 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import imagehash
import numpy as np

from overlap_audit.demos.synthetic import bundled_photos, tiles
from overlap_audit.detectors import get_detector


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    pool = [t for p in bundled_photos().values() for t in tiles(p, 4, 256)]
    images = [pool[i % len(pool)] for i in range(args.n)]
    print(f"# phash throughput, {args.n} RGB images of 256x256, best of {args.repeats}; "
          f"{platform.processor() or platform.machine()}, numpy {np.__version__}, imagehash {imagehash.__version__}")
    print("| variant | resize | overlap-audit img/s | imagehash img/s | ratio | hash-only (DCT+median) img/s "
          "| hashes identical to imagehash |")
    print("|---|---|---|---|---|---|---|")
    for spec, hash_size in (("phash", 8), ("phash256", 16)):
        theirs = best_of(lambda: [imagehash.phash(im, hash_size=hash_size) for im in images], args.repeats)
        b = np.stack([imagehash.phash(im, hash_size=hash_size).hash.reshape(-1) for im in images[:200]])
        for mode in ("default", "exact"):
            det = get_detector(spec)
            if mode == "exact":
                det.reducing_gap = None
            ours = best_of(lambda: det.embed_images(images), args.repeats)
            pre = np.stack([det.preprocess(im) for im in images])
            hash_only = best_of(lambda: det.embed(pre), args.repeats)
            a = np.unpackbits(det.embed_images(images[:200]), axis=1).astype(bool)
            same = (a == b).all(axis=1).mean()
            print(f"| {spec} | {mode} | {args.n / ours:,.0f} | {args.n / theirs:,.0f} | {theirs / ours:.2f}x "
                  f"| {args.n / hash_only:,.0f} | {100 * same:.1f}% |")
    pipeline(bundled_photos(), args.n // 2)


def pipeline(photos: dict, n: int) -> None:
    """Files on disk -> hashes through embed_source (decode, preprocess, hash), 1024px JPEG photos.

    Compares: decoding in this process vs in worker processes; and full-size JPEG decoding with the exact
    resize (what imagehash users do) vs reduced-scale decoding with the default resize.
    """
    import os
    import tempfile

    from overlap_audit.embed import default_workers, embed_source
    from overlap_audit.sources import open_source

    names = list(photos)
    workers = max(2, default_workers())
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            im = photos[names[i % len(names)]].resize((1024, 768)).rotate(i % 7)
            im.save(os.path.join(tmp, f"{i:05d}.jpg"), quality=90)
        src = open_source(tmp)
        rows = []
        for label, exact, w in (("exact resize, full decode, workers=0", True, 0),
                                ("default, workers=0", False, 0),
                                (f"default, workers={workers}", False, workers)):
            det = get_detector("phash")
            if exact:
                det.reducing_gap = None
                det.decode_size = None
            t0 = time.perf_counter()
            embed_source(src, det, workers=w)
            rows.append((label, n / (time.perf_counter() - t0)))
    base = rows[0][1]
    print(f"\n| embed_source, {n} JPEG files of 1024x768 | img/s | vs first row |")
    print("|---|---|---|")
    for label, rate in rows:
        print(f"| {label} | {rate:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
