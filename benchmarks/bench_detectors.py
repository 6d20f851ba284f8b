"""Detector benchmark: recall at 99% precision, average precision and throughput, per augmentation family
and strength, on held-out images no detector trained on.

Images: checkerboard tiles (128 px) of the photos bundled in scikit-image and scikit-learn (no detector
here trained on them: the shipped clipdup on Debian wallpaper tiles and openclipart drawings, the small CLIP
behind clip-image on openclipart drawings). For each family (and all together) at each strength,
every image gets one augmented copy; positives are (copy, its image), negatives (copy, every other image):
the other tiles of the same photos are the distractors of the same kind that must not match. Recall at
99% precision: the recall at the lowest threshold whose precision stays >= 0.99; AP: average precision of
all pairs ranked by similarity.

Default thresholds: for each detector, the lowest threshold whose precision stays >= 0.99 on all the
queries above pooled (every family and "all", at every strength, against every distractor) — the number each
detector module ships as its default (with the recall it keeps on the pooled queries and on "all, medium").

Throughput: images/s of preprocessing + embedding of the same 384 in-memory tiles, in this process, best of
``--repeats``, beside imagededup's CNN (MobileNetV3 small cut at global pooling, its own preprocessing:
resize 256, centre crop 224, ImageNet normalisation; batches of 64 as its data loader makes). Its
pretrained weights need a download, so the architecture runs with random weights: the cost is the same.

Paired bootstrap (``--bootstrap N``): each cell's recall at 99% precision rests on the few highest-scoring
negatives, so a difference between two detectors may be luck of the images; N resamples of the photos (all 16
tiles of a drawn photo: the tiles of one photo are not independent; the same resample for both detectors) give a 95%
interval of the difference in recall and in AP, and the share of resamples in which the detector beats
``--versus``.

Second photo set (``--photos debian``): 16 photographs from Debian's lomiri-wallpapers packages (DEBIAN_PHOTOS),
cut the same way; no weights, threshold or run choice was made on them, so they check that the bundled set's
findings carry over (the bundled set has 24 photos, and a few of them — a brick wall — decide several cells).

    python benchmarks/bench_detectors.py [--detectors phash phash256 tiny clipdup clip-image:MODEL] [--size 128]
        [--bootstrap 1000 --versus phash] [--leave-out brick] [--photos debian]
"""

from __future__ import annotations

import argparse
import time
import zlib
from collections import defaultdict

import numpy as np

from overlap_audit.augment import FAMILIES, STRENGTHS, augment_all, augment_family
from overlap_audit.demos.synthetic import bundled_photos, tiles
from overlap_audit.calibrate import paired_bootstrap
from overlap_audit.thresholds import precision_recall
from overlap_audit.detectors import get_detector


def average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.lexsort((labels, -scores))  # ties: negatives first (pessimistic)
    hits = labels[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / max(1, len(pos)))


def recall_at_precision(pos: np.ndarray, neg: np.ndarray, target: float = 0.99) -> float:
    t, p, r = precision_recall(pos, neg)
    bad = np.nonzero(p < target)[0]
    start = bad[-1] + 1 if len(bad) else 0
    return float(r[start]) if start < len(t) else 0.0


def threshold_at_precision(pos: np.ndarray, neg: np.ndarray, target: float = 0.99) -> tuple[float, float]:
    """(threshold, recall) at the lowest threshold from which precision stays >= target."""
    t, p, r = precision_recall(pos, neg)
    bad = np.nonzero(p < target)[0]
    start = bad[-1] + 1 if len(bad) else 0
    return (float(t[start]), float(r[start])) if start < len(t) else (float("nan"), 0.0)


def at_shipped_threshold(det, pos: np.ndarray, neg: np.ndarray) -> str:
    """Table cells "threshold | precision / recall" at the detector's shipped default ("– | –" without one)."""
    shipped = getattr(det, "default_threshold", None)
    if shipped is None:
        return "– | –"
    tp, fp = int((pos >= shipped).sum()), int((neg >= shipped).sum())
    return f"{shipped:.4f} | {100 * tp / max(1, tp + fp):.2f}% / {100 * tp / len(pos):.1f}%"


