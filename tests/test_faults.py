"""Faults in an index directory: a kill at any atomic write (real subprocesses, killed by the
OVERLAP_AUDIT_KILL_AT_WRITE test hook of overlap_audit/atomic.py) and every file damaged by hand. The rule:
the next command gives the clean run's result or refuses with one line, never a silent wrong number."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from overlap_audit.cli import main
from overlap_audit.index import check_index

EXE = shutil.which("overlap-audit", path=os.path.dirname(sys.executable))
TIMEOUT = 180


def _images(root, n, seed, size=24, prefix=""):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.fromarray((rng.random((6, 6)) * 255).astype("uint8")).resize((size, size), Image.BILINEAR)
        im.save(root / f"{prefix}{i:04d}.png")
    return root


def _eval_set(root, corpus, picks):
    """Resized copies of corpus items (class seen) and three unrelated images (class new)."""
    (root / "seen").mkdir(parents=True)
    for name in picks:
        Image.open(corpus / name).resize((20, 20)).save(root / "seen" / name)
    _images(root / "new", 3, seed=99)
    ids = [f"seen/{n}" for n in picks] + [f"new/{i:04d}.png" for i in range(3)]
    (root.parent / "preds.csv").write_text("dataset,id,correct\n" + "".join(
        f"val,{i},{int(k % 2 == 0)}\n" for k, i in enumerate(ids)))
    return root, root.parent / "preds.csv"


def run(*args, kill=None):
    env = dict(os.environ)
    env.pop("OVERLAP_AUDIT_KILL_AT_WRITE", None)
    if kill is not None:
        env["OVERLAP_AUDIT_KILL_AT_WRITE"] = str(kill)
    return subprocess.run([EXE, *map(str, args), "--quiet"], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT)


def report(index, ev, preds, out):
    """Run report; returns (index type, per-dataset numbers) or the one-line refusal."""
    r = run("report", index, "--eval", f"val={ev}", "--predictions", preds, "--out", out, "--workers", "0")
    if r.returncode == 2:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
        return "refused"
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "report.json").read_text())
    numbers = [(d["n_overlap"], d["k_overlap"], d["k_clean"], d["overlap_rate"]) for d in data["datasets"]]
    return data["index"].get("index_type"), numbers


def keys(index):
    manifest = json.loads((index / "manifest.json").read_text())
    return pq.read_table(index / manifest["ids_file"])["key"].to_pylist()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    corpus = _images(root / "corpus", 12, seed=1)
    ev, preds = _eval_set(root / "eval", corpus, ["0000.png", "0004.png", "0009.png"])
    clean = root / "clean"
    assert run("index", corpus, "--out", clean, "--workers", "0", "--shard-size", "5").returncode == 0
    return root, corpus, ev, preds, clean


@pytest.mark.skipif(EXE is None, reason="the overlap-audit console script is not installed")
@pytest.mark.slow
def test_a_kill_at_any_write_of_index_is_refused_or_resumed_to_the_clean_result(small, tmp_path):
    root, corpus, ev, preds, clean = small
    baseline = report(clean, ev, preds, tmp_path / "base")
    assert baseline != "refused"
    # the writes of this run: progress.json, three shards each after its corpus-view vectors, index.faiss,
    # its view index, ids.parquet, items.rows, items.offsets.npy, items.keys.npy, items.buckets.npy, manifest.json
    points = [str(n) for n in range(1, 16)] + ["15+"]
    out = tmp_path / "past-the-last"
    assert run("index", corpus, "--out", out, "--workers", "0", "--shard-size", "5", kill=16).returncode == 0
    for point in points:
        out = tmp_path / f"p{point}"
        r = run("index", corpus, "--out", out, "--workers", "0", "--shard-size", "5", kill=point)
        assert r.returncode == -9, r.stderr
        after = report(out, ev, preds, tmp_path / f"r{point}")
        assert after in ("refused", baseline), point
        resumed = CliRunner().invoke(main, ["index", str(corpus), "--out", str(out), "--workers", "0",
                                            "--shard-size", "5", "--resume", "--quiet"])
        assert resumed.exit_code == 0, resumed.output
        assert check_index(out).n_indexed == 12 and keys(out) == keys(clean)
    assert report(tmp_path / f"p{points[0]}", ev, preds, tmp_path / "final") == baseline


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    """1,000 items (the fewest ivfpq trains on) indexed flat, the same rebuilt as ivfpq, and their reports."""
    root = tmp_path_factory.mktemp("rebuild")
    corpus = _images(root / "corpus", 1000, seed=2)
    ev, preds = _eval_set(root / "eval", corpus, ["0003.png", "0500.png", "0997.png"])
    flat = root / "flat"
    assert run("index", corpus, "--out", flat, "--workers", "0", "--shard-size", "500").returncode == 0
    ivf = root / "ivf"
    shutil.copytree(flat, ivf)
    r = run("index", corpus, "--out", ivf, "--workers", "0", "--shard-size", "500", "--resume", "--index-type", "ivfpq")
    assert r.returncode == 0, r.stderr
    results = {"flat": report(flat, ev, preds, root / "rflat"), "ivfpq": report(ivf, ev, preds, root / "rivf")}
    return root, corpus, ev, preds, flat, results


@pytest.mark.skipif(EXE is None, reason="the overlap-audit console script is not installed")
@pytest.mark.slow
def test_a_kill_while_rebuilding_as_ivfpq_leaves_the_old_index_or_the_new_one(thousand, tmp_path):
    root, corpus, ev, preds, flat, results = thousand
    assert results["flat"][0] == "flat" and results["ivfpq"][0] == "ivfpq"
    args = ("index", corpus, "--out", None, "--workers", "0", "--shard-size", "500", "--resume", "--index-type",
            "ivfpq")
    # index.g2.faiss, its corpus view's index, ids.g2.parquet, items.g2.rows and its three .npy files, the
    # manifest (before / after its rename)
    for point in ["1", "2", "3", "4", "5", "6", "7", "8", "8+"]:
        out = tmp_path / f"p{point}"
        shutil.copytree(flat, out)
        r = run(*[out if a is None else a for a in args], kill=point)
        assert r.returncode == -9, (point, r.stderr)
        after = report(out, ev, preds, tmp_path / f"r{point}")
        assert after != "refused" and after == results[after[0]], point
        assert (after[0] == "ivfpq") == (point == "8+")
    # the next resume finishes the switch and leaves only the new generation's files
    r = run(*[tmp_path / "p2" if a is None else a for a in args])
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "p2").iterdir()) == [
        "ids.g2.parquet", "index.g2.faiss", "index.g2.view70.faiss", "items.g2.buckets.npy", "items.g2.keys.npy",
        "items.g2.offsets.npy", "items.g2.rows", "manifest.json", "progress.json", "shards", "views"]
    assert report(tmp_path / "p2", ev, preds, tmp_path / "again") == results["ivfpq"]


@pytest.mark.skipif(EXE is None, reason="the overlap-audit console script is not installed")
def test_resume_refuses_an_item_changed_under_a_finished_shard(tmp_path):
    corpus = _images(tmp_path / "corpus", 12, seed=3)
    out = tmp_path / "i"
    # killed after two shards: the writes are progress.json, then each shard's view vectors and the shard
    r = run("index", corpus, "--out", out, "--workers", "0", "--shard-size", "5", kill=6)
    assert r.returncode == -9
    _images(tmp_path / "other", 1, seed=4)
    shutil.copy(tmp_path / "other" / "0000.png", corpus / "0002.png")  # an item of the finished shard 0
    r = run("index", corpus, "--out", out, "--workers", "0", "--shard-size", "5", "--resume")
    assert r.returncode == 2 and "0002.png" in r.stderr and "changed" in r.stderr, r.stderr


def _report_run(out):
    """Which complete report ``out`` holds (its predictions file), once its files are checked against each
    other: report.json's numbers are those splits.parquet gives, report.md and report.html show the same
    table, and report.json lists exactly the files there."""
    data = json.loads((out / "report.json").read_text())
    assert sorted(data["files"]) == sorted(os.listdir(out))
    table = pq.read_table(out / "splits.parquet").to_pydict()
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for d in data["datasets"]:
        rows = [(o, c) for name, o, c in zip(table["dataset"], table["overlap"], table["correct"]) if name == d["name"]]
        n, n_over = len(rows), sum(o for o, _ in rows)
        k_all, k_over = sum(c for _, c in rows), sum(o and c for o, c in rows)
        assert (d["n_all"], d["n_overlap"], d["k_all"], d["k_overlap"], d["k_clean"]) == (
            n, n_over, k_all, k_over, k_all - k_over)
        cells = [str(n)] + [f"{100 * a / b:.1f}" for a, b in
                            ((n_over, n), (k_all, n), (k_all - k_over, n - n_over), (k_over, n_over))]
        assert f"| {d['name']} | {' | '.join(cells)} |" in md
        assert (f'<td class="name">{d["name"]}</td><td>{d["threshold"]:.4f}</td><td>' + "</td><td>".join(cells)
                + "</td>") in html
    assert f"<code>{data['predictions']}</code>" in html
    return data["predictions"]


def _snapshot(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir()}


@pytest.mark.skipif(EXE is None, reason="the overlap-audit console script is not installed")
@pytest.mark.slow
def test_a_kill_at_any_write_of_report_leaves_the_old_report_or_the_new_one(small, tmp_path):
    root, corpus, ev, preds, clean = small
    new_preds = tmp_path / "preds-new.csv"  # other correctness: every number of the table changes
    rows = preds.read_text().splitlines()
    new_preds.write_text("\n".join([rows[0]] + [f"{r.rsplit(',', 1)[0]},{int(i != 3)}" for i, r in
                                                 enumerate(rows[1:])]) + "\n")
    parent = tmp_path / "reports"
    out = parent / "r"
    (parent / "mine").mkdir(parents=True)
    user = {parent / "notes.txt": b"the user's notes", parent / "mine" / "keep.txt": b"kept"}
    for path, data in user.items():
        path.write_bytes(data)

    def report_into(predictions, kill=None):
        return run("report", clean, "--eval", f"val={ev}", "--predictions", predictions, "--out", out,
                   "--workers", "0", kill=kill)

    assert report_into(preds).returncode == 0
    old = _snapshot(out)
    assert _report_run(out) == str(preds)

    def left_the_old_report(r, point):
        assert r.returncode == -9, (point, r.stderr)
        assert _report_run(out) == str(preds) and _snapshot(out) == old, point  # the old report, whole
        for path, data in user.items():
            assert path.read_bytes() == data, point
        left = {p.name for p in parent.iterdir()} - {"r", "notes.txt", "mine", ".r.lock"}
        # only the tool's own temporaries: the staging directory, and the corpus-matches table written for it
        assert all(name.startswith((".r.tmp-", ".r-corpus_matches.parquet.tmp-")) for name in left), left

    # the writes of a report: splits.parquet, corpus_matches.parquet, report.md, report.json, report.html, in
    # a staging directory that replaces --out as a whole once complete
    for n in range(1, 12):
        r = report_into(new_preds, kill=n)
        if r.returncode == 0:  # past the last write: the run completes
            break
        left_the_old_report(r, str(n))
        left_the_old_report(report_into(new_preds, kill=f"{n}+"), f"{n}+")
    n_writes = n - 1
    assert n_writes == 5 and r.returncode == 0, (n_writes, r.stderr)
    assert _report_run(out) == str(new_preds)
    assert report_into(preds).returncode == 0 and _report_run(out) == str(preds)  # and so does a clean re-run
    assert report_into(new_preds).returncode == 0 and _report_run(out) == str(new_preds)
    for path, data in user.items():
        assert path.read_bytes() == data
    # the next run cleaned what the killed ones left (a killed run's lock file too)
    assert sorted(p.name for p in parent.iterdir()) == ["mine", "notes.txt", "r"]


# ---------------------------------------------------------------- files damaged by hand


def _flip(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rewrite_ids(path, change):
    keys = pq.read_table(path)["key"].to_pylist()
    pq.write_table(pa.table({"key": pa.array(change(keys), pa.string())}), path)


def _swap(a, b):
    tmp = a.with_name("swap.tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


SHARD0, SHARD1, SHARD2 = (f"shards/shard-00000{i}.parquet" for i in range(3))
DAMAGE = {
    "shard deleted": lambda d, o: (d / SHARD1).unlink(),
    "all shards deleted": lambda d, o: shutil.rmtree(d / "shards"),
    "shard truncated": lambda d, o: _truncate(d / SHARD0),
    "shard corrupted": lambda d, o: _flip(d / SHARD0),
    "shards reordered": lambda d, o: _swap(d / SHARD0, d / SHARD1),
    "extra shard": lambda d, o: shutil.copy(d / SHARD2, d / "shards" / "shard-000003.parquet"),
    "shard from another index": lambda d, o: shutil.copy(o / SHARD0, d / SHARD0),
    "ids deleted": lambda d, o: (d / "ids.parquet").unlink(),
    "ids truncated": lambda d, o: _truncate(d / "ids.parquet"),
    "ids corrupted": lambda d, o: _flip(d / "ids.parquet"),
    "ids shuffled": lambda d, o: _rewrite_ids(d / "ids.parquet", lambda k: k[::-1]),
    "ids short": lambda d, o: _rewrite_ids(d / "ids.parquet", lambda k: k[:-1]),
    "ids from another index": lambda d, o: shutil.copy(o / "ids.parquet", d / "ids.parquet"),
    "index deleted": lambda d, o: (d / "index.faiss").unlink(),
    "index truncated": lambda d, o: _truncate(d / "index.faiss"),
    "index corrupted": lambda d, o: _flip(d / "index.faiss"),
    "index from another index": lambda d, o: shutil.copy(o / "index.faiss", d / "index.faiss"),
    "item table corrupted": lambda d, o: _flip(d / "items.rows"),
    "item table from another index": lambda d, o: shutil.copy(o / "items.rows", d / "items.rows"),
    "key index deleted": lambda d, o: (d / "items.keys.npy").unlink(),
    "manifest deleted": lambda d, o: (d / "manifest.json").unlink(),
    "manifest truncated": lambda d, o: _truncate(d / "manifest.json"),
    "manifest corrupted": lambda d, o: (d / "manifest.json").write_bytes(b"\x00garbage"),
    "manifest from another index": lambda d, o: shutil.copy(o / "manifest.json", d / "manifest.json"),
}


@pytest.fixture(scope="module")
def two_indexes(small):
    root, corpus, ev, preds, clean = small
    other_corpus = _images(root / "other-corpus", 12, seed=7, prefix="o")
    other = root / "other"
    result = CliRunner().invoke(main, ["index", str(other_corpus), "--out", str(other), "--workers", "0",
                                       "--shard-size", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    return clean, other, ev, preds


def test_check_passes_an_intact_index(two_indexes):
    clean = two_indexes[0]
    result = CliRunner().invoke(main, ["check", str(clean)])
    assert result.exit_code == 0, result.output
    assert (f"{clean}: intact (generation 1, flat; corpus views: centre 70% of each item's area, 12 indexed; "
            in result.output and "note:" not in result.output)


def test_check_names_the_files_a_killed_rebuild_left_behind(two_indexes, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(two_indexes[0], index)
    (index / "index.g2.faiss").write_bytes(b"half-written")  # a rebuild killed before its switch
    result = CliRunner().invoke(main, ["check", str(index)])
    assert result.exit_code == 0, result.output
    assert "note: 1 file(s) of an interrupted rebuild" in result.output and "index.g2.faiss" in result.output


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_file_is_a_one_line_refusal_from_report_and_check(two_indexes, tmp_path, case):
    clean, other, ev, preds = two_indexes
    index = tmp_path / "index"
    shutil.copytree(clean, index)
    DAMAGE[case](index, other)
    runner = CliRunner()
    for args in (["check", str(index)],
                 ["report", str(index), "--eval", f"val={ev}", "--predictions", str(preds), "--out",
                  str(tmp_path / "r"), "--workers", "0", "--quiet"],
                 ["report", str(index), "--eval", f"val={ev}", "--predictions", str(preds), "--out",
                  str(tmp_path / "r"), "--workers", "0", "--quiet", "--exact"]):
        result = runner.invoke(main, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args[0], result.output)
        assert "Traceback" not in result.output
