"""Detector benchmark: recall at 99% precision, average precision and throughput, per augmentation family
and strength, on held-out images no detector trained on.

Images: checkerboard tiles (128 px) of the photos bundled in scikit-image and scikit-learn (no detector
here trained on them: the shipped clipdup on Debian wallpaper tiles and openclipart drawings, the small CLIP
behind clip-image on openclipart drawings). For each family (and all together) at each strength,
every image gets one augmented copy; positives are (copy, its image), negatives (copy, every other image):
the other tiles of the same photos are the distractors of the same kind that must not match. Recall at
99% precision: the recall at the lowest threshold, among the positives' scores, whose precision is >= 0.99
(the rule of ``overlap_audit.decide.thresholds``); AP: average precision of all pairs ranked by similarity.

Default thresholds: for each detector, the lowest threshold whose precision is >= 0.99 on all the queries
above pooled (every family and "all", at every strength, against every distractor) — how each detector
module's shipped default is set (printed beside it, with the recall it keeps on the pooled queries and on
"all, medium").

Throughput: images/s of preprocessing + embedding of the same 384 in-memory tiles, in this process, best of
``--repeats``, beside imagededup's CNN (MobileNetV3 small cut at global pooling, its own preprocessing:
resize 256, centre crop 224, ImageNet normalisation; batches of 64 as its data loader makes). Its
pretrained weights need a download, so the architecture runs with random weights: the cost is the same.

Paired bootstrap (``--bootstrap N``): each cell's recall at 99% precision rests on the few highest-scoring
negatives, so a difference between two detectors may be luck of the images; N resamples of the photos (all 16
tiles of a drawn photo: the tiles of one photo are not independent; the same resample for both detectors) give a 95%
interval of the difference in recall and in AP, and the share of resamples in which the detector beats
``--versus``.

The default decision (``--decision``, default: the default detector; ``none`` skips it): what a report decides,
not the similarity alone. The checkerboard half of each photo's tiles is indexed (``build_index``,
``IndexSettings`` defaults but the detector) and every query set of every App. C, margin and edit family at
every strength is audited in one ``run_report`` (default ``ReportSettings``: the default thresholds,
trimming, verification); the copies of the indexed tiles are the positives, the copies of the other half (the
same photos, other content) the distractors, which must be Clean. Per family: recall (copies called Overlap /
copies), precision (copies called Overlap / all called Overlap; "wrong": a copy called Overlap through another
tile), the pairs verified, and beside them the same detector's ranking (recall at 99% precision of the
similarity alone, every tile against every copy, as in the first table); then the families pooled.

Second photo set (``--photos debian``): 16 photographs from Debian's lomiri-wallpapers packages (DEBIAN_PHOTOS),
cut the same way; no weights, threshold or run choice was made on them, so they check that the bundled set's
findings carry over (the bundled set has 24 photos, and a few of them — a brick wall — decide several cells).

    python benchmarks/bench_detectors.py [--detectors phash phash256 tiny clipdup clip-image:MODEL] [--size 128]
        [--bootstrap 1000 --versus phash] [--leave-out brick] [--photos debian] [--decision phash|none]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/bench_detectors.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.bench_detectors", *sys.argv[1:]])

import argparse
import time
from collections import defaultdict

import numpy as np

from benchmarks.common import (TARGET, at_shipped_threshold, bench_detector, held_out_images, held_out_photo_of_each, low_information,
                               print_bootstrap, print_family_table, query_sets, recall_and_ap, similarity_matrix)
from overlap_audit.augment import EDIT_FAMILIES, MARGIN_FAMILIES, STRENGTHS
from overlap_audit.demos.synthetic import bundled_photos
from overlap_audit.decide.thresholds import recall_at_precision, threshold_at_precision


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


def _in_corpus(n_tiles: int) -> np.ndarray:
    """The decision's corpus: the checkerboard half of each photo's 4x4 tiles (held_out_images' order)."""
    t = np.arange(n_tiles) % 16
    return (t // 4 + t % 4) % 2 == 0


def default_decision(images: list, sets: list, detector: str, work) -> dict:
    """{(family, strength): counts} of the default decision (see the module docstring) on ``sets``, a list of
    (family, strength, copies) with one copy per image of ``images``."""
    import pandas as pd
    import pyarrow.parquet as pq
    from pathlib import Path

    from overlap_audit.api import ReportSettings, build_index, run_report
    from overlap_audit.settings import IndexSettings

    work = Path(work)
    corpus = _in_corpus(len(images))
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    for i in np.flatnonzero(corpus):
        images[i].save(work / "corpus" / f"c{i:05d}.png")
    evals, ids = [], [f"q{i:05d}.png" for i in range(len(images))]
    for family, strength, copies in sets:
        folder = work / "eval" / f"{family}-{strength}"
        folder.mkdir(parents=True, exist_ok=True)
        for ident, im in zip(ids, copies):
            im.save(folder / ident)
        evals.append((f"{family}-{strength}", str(folder)))
    build_index([str(work / "corpus")], work / "index", IndexSettings(detector=detector))
    preds = pd.DataFrame({"dataset": [n for n, _ in evals for _ in ids], "id": ids * len(evals), "correct": 1})
    report = run_report(work / "index", evals, ReportSettings(out_dir=work / "report", predictions=preds,
                                                              cache_dir=None))
    verified = {n: d.get("n_verified", 0) for n, d in (report.verify or {}).get("datasets", {}).items()}
    t = pq.read_table(work / "report" / "splits.parquet").to_pydict()
    out = {}
    for (family, strength, _), (name, _) in zip(sets, evals):
        rows = {t["id"][r]: r for r in range(len(t["id"])) if t["dataset"][r] == name}
        order = [rows[ident] for ident in ids]
        overlap = np.array([bool(t["overlap"][r]) for r in order])
        near = [Path(t["neighbor_ids"][r][0]).name if t["neighbor_ids"][r] else "" for r in order]
        tp, fp = int((overlap & corpus).sum()), int((overlap & ~corpus).sum())
        wrong = sum(near[i] != f"c{i:05d}.png" for i in np.flatnonzero(overlap & corpus))
        out[(family, strength)] = {"tp": tp, "fp": fp, "wrong": wrong, "n": int(corpus.sum()),
                                   "verified": int(verified.get(name, 0))}
    return out


def print_decision_table(detector: str, decided: dict, ranking: dict) -> None:
    """Per family and strength, then pooled: the default decision beside the ranking (``default_decision``)."""
    def cell(counts: list[dict]) -> str:
        tp, fp, wrong, n = (sum(c[k] for c in counts) for k in ("tp", "fp", "wrong", "n"))
        return (f"{tp / max(1, n):.3f} / {tp / (tp + fp) if tp + fp else 1.0:.3f} ({wrong}) | "
                f"{sum(c['verified'] for c in counts)}")

    def ranked(keys: list) -> str:
        pos, neg = (np.concatenate([ranking[k][j] for k in keys]) for j in (0, 1))
        return f"{recall_at_precision(pos, neg, TARGET):.3f}"

    print(f"\n# the default decision ({detector}, default thresholds, trimming, verification); the checkerboard half "
          "of the tiles indexed, copies of the other half as distractors")
    print("| family | strength | ranking recall@99%P (similarity alone) | default decision: recall / precision "
          "(wrong) | pairs verified |\n|---|---|---|---|---|")
    for key, counts in decided.items():
        print(f"| {key[0]} | {key[1]} | {ranked([key])} | {cell([counts])} |")
    groups = {"App. C families (and all)": [k for k in decided if k[0] not in MARGIN_FAMILIES + EDIT_FAMILIES],
              "margin families": [k for k in decided if k[0] in MARGIN_FAMILIES],
              "edit families": [k for k in decided if k[0] in EDIT_FAMILIES], "every family": list(decided)}
    for label, keys in groups.items():
        if keys:
            print(f"| **{label}, pooled** | {', '.join(dict.fromkeys(k[1] for k in keys))} | {ranked(keys)} | "
                  f"{cell([decided[k] for k in keys])} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detectors", nargs="+",
                    default=["phash", "phash256", "pdq", "tiny", "clipdup@whole", "clipdup",
                             "clip-image:overlap-audit:openclipart-small"],
                    help="SPEC@trim or SPEC@whole sets a detector's content normalisation; clip-image:MODEL takes any zero-shot model spec (open_clip:ARCH:PATH, hf:DIR) or a "
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
    ap.add_argument("--decision", default=None, metavar="DETECTOR",
                    help="the detector whose default decision (report defaults) is measured per family (default: "
                         "the default detector; none: skip)")
    args = ap.parse_args()
    if args.decision is None:
        from overlap_audit.settings import IndexSettings

        args.decision = IndexSettings().detector
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
            dets[spec] = bench_detector(spec)
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
    decision_sets, ranking = [], {}  # the query sets the decision is measured on; its detector's (pos, neg)
    decider = dets.get(args.decision) if args.decision != "none" else None
    if args.decision != "none" and decider is None:
        decider = bench_detector(args.decision)
        base[args.decision], base_low[args.decision] = decider.embed_images(images), low_information(decider, images)
    for family, strength, copies in query_sets(every, args.strengths, margins=True, edits=True):  # seeded on the full set
        copies = [c for c, k in zip(copies, keep) if k]
        if decider is not None:
            sims = similarity_matrix(decider, base[args.decision], copies, base_low[args.decision])
            ranking[(family, strength)] = (np.diag(sims), sims[~np.eye(len(images), dtype=bool)])
            decision_sets.append((family, strength, copies))
        if family in EDIT_FAMILIES:  # measured for the decision; the ranking tables keep their families
            continue
        app_c = family not in MARGIN_FAMILIES  # the default threshold is set on the App. C families alone
        cells, matrices = [], {}
        for name, d in dets.items():
            sims = similarity_matrix(d, base[name], copies, base_low[name])
            if args.bootstrap:
                matrices[name] = sims
            pos, neg = np.diag(sims), sims[~np.eye(len(images), dtype=bool)]
            if app_c:
                pooled[name][0].append(pos)
                pooled[name][1].append(neg)
            by_family[family][name][0].append(pos)
            by_family[family][name][1].append(neg)
            if (family, strength) == ("all", "medium"):
                all_medium[name] = (pos, neg)
            cells.append(recall_and_ap(pos, neg))
        print(f"| {family} | {strength} | " + " | ".join(cells) + " |", flush=True)
        compared.append((family, strength, matrices))
    print_family_table(by_family)
    if decider is not None:
        import shutil
        import tempfile

        work = tempfile.mkdtemp(prefix="bench_detectors-decision-")
        try:
            print_decision_table(args.decision, default_decision(images, decision_sets, args.decision, work), ranking)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if args.bootstrap:
        print_bootstrap(compared, args.versus, args.bootstrap, groups)
    print(f"\n# default threshold: lowest with precision >= 99% on the App. C queries pooled "
          f"({', '.join(args.strengths)}; the margin families are not pooled)")
    print("| detector | threshold | recall, pooled | recall, all medium | shipped default | its precision / recall, "
          "pooled |")
    print("|---|---|---|---|---|---|")
    for name, d in dets.items():
        pos, neg = (np.concatenate(x) for x in pooled[name])
        point = threshold_at_precision(pos, neg, TARGET)
        if point is None:
            print(f"| {name} | none reaches 99% | – | – | {at_shipped_threshold(d, pos, neg)} |")
            continue
        p_all, _ = all_medium.get(name, (np.array([]), None))
        r_all = float((p_all >= point.threshold).mean()) if len(p_all) else float("nan")
        print(f"| {name} | {point.threshold:.4f} | {100 * point.recall:.1f}% | {100 * r_all:.1f}% | "
              f"{at_shipped_threshold(d, pos, neg)} |")
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


def _torch_threads() -> str:
    try:
        import torch
    except ImportError:
        return "no torch"
    return str(torch.get_num_threads())


if __name__ == "__main__":
    main()
