"""The in-memory Python API: predictions as a DataFrame or Table, an evaluation set of PIL images, the splits as a
table; and corpus_matches.parquet, the decontamination list, against planted duplicates."""

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from overlap_audit.api import ReportSettings, build_index, run_report
from overlap_audit.settings import IndexSettings, MatchSettings, StatsSettings
from overlap_audit.cli import main
from overlap_audit.errors import DuplicateIdError, OutputDirError, PredictionsError, SourceError
from overlap_audit.sources.memory import memory_source
from overlap_audit.predictions import read_predictions
from overlap_audit.report import CORPUS_MATCHES, SPLITS, load_report
from overlap_audit.decide.rule import VerifySettings

from ..helpers import write_predictions

MATCH = MatchSettings(workers=0, device="cpu")


@pytest.fixture(scope="module")
def index_dir(corpus_index):
    return corpus_index

def _frame(eval_set) -> pd.DataFrame:
    root, planted, clean = eval_set
    ids = planted + clean
    return pd.DataFrame({"dataset": "val", "id": ids, "correct": [1] * len(planted) + [i % 2 for i in range(len(clean))]})


def _images(eval_set) -> list[tuple[str, Image.Image, str]]:
    root, planted, clean = eval_set
    out = []
    for rel in planted + clean:
        with Image.open(root / rel) as im:
            out.append((rel, im.copy(), rel.split("/")[0]))
    return out


def test_dataframe_predictions_give_the_report_a_file_gives(tmp_path, index_dir, eval_set):
    root, planted, clean = eval_set
    frame = _frame(eval_set)
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    evals = [("val", str(root))]
    from_file = run_report(index_dir, evals, ReportSettings(tmp_path / "file", predictions=path, match=MATCH))
    from_frame = run_report(index_dir, evals, ReportSettings(tmp_path / "frame", predictions=frame, match=MATCH))
    from_table = run_report(index_dir, evals, ReportSettings(tmp_path / "table", predictions=pa.Table.from_pandas(frame),
                                                             match=MATCH))
    for rep in (from_frame, from_table):
        assert rep.dataset("val").stats == from_file.dataset("val").stats
    assert from_frame.predictions == "in memory (predictions DataFrame)"
    assert read_predictions(frame).correct == read_predictions(path).correct
    # the splits as a table, from the returned Report and from the directory alike
    table = from_frame.splits_table()
    assert table.equals(pq.read_table(tmp_path / "frame" / SPLITS))
    assert load_report(tmp_path / "frame").splits_table().equals(table)
    assert sorted(table["id"].to_pylist()) == sorted(planted + clean)
    assert from_frame.corpus_matches_table().num_rows > 0


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"dataset": ["val"], "ident": ["a"], "correct": [1]}), "missing column 'id'"),
    (pd.DataFrame({"dataset": ["val"], "id": ["a"]}), "needs a 'correct' column"),
    (pd.DataFrame({"dataset": ["val"], "id": ["a"], "correct": ["maybe"]}), "row 1: 'correct' must be 0/1"),
    (pd.DataFrame({"dataset": ["val", "val"], "id": ["a", "a"], "correct": [1, 0]}), "duplicated predictions for 'val/a'"),
    (pd.DataFrame({"dataset": ["val"], "id": [None], "correct": [1]}), "row 1 has an empty dataset or id"),
    (pd.DataFrame({"dataset": ["val"], "id": ["a"], "prediction": [None], "label": ["cat"]}), "has no prediction"),
])
def test_malformed_dataframes_fail_in_one_line_as_files_do(tmp_path, frame, message):
    with pytest.raises(PredictionsError, match=message) as from_frame:
        read_predictions(frame)
    text = str(from_frame.value)
    assert "\n" not in text and text.startswith("predictions DataFrame: ")
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    with pytest.raises(PredictionsError) as from_file:
        read_predictions(path)
    assert str(from_file.value).replace(str(path), "predictions DataFrame") == text
    with pytest.raises(PredictionsError, match="file path, a pandas DataFrame or a pyarrow Table"):
        read_predictions([("val", "a", 1)])


