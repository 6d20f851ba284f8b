"""Every command given malformed arguments or files: exit status 2 and one line starting with ``error:``
(``--debug`` shows the traceback instead), and no file the tool did not write is deleted or overwritten."""

import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from overlap_audit.cli import main


def _img(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A folder of 6 images, its phash index, and an evaluation folder with one class."""
    root = tmp_path_factory.mktemp("errors")
    corpus, ev = root / "corpus", root / "eval" / "a"
    corpus.mkdir()
    ev.mkdir(parents=True)
    for i in range(6):
        _img(i).save(corpus / f"{i}.png")
        _img(100 + i).save(ev / f"{i}.png")
    result = CliRunner().invoke(main, ["index", str(corpus), "--out", str(root / "index"), "--workers", "0",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    preds = root / "preds.csv"
    preds.write_text("dataset,id,correct\n" + "".join(f"val,a/{i}.png,1\n" for i in range(6)))
    return root


def run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def report_args(small, out, *extra):
    return ["report", small / "index", "--eval", f"val={small / 'eval'}", "--predictions", small / "preds.csv",
            "--out", out, "--workers", "0", "--quiet", *extra]


# ---------------------------------------------------------------- output directories


def test_report_refuses_a_directory_with_the_users_files_and_keeps_them(small, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "predictions.parquet").write_bytes(b"the user's own file")
    line = assert_one_line_error(run(report_args(small, out)), "predictions.parquet")
    assert "did not" in line or "no earlier report" in line
    assert (out / "predictions.parquet").read_bytes() == b"the user's own file"
    (out / "predictions.parquet").unlink()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(run(report_args(small, out)), "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"


def test_report_rerun_replaces_its_own_report_as_a_whole(small, tmp_path):
    import json

    out = tmp_path / "r"
    assert run(report_args(small, out)).exit_code == 0
    files = json.loads((out / "report.json").read_text())["files"]
    assert sorted(files) == sorted(os.listdir(out))
    first = (out / "report.json").read_text()
    assert run(report_args(small, out, "--k", "2")).exit_code == 0
    assert (out / "report.json").read_text() != first
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no staging directory left


def test_an_interrupted_report_leaves_the_earlier_one_whole(small, tmp_path, monkeypatch):
    import overlap_audit.report.html as html  # write_report draws the page with html.render_html

    out = tmp_path / "r"
    assert run(report_args(small, out)).exit_code == 0
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(html, "render_html", killed)
    result = run(report_args(small, out, "--k", "2"))
    assert result.exit_code == 130
    assert result.output.strip() == (f"interrupted: no report written (an earlier one in {out} is left whole); "
                                     "run the same command again")
    assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_demo_real_refuses_user_files_before_any_download(tmp_path):
    for where in ("notes.txt", "report/notes.txt", "index/notes.txt"):
        out = tmp_path / where.replace("/", "_")
        (out / where).parent.mkdir(parents=True, exist_ok=True)
        (out / where).write_text("mine")
        assert_one_line_error(run(["demo-real", out, "--debs", tmp_path, "--quiet"]), "notes.txt")
        assert (out / where).read_text() == "mine"


def test_demo_refuses_user_files(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    assert_one_line_error(run(["demo", tmp_path]), "thesis.tex")
    assert (tmp_path / "thesis.tex").read_text() == "mine"


# ---------------------------------------------------------------- outputs kept apart from what is read


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_index_refuses_an_out_inside_a_corpus_folder_and_a_corpus_inside_its_out(small, tmp_path):
    corpus = small / "corpus"
    before = _listing(corpus)
    for out in (corpus / "idx", corpus, corpus / "a" / "b"):
        line = assert_one_line_error(run(["index", corpus, "--out", out, "--workers", "0", "--quiet"]),
                                     str(out.resolve()) if out.exists() else str(out), str(corpus.resolve()))
        assert "corpus source" in line
    assert _listing(corpus) == before  # nothing written, not even an empty --out
    link = tmp_path / "link"
    link.symlink_to(corpus)  # a link does not hide it
    assert_one_line_error(run(["index", link, "--out", corpus / "idx", "--workers", "0", "--quiet"]), "corpus source")
    assert_one_line_error(run(["index", corpus, "--out", link / "idx", "--workers", "0", "--quiet"]), "corpus source")
    # a glob's folder counts, a single file's folder does not
    (tmp_path / "pq").mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": ["k"], "jpg": [(corpus / "0.png").read_bytes()]}), tmp_path / "pq" / "c.parquet")
    assert_one_line_error(run(["index", f"{tmp_path / 'pq'}/*.parquet", "--out", tmp_path / "pq" / "idx",
                               "--workers", "0", "--quiet"]), str((tmp_path / "pq").resolve()))
    result = run(["index", tmp_path / "pq" / "c.parquet", "--out", tmp_path / "pq" / "idx", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    # the corpus inside --out
    assert_one_line_error(run(["index", corpus, "--out", small, "--workers", "0", "--quiet"]), "lies inside --out")
    assert_one_line_error(run(["index", tmp_path / "pq" / "c.parquet", "--out", tmp_path, "--workers", "0", "--quiet"]),
                          "lies inside --out")


def test_report_and_pairs_refuse_an_out_inside_an_evaluation_folder_or_the_index(small):
    ev = small / "eval"
    before = {d: _listing(small / d) for d in ("eval", "index")}
    for out in (ev / "r", ev / "a", small / "index" / "r", small / "index"):
        line = assert_one_line_error(run(report_args(small, out)), "--out")
        assert ("evaluation set val" if "eval" in str(out) else "index directory") in line
        pairs = run(["pairs", small / "index", "--eval", f"val={ev}", "--out", out, "--workers", "0", "--quiet"])
        assert assert_one_line_error(pairs, "--out") == line
    assert_one_line_error(run(report_args(small, small)), "lies inside --out")  # holds the index and the set
    assert {d: _listing(small / d) for d in ("eval", "index")} == before


def test_the_library_refuses_them_too(small, tmp_path):
    from overlap_audit.api import ReportSettings, build_index, run_report
    from overlap_audit.errors import OutputDirError
    from overlap_audit.settings import IndexSettings, MatchSettings
    from overlap_audit.review import review_pairs
    from overlap_audit.sources import source_location

    corpus, ev = small / "corpus", small / "eval"
    assert source_location(str(corpus)) == (str(corpus.resolve()), True)
    assert source_location(f"wds:{corpus}/shard-{{000..002}}.tar") == (str(corpus.resolve()), True)
    assert source_location(str(small / "preds.csv")) == (str((small / "preds.csv").resolve()), False)
    with pytest.raises(OutputDirError, match="corpus source"):
        build_index([str(corpus)], corpus / "idx", IndexSettings(workers=0))
    with pytest.raises(OutputDirError, match="evaluation set val"):
        run_report(small / "index", [("val", str(ev))],
                   ReportSettings(out_dir=ev / "r", predictions=small / "preds.csv"))
    with pytest.raises(OutputDirError, match="index directory"):
        review_pairs(small / "index", [("val", str(ev))], small / "index" / "pairs", match=MatchSettings(workers=0))
    assert not (corpus / "idx").exists() and not (ev / "r").exists() and not (small / "index" / "pairs").exists()


# ---------------------------------------------------------------- malformed files and arguments


def test_malformed_clipdup_checkpoint(small, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_one_line_error(run(["index", small / "corpus", "--out", tmp_path / "i", "--detector", f"clipdup:{bad}",
                               "--workers", "0", "--quiet"]), "clipdup checkpoint")


@pytest.mark.parametrize("options", ['{"input_size": "big"}', "[1, 2]", "{not json", '{"mean": [1, 2]}'])
def test_bad_torchscript_json(small, tmp_path, options):
    model = tmp_path / "model.pt"
    model.write_bytes(b"scripted")
    (tmp_path / "model.pt.json").write_text(options)
    assert_one_line_error(run(["index", small / "corpus", "--out", tmp_path / "i", "--detector",
                               f"torchscript:{model}", "--workers", "0", "--quiet"]), "model.pt")


def test_labels_csv_that_is_not_utf8(tmp_path):
    labels = tmp_path / "pairs.csv"
    labels.write_bytes("pair,dataset,eval_id,corpus_id,similarity,is_duplicate\n1,caf\xe9,a,b,0.9,1\n"
                       .encode("latin-1"))
    assert_one_line_error(run(["threshold", labels]), "UTF-8")


def test_malformed_memory_budget(small, tmp_path):
    assert_one_line_error(run(["index", small / "corpus", "--out", tmp_path / "i", "--memory-budget", "1.2.3GB",
                               "--quiet"]), "1.2.3GB")


def test_faiss_failing_to_write_the_index(small, tmp_path, monkeypatch):
    import faiss

    def full_disk(index, path):
        raise RuntimeError(f"Error in faiss::FileIOWriter: could not open {path} for writing: No space left on device")

    monkeypatch.setattr(faiss, "write_index_binary", full_disk)
    monkeypatch.setattr(faiss, "write_index", full_disk)
    assert_one_line_error(run(["index", small / "corpus", "--out", tmp_path / "i", "--workers", "0", "--quiet"]),
                          "index.faiss", "No space left")


def test_an_evaluation_set_with_every_item_skipped(small, tmp_path):
    ev = tmp_path / "broken" / "a"
    ev.mkdir(parents=True)
    (ev / "0.png").write_bytes(b"not a png")
    preds = tmp_path / "p.csv"
    preds.write_text("dataset,id,correct\nval,a/0.png,1\n")
    assert_one_line_error(run(["report", small / "index", "--eval", f"val={tmp_path / 'broken'}", "--predictions",
                               preds, "--out", tmp_path / "r", "--workers", "0", "--quiet"]), "'val'", "skipped")
    assert not (tmp_path / "r").exists()


def test_a_null_prediction_names_its_row(small, tmp_path):
    preds = tmp_path / "p.csv"
    preds.write_text("dataset,id,prediction,label\n" + "".join(f"val,a/{i}.png,a,a\n" for i in range(5)) +
                     "val,a/5.png,,a\n")
    assert_one_line_error(run(["report", small / "index", "--eval", f"val={small / 'eval'}", "--predictions", preds,
                               "--out", tmp_path / "r", "--workers", "0", "--quiet"]), "row 6", "prediction")


@pytest.mark.parametrize("args", [
    ["report"],                                                   # no index
    ["report", "/nonexistent/index", "--eval", "a=b", "--out", "x"],
    ["index", "--out", "x"],                                      # no source
    ["index", "/nonexistent/source", "--out", "x"],
    ["index", ".", "--out", "x", "--device", "tpu"],
    ["index", ".", "--out", "x", "--shard-size", "0"],
    ["threshold", "/nonexistent/pairs.csv"],
    ["calibrate", "/nonexistent", "--precision", "2"],
    ["nonexistent-command"],
    ["demo"],
])
def test_usage_errors_are_one_line(args):
    assert_one_line_error(run(args))


def test_malformed_eval_spec_and_missing_source(small, tmp_path):
    assert_one_line_error(run(["report", small / "index", "--eval", "no-equals-sign", "--predictions",
                               small / "preds.csv", "--out", tmp_path / "r"]), "NAME=SOURCE")
    assert_one_line_error(run(["report", small / "index", "--eval", "val=/nonexistent", "--predictions",
                               small / "preds.csv", "--out", tmp_path / "r", "--quiet"]), "/nonexistent")


def test_debug_shows_the_traceback(small, tmp_path):
    result = CliRunner().invoke(main, ["--debug", "index", str(small / "corpus"), "--out", str(tmp_path / "i"),
                                       "--memory-budget", "1.2.3GB", "--quiet"])
    from overlap_audit.errors import IndexDirError

    assert isinstance(result.exception, IndexDirError)


# ---------------------------------------------------------------- untrusted names made inert


def test_escape_sequences_in_file_names_are_not_echoed_raw(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _img(1).save(src / "1.png")
    (src / "evil\x1b]0;pwned\x07\x1b[2J.txt").write_text("x")
    result = run(["index", src, "--out", tmp_path / "i", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "evil\\x1b]0;pwned\\x07" in result.output


def test_report_markdown_and_csv_cells_are_inert():
    from overlap_audit.inert import csv_cell, csv_value, markdown, terminal

    assert terminal("a\x1b[31mb\nc\u202e") == "a\\x1b[31mb\\x0ac\\u202e"
    assert markdown("<img src=x onerror=alert(1)>|[l](http://x)") == \
        "\\<img src=x onerror=alert(1)\\>\\|\\[l\\](http://x)"
    for cell in ("=HYPERLINK(\"http://x\")", "+1", "-1", "@SUM(A1)"):
        assert csv_cell(cell) == "'" + cell and csv_value(csv_cell(cell)) == cell
    assert csv_cell("cifar10") == "cifar10"
    # a terminal shows a CSV's control characters as escapes, never runs them
    assert csv_cell("\tx") == "'\\x09x" and csv_cell("a\x1b[31mb") == "a\\x1b[31mb"


# ---------------------------------------------------------------- temporary files, keys, patterns


def test_temporary_files_are_random_and_exclusive(tmp_path):
    from overlap_audit.atomic import atomic_write_text, create_temporary

    target = tmp_path / "report.json"
    a, b = create_temporary(target), create_temporary(target)
    assert a != b and a.parent == tmp_path and str(os.getpid()) not in a.name
    a.unlink()
    b.unlink()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    # a link planted under every name a predictable writer would use is never written through
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}" and victim.read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["report.json", "victim"]


def test_a_key_outside_the_source_is_not_read(tmp_path):
    from overlap_audit.sources import fetch_items, open_source

    (tmp_path / "secret.png").write_bytes(b"secret")
    src = tmp_path / "src"
    src.mkdir()
    _img(0).save(src / "0.png")
    found = fetch_items(open_source(str(src)), ["0.png", "../secret.png", str(tmp_path / "secret.png")])
    assert found["0.png"].path is not None
    for key in ("../secret.png", str(tmp_path / "secret.png")):
        assert found[key].path is None and "outside" in found[key].skip_reason


def test_a_huge_brace_pattern_is_refused_before_expansion(tmp_path):
    import time

    from overlap_audit.errors import SourceError
    from overlap_audit.sources import open_source

    started = time.monotonic()
    with pytest.raises(SourceError, match="more than"):
        open_source(f"wds:{tmp_path}/s-{{0..999999}}-{{0..999999}}.tar")
    assert time.monotonic() - started < 30  # a bound on a hang only: expanding 10^12 names would never end
