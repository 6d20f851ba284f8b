"""The real-data demo's plumbing on small real .deb packages built here (dpkg-deb), so the run needs no
network: dpkg -x, the stamps' first-line captions, the bomb skipped and reported, the small CLIP scored."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from overlap_audit.demos.realdata import fetch_real_demo_data
from overlap_audit.index import skipped_items

from ..helpers import huge_png_header, png_bytes

pytestmark = pytest.mark.slow


def build_deb(root: Path, package: str, files: dict[str, bytes], out: Path, version: str = "1.0-1") -> Path:
    tree = root / f"{package}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test\n", encoding="utf-8")
    for rel, data in files.items():
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    deb = out / f"{package}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True,
                   capture_output=True)
    return deb


@pytest.fixture(scope="module")
def debs(tmp_path_factory, tile_sets):
    corpus_tiles, other_tiles = tile_sets
    root = tmp_path_factory.mktemp("debroot")
    out = tmp_path_factory.mktemp("debs")
    clip = {f"usr/share/openclipart/png/things/{i}.png": png_bytes(im)
            for i, im in corpus_tiles[:30]}
    clip["usr/share/openclipart/png/electronics/microchip.png"] = huge_png_header()
    build_deb(root, "openclipart-png", clip, out)
    stamps = {}
    for n, (i, im) in enumerate(corpus_tiles[:6] + other_tiles[:6]):
        cat = "animals" if n % 2 else "naturalforces"
        base = f"usr/share/tuxpaint/stamps/{cat}/sub/s{n:02d}"
        stamps[base + ".png"] = png_bytes(im)
        stamps[base + ".txt"] = f"Stamp number {n} <b>\nfr.utf8=Timbre {n}\n".encode()
    stamps["usr/share/tuxpaint/stamps/animals/only.svg"] = b"<svg/>"
    build_deb(root, "tuxpaint-stamps-default", stamps, out)
    return out


def test_fetch_unpacks_and_prepares_stamps(debs, tmp_path):
    data = fetch_real_demo_data(tmp_path / "cache", debs_dir=debs)
    assert data.n_stamps == 12 and data.n_captioned == 12
    assert data.svg_only == ["animals/only.svg"]
    caption = (data.eval / "naturalforces" / "sub" / "s00.txt").read_text(encoding="utf-8")
    assert caption == "Stamp number 0 <b>\n"  # the first line only; the translations are dropped
    again = fetch_real_demo_data(tmp_path / "cache", debs_dir=tmp_path)  # cached: no .deb needed now
    assert again.eval == data.eval and (data.corpus / "electronics" / "microchip.png").exists()


def test_demo_real_end_to_end(debs, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "overlap_audit.cli", "demo-real", str(out), "--cache",
                        str(tmp_path / "cache"), "--debs", str(debs), "--workers", "0", "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "electronics/microchip.png: " in r.stdout and "decompression bomb" in r.stdout
    assert "overlap-audit:openclipart-small" in r.stdout
    report = json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))
    ds = report["datasets"][0]
    assert ds["name"] == "tuxpaint" and ds["n_all"] == 12
    assert ds["n_overlap"] >= 6  # the six stamps copied from the corpus are found
    assert report["model"]["spec"] == "overlap-audit:openclipart-small"
    preds = pq.read_table(out / "report" / "predictions.parquet").to_pylist()
    assert len(preds) == 12 and {p["label"] for p in preds} == {"animals", "naturalforces"}
    classnames = json.loads((out / "classnames.json").read_text(encoding="utf-8"))
    assert classnames == {"animals": "animals", "naturalforces": "natural forces"}
    page = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "Stamp number 0 &lt;b&gt;" in page and "Stamp number 0 <b>" not in page
    manifest = json.loads((out / "index" / "manifest.json").read_text(encoding="utf-8"))
    assert any(s["id"] == "electronics/microchip.png" for s in manifest["skipped_sample"])
    assert any(s.id == "electronics/microchip.png" and "decompression bomb" in s.reason
               for s in skipped_items(out / "index"))


def test_relative_paths_and_missing_debs(debs, tmp_path, monkeypatch):
    from overlap_audit.errors import FetchError
    from overlap_audit.demos.realdata import fetch_debian_package

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mydebs").mkdir()
    for deb in debs.iterdir():
        (tmp_path / "mydebs" / deb.name).write_bytes(deb.read_bytes())
    root = fetch_debian_package("tuxpaint-stamps-default", "cache", debs_dir="mydebs")  # both relative
    assert root.is_absolute() and (root / "usr/share/tuxpaint/stamps/animals/sub/s01.png").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FetchError, match="no openclipart-png_"):  # --debs without it: an error, no download
        fetch_debian_package("openclipart-png", "cache", debs_dir="empty")


def test_the_newest_version_is_unpacked(tmp_path):
    """1.10 is newer than 1.9 (Debian version order, not string order); a name that is no version is ignored."""
    from overlap_audit.demos.realdata import fetch_debian_package

    debs = tmp_path / "debs"
    debs.mkdir()
    for version in ("1.9-1", "1.10-1", "1.2-3"):
        build_deb(tmp_path / "root", "pkg", {"usr/share/pkg/VERSION": version.encode()}, debs, version)
    (debs / "pkg_notes_all.deb").write_bytes(b"not a package")
    root = fetch_debian_package("pkg", tmp_path / "cache", debs_dir=debs)
    assert (root / "usr/share/pkg/VERSION").read_text() == "1.10-1"