@pytest.mark.slow
def test_an_in_memory_eval_set_splits_as_the_same_images_in_a_folder(tmp_path, index_dir, eval_set):
    root, planted, clean = eval_set
    frame = _frame(eval_set)
    images = _images(eval_set)
    source = memory_source(iter(images), name="anything")  # a one-pass iterable is enough
    folder = run_report(index_dir, [("val", str(root))], ReportSettings(tmp_path / "folder", predictions=frame,
                                                                         match=MATCH, verify=VerifySettings()))
    memory = run_report(index_dir, [("val", source)], ReportSettings(tmp_path / "memory", predictions=frame,
                                                                      match=MATCH, verify=VerifySettings()))
    a, b = folder.splits_table().to_pylist(), memory.splits_table().to_pylist()
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(a, key=key) == sorted(b, key=key)
    assert memory.dataset("val").stats == folder.dataset("val").stats
    assert memory.verify["datasets"]["val"]["n_unreadable"] == 0
    assert memory.evals["val"].startswith("memory:val (")
    # report.html drew the in-memory images (no "cannot be read" note), and the corpus matches agree
    html, folder_html = ((tmp_path / d / "report.html").read_text() for d in ("memory", "folder"))
    assert html.count("data:image/webp") == folder_html.count("data:image/webp") >= 2 * len(planted)
    assert html.count("cannot be read") == folder_html.count("cannot be read")
    assert memory.corpus_matches_table().sort_by("eval_id").equals(
        folder.corpus_matches_table().sort_by("eval_id"))


def test_memory_source_errors_are_one_line():
    im = Image.new("RGB", (8, 8))
    for items, error, message in [
        ([("a", im)], SourceError, "expected an \\(id, image, label\\) tuple"),
        ([(3, im, "x")], SourceError, "id must be non-empty text"),
        ([("a", np.zeros((8, 8)), "x")], SourceError, "not a PIL image"),
        ([("a", im, "x"), ("a", im, "y")], DuplicateIdError, "duplicate ids"),
    ]:
        with pytest.raises(error, match=message) as caught:
            memory_source(items, name="m")
        assert "\n" not in str(caught.value)
    cmyk = memory_source([("c", Image.new("CMYK", (4, 4)), 1), ("b", b"\x89PNG...", None)])
    first = next(cmyk.iter_items())
    assert Image.open(io.BytesIO(first.data)).mode == "RGB" and first.label == "1"
    assert [i.data for i in cmyk.iter_items()][1] == b"\x89PNG..."


def _planted_sources(planted: list[str]) -> dict[str, str]:
    """Each planted copy's corpus tile: seen/astronaut-00-resize.png -> astronaut-00.png."""
    return {rel: rel.split("/", 1)[1].rsplit("-", 1)[0] + ".png" for rel in planted}


def test_corpus_matches_list_the_pairs_at_or_above_the_threshold(tmp_path, index_dir, eval_set):
    root, planted, clean = eval_set
    out = tmp_path / "rep"
    # phash puts every planted copy at >= 52/64 bits and every clean tile at <= 50/64: 0.8 separates them
    # (without verification, Overlap is the threshold's decision alone)
    rep = run_report(index_dir, [("val", str(root))], ReportSettings(out, predictions=_frame(eval_set), match=MATCH,
                                                                      stats=StatsSettings(threshold=0.8), verify=None))
    assert CORPUS_MATCHES in rep.files
    rows = pq.read_table(out / CORPUS_MATCHES).to_pylist()
    threshold = rep.dataset("val").threshold
    sources = _planted_sources(planted)
    for r in rows:
        assert r["similarity"] >= threshold and r["dataset"] == "val" and r["verify_score"] is None
        assert r["eval_id"] in sources  # no clean example matches anything
        assert r["corpus_key"] == r["id"] and r["source"]  # one corpus source: the key is the item's id
        assert r["url"] is None and r["uid"] is None  # an image folder without .json sidecars
    nearest = {r["eval_id"]: r["id"] for r in rows if r["rank"] == 1}
    assert nearest == sources  # every planted copy's source
    overlap = {r["id"] for r in rep.splits_table().to_pylist() if r["overlap"]}
    assert set(nearest) == overlap
    # exactly splits.parquet's neighbours at or above the threshold
    expected = sum(sum(s is not None and s >= threshold for s in r["neighbor_similarities"])
                   for r in rep.splits_table().to_pylist() if not r["low_information"])
    assert len(rows) == expected


