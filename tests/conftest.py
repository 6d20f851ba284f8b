"""Small seeded fixtures made of real photos (scikit-image / scikit-learn) and real files in tmp_path.

Markers (pyproject.toml): ``slow`` (more than about 10 s), ``torch``, ``browser`` (headless Chromium),
``network`` (a local server or sockets), ``install`` (a fresh virtualenv). ``pytest -m "not slow"`` is the
quick loop.
"""

from __future__ import annotations

import pytest
from PIL import Image

from overlap_audit.demos.synthetic import bundled_photos, tiles

from .helpers import PLANTED, broken_files, write_folder


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Each test its own evaluation cache (``evalcache.default_cache_dir`` follows XDG_CACHE_HOME): no test
    reads what another embedded, and none writes into the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    return bundled_photos()


@pytest.fixture(scope="session")
def tile_sets(photos):
    """Checkerboard tiles of every photo: (corpus tiles, disjoint tiles), each a list of (id, image)."""
    corpus, other = [], []
    for name, photo in photos.items():
        for t, tile in enumerate(tiles(photo, 4, 96)):
            (corpus if (t // 4 + t % 4) % 2 == 0 else other).append((f"{name}-{t:02d}", tile))
    return corpus, other


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory, tile_sets, photos):
    """A corpus folder: 120 real photo tiles, plus the broken files every source must survive."""
    corpus, _ = tile_sets
    files: dict[str, Image.Image | bytes] = {f"{tid}.png": im for tid, im in corpus[:120]}
    files.update({f"broken/{k}": v for k, v in broken_files(photos["coffee"]).items()})
    return write_folder(tmp_path_factory.mktemp("corpus"), files)


@pytest.fixture(scope="session")
def eval_set(tmp_path_factory, tile_sets):
    """An ImageFolder evaluation set: planted copies of corpus tiles (class 'seen') and disjoint tiles
    (class 'new'); returns (root, planted ids, clean ids)."""
    corpus, other = tile_sets
    files: dict[str, Image.Image] = {}
    planted, clean = [], []
    for i, (tid, im) in enumerate(corpus[:120:6]):
        kind = list(PLANTED)[i % len(PLANTED)]
        rel = f"seen/{tid}-{kind}.png"
        files[rel] = PLANTED[kind](im)
        planted.append(rel)
    for tid, im in other[:30]:
        rel = f"new/{tid}.png"
        files[rel] = im
        clean.append(rel)
    root = write_folder(tmp_path_factory.mktemp("eval"), files)
    return root, planted, clean


@pytest.fixture(scope="session")
def corpus_index(tmp_path_factory, corpus_dir):
    """The phash index of ``corpus_dir`` (shards of 50, without corpus views: tests/index/test_views.py builds
    them), built once for the tests that only read it; a test that changes an index works on a copy."""
    from overlap_audit.index import build_index
    from overlap_audit.settings import IndexSettings

    out = tmp_path_factory.mktemp("corpus-index") / "index"
    build_index([str(corpus_dir)], out, IndexSettings(workers=2, shard_size=50, views=()))
    return out


def pytest_collection_modifyitems(items):
    """A test that uses the ``browser`` fixture is a browser test; an install test is slow as well."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
        if item.get_closest_marker("install"):
            item.add_marker(pytest.mark.slow)
