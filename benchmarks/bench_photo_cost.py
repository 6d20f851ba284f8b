"""What a photograph pair costs verification, part by part, and whether another version of the photo comparison
gives the same comparisons.

Pairs from the photo development set's families (``benchmarks.photos``): each query against its source (an
App. C copy or a planted tile) or, for a distractor, against the first corpus item of its photo (another
quadrant or tile of it). Both images go through verification's own path: PNG bytes decoded as the workers
decode them (``rule._prepared``: ``imaging.decode_image`` at ``rule.DECODE_SIDE``, then
``photo.prepare_photo``), then ``photo.verify_photo``. CPU seconds per pair (``time.process_time``, one
process, BLAS on one thread) for decoding, preparing and comparing.

With ``--against FILE`` (another version of ``overlap_audit/decide/photo.py``, e.g. ``git show
REV:overlap_audit/decide/photo.py > old.py``) both versions compare every pair, interleaved, and every field
of their ``PhotoVerification``s must agree (floats within 1e-6, NaN with NaN) and so must ``verdict_at`` over
a grid of drawing thresholds and photo accepts; the differing pairs are listed, and the CPU of each version.

    python benchmarks/bench_photo_cost.py [--families medium strong tiles96] [--max-photos N] [--against OLD]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_photo_cost", *sys.argv[1:]])

import argparse
import importlib.util
import io
import math
import sys
import time
from dataclasses import fields

import numpy as np

TOLERANCE = 1e-6
ACCEPTS = (None, 0.8, 0.83, 0.85, 0.87, 0.89, 0.91)  # None: photo.ACCEPT
PAIR_THRESHOLDS = (0.7, 0.8144, 0.9)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _pairs(families: list[str], max_photos: int | None, seed: int) -> list[tuple[str, bytes, bytes]]:
    from benchmarks.photos import dev_photos, family_set

    photos = dev_photos()
    if max_photos is not None:
        rng = np.random.default_rng(seed)
        names = sorted(photos)
        photos = {n: photos[n] for n in sorted(rng.choice(names, min(max_photos, len(names)), replace=False))}
    out = []
    for family in families:
        data = family_set(photos, family, seed)
        first = {}
        for row, group in enumerate(data.corpus_group):
            first.setdefault(group, row)
        corpus = {}
        for i, query in enumerate(data.queries):
            row = int(data.source[i]) if data.source[i] >= 0 else first.get(data.group[i])
            if row is None:
                continue
            if row not in corpus:
                corpus[row] = _png(data.corpus[row])
            out.append((family, _png(query), corpus[row]))
    return out


def _load(path: str):
    spec = importlib.util.spec_from_file_location("overlap_audit.decide._photo_against", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _differs(x, y) -> str | None:
    """The first field (or verdict) in which two comparisons differ; None when they agree."""
    for f in fields(x):
        a, b = getattr(x, f.name), getattr(y, f.name)
        if isinstance(a, tuple):
            if len(a) != len(b) or any(abs(u - v) > TOLERANCE for u, v in zip(a, b)):
                return f"{f.name}: {a!r} against {b!r}"
        elif isinstance(a, float) or isinstance(b, float):
            if not ((math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE):
                return f"{f.name}: {a!r} against {b!r}"
        elif a != b:
            return f"{f.name}: {a!r} against {b!r}"
    for accept in ACCEPTS:
        for threshold in PAIR_THRESHOLDS:
            if x.verdict_at(threshold, accept) is not y.verdict_at(threshold, accept):
                return f"verdict_at({threshold}, {accept}): {x.verdict_at(threshold, accept)} against " \
                       f"{y.verdict_at(threshold, accept)}"
    return None


def main(argv: list[str] | None = None) -> int:
    from threadpoolctl import threadpool_limits

    from benchmarks.photos import FAMILIES
    from overlap_audit.decide import photo
    from overlap_audit.decide.rule import DECODE_SIDE
    from overlap_audit.imaging import decode_image
    from overlap_audit.limits import DEFAULT_MAX_PIXELS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", default=["medium", "strong", "tiles96"], choices=FAMILIES)
    ap.add_argument("--max-photos", type=int, default=None, help="a seeded sample of this many dev photos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--against", default=None, help="another version of overlap_audit/decide/photo.py")
    args = ap.parse_args(argv)

    pairs = _pairs(args.families, args.max_photos, args.seed)
    other = _load(args.against) if args.against else None
    spent = {"decode": 0.0, "prepare": 0.0, "compare": 0.0, "against": 0.0}
    differ: list[str] = []
    worst, n_photo = 0.0, 0
    with threadpool_limits(limits=1):
        for k, (family, query, corpus) in enumerate(pairs):
            views = []
            for data in (query, corpus):
                t0 = time.process_time()
                image = decode_image(data, max_pixels=DEFAULT_MAX_PIXELS, long_side=DECODE_SIDE)
                t1 = time.process_time()
                views.append(photo.prepare_photo(image))
                spent["decode"] += t1 - t0
                spent["prepare"] += time.process_time() - t1
            t0 = time.process_time()
            ours = photo.verify_photo(*views)
            spent["compare"] += time.process_time() - t0
            n_photo += ours.applies
            if other is not None:
                t0 = time.process_time()
                theirs = other.verify_photo(*views)
                spent["against"] += time.process_time() - t0
                for name in ("score", "cells", "grid_score", "detail", "elsewhere", "texture", "pair_score"):
                    a, b = getattr(ours, name), getattr(theirs, name)
                    if not (math.isnan(a) or math.isnan(b)):
                        worst = max(worst, abs(a - b))
                why = _differs(ours, theirs)
                if why:
                    differ.append(f"{family} pair {k}: {why}")
    n = len(pairs)
    print(f"{n} pairs ({', '.join(args.families)}; {n_photo} compared as photographs); CPU ms per pair: "
          f"decoding both {1000 * spent['decode'] / n:.2f}, preparing both {1000 * spent['prepare'] / n:.2f}, "
          f"verify_photo {1000 * spent['compare'] / n:.2f}")
    if other is not None:
        print(f"against {args.against}: verify_photo {1000 * spent['against'] / n:.2f} ms per pair there "
              f"(this one {spent['compare'] / max(spent['against'], 1e-9):.3f}x of it); {len(differ)} pairs "
              f"differ; largest difference of a float field {worst:.2e}")
        for line in differ:
            print("  " + line)
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
