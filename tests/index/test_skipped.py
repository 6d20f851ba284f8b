"""The skipped corpus items: counted in the manifest with the first few listed, every one read back from the
index (``skipped_items``) with its reason, as ``overlap-audit index`` and the shards hold them."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from overlap_audit.errors import IndexDamagedError
from overlap_audit.index import load_index, skipped_items
from overlap_audit.index.manifest import SKIPPED_SAMPLE, checksum_file

from ..helpers import broken_files, write_folder

N_BROKEN = SKIPPED_SAMPLE + 6


@pytest.fixture(scope="module")
def skipping_index(tmp_path_factory, tile_sets, photos):
    """``overlap-audit index`` (a real subprocess) over 8 photo tiles and 26 files that cannot be decoded,
    spread over shards of 5; returns (index directory, the command's stdout)."""
    corpus, _ = tile_sets
    broken = list(broken_files(photos["coffee"]).items())
    files: dict = {f"{tid}.png": im for tid, im in corpus[:8]}
    for i in range(N_BROKEN):
        name, data = broken[i % len(broken)]
        files[f"bad/{i:02d}-{name}"] = data
    files["bad/back\\slash.png"] = b""  # an escaped character in the item table's records
    root = write_folder(tmp_path_factory.mktemp("skipping") / "corpus", files)
    out = root.parent / "index"
    r = subprocess.run([sys.executable, "-m", "overlap_audit.cli", "index", str(root), "--out", str(out),
                        "--workers", "0", "--shard-size", "5", "--no-views", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def _shards_skipped(out):
    """(source, id, reason) of every skipped item, read straight from the Parquet shards, in shard order."""
    rows = []
    for shard in sorted((out / "shards").glob("shard-*.parquet")):
        t = pq.read_table(shard, columns=["source", "id", "skip_reason"]).to_pylist()
        rows += [(r["source"], r["id"], r["skip_reason"]) for r in t if r["skip_reason"] is not None]
    return rows


def test_the_manifest_counts_them_and_lists_the_first_few(skipping_index):
    out, _ = skipping_index
    data = json.loads((out / "manifest.json").read_text())
    truth = _shards_skipped(out)
    assert len(truth) == N_BROKEN + 1 and data["n_shards"] > 5
    assert data["format"] == 3 and "skipped" not in data
    assert data["counts"]["skipped"] == N_BROKEN + 1
    assert [(s["source"], s["id"], s["reason"]) for s in data["skipped_sample"]] == truth[:SKIPPED_SAMPLE]
    assert load_index(out).manifest.n_skipped == N_BROKEN + 1


def test_every_skipped_item_is_read_back_with_its_reason(skipping_index):
    out, _ = skipping_index
    got = [(s.source, s.id, s.reason) for s in skipped_items(out)]
    assert got == _shards_skipped(out)
    reasons = {i: r for _, i, r in got}
    names = list(broken_files(Image.new("RGB", (8, 8))))
    assert set(reasons) == {f"bad/{i:02d}-{names[i % len(names)]}" for i in range(N_BROKEN)} | {"bad/back\\slash.png"}
    assert reasons["bad/back\\slash.png"] == reasons["bad/00-zero.png"] == "zero-byte file"
    assert "decompression bomb" in reasons["bad/03-bomb.png"]


def test_the_index_command_prints_the_first_few_and_says_where_the_rest_are(skipping_index):
    out, stdout = skipping_index
    lines = [line for line in stdout.splitlines() if line.startswith("  skipped ")]
    truth = _shards_skipped(out)
    assert lines == [f"  skipped {s}:{i}: {r}" for s, i, r in truth[:SKIPPED_SAMPLE]]
    assert f"{N_BROKEN + 1} skipped" in stdout
    assert f"... and {N_BROKEN + 1 - SKIPPED_SAMPLE} more (all with their reasons in the skip_reason column" in stdout


def test_an_item_table_edited_with_its_manifest_is_refused(tmp_path, skipping_index):
    import shutil

    out, _ = skipping_index
    copy = tmp_path / "index"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    table = copy / manifest["items_file"]
    offsets = np.load(copy / manifest["items_file"].replace(".rows", ".offsets.npy"))
    header = json.loads(table.read_bytes().split(b"\n", 1)[0])
    at = int(offsets[header["indexed"], 0])  # the first row not indexed: a skipped item's record, key first
    data = bytearray(table.read_bytes())
    assert data[at:at + 5] == b"vbad/"
    data[at + 1:at + 4] = b"BAD"
    table.write_bytes(bytes(data))
    manifest["files"][manifest["items_file"]]["xxh3_64"] = checksum_file(table)  # the manifest edited to match
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexDamagedError, match="hash is not the one beside its offset") as exc:
        skipped_items(copy)
    assert "\n" not in str(exc.value)
