"""The CLI end to end: click's CliRunner for the paths, and real subprocesses for the installed command."""

import json
import os
import re
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from overlap_audit.cli import main
from overlap_audit.report import load_report

from ..helpers import write_predictions


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, corpus_dir):
    out = tmp_path_factory.mktemp("cli") / "index"
    result = CliRunner().invoke(main, ["index", str(corpus_dir), "--out", str(out), "--workers", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "indexed 120 of 124 items" in result.output and "broken/bomb.png" in result.output
    return out


@pytest.fixture(scope="module")
def predictions(tmp_path_factory, eval_set):
    root, planted, clean = eval_set
    # the audited "model" is right on every planted (seen) example and on half of the new ones
    ids = planted + clean
    correct = [1] * len(planted) + [i % 2 for i in range(len(clean))]
    return write_predictions(tmp_path_factory.mktemp("preds") / "preds.csv", "val", ids, correct)


def test_report_finds_planted_duplicates_and_only_them(tmp_path, index_dir, eval_set, predictions):
    root, planted, clean = eval_set
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={root}", "--predictions",
                                       str(predictions), "--out", str(out), "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "| val | 50 |" in result.output  # the printed table
    rows = pq.read_table(out / "splits.parquet").to_pylist()
    overlap = {r["id"] for r in rows if r["overlap"]}
    assert overlap <= set(planted)  # no unrelated image is called a duplicate
    assert len(overlap) >= 0.9 * len(planted)  # phash misses some crops of fine textures (BENCHMARKS.md)
    by_id = {r["id"]: r for r in rows}
    for rel in planted:  # even below the threshold, each copy's nearest corpus item is its original
        assert by_id[rel]["neighbor_ids"][0] == rel.split("/")[1].rsplit("-", 1)[0] + ".png"
    first = planted[0]  # seen/<tile>-resize.png is a copy of corpus tile <tile>.png
    assert by_id[first]["neighbor_ids"][0] == first.split("/")[1].rsplit("-", 1)[0] + ".png"
    assert len(by_id[first]["neighbor_ids"]) == 5 and by_id[first]["label"] == "seen"
    data = json.loads((out / "report.json").read_text())
    (ds,) = data["datasets"]
    assert ds["n_all"] == 50 and ds["n_overlap"] == len(overlap) and ds["acc_overlap"] == 1.0
    assert ds["significant"] is True and data["detector"]["name"] == "phash"
    # calibrated on the set (never above the detector's default), or the default where calibration found none
    assert data["calibration"]["origins"]["val"] in ("calibrated", "default")
    assert data["threshold"]["val"] == data["calibration"]["datasets"]["val"]["used"] <= 1 - 9 / 64
    assert "| val |" in (out / "report.md").read_text()


def test_report_json_round_trips(tmp_path, index_dir, eval_set, predictions):
    root, _, _ = eval_set
    out = tmp_path / "r"
    thresholds = tmp_path / "t.json"
    thresholds.write_text('{"val": 0.9}')
    result = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={root}", "--predictions",
                                       str(predictions), "--out", str(out), "--thresholds", str(thresholds),
                                       "--k", "3", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    rep = load_report(out)
    assert rep.threshold == {"val": 0.9} and rep.k == 3
    assert rep.to_dict() == json.loads((out / "report.json").read_text())
    assert type(rep).from_dict(rep.to_dict()) == rep


@pytest.mark.slow
def test_report_says_where_each_threshold_comes_from(tmp_path, index_dir, eval_set, predictions):
    root, planted, clean = eval_set
    thresholds = tmp_path / "t.json"
    thresholds.write_text('{"val": 0.9}')
    both = tmp_path / "preds.csv"
    both.write_text("dataset,id,correct\n" + "".join(f"{d},{i},1\n" for d in ("val", "other") for i in planted + clean))
    base = ["report", str(index_dir), "--eval", f"val={root}", "--eval", f"other={root}", "--predictions",
            str(both), "--workers", "0", "--quiet"]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "a"), "--thresholds", str(thresholds)])
    assert r.exit_code == 0, r.output
    line = next(line for line in r.output.splitlines() if line.startswith("thresholds: "))
    assert f"val 0.9000 (from {thresholds})" in line
    other = load_report(tmp_path / "a").threshold["other"]
    assert (f"other {other:.4f} (calibrated on the set's own images, not named in {thresholds})" in line
            or f"other {1 - 9 / 64:.4f} (from the default of phash, not named in {thresholds})" in line)
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "c"), "--thresholds", str(thresholds),
                                         "--no-calibrate"])
    assert r.exit_code == 0, r.output
    assert f"other {1 - 9 / 64:.4f} (from the default of phash, not named in {thresholds})" in r.output
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "b"), "--thresholds", str(thresholds),
                                         "--threshold", "0.8"])
    assert r.exit_code == 0, r.output
    assert f"other 0.8000 (from --threshold, not named in {thresholds})" in r.output


