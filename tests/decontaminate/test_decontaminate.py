"""Decontamination on an img2dataset pool laid out as img2dataset writes it (NNNNN.tar with key.jpg / key.json /
key.txt, NNNNN.parquet metadata, NNNNN_stats.json): corpus_matches.parquet locates every matched item, the
blocklist and the filtered copies drop exactly the matched rows, and the README's and docs' snippets run."""

from __future__ import annotations

import io
import json
import re
import shlex
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from overlap_audit.api import ReportSettings, build_index, run_report
from overlap_audit.cli import main
from overlap_audit.decontaminate import decontaminate
from overlap_audit.errors import OutputDirError
from overlap_audit.settings import IndexSettings, MatchSettings
from overlap_audit.sources.memory import memory_source

from ..helpers import jpeg_bytes

ROOT = Path(__file__).resolve().parents[2]
MATCH = MatchSettings(workers=0, device="cpu")
PER_SHARD = 20


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_img2dataset_webdataset(root: Path, images: list, shards: int) -> dict:
    """img2dataset's output_format=webdataset: per shard the tar, the metadata Parquet file (every url tried,
    failures included) and _stats.json. Returns {key: url} of the samples written into the tars."""
    root.mkdir(parents=True)
    written = {}
    for s in range(shards):
        keys, urls, captions, status = [], [], [], []
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i, (tid, im) in enumerate(images[s * PER_SHARD:(s + 1) * PER_SHARD]):
                key = f"{s:05d}{i:04d}"
                url = f"https://example.org/img/{tid}.jpg"
                _member(tar, f"{key}.jpg", jpeg_bytes(im, 95))
                _member(tar, f"{key}.json", json.dumps({"key": key, "url": url, "caption": f"tile {tid}",
                                                        "status": "success"}).encode())
                _member(tar, f"{key}.txt", f"tile {tid}".encode())
                keys.append(key), urls.append(url), captions.append(f"tile {tid}"), status.append("success")
                written[key] = url
        # two failed downloads, and a row without a key: a null must never remove the pool
        for j, key in enumerate((f"{s:05d}9998", f"{s:05d}9999", None)):
            keys.append(key), urls.append(f"https://example.org/dead/{s}-{j}.jpg"), captions.append(None)
            status.append("failed_to_download")
        pq.write_table(pa.table({"key": pa.array(keys, pa.string()), "url": urls, "caption": captions,
                                 "status": status}), root / f"{s:05d}.parquet")
        (root / f"{s:05d}_stats.json").write_text(json.dumps({"count": PER_SHARD + 3, "successes": PER_SHARD,
                                                                 "failed_to_download": 3}))
    return written


@pytest.fixture(scope="module")
def audited(tmp_path_factory, tile_sets):
    """(folder, {key: url} in the tars, matched keys): a two-shard pool and the report of a set holding exact
    copies of three of its samples."""
    corpus, other = tile_sets
    root = tmp_path_factory.mktemp("decon")
    written = write_img2dataset_webdataset(root / "pool", corpus[:2 * PER_SHARD], 2)
    build_index([str(root / "pool")], root / "index", IndexSettings(workers=0))
    picked = {3: "000000003", 11: "000000011", PER_SHARD + 5: "000010005"}
    copies = [(f"copy-{i}", corpus[i][1], "seen") for i in picked]
    fresh = [(f"new-{i}", other[i][1], "new") for i in range(5)]
    ids = [c[0] for c in copies + fresh]
    preds = pa.table({"dataset": ["val"] * len(ids), "id": ids, "correct": [True] * len(ids)})
    run_report(root / "index", [("val", memory_source(copies + fresh))],
               ReportSettings(root / "audit", predictions=preds, match=MATCH))
    return root, written, set(picked.values())


def test_corpus_matches_locate_webdataset_samples(audited):
    root, written, picked = audited
    rows = pq.read_table(root / "audit" / "corpus_matches.parquet").to_pylist()
    assert {r["id"] for r in rows if r["rank"] == 1} == picked
    for r in rows:
        assert r["url"] == written[r["id"]]  # read from the sample's .json / the metadata beside the tar
        assert r["shard"] == f"{r['id'][:5]}.tar"
        assert r["member"] == f"{r['id']}.jpg"
        assert re.fullmatch(r"[0-9a-f]{16}", r["item_xxh3"])
        assert r["row"] is None and r["path"] is None


def test_decontaminate_drops_exactly_the_matched_rows(audited, tmp_path):
    root, written, _ = audited
    matched = set(pq.read_table(root / "audit" / "corpus_matches.parquet")["id"].to_pylist())
    result = decontaminate(root / "audit", tmp_path / "clean")
    blocklist = pq.read_table(tmp_path / "clean" / "blocklist.parquet")
    assert sorted(blocklist["key"].to_pylist()) == sorted(matched)
    assert blocklist["url"].to_pylist() == [written[k] for k in blocklist["key"].to_pylist()]
    csv = (tmp_path / "clean" / "blocklist.csv").read_text().splitlines()
    assert csv[0].split(",")[:2] == ['"source"', '"key"'] and len(csv) == 1 + len(matched)
    assert (result.n_blocked, result.dropped, result.n_not_in_files) == (len(matched), len(matched), 0)
    assert result.kept == 2 * (PER_SHARD + 3) - len(matched)
    for s in range(2):
        original = pq.read_table(root / "pool" / f"{s:05d}.parquet")
        copy = pq.read_table(tmp_path / "clean" / "pool" / f"{s:05d}.parquet")
        assert copy.schema.equals(original.schema)
        assert copy.to_pylist() == [r for r in original.to_pylist() if r["key"] not in matched]
    summary = json.loads((tmp_path / "clean" / "decontamination.json").read_text())
    assert (summary["dropped"], summary["kept"]) == (result.dropped, result.kept)