@pytest.mark.slow
def test_verified_corpus_matches_are_the_verified_pairs(tmp_path, index_dir, eval_set):
    root, planted, clean = eval_set
    rep = run_report(index_dir, [("val", str(root))], ReportSettings(tmp_path / "rep", predictions=_frame(eval_set),
                                                                      match=MATCH))  # verification is the default
    rows = rep.corpus_matches_table().to_pylist()
    # only the Overlap examples' pairs, each an example's nearest corpus item: planted copies with their sources,
    # each verified as the same picture or at or above the threshold without evidence against it
    assert rows and {(r["eval_id"], r["id"]) for r in rows} <= set(_planted_sources(planted).items())
    threshold = rep.dataset("val").threshold
    assert all(r["rank"] == 1 and (r["similarity"] >= threshold or r["verify_score"] >= 0.83) for r in rows)
    assert len(rows) == rep.verify["datasets"]["val"]["n_overlap"] >= rep.verify["datasets"]["val"]["n_accepted"]


def test_corpus_matches_carry_url_and_uid_of_a_parquet_pool(tmp_path, tile_sets):
    corpus, other = tile_sets
    keys = [f"{i:09d}" for i in range(40)]
    buf = []
    for _, im in corpus[:40]:
        b = io.BytesIO()
        im.save(b, format="PNG")
        buf.append(b.getvalue())
    pool = pa.table({"key": keys, "url": [f"https://example.org/{k}.png" for k in keys],
                     "uid": [f"uid{k}" for k in keys], "caption": [f"tile {k}" for k in keys], "png": buf})
    (tmp_path / "pool").mkdir()
    pq.write_table(pool, tmp_path / "pool" / "00000.parquet")
    build_index([str(tmp_path / "pool")], tmp_path / "index", IndexSettings(workers=0))
    copies = [(f"copy-{i}", corpus[i][1], "seen") for i in (3, 17, 29)]  # exact copies
    fresh = [(f"new-{i}", other[i][1], "new") for i in range(5)]
    ids = [c[0] for c in copies + fresh]
    preds = pa.table({"dataset": ["val"] * len(ids), "id": ids, "correct": [True] * len(ids)})
    rep = run_report(tmp_path / "index", [("val", memory_source(copies + fresh))],
                     ReportSettings(tmp_path / "rep", predictions=preds, match=MATCH,
                                    corpus_matches=tmp_path / "decontaminate.parquet"))
    matches = rep.corpus_matches_table()
    assert pq.read_table(tmp_path / "decontaminate.parquet").equals(matches)
    nearest = {r["eval_id"]: r for r in matches.to_pylist() if r["rank"] == 1}
    assert set(nearest) == {"copy-3", "copy-17", "copy-29"}
    for i in (3, 17, 29):
        r = nearest[f"copy-{i}"]
        assert (r["id"], r["url"], r["uid"], r["caption"]) == (keys[i], f"https://example.org/{keys[i]}.png",
                                                                 f"uid{keys[i]}", f"tile {keys[i]}")
    # the README's filter: the pool without the matched items
    kept = pool.filter(pc.invert(pc.is_in(pool["url"], value_set=matches["url"])))
    assert set(pool["key"].to_pylist()) - set(kept["key"].to_pylist()) == set(matches["id"].to_pylist())


@pytest.mark.slow
def test_cli_writes_corpus_matches(tmp_path, index_dir, eval_set):
    root, planted, clean = eval_set
    preds = write_predictions(tmp_path / "p.csv", "val", planted + clean, [1] * (len(planted) + len(clean)))
    base = ["report", str(index_dir), "--eval", f"val={root}", "--predictions", str(preds), "--workers", "0",
            "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(main, base + ["--out", str(tmp_path / "rep"), "--corpus-matches",
                                              str(tmp_path / "matches.parquet")])
    assert result.exit_code == 0, result.output
    assert "corpus_matches.parquet" in result.output and "also written to" in result.output
    assert pq.read_table(tmp_path / "matches.parquet").equals(pq.read_table(tmp_path / "rep" / CORPUS_MATCHES))
    with pytest.raises(OutputDirError, match="outside it"):
        ReportSettings(tmp_path / "rep", predictions=preds, corpus_matches=tmp_path / "rep" / "m.parquet")
    # a second run into the same report directory replaces it (corpus_matches.parquet is the report's own)
    again = CliRunner().invoke(main, base + ["--out", str(tmp_path / "rep")])
    assert again.exit_code == 0, again.output
