"""Faults, second pass (issue 26): recorded specs never run, corpus items held to their fingerprints, the
index held to its shards, one run per directory, the report switch without a gap, workers that end with
their parent. Each test fails on the code before these changes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from overlap_audit.atomic import exchange, hold_lock
from overlap_audit.cli import main
from overlap_audit.errors import BusyError, FetchError, IndexDamagedError
from overlap_audit.evidence import eval_items, recorded_evals, write_html_report
from overlap_audit.index import check_index, corpus_items, index_from_vectors, is_changed, load_index
from overlap_audit.index.integrity import check_files
from overlap_audit.index.manifest import file_record, load_manifest
from overlap_audit.matched import corpus_metadata
from overlap_audit.report import clean_leftovers, load_report

EXE = shutil.which("overlap-audit", path=os.path.dirname(sys.executable))
needs_exe = pytest.mark.skipif(EXE is None, reason="the overlap-audit console script is not installed")


def _images(root, n, seed, size=24):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.fromarray((rng.random((6, 6)) * 255).astype("uint8")).resize((size, size), Image.BILINEAR)
        im.save(root / f"{i:04d}.png")
    return root


def _cli(*args, quiet=True):
    result = CliRunner().invoke(main, [*map(str, args), *(["--quiet"] if quiet else [])])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A folder corpus, its index, an evaluation set of exact copies of four corpus items, and a report."""
    root = tmp_path_factory.mktemp("trust")
    corpus = _images(root / "corpus", 12, seed=1)
    ev = root / "eval"
    (ev / "seen").mkdir(parents=True)
    for name in ("0001.png", "0003.png", "0005.png", "0007.png"):
        shutil.copy(corpus / name, ev / "seen" / name)
    preds = root / "preds.csv"
    preds.write_text("dataset,id,correct\n" + "".join(f"val,seen/{n},1\n" for n in sorted(os.listdir(ev / "seen"))))
    index = root / "index"
    assert _cli("index", corpus, "--out", index, "--workers", "0", "--shard-size", "5")[0] == 0
    out = root / "report"
    code, output = _cli("report", index, "--eval", f"val={ev}", "--predictions", preds, "--out", out,
                        "--workers", "0")
    assert code == 0, output
    return root, corpus, ev, preds, index, out


# ---------------------------------------------------------------- 1. recorded specs are data


def _plant_pipe(report_dir, marker):
    path = report_dir / "report.json"
    data = json.loads(path.read_text())
    data["evals"]["val"] = f"pipe:touch {marker}"
    path.write_text(json.dumps(data))


def test_a_pipe_recorded_in_report_json_is_never_run(audited, tmp_path):
    *_, ev, _, _, out = audited
    report_dir = tmp_path / "shared"
    shutil.copytree(out, report_dir)
    marker = tmp_path / "ran"
    _plant_pipe(report_dir, marker)
    page = write_html_report(report_dir)  # redraw: the gallery notes the command instead of running it
    assert not marker.exists()
    assert "a recorded command is never run" in page.read_text()
    report = load_report(report_dir)
    with pytest.raises(FetchError, match="never run"):
        eval_items(report, "val", ["seen/0001.png"])  # the notebook's fetch cell
    with pytest.raises(FetchError, match="never run"):
        recorded_evals(report)  # the notebook's re-run cell
    assert not marker.exists()
    # passed again by the caller, the source is read
    assert eval_items(report, "val", ["seen/0001.png"], source=str(ev))["seen/0001.png"].skip_reason is None
    write_html_report(report_dir, eval_sources={"val": str(ev)})
    assert "a recorded command is never run" not in (report_dir / "report.html").read_text()