class ImagededupCNN:
    """imagededup's CNN encoder (methods.cnn.CNN) around MobileNetV3 small with random weights."""

    name = "imagededup CNN (MobileNetV3 small, random weights)"

    def __init__(self):
        import torch
        import torchvision
        from imagededup.methods import CNN
        from imagededup.utils import CustomModel
        from imagededup.utils.models import MobilenetV3

        class RandomMobilenetV3(torch.nn.Module):  # imagededup's MobilenetV3 with weights=None (no download)
            def __init__(self):
                super().__init__()
                net = torchvision.models.mobilenet_v3_small(weights=None).eval()
                self.mobilenet_gap_op = torch.nn.Sequential(net.features, net.avgpool)

            def forward(self, x):
                return self.mobilenet_gap_op(x).squeeze(dim=3).squeeze(dim=2)

        self._torch = torch
        self.cnn = CNN(verbose=False, model_config=CustomModel(model=RandomMobilenetV3().eval(),
                                                              transform=MobilenetV3.transform, name="random"))

    def embed_images(self, images) -> np.ndarray:
        out = []
        with self._torch.no_grad():
            for i in range(0, len(images), self.cnn.batch_size):
                batch = [self.cnn.apply_preprocess(np.asarray(im.convert("RGB"))) for im in images[i:i + 64]]
                out.append(self.cnn.model(self._torch.stack(batch).to(self.cnn.device)).cpu().numpy())
        return np.concatenate(out)


# --photos debian: the photographs among the wallpapers of two Debian packages that no detector here trained
# on (clipdup's training tiles come from mate-backgrounds and gnome-backgrounds; no file name in common; the
# three tiles that come within a same-picture rule of a training tile are near-uniform and, looked at, different
# pictures: BENCHMARKS.md). The packages' other wallpapers are rendered graphics (gradients, ribbons), left out
# by eye: Fossa, Painting-Colors, umang.
DEBIAN_PHOTOS = {
    "lomiri-wallpapers-16.04": (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "analogpattern_by_Peter_Nerlich",
        "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
        "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi"),
    "lomiri-wallpapers-20.04": ("Infinite-Sea_by_Aury88", "Kleiber_by_Lukas_Baubkus"),
}
PHOTO_SETS = ("bundled", "debian")


def debian_photos(cache: str | None = None, longest: int = 1024) -> dict:
    """DEBIAN_PHOTOS as RGB images (longest side ``longest``: a 4x4 tile is still 2x the benchmark's 128 px),
    keyed by name; each package is downloaded and unpacked once into the cache (apt-get download, no root)."""
    from PIL import Image

    from overlap_audit.demos.realdata import fetch_debian_package

    out = {}
    for package, names in DEBIAN_PHOTOS.items():
        root = fetch_debian_package(package, cache)
        for name in names:
            with Image.open(root / "usr" / "share" / "backgrounds" / f"{name}.jpg") as im:
                im.draft("RGB", (longest, longest))  # JPEG: decode at a reduced scale directly
                image = im.convert("RGB")
            image.thumbnail((longest, longest), Image.Resampling.LANCZOS)
            out[name] = image
    return out


def photo_set(which: str = "bundled", cache: str | None = None) -> dict:
    """The benchmark's photos by name: "bundled" (scikit-image and scikit-learn: the default thresholds are set
    on these) or "debian" (DEBIAN_PHOTOS: a second held-out set, used for no choice or threshold)."""
    if which not in PHOTO_SETS:
        raise ValueError(f"photo set must be one of {', '.join(PHOTO_SETS)}, got {which!r}")
    return bundled_photos() if which == "bundled" else debian_photos(cache)


def held_out_images(size: int = 128, photos: dict | None = None) -> list:
    """The benchmark's images: 4x4 tiles of every photo (default: those bundled in scikit-image and scikit-learn)."""
    return [t for p in (bundled_photos() if photos is None else photos).values() for t in tiles(p, 4, size)]


def held_out_photo_of_each(size: int = 128, photos: dict | None = None) -> np.ndarray:
    """For each of held_out_images' tiles, the index of the photo it was cut from (the bootstrap's unit)."""
    return np.array([k for k, p in enumerate((bundled_photos() if photos is None else photos).values()) for _ in tiles(p, 4, size)])


def query_sets(images: list, strengths=tuple(STRENGTHS)):
    """Yield (family, strength, copies): one augmented copy per image, per family and "all", per strength."""
    for strength in strengths:
        for family in (*FAMILIES, "all"):
            # a stable seed per query set (Python's str hash changes from run to run)
            rng = np.random.default_rng(zlib.crc32(f"{family}/{strength}".encode()))
            seeds = rng.integers(2**32, size=len(images))
            if family == "all":
                copies = [augment_all(im, strength, np.random.default_rng(int(s))) for im, s in zip(images, seeds)]
            else:
                copies = [augment_family(im, family, strength, np.random.default_rng(int(s)))
                          for im, s in zip(images, seeds)]
            yield family, strength, copies


def low_information(det, images: list) -> np.ndarray:
    """The detector's own low-information flags (the split never counts such an image as Overlap)."""
    return np.asarray(det.low_information(np.stack([det.preprocess(im.convert("RGB")) for im in images])), bool)


