"""Photograph development sets for the audit's decision: App. C-style copies of photo quadrants among copies of
the same photos' other quadrants, mild copies of 96-px tiles, and 32-px (CIFAR-style) copies of 64-px tiles.

Families (issue 24):

- ``medium`` / ``strong``: the corpus is two quadrants of each photo (chosen per photo, seeded); the evaluation
  side is ``copies`` App. C copies of each corpus quadrant (positives) and as many copies of each of the other
  two quadrants (distractors: the same photo, disjoint content; they must be called Clean). A copy
  (``appc_copy``): crop to ``area``-100% of the area (crop aspect within +-``aspect``), downscale to
  ``scale``-100%, resize to an independent width and height in 160-400 px (the aspect ratio changes by up to
  2.5x, as when a dataset squashes images to a fixed size), rotate by up to ``rotate`` degrees, HSV jitter,
  JPEG at a quality in ``quality``.
- ``tiles96``: ``bench_planted.planted_set`` (mild copies of the checkerboard half of 4x4 96-px tiles; the
  other half are the unrelated queries).
- ``cifar32``: the checkerboard half of 4x4 64-px tiles is the corpus; each is reduced to 32 x 32 (box filter,
  PNG: as CIFAR's images were made) as its copy; the other half, reduced the same way, are the unrelated
  queries.

Photos: ``dev_photos`` (scikit-image's and scikit-learn's bundled photos, and the photographs of Debian's
mate-backgrounds, ``usr/share/backgrounds/mate/nature``) is the development set; ``heldout_photos``
(bench_detectors.DEBIAN_PHOTOS, the lomiri-wallpapers packages) is held out: nothing is tuned on it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from overlap_audit.augment import APPC_MEDIUM as MEDIUM, APPC_STRENGTHS as STRENGTHS, APPC_STRONG as STRONG
from overlap_audit.augment import CopyParams, appc_copy

__all__ = ["MEDIUM", "STRONG", "STRENGTHS", "CopyParams", "appc_copy"]  # the library's, for the benches and tests

LONGEST = 1024  # photos are reduced to this long side first (a quadrant is then at most 512 px)
DEV_PACKAGES = {"mate-backgrounds": ("usr/share/backgrounds/mate/nature", (
    "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
    "TwoWings", "Wood", "YellowFlower"))}
# a second development set: wallpapers that are illustrations, abstract art and smooth gradients rather than
# photographs (flat fills, soft shading, repeating patterns), one of each light/dark pair
ART_PACKAGES = {
    "mate-backgrounds": ("usr/share/backgrounds/mate", (
        "abstract/Gulp", "abstract/Flow", "abstract/Waves", "abstract/Spring", "abstract/Silk", "abstract/Elephants",
        "desktop/Ubuntu-Mate-Warm-no-logo", "desktop/Ubuntu-Mate-Cold-no-logo", "desktop/GreenTraditional",
        "desktop/Float-into-MATE", "desktop/MATE-Stripes-Light")),
    "gnome-backgrounds": ("usr/share/backgrounds/gnome", (
        "adwaita-l", "grid-d", "licorice-l", "pixels-l", "symbolic-d", "truchet-l", "wood-l")),
    "desktop-base": ("usr/share/desktop-base", (
        "softwaves-theme/grub/grub-16x9", "emerald-theme/grub/grub-16x9", "spacefun-theme/grub/grub-16x9",
        "homeworld-theme/grub/grub-16x9", "joy-theme/grub/grub-16x9")),
}


def _reduced(image: Image.Image, longest: int = LONGEST) -> Image.Image:
    image = image.convert("RGB")
    image.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return image


def package_photos(packages: dict, cache=None, longest: int = LONGEST) -> dict[str, Image.Image]:
    """{name: photo} from Debian packages ``{package: (folder, names)}`` (any image suffix), downloaded once."""
    from overlap_audit.demos.realdata import fetch_debian_package

    out = {}
    for package, (folder, names) in packages.items():
        root = fetch_debian_package(package, cache) / folder
        for name in names:
            path = next(p for p in sorted(root.glob(f"{name}.*")) if p.suffix.lower() in (".jpg", ".png", ".webp"))
            with Image.open(path) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (longest, longest))
                out[name] = _reduced(im, longest)
    return out


def dev_photos(cache=None, longest: int = LONGEST) -> dict[str, Image.Image]:
    """The development photos: the bundled ones and mate-backgrounds' photographs."""
    from overlap_audit.demos.synthetic import bundled_photos

    out = {k: _reduced(v, longest) for k, v in bundled_photos().items()}
    out.update(package_photos(DEV_PACKAGES, cache, longest))
    return out


