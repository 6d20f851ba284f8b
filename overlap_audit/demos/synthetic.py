"""A small, self-contained audit built from photos that ship inside pip packages.

scikit-image bundles about twenty photos and scikit-learn two. The demo cuts each photo into a grid of
tiles: alternate tiles form the "pretraining corpus", the others the clean part of two evaluation sets
(class = the photo the tile came from). Into the first evaluation set it plants augmented copies of
corpus tiles (resized, JPEG-recompressed, slightly cropped, brightened) — the overlap the audit must find.
Per-example "predictions" are simulated: a model that is right more often on examples it has seen
(``p_seen``) than on new ones (``p_new``), so the report shows a real, known inflation.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ..augment import AUGMENTATIONS, augment
from ..errors import OverlapAuditError

# Photos bundled as files inside scikit-image (no download) and scikit-learn. Left out on purpose:
# motorcycle_right (a stereo twin of motorcycle_left), the chessboards (their tiles are truly identical
# to each other), tiny or binary images.
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
                  "clock_motion.png", "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png",
                  "hubble_deep_field.jpg", "ihc.png", "logo.png", "microaneurysms.png", "moon.png",
                  "motorcycle_left.png", "page.png", "phantom.png", "retina.jpg", "rocket.jpg", "text.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")



def bundled_photos() -> dict[str, Image.Image]:
    """The photos shipped in scikit-image and scikit-learn, as RGB images keyed by name."""
    out = {}
    try:
        sk = resources.files("skimage.data")
        sl = resources.files("sklearn.datasets.images")
    except ModuleNotFoundError as exc:
        raise OverlapAuditError(f"the demo needs scikit-image and scikit-learn ({exc}); "
                                "install them with `pip install overlap-audit[demo]`") from None
    for pkg, names in ((sk, SKIMAGE_PHOTOS), (sl, SKLEARN_PHOTOS)):
        for name in names:
            with (pkg / name).open("rb") as fh:
                out[Path(name).stem] = Image.open(io.BytesIO(fh.read())).convert("RGB")
    return out


def tiles(image: Image.Image, grid: int = 4, size: int = 128) -> list[Image.Image]:
    """Cut an image into grid×grid tiles, each resized to size×size."""
    w, h = image.size
    out = []
    for r in range(grid):
        for c in range(grid):
            box = (c * w // grid, r * h // grid, (c + 1) * w // grid, (r + 1) * h // grid)
            out.append(image.crop(box).resize((size, size), Image.Resampling.BICUBIC))
    return out


@dataclass(frozen=True)
class DemoData:
    """Paths of a generated demo."""

    corpus: Path
    evals: dict[str, Path]
    predictions: Path
    planted: dict[str, set[str]]  # eval set -> ids of planted duplicates


def make_demo_data(out_dir: str | os.PathLike, *, seed: int = 0, grid: int = 4, planted_per_set: int = 40,
                   p_seen: float = 0.9, p_new: float = 0.6) -> DemoData:
    """Write the demo corpus folder, two evaluation folders and a predictions CSV under ``out_dir``."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    corpus_dir = out / "corpus"
    eval_dirs = {"planted": out / "eval-planted", "clean": out / "eval-clean"}
    for d in (corpus_dir, *eval_dirs.values()):
        d.mkdir(parents=True, exist_ok=True)
    corpus_tiles: list[tuple[str, str, Image.Image]] = []
    clean_tiles: list[tuple[str, str, Image.Image]] = []
    for name, photo in bundled_photos().items():
        for t, tile in enumerate(tiles(photo, grid)):
            # checkerboard: corpus tiles and clean evaluation tiles never show the same region
            (corpus_tiles if (t // grid + t % grid) % 2 == 0 else clean_tiles).append((name, f"{name}-{t:02d}", tile))
    for _, tid, tile in corpus_tiles:
        tile.save(corpus_dir / f"{tid}.png")

    rows = ["dataset,id,correct"]
    planted: dict[str, set[str]] = {"planted": set(), "clean": set()}
    order = rng.permutation(len(clean_tiles))
    halves = {"planted": order[: len(order) // 2], "clean": order[len(order) // 2:]}
    for set_name, idx in halves.items():
        for i in idx:
            cls, tid, tile = clean_tiles[i]
            (eval_dirs[set_name] / cls).mkdir(exist_ok=True)
            ident = f"{cls}/{tid}.png"
            tile.save(eval_dirs[set_name] / ident)
            rows.append(f"{set_name},{ident},{int(rng.random() < p_new)}")
    picks = rng.choice(len(corpus_tiles), size=min(planted_per_set, len(corpus_tiles)), replace=False)
    for j, i in enumerate(picks):
        cls, tid, tile = corpus_tiles[i]
        kind = AUGMENTATIONS[j % len(AUGMENTATIONS)]
        (eval_dirs["planted"] / cls).mkdir(exist_ok=True)
        ident = f"{cls}/copy-{tid}-{kind}.jpg"
        augment(tile, kind, rng).save(eval_dirs["planted"] / ident, quality=95)
        planted["planted"].add(ident)
        rows.append(f"planted,{ident},{int(rng.random() < p_seen)}")
    predictions = out / "predictions.csv"
    predictions.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return DemoData(corpus_dir, eval_dirs, predictions, planted)


@dataclass(frozen=True)
class DemoResult:
    """The demo's report beside its ground truth."""

    data: DemoData
    report: object  # overlap_audit.report.Report
    found: dict[str, int]  # planted duplicates called Overlap, per set
    false_overlap: dict[str, int]  # non-planted examples called Overlap, per set
    expected_delta: dict[str, float]  # All - Clean the simulated model implies at the detected split

    def summary(self) -> str:
        lines = []
        for name, ds in ((d.name, d) for d in self.report.datasets):
            lines.append(f"{name}: {len(self.data.planted[name])} planted duplicates, {self.found[name]} found, "
                         f"{self.false_overlap[name]} other examples called Overlap; All − Clean "
                         f"{100 * (ds.stats.delta or 0):+.1f} points measured, "
                         f"{100 * self.expected_delta[name]:+.1f} expected from the simulated model")
        return "\n".join(lines)


OWN_ENTRIES = ("corpus", "eval-planted", "eval-clean", "predictions.csv", "index", "report")


def run_demo(out_dir: str | os.PathLike, *, seed: int = 0, workers: int | None = None,
             p_seen: float = 0.9, p_new: float = 0.6) -> DemoResult:
    """Generate the demo data, index the corpus and write the report under ``out_dir``/report."""
    import pyarrow.parquet as pq

    from ..api import ReportSettings, build_index, run_report
    from ..settings import IndexSettings, MatchSettings
    from ..report import SPLITS

    from ..report import check_report_dir
    from . import check_demo_dir

    check_demo_dir(out_dir, OWN_ENTRIES)
    check_report_dir(Path(out_dir) / "report")
    data = make_demo_data(out_dir, seed=seed, p_seen=p_seen, p_new=p_new)
    index_dir = Path(out_dir) / "index"
    build_index([str(data.corpus)], index_dir, IndexSettings(resume=True, workers=workers))
    report = run_report(index_dir, [(n, str(p)) for n, p in data.evals.items()],
                        ReportSettings(Path(out_dir) / "report", predictions=data.predictions,
                                       match=MatchSettings(workers=workers)))
    rows = pq.read_table(Path(out_dir) / "report" / SPLITS, columns=["dataset", "id", "overlap"]).to_pylist()
    found = {n: 0 for n in data.evals}
    false_overlap = {n: 0 for n in data.evals}
    for r in rows:
        if r["overlap"]:
            if r["id"] in data.planted[r["dataset"]]:
                found[r["dataset"]] += 1
            else:
                false_overlap[r["dataset"]] += 1
    # With the split the detector made: All - Clean = f * (acc_overlap - acc_clean), in expectation
    expected = {}
    for d in report.datasets:
        n_all, n_ov = d.stats.n_all, d.stats.n_overlap
        n_seen = len(data.planted[d.name])
        if n_ov and n_all - n_ov:
            acc_ov = (found[d.name] * p_seen + false_overlap[d.name] * p_new) / n_ov
            acc_cl = ((n_seen - found[d.name]) * p_seen + (n_all - n_ov - (n_seen - found[d.name])) * p_new) / (n_all - n_ov)
            expected[d.name] = n_ov / n_all * (acc_ov - acc_cl)
        else:
            expected[d.name] = 0.0
    return DemoResult(data, report, found, false_overlap, expected)