def similarity_matrix(det, base: np.ndarray, copies: list, base_low: np.ndarray | None = None) -> np.ndarray:
    """Similarities of every copy (rows) to every image (columns); the diagonal holds the true pairs.

    As in the audit, a pair with a low-information side never matches: its similarity becomes -inf (a missed
    positive, a negative that cannot be a false match).
    """
    sims = det.similarity(det.embed_images(copies), base).astype(np.float64)
    low = low_information(det, copies)
    sims[low, :] = -np.inf
    if base_low is not None:
        sims[:, base_low] = -np.inf
    return sims


def pairs(det, base: np.ndarray, copies: list, base_low: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of (copy, its image) — positives — and (copy, every other image) — negatives."""
    sims = similarity_matrix(det, base, copies, base_low)
    return np.diag(sims), sims[~np.eye(len(base), dtype=bool)]


def benchmark_threshold(det, size: int = 128, target: float = 0.99) -> tuple[float, float]:
    """A detector's default threshold: (threshold, recall) at ``target`` precision on all queries pooled."""
    images = held_out_images(size)
    base, base_low = det.embed_images(images), low_information(det, images)
    pos, neg = zip(*(pairs(det, base, copies, base_low) for _, _, copies in query_sets(images)))
    return threshold_at_precision(np.concatenate(pos), np.concatenate(neg), target)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detectors", nargs="+",
                    default=["phash", "phash256", "tiny", "clipdup", "clip-image:overlap-audit:openclipart-small"],
                    help="clip-image:MODEL takes any zero-shot model spec (open_clip:ARCH:PATH, hf:DIR) or a "
                         "TorchScript export; the default is the project's own small CLIP")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--strengths", nargs="+", default=list(STRENGTHS))
    ap.add_argument("--repeats", type=int, default=3, help="throughput: best of this many passes")
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N",
                    help="also compare each detector with --versus per cell: N paired resamples of the photos")
    ap.add_argument("--versus", default="phash", help="the detector the others are compared with (--bootstrap)")
    ap.add_argument("--photos", choices=PHOTO_SETS, default="bundled",
                    help="bundled: scikit-image's and scikit-learn's photos (the default thresholds are set on "
                         "them); debian: 16 photographs from Debian's lomiri-wallpapers packages, a second "
                         "held-out set that no threshold or weights were chosen on (downloaded once)")
    ap.add_argument("--leave-out", nargs="+", default=[], metavar="PHOTO",
                    help="a diagnosis, not the benchmark: drop these photos' tiles (e.g. brick)")
    args = ap.parse_args()
    photos = photo_set(args.photos)
    every, groups = held_out_images(args.size, photos), held_out_photo_of_each(args.size, photos)
    keep = np.ones(len(every), bool)
    if args.photos != "bundled":
        print(f"(photos: {args.photos} — {len(photos)} photos, {len(every)} tiles; NOT the set the default thresholds "
              "are set on, so the 'shipped default' columns show how they carry over)")
    if args.leave_out:
        names = list(photos)
        unknown = sorted(set(args.leave_out) - set(names))
        if unknown:
            ap.error(f"--leave-out: no photo named {', '.join(unknown)} in --photos {args.photos} "
                     f"(there are: {', '.join(names)})")
        keep = ~np.isin(groups, [names.index(n) for n in args.leave_out])
        print(f"(left out: {', '.join(args.leave_out)} — {int((~keep).sum())} tiles; NOT the benchmark's image set; "
              "the other tiles' copies are the benchmark's own)")
    images, groups = [im for im, k in zip(every, keep) if k], groups[keep]
    dets = {}
    for spec in args.detectors:
        try:
            dets[spec] = get_detector(spec)
        except Exception as exc:  # noqa: BLE001 - e.g. no clipdup weights: report and go on
            print(f"({spec} skipped: {exc})")
    base = {name: d.embed_images(images) for name, d in dets.items()}
    base_low = {name: low_information(d, images) for name, d in dets.items()}
    print("(held-out tiles flagged low-information, never matched: "
          + ", ".join(f"{name} {int(f.sum())}" for name, f in base_low.items()) + ")\n")
    print(f"# {len(images)} held-out tiles of {args.size}px; recall at 99% precision / average precision")
    header = "| family | strength | " + " | ".join(dets) + " |"
    print(header + "\n|" + "---|" * (2 + len(dets)))
    pooled = defaultdict(lambda: ([], []))  # detector -> (positives, negatives) over every query set
    all_medium = {}
    by_family = defaultdict(lambda: defaultdict(lambda: ([], [])))  # family -> detector -> (pos, neg) per strength
    compared = []  # (family, strength, {detector: similarity matrix}) for --bootstrap
    for family, strength, copies in query_sets(every, args.strengths):  # seeded on the full set
        copies = [c for c, k in zip(copies, keep) if k]
        cells, matrices = [], {}
        for name, d in dets.items():
            sims = similarity_matrix(d, base[name], copies, base_low[name])
            if args.bootstrap:
                matrices[name] = sims
            pos, neg = np.diag(sims), sims[~np.eye(len(images), dtype=bool)]
            pooled[name][0].append(pos)
            pooled[name][1].append(neg)
            by_family[family][name][0].append(pos)
            by_family[family][name][1].append(neg)
            if (family, strength) == ("all", "medium"):
                all_medium[name] = (pos, neg)
            cells.append(f"{100 * recall_at_precision(pos, neg):.1f} / {100 * average_precision(pos, neg):.1f}")
        print(f"| {family} | {strength} | " + " | ".join(cells) + " |", flush=True)
        compared.append((family, strength, matrices))
    print_family_table(by_family)
    if args.bootstrap:
        print_bootstrap(compared, args.versus, args.bootstrap, groups)
    print(f"\n# default threshold: lowest with precision >= 99% on all queries pooled ({', '.join(args.strengths)})")
    print("| detector | threshold | recall, pooled | recall, all medium | shipped default | its precision / recall, "
          "pooled |")
    print("|---|---|---|---|---|---|")
    for name, d in dets.items():
        pos, neg = (np.concatenate(x) for x in pooled[name])
        t, r = threshold_at_precision(pos, neg)
        p_all, _ = all_medium.get(name, (np.array([]), None))
        r_all = float((p_all >= t).mean()) if len(p_all) else float("nan")
        print(f"| {name} | {t:.4f} | {100 * r:.1f}% | {100 * r_all:.1f}% | {at_shipped_threshold(d, pos, neg)} |")
    timed = dict(dets)
    try:
        timed["imagededup-cnn"] = ImagededupCNN()
    except ImportError as exc:
        print(f"(imagededup CNN not timed: {exc}; pip install imagededup)")
    print(f"\n# throughput on the same {len(images)} tiles, best of {args.repeats}, torch threads: "
          f"{_torch_threads()}")
    print("| detector | images/s (preprocess + embed, this process) | relative to clipdup |\n|---|---|---|")
    rates = {}
    for name, d in timed.items():
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            d.embed_images(images)
            best = min(best, time.perf_counter() - t)
        rates[name] = len(images) / best
    for name, rate in rates.items():
        rel = f"{rate / rates['clipdup']:.2f}x" if "clipdup" in rates else "–"
        print(f"| {name} | {rate:,.0f} | {rel} |")