def test_a_pipe_recorded_in_an_index_manifest_is_never_run(audited, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(audited[4], index)
    marker = tmp_path / "ran"
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["sources"][0].update(kind="wds", paths=[f"pipe:touch {marker}"], spec=f"pipe:touch {marker}")
    (index / "manifest.json").write_text(json.dumps(manifest))
    items = corpus_items(index, ["0001.png"])  # verification, galleries, pairs
    assert "pipe: command" in items["0001.png"].skip_reason
    assert corpus_metadata(index, ["0001.png"])["0001.png"]["url"] is None  # corpus_matches.parquet
    assert not marker.exists()


# ---------------------------------------------------------------- 2. corpus items held to their fingerprints


def test_a_corpus_file_replaced_after_index_is_counted_changed_never_compared(audited, tmp_path):
    root, corpus, ev, preds, index, _ = audited
    moved = tmp_path / "corpus"
    shutil.copytree(corpus, moved)
    idx = tmp_path / "index"
    shutil.copytree(index, idx)
    manifest = json.loads((idx / "manifest.json").read_text())
    manifest["sources"][0]["paths"] = [str(moved)]
    (idx / "manifest.json").write_text(json.dumps(manifest))
    other = _images(tmp_path / "other", 2, seed=5)
    shutil.copy(other / "0000.png", moved / "0001.png")  # an evaluation example's corpus twin, replaced
    items = corpus_items(idx, ["0001.png", "0003.png"])
    assert is_changed(items["0001.png"]) and items["0001.png"].data is None
    assert not is_changed(items["0003.png"]) and items["0003.png"].data == (moved / "0003.png").read_bytes()
    out = tmp_path / "r"
    code, output = _cli("report", idx, "--eval", f"val={ev}", "--predictions", preds, "--out", out, "--workers", "0")
    assert code == 0, output
    data = json.loads((out / "report.json").read_text())
    counts = data["verify"]["datasets"]["val"]
    assert counts["n_changed"] == 1 and counts["n_unreadable"] >= 1
    assert data["datasets"][0]["n_overlap"] == 4  # the detector's decision stands for the changed pair
    md = (out / "report.md").read_text().splitlines()
    head = next(line for line in md if "changed since indexing" in line).split("|")
    row = next(line for line in md if line.startswith("| val |") and len(line.split("|")) == len(head)).split("|")
    assert row[head.index(" of which the corpus image changed since indexing ")].strip() == "1"


@needs_exe
def test_resume_hashes_an_item_whose_mtime_leaves_doubt(tmp_path):
    corpus = _images(tmp_path / "corpus", 12, seed=3)
    future = time.time_ns() + 3600 * 10**9  # mtimes not older than the shards: size and mtime prove nothing
    for p in corpus.iterdir():
        os.utime(p, ns=(future, future))
    out = tmp_path / "i"
    # killed after two shards: the writes are progress.json, then each shard's view vectors and the shard
    env = {**os.environ, "OVERLAP_AUDIT_KILL_AT_WRITE": "6"}
    args = [EXE, "index", str(corpus), "--out", str(out), "--workers", "0", "--shard-size", "5", "--quiet"]
    assert subprocess.run(args, env=env, capture_output=True, timeout=180).returncode == -9
    victim = corpus / "0002.png"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same mtime, other bytes
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(future, future))
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 2 and "0002.png" in r.stderr and "changed" in r.stderr, r.stderr


# ---------------------------------------------------------------- 4. the index checks itself end to end


@pytest.fixture(scope="module")
def large_flat(tmp_path_factory):
    """A flat index whose index.faiss is over 4 MB (3000 x 512 floats)."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = tmp_path_factory.mktemp("large") / "index"
    index_from_vectors(out, vectors, index_type="flat", shard_size=1000)
    assert (out / "index.faiss").stat().st_size > 4 << 20
    return out


def _rerecord(index, name):
    """Edit the manifest to match a damaged file (what a careless or hostile hand does)."""
    manifest = json.loads((index / "manifest.json").read_text())
    rec = file_record(index / name, manifest["files"][name].get("rows"))
    manifest["files"][name] = rec.to_dict()
    (index / "manifest.json").write_text(json.dumps(manifest))


def _flip_middle(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    path.write_bytes(bytes(data))


def test_loading_a_large_damaged_index_faiss_is_refused(large_flat, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(large_flat, index)
    _flip_middle(index / "index.faiss")
    with pytest.raises(IndexDamagedError, match="index.faiss does not have the checksum"):
        load_index(index)


def test_check_refuses_ids_reversed_behind_a_matching_manifest(large_flat, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(large_flat, index)
    keys = pq.read_table(index / "ids.parquet")["key"].to_pylist()
    pq.write_table(pa.table({"key": pa.array(keys[::-1], pa.string())}), index / "ids.parquet")
    _rerecord(index, "ids.parquet")
    check_files(index, load_manifest(index), full=True)  # the manifest was edited to match
    with pytest.raises(IndexDamagedError, match="does not list the shards' items"):
        check_index(index)


def test_check_refuses_an_index_faiss_of_other_vectors_behind_a_matching_manifest(large_flat, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(large_flat, index)
    other = tmp_path / "other"
    rng = np.random.default_rng(1)
    v = rng.standard_normal((3000, 512)).astype(np.float32)
    index_from_vectors(other, v / np.linalg.norm(v, axis=1, keepdims=True), index_type="flat", shard_size=1000)
    shutil.copy(other / "index.faiss", index / "index.faiss")
    _rerecord(index, "index.faiss")
    load_index(index)  # files, class, size: all as recorded
    with pytest.raises(IndexDamagedError, match="holds other vectors than the shards"):
        check_index(index)


def _zero_vectors(shard):
    """Zero a shard's vectors, keeping its metadata (the checksum of the vectors it had)."""
    table = pq.read_table(shard)
    width = table.schema.field("vector").type.byte_width
    zeros = pa.array([bytes(width)] * table.num_rows, pa.binary(width))
    table = table.set_column(table.schema.get_field_index("vector"), "vector", zeros)
    pq.write_table(table, shard)