def test_report_refuses_another_detector(tmp_path, index_dir, eval_set, predictions):
    root, _, _ = eval_set
    result = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={root}", "--predictions",
                                       str(predictions), "--out", str(tmp_path / "r"), "--detector", "phash256"])
    assert result.exit_code == 2
    assert "built with detector 'phash'" in result.output and "phash256" in result.output


def test_report_refuses_an_index_of_another_detector_version(tmp_path, index_dir, eval_set, predictions):
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["detector"]["version"] = "0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    root, _, _ = eval_set
    result = CliRunner().invoke(main, ["report", str(copy), "--eval", f"val={root}", "--predictions",
                                       str(predictions), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "detector version '0' (installed: '1+trim4')" in result.output


def test_missing_predictions_are_named(tmp_path, index_dir, eval_set):
    root, planted, clean = eval_set
    preds = write_predictions(tmp_path / "p.csv", "val", planted + clean[:-2], [1] * (len(planted) + len(clean) - 2))
    result = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={root}", "--predictions",
                                       str(preds), "--out", str(tmp_path / "r"), "--workers", "0", "--quiet"])
    assert result.exit_code == 2
    assert "2 example(s) of 'val' have no prediction" in result.output and clean[-1] in result.output


def test_skipped_eval_items_are_reported(tmp_path, index_dir, eval_set, predictions, photos):
    root, planted, clean = eval_set
    ev = tmp_path / "ev"
    shutil.copytree(root, ev)
    (ev / "new" / "broken.png").write_bytes(b"")
    out = tmp_path / "r"
    result = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={ev}", "--predictions",
                                       str(predictions), "--out", str(out), "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "skipped val:new/broken.png: zero-byte file" in result.output
    ds = json.loads((out / "report.json").read_text())["datasets"][0]
    assert ds["n_skipped"] == 1 and ds["skipped"][0]["id"] == "new/broken.png"
    assert "new/broken.png" in (out / "report.md").read_text()