def print_family_table(by_family: dict) -> None:
    """Per family, every strength's queries pooled: recall at 99% precision / AP. ``by_family``: {family:
    {detector: ([positives...], [negatives...])}}, one array per strength (the issue's goal is per family)."""
    if not by_family:
        return
    names = list(next(iter(by_family.values())))
    print("\n# per family, its strengths pooled; recall at 99% precision / average precision")
    print("| family | " + " | ".join(names) + " |\n|" + "---|" * (1 + len(names)))
    for family, per_det in by_family.items():
        cells = []
        for name in names:
            pos, neg = (np.concatenate(x) for x in per_det[name])
            cells.append(f"{100 * recall_at_precision(pos, neg):.1f} / {100 * average_precision(pos, neg):.1f}")
        print(f"| {family} | " + " | ".join(cells) + " |", flush=True)


def print_bootstrap(compared: list, versus: str, replicates: int, groups: np.ndarray, unit: str = "photos") -> None:
    """Per cell: each detector's recall at 99% precision and AP minus ``versus``'s, with 95% paired bootstrap
    intervals over the photos (a cell's recall is decided by a few pairs: is a difference more than luck?)."""
    others = [name for name in (compared[0][2] if compared else {}) if name != versus]
    if not compared or versus not in compared[0][2] or not others:
        print(f"\n(--bootstrap: need --versus {versus} and another detector among --detectors)")
        return
    for metric, label in (("recall", "recall at 99% precision"), ("ap", "average precision")):
        print(f"\n# {label} minus {versus}'s, in points: difference [95% interval] P(better); "
              f"{replicates} paired resamples of the {len(np.unique(groups))} {unit}"
              + (" (all tiles of a drawn photo)" if unit == "photos" else ""))
        print("| family | strength | " + " | ".join(others) + " |\n|" + "---|" * (2 + len(others)))
        for family, strength, matrices in compared:
            cells = []
            for name in others:
                b = paired_bootstrap(matrices[name], matrices[versus], metric=metric, replicates=replicates,
                                     groups=groups)
                cells.append(f"{100 * b.difference:+.1f} [{100 * b.low:+.1f}, {100 * b.high:+.1f}] "
                             f"{b.p_a_better:.2f}")
            print(f"| {family} | {strength} | " + " | ".join(cells) + " |", flush=True)


def _torch_threads() -> str:
    try:
        import torch
    except ImportError:
        return "no torch"
    return str(torch.get_num_threads())


if __name__ == "__main__":
    main()