def test_shards_with_zeroed_vectors_fail_their_own_check(large_flat, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(large_flat, index)
    _zero_vectors(index / "shards" / "shard-000001.parquet")
    _rerecord(index, "shards/shard-000001.parquet")
    with pytest.raises(IndexDamagedError, match="shard-000001.parquet has vectors that do not match"):
        check_index(index)
    code, output = _cli("check", index, quiet=False)
    assert code == 2 and "rebuild the index in a new directory" in output and "--resume" not in output


@needs_exe
def test_resume_never_rebuilds_damaged_shards_into_an_intact_index(audited, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(audited[4], index)
    _zero_vectors(index / "shards" / "shard-000000.parquet")
    (index / "manifest.json").unlink()  # no manifest to hold the shards to: they hold themselves
    r = subprocess.run([EXE, "index", str(audited[1]), "--out", str(index), "--workers", "0", "--shard-size", "5",
                        "--resume", "--quiet"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 2 and "shard-000000.parquet has vectors that do not match" in r.stderr, r.stderr
    assert not (index / "manifest.json").exists()


# ---------------------------------------------------------------- 6. one run per directory


def test_a_second_run_on_a_locked_directory_is_refused_in_one_line(audited, tmp_path):
    root, corpus, ev, preds, index, _ = audited
    out = tmp_path / "i"
    with hold_lock(out, "index"):
        code, output = _cli("index", corpus, "--out", out, "--workers", "0")
        assert code == 2 and len(output.strip().splitlines()) == 1 and "in use by another" in output, output
        assert not out.exists()
    report_out = tmp_path / "r"
    with hold_lock(report_out, "report"):
        code, output = _cli("report", index, "--eval", f"val={ev}", "--predictions", preds, "--out", report_out,
                            "--workers", "0")
        assert code == 2 and "in use by another" in output, output
    with pytest.raises(BusyError), hold_lock(out, "index"), hold_lock(out, "index"):
        pass


# ---------------------------------------------------------------- 7. the report switch


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b" / "x").write_text("b")
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"


def test_a_killed_reports_leftovers_are_cleaned_and_its_old_report_put_back(audited, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(audited[5], out)
    old = tmp_path / ".r.old-abc"
    old.mkdir()
    out.rename(old / "r")  # killed between the fallback's two renames: --out absent
    (tmp_path / ".r.tmp-dead").mkdir()
    (tmp_path / ".r-corpus_matches.parquet.tmp-0123.parquet").write_bytes(b"x")
    (tmp_path / ".r2.tmp-other").mkdir()  # another report's: not touched
    clean_leftovers(out)
    assert (out / "report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r2.tmp-other", "r"]


# ---------------------------------------------------------------- 8. workers end with their parent


def _group(pgid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry))
    return out


@needs_exe
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_decoding_workers_end_when_index_is_killed(tmp_path):
    corpus = _images(tmp_path / "corpus", 40, seed=2)
    env = {**os.environ, "OVERLAP_AUDIT_KILL_AT_WRITE": "2"}  # SIGKILL at the first shard: workers are running
    proc = subprocess.Popen([EXE, "index", str(corpus), "--out", str(tmp_path / "i"), "--workers", "2",
                             "--shard-size", "10", "--quiet"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=180) == -signal.SIGKILL
    deadline = time.monotonic() + 60  # a hang bound: workers notice the parent's death within a second or two
    while _group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _group(proc.pid)
    for pid in left:  # do not leave them on the machine when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left