def test_bad_arguments_exit_cleanly(tmp_path, index_dir, predictions):
    runner = CliRunner()
    r = runner.invoke(main, ["report", str(index_dir), "--eval", "noequals", "--predictions", str(predictions),
                             "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "NAME=SOURCE" in r.output
    r = runner.invoke(main, ["index", str(tmp_path / "missing"), "--out", str(tmp_path / "i")])
    assert r.exit_code == 2 and "no such file" in r.output
    (tmp_path / "not-an-index").mkdir()
    r = runner.invoke(main, ["report", str(tmp_path / "not-an-index"), "--eval", f"x={tmp_path / 'not-an-index'}",
                             "--predictions", str(predictions), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "not an overlap-audit index" in r.output
    r = runner.invoke(main, ["detectors"])
    assert r.exit_code == 0 and "phash256" in r.output


def test_installed_command_runs_as_a_subprocess(tmp_path, corpus_dir, eval_set, predictions):
    exe = shutil.which("overlap-audit", path=os.path.dirname(sys.executable))
    assert exe, "the overlap-audit console script is not installed next to this Python"
    root, planted, _ = eval_set
    idx = tmp_path / "index"
    r = subprocess.run([exe, "index", str(corpus_dir), "--out", str(idx), "--workers", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([exe, "report", str(idx), "--eval", f"val={root}", "--predictions", str(predictions),
                        "--out", str(tmp_path / "rep")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "| val | 50 |" in r.stdout
    n_overlap = load_report(tmp_path / "rep").dataset("val").stats.n_overlap
    assert 0.9 * len(planted) <= n_overlap <= len(planted)
    r = subprocess.run([exe, "report", str(idx), "--eval", f"val={root}", "--predictions", "/nope.csv",
                        "--out", str(tmp_path / "rep2")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_os_errors_are_one_line(tmp_path, corpus_dir):
    (tmp_path / "afile").write_text("x")
    r = CliRunner().invoke(main, ["index", str(corpus_dir), "--out", str(tmp_path / "afile" / "sub"),
                                  "--workers", "0", "--quiet"])
    assert r.exit_code == 2 and r.output.startswith("error:") and "Traceback" not in r.output


def test_report_beyond_the_paper(tmp_path, index_dir, eval_set, predictions):
    root, planted, clean = eval_set
    errors = tmp_path / "err.json"
    errors.write_text('{"val": {"precision": [19, 20], "recall": 0.9}}')
    out = tmp_path / "r"
    r = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={root}", "--predictions", str(predictions),
                                  "--out", str(out), "--correction", "holm", "--detector-error", str(errors),
                                  "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "boschloo" in r.output and "Allowing for the detector's measured error" in r.output
    data = json.loads((out / "report.json").read_text())
    assert data["correction"]["method"] == "holm"
    (ds,) = data["datasets"]
    for key in ("gap", "two_sample_p", "two_sample_method", "ci_gap_newcombe", "ci_delta_newcombe",
                "min_detectable_gap", "min_detectable_delta", "p_value_adjusted_bonferroni", "p_value_adjusted_holm",
                "significant_bonferroni", "significant_holm", "two_sample_significant", "detector_correction"):
        assert key in ds, key
    assert ds["significant"] == ds["significant_holm"]
    assert ds["detector_correction"]["precision"] == {"value": 0.95, "successes": 19, "trials": 20}
    assert ds["delta"] == pytest.approx(ds["overlap_rate"] * ds["gap"])
    assert "Beyond the paper" in (out / "report.md").read_text()
    assert load_report(out).to_dict() == data


def test_bad_detector_error_values_are_named(tmp_path, index_dir, eval_set, predictions):
    root, _, _ = eval_set
    r = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={root}", "--predictions", str(predictions),
                                  "--out", str(tmp_path / "r"), "--precision", "12/10", "--workers", "0"])
    assert r.exit_code == 2 and "precision '12/10'" in r.output


def test_shared_options_are_declared_once():
    """--device, --workers, --batch-size, --max-pixels, --detector and --quiet mean the same in every command."""
    from overlap_audit.settings import DEVICES

    def params(command):
        return {p.name: p for p in command.params}

    commands = {name: main.commands[name] for name in ("index", "report", "pairs")}
    for name in ("device", "workers", "batch_size", "max_pixels", "quiet"):
        seen = {(p.opts[0], p.help, p.default, repr(p.type)) for p in (params(c)[name] for c in commands.values())}
        assert len(seen) == 1, (name, seen)
    assert params(commands["report"])["detector"].help == params(commands["pairs"])["detector"].help
    for name in ("index", "report", "pairs", "train-detector", "pretrain-clip", "demo-real"):
        assert params(main.commands[name])["quiet"].help == params(commands["index"])["quiet"].help, name
    runner = CliRunner()
    for name in commands:
        r = runner.invoke(main, [name, "--help"], terminal_width=200)
        assert r.exit_code == 0, r.output
        line = next(line for line in r.output.splitlines() if line.strip().startswith("--device"))
        assert "Where FAISS, torch detectors and a --model run." in line and "[default: auto]" in line, name
    assert params(commands["index"])["device"].type.choices == DEVICES == ("auto", "cpu", "cuda")


def test_info_messages_go_to_stderr_unless_quiet(tmp_path, monkeypatch):
    from overlap_audit import devices

    monkeypatch.setattr(devices, "faiss_gpu_count", lambda: 0)
    runner = CliRunner()
    for quiet in (False, True):
        monkeypatch.setattr(devices, "_said", set())
        (tmp_path / "not-an-index").mkdir(exist_ok=True)
        args = ["pairs", str(tmp_path / "not-an-index"), "--eval", f"x={tmp_path / 'not-an-index'}", "--out",
                str(tmp_path / "o")]
        r = runner.invoke(main, args + (["--quiet"] if quiet else []))
        assert r.exit_code == 2 and "not an overlap-audit index" in r.stderr
        said = "device auto: FAISS sees no GPU, using the CPU" in r.stderr
        assert said is not quiet, r.output
        assert "device auto" not in r.stdout


def test_every_command_reports_our_errors_as_one_line(tmp_path):
    runner = CliRunner()
    (tmp_path / "labels.csv").write_text("nope\n")
    for args in (["threshold", str(tmp_path / "labels.csv")],
                 ["calibrate", str(tmp_path / "missing"), "--workers", "0"],
                 ["pairs", str(tmp_path), "--eval", f"x={tmp_path}", "--out", str(tmp_path / "o"), "--quiet"]):
        r = runner.invoke(main, args)
        assert r.exit_code == 2 and r.output.startswith("error: ") and "Traceback" not in r.output, (args, r.output)


def test_every_command_has_an_example_in_its_help():
    runner = CliRunner()
    for name in [None, *main.commands]:
        r = runner.invoke(main, ([name] if name else []) + ["--help"], terminal_width=200)
        assert r.exit_code == 0, r.output
        example = r.output.split("Example:\n", 1)[1].strip()
        assert example.startswith("overlap-audit " + (name or "")), (name, example)


def test_ctrl_c_during_index_says_how_to_resume(tmp_path, monkeypatch, corpus_dir):
    import overlap_audit.index

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(overlap_audit.index, "build_index", interrupted)
    r = CliRunner().invoke(main, ["index", str(corpus_dir), "--out", str(tmp_path / "i"), "--quiet"])
    assert r.exit_code == 130
    assert r.stderr.strip() == "interrupted: run the same command with --resume to continue"


def test_verbose_and_log_file(tmp_path, monkeypatch):
    from overlap_audit import devices

    monkeypatch.setattr(devices, "faiss_gpu_count", lambda: 0)
    log = tmp_path / "audit.log"
    (tmp_path / "not-an-index").mkdir()
    args = ["pairs", str(tmp_path / "not-an-index"), "--eval", f"x={tmp_path / 'not-an-index'}", "--out",
            str(tmp_path / "o")]
    runner = CliRunner()
    monkeypatch.setattr(devices, "_said", set())
    r = runner.invoke(main, ["--log-file", str(log), *args, "--quiet"])
    assert r.exit_code == 2 and "device auto" not in r.stderr  # --quiet keeps stderr short ...
    text = log.read_text()
    assert "INFO overlap_audit: device auto: FAISS sees no GPU" in text  # ... the file has everything
    assert "DEBUG overlap_audit: overlap-audit" in text and "not an overlap-audit index" in text
    monkeypatch.setattr(devices, "_said", set())
    r = runner.invoke(main, ["--verbose", *args])
    assert r.exit_code == 2 and "Traceback" in r.stderr and r.stderr.rstrip().splitlines()[-1].startswith("error: ")
    r = runner.invoke(main, args)
    assert r.exit_code == 2 and "Traceback" not in r.stderr


def test_report_again_reads_the_cache_and_the_log_file_has_the_summary(tmp_path, index_dir, eval_set, predictions,
                                                                       corpus_dir):
    root, _, _ = eval_set
    log, cache = tmp_path / "run.log", tmp_path / "cache"
    args = ["report", str(index_dir), "--eval", f"val={root}", "--predictions", str(predictions), "--workers", "0",
            "--cache-dir", str(cache), "--quiet"]
    runner = CliRunner()
    first = runner.invoke(main, ["--log-file", str(log), *args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "evaluation cache: not used; 1 set(s) embedded and searched" in first.stdout
    text = log.read_text()
    for expected in ("thresholds: val 0.", "| val |", "phase decide:", "phase match:", "val: 50 item(s) embedded",
                     "report written to", "seconds: open_index"):
        assert expected in text, expected
    second = runner.invoke(main, ["--log-file", str(log), *args, "--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    assert f"evaluation cache: val (50 items) read from {cache} (not embedded again)" in second.stdout
    compared = [re.search(r"; (\d+) of (\d+) verified pair\(s\) compared by an earlier run", r.stdout)
                for r in (first, second)]
    assert compared[0][1] == "0" and int(compared[0][2]) > 0 and compared[1][1] == compared[1][2] == compared[0][2]
    assert "read from" in log.read_text()
    def tables(out: str) -> str:
        return out[out.index("search:"):out.index("report written to")]

    assert tables(first.stdout) == tables(second.stdout)
    nocache = runner.invoke(main, [*args, "--no-cache", "--out", str(tmp_path / "c")])
    assert nocache.exit_code == 2 and "--cache-dir does not go with --no-cache" in nocache.stderr
    index_log = tmp_path / "index.log"
    r = runner.invoke(main, ["--log-file", str(index_log), "index", str(corpus_dir), "--out", str(tmp_path / "i"),
                             "--workers", "0", "--quiet"])
    assert r.exit_code == 0 and "indexed 120 of 124 items" in index_log.read_text()
    assert "skipped broken/bomb.png" in index_log.read_text() or "bomb.png" in index_log.read_text()