def art_photos(cache=None, longest: int = LONGEST) -> dict[str, Image.Image]:
    """The second development set: illustrations, abstract art and gradients from Debian's wallpaper packages."""
    return {name.replace("/", "-"): im for name, im in package_photos(ART_PACKAGES, cache, longest).items()}


def heldout_photos(cache=None, longest: int = LONGEST) -> dict[str, Image.Image]:
    """The held-out photos (bench_detectors.DEBIAN_PHOTOS). Never tune on them."""
    from benchmarks.bench_detectors import DEBIAN_PHOTOS

    return package_photos({pkg: ("usr/share/backgrounds", names) for pkg, names in DEBIAN_PHOTOS.items()},
                          cache, longest)


def quadrants(photo: Image.Image) -> list[Image.Image]:
    """The four quadrants of ``photo``: top left, top right, bottom left, bottom right."""
    w, h = photo.size
    return [photo.crop((c * w // 2, r * h // 2, (c + 1) * w // 2, (r + 1) * h // 2)) for r in (0, 1) for c in (0, 1)]


@dataclass(frozen=True)
class PhotoSet:
    """A corpus and evaluation queries; ``source[i]`` is the corpus row query i copies, -1 for a distractor
    (which must be called Clean). ``group`` names each query's photo; ``corpus_group`` each corpus item's."""

    corpus: list
    queries: list
    source: np.ndarray
    group: list
    corpus_group: list

    @property
    def n_true(self) -> int:
        return int((self.source >= 0).sum())


def quadrant_set(photos: dict, strength: str = "medium", seed: int = 0, copies: int = 4) -> PhotoSet:
    """The issue's protocol: two quadrants of each photo in the corpus; ``copies`` copies of each corpus
    quadrant and of each other quadrant (distractors) as queries."""
    p = STRENGTHS[strength]
    corpus, cgroup, queries, source, group = [], [], [], [], []
    for name, photo in photos.items():
        rng = np.random.default_rng([seed, zlib.crc32(f"{name}/{strength}".encode())])
        quads = quadrants(photo)
        chosen = set(rng.choice(4, 2, replace=False).tolist())
        for q, quad in enumerate(quads):
            row = len(corpus) if q in chosen else -1
            if q in chosen:
                corpus.append(quad)
                cgroup.append(name)
            for _ in range(copies):
                queries.append(appc_copy(quad, p, rng))
                source.append(row)
                group.append(name)
    return PhotoSet(corpus, queries, np.asarray(source), group, cgroup)


def tile_set(photos: dict, seed: int = 0) -> PhotoSet:
    """bench_planted's mild copies of 96-px tiles among the other tiles of the same photos."""
    from benchmarks.bench_planted import planted_set

    names = [n for n, ph in photos.items() for t in range(16) if (t // 4 + t % 4) % 2 == 0]
    others = [n for n, ph in photos.items() for t in range(16) if (t // 4 + t % 4) % 2 == 1]
    data = planted_set(photos, 96, seed)
    n = len(data.corpus)
    return PhotoSet(data.corpus, data.planted + data.unrelated,
                    np.concatenate([np.arange(n), -np.ones(len(data.unrelated), int)]), names + others, names)


def cifar_set(photos: dict, size: int = 64, small: int = 32) -> PhotoSet:
    """The checkerboard half of each photo's 4x4 ``size``-px tiles as the corpus; each reduced to ``small`` px
    (box filter) as its copy, and the other half reduced the same way as unrelated queries."""
    from overlap_audit.demos.synthetic import tiles

    corpus, cgroup, copies, unrelated, ugroup = [], [], [], [], []
    for name, photo in photos.items():
        for t, tile in enumerate(tiles(photo, 4, size)):
            reduced = tile.resize((small, small), Image.Resampling.BOX)
            if (t // 4 + t % 4) % 2 == 0:
                corpus.append(tile)
                cgroup.append(name)
                copies.append(reduced)
            else:
                unrelated.append(reduced)
                ugroup.append(name)
    n = len(corpus)
    return PhotoSet(corpus, copies + unrelated, np.concatenate([np.arange(n), -np.ones(len(unrelated), int)]),
                    cgroup + ugroup, cgroup)


FAMILIES = ("medium", "strong", "tiles96", "cifar32")


def family_set(photos: dict, family: str, seed: int = 0) -> PhotoSet:
    """One family's PhotoSet from ``photos``."""
    if family in STRENGTHS:
        return quadrant_set(photos, family, seed)
    if family == "tiles96":
        return tile_set(photos, seed)
    if family == "cifar32":
        return cifar_set(photos)
    raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