def test_decontaminate_refuses_an_out_inside_the_pool(audited):
    root, _, _ = audited
    with pytest.raises(OutputDirError, match="corpus source"):
        decontaminate(root / "audit", root / "pool" / "clean")


def _blocks(path: Path, section: str | None = None) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks of a Markdown file, or of one of its ``## `` sections."""
    text = path.read_text(encoding="utf-8")
    if section is not None:
        text = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(\w+)\n(.*?)^```", text, flags=re.S | re.M)


def _run_block(lang: str, code: str, namespace: dict) -> None:
    if lang == "sh":
        for line in code.splitlines():
            if line.strip() and not line.startswith("#"):
                argv = shlex.split(line)
                assert argv[0] == "overlap-audit", line
                result = CliRunner().invoke(main, argv[1:])
                assert result.exit_code == 0, result.output
    else:
        exec(compile(code, "<doc>", "exec"), namespace)


def _kept_rows(root: Path, matched: set[str]) -> list:
    rows = [r for s in range(2) for r in pq.read_table(root / "pool" / f"{s:05d}.parquet").to_pylist()]
    return sorted(((r["key"] or ""), r["url"]) for r in rows if r["key"] not in matched)


@pytest.mark.parametrize("doc", ["docs", "readme"])
def test_documented_snippets_drop_exactly_the_matched_rows(audited, tmp_path, monkeypatch, doc):
    root, written, _ = audited
    matched = set(pq.read_table(root / "audit" / "corpus_matches.parquet")["id"].to_pylist())
    (tmp_path / "pool").symlink_to(root / "pool")
    (tmp_path / "audit").symlink_to(root / "audit")
    monkeypatch.chdir(tmp_path)
    if doc == "docs":
        blocks = _blocks(ROOT / "docs" / "formats.md", "Decontaminating a training pool")
    else:
        blocks = [(lang, code) for lang, code in _blocks(ROOT / "README.md")
                  if "decontaminate" in code or "blocklist" in code]
    assert [lang for lang, _ in blocks] == (["sh", "python", "python", "python"] if doc == "docs"
                                            else ["sh", "python"])
    namespace: dict = {}
    _run_block(*blocks[0], namespace)
    assert (tmp_path / "clean" / "blocklist.parquet").is_file()
    for lang, code in blocks[1:]:
        namespace.pop("kept", None)
        _run_block(lang, code, namespace)
        if "kept_samples" in namespace:  # the tars read without the blocked samples
            assert sorted(namespace.pop("kept_samples")) == sorted(set(written) - matched)
        else:
            kept = namespace["kept"].select(["key", "url"]).to_pylist()
            assert sorted(((r["key"] or ""), r["url"]) for r in kept) == _kept_rows(root, matched)


def test_a_parquet_pool_is_copied_without_the_matched_rows(tmp_path, tile_sets):
    """img2dataset's output_format=parquet: the images are in the Parquet files, which are copied whole but
    for the matched rows; corpus_matches names each item's file and row."""
    corpus, other = tile_sets
    (tmp_path / "pool").mkdir()
    files = {}
    for s in range(2):
        part = corpus[s * 15:(s + 1) * 15]
        keys = [f"{s:05d}{i:04d}" for i in range(len(part))]
        files[s] = pa.table({"key": keys, "url": [f"https://example.org/{k}.jpg" for k in keys],
                             "caption": [tid for tid, _ in part], "status": ["success"] * len(part),
                             "jpg": [jpeg_bytes(im, 95) for _, im in part]})
        pq.write_table(files[s], tmp_path / "pool" / f"{s:05d}.parquet")
        (tmp_path / "pool" / f"{s:05d}_stats.json").write_text("{}")
    build_index([str(tmp_path / "pool")], tmp_path / "index", IndexSettings(workers=0))
    copies = [("copy-a", corpus[4][1], "seen"), ("copy-b", corpus[15 + 9][1], "seen")]
    fresh = [(f"new-{i}", other[i][1], "new") for i in range(4)]
    preds = pa.table({"dataset": ["val"] * 6, "id": [c[0] for c in copies + fresh], "correct": [True] * 6})
    run_report(tmp_path / "index", [("val", memory_source(copies + fresh))],
               ReportSettings(tmp_path / "audit", predictions=preds, match=MATCH))
    rows = pq.read_table(tmp_path / "audit" / "corpus_matches.parquet").to_pylist()
    nearest = {r["eval_id"]: r for r in rows if r["rank"] == 1}
    assert {(r["id"], r["shard"], r["row"]) for r in nearest.values()} == {("000000004", "00000.parquet", 4),
                                                                         ("000010009", "00001.parquet", 9)}
    assert all(r["member"] is None and r["url"] for r in rows)
    matched = {r["id"] for r in rows}
    result = decontaminate(tmp_path / "audit", tmp_path / "clean")
    assert (result.dropped, result.kept) == (len(matched), 30 - len(matched))
    for s in range(2):
        copy = pq.read_table(tmp_path / "clean" / "pool" / f"{s:05d}.parquet")
        assert copy.equals(files[s].filter(pa.array([k not in matched for k in files[s]["key"].to_pylist()])))
