"""Remote and streamed shards: URLs read through fsspec from a local HTTP server started here, and
``pipe:`` commands, against the same tars and Parquet files read locally."""

from __future__ import annotations

import functools
import http.server
import os
import re
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from overlap_audit.sources import remote as streams
from overlap_audit.cli import main
from overlap_audit.errors import SourceError
from overlap_audit.index import corpus_items
from overlap_audit.sources import Source, fetch_items, open_source

from ..helpers import PLANTED, png_bytes, write_predictions
from .test_sources import make_tar

pytestmark = pytest.mark.network


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte ranges, as object stores serve them (Parquet is read by ranges)."""

    def log_message(self, *args) -> None:
        pass

    def _send(self, body: bool) -> None:
        path = self.translate_path(self.path.split("?", 1)[0])
        if not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as fh:
            data = fh.read()
        match = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            part = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(part) - 1}/{len(data)}")
        else:
            part = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if body:
            self.wfile.write(part)

    def do_GET(self) -> None:
        self._send(True)

    def do_HEAD(self) -> None:
        self._send(False)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tile_sets):
    """A folder of two WebDataset shards, an img2dataset Parquet file and an evaluation Parquet file with
    planted copies of corpus tiles, served over HTTP on 127.0.0.1; returns (folder, base URL, planted ids,
    evaluation ids)."""
    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    root = tmp_path_factory.mktemp("served")
    corpus, other = tile_sets
    tiles = corpus[:24]
    for shard in range(2):
        make_tar(root / f"shard-{shard:03d}.tar",
                 [(tid, {"png": png_bytes(im), "txt": f"tile {tid}".encode()})
                  for tid, im in tiles[shard * 12:(shard + 1) * 12]])
    pq.write_table(pa.table({"key": [tid for tid, _ in tiles[:10]],
                             "png": [png_bytes(im) for _, im in tiles[:10]],
                             "caption": [f"tile {tid}" for tid, _ in tiles[:10]]}),
                   root / "corpus.parquet", row_group_size=4)
    planted = [f"{tid}-{kind}" for (tid, _), kind in zip(tiles[::4], PLANTED)]
    images = [png_bytes(PLANTED[kind](im)) for (_, im), kind in zip(tiles[::4], PLANTED)]
    clean = [tid for tid, _ in other[:8]]
    images += [png_bytes(im) for _, im in other[:8]]
    pq.write_table(pa.table({"key": planted + clean, "png": images,
                             "label": ["seen"] * len(planted) + ["new"] * len(clean)}), root / "eval.parquet")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", planted, planted + clean
    server.shutdown()
    server.server_close()


posix_only = pytest.mark.skipif(os.name != "posix", reason="the pipe: tests run sh, cat and sleep")


def _items(spec: str) -> list[tuple]:
    return [(it.id, it.data, it.caption, it.label, it.skip_reason) for it in open_source(spec).iter_items()]


def test_http_shards_and_parquet_give_the_local_items(served):
    root, url, _, _ = served
    src = open_source(f"{url}/shard-{{000..001}}.tar")
    assert src.kind == "wds" and src.name == "shard-{000..001}.tar" and src.count() is None
    assert src.paths == (f"{url}/shard-000.tar", f"{url}/shard-001.tar")
    local = _items(str(root / "shard-{000..001}.tar"))
    assert len(local) == 24 and _items(f"{url}/shard-{{000..001}}.tar") == local
    pq_src = open_source(f"{url}/corpus.parquet")
    assert pq_src.kind == "parquet" and pq_src.count() == 10
    assert _items(f"{url}/corpus.parquet") == _items(str(root / "corpus.parquet"))
    # read back by id: only the row groups that hold a wanted id
    got = fetch_items(pq_src, [local[5][0], "nope"])
    assert got[local[5][0]].data == local[5][1] and "no longer in source" in got["nope"].skip_reason
    got = fetch_items(src, [local[20][0]])
    assert got[local[20][0]].data == local[20][1]
    # a query string is not part of the suffix; a URL without a known suffix needs its kind
    assert _items(f"{url}/shard-000.tar?token=a*b") == local[:12]
    with pytest.raises(SourceError, match="prefix it with its kind"):
        open_source(f"{url}/shard-000")
    # a shard gone after the source was opened is listed as not read; the other shards are read
    gone = Source("wds", (f"{url}/gone.tar", f"{url}/shard-000.tar"), "s", "s")
    items = list(gone.iter_items())
    assert items[0].skip_reason == ("WebDataset shard 'gone.tar' cannot be opened: HTTP 404 Not Found (check "
                                      "the URL); not read")
    assert [it.id for it in items[1:]] == [it[0] for it in local[:12]]


@posix_only
def test_pipe_gives_the_local_items_and_stops_a_command_it_no_longer_needs(served):
    root, _, _, _ = served
    local = _items(str(root / "shard-{000..001}.tar"))
    src = open_source(f"pipe:cat {root}/shard-{{000..001}}.tar")
    assert src.kind == "wds" and src.name == "shard-{000..001}.tar"
    assert src.paths == (f"pipe:cat {root}/shard-000.tar", f"pipe:cat {root}/shard-001.tar")
    assert _items(f"pipe:cat {root}/shard-{{000..001}}.tar") == local
    assert _items(f"wds:pipe:cat {root / 'shard-000.tar'} | cat") == local[:12]  # shell syntax: run by sh
    slow = open_source(f"pipe:sh -c 'cat {root / 'shard-000.tar'}; sleep 60'")
    start = time.monotonic()
    got = fetch_items(slow, [local[0][0]])
    # a bound on a hang, not a speed claim: the command sleeps 60 s after the item; the fetch must not wait for it
    assert got[local[0][0]].data == local[0][1] and time.monotonic() - start < 20


@posix_only
def test_a_failing_or_silent_command_is_one_error(served, monkeypatch):
    root, _, _, _ = served
    with pytest.raises(SourceError, match=r"failed with exit status 4: oops"):
        list(open_source(f"pipe:sh -c 'cat {root / 'shard-000.tar'}; echo oops >&2; exit 4'").iter_items())
    monkeypatch.setattr(streams, "STALL_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with pytest.raises(SourceError, match=r"wrote nothing for 1 s: stopped"):
        list(open_source("pipe:sleep 60").iter_items())
    assert time.monotonic() - start < 20  # a bound on a hang: stopped after the 1-s stall, not after the 60-s sleep
    with pytest.raises(SourceError, match="cannot be parsed"):
        open_source("pipe:cat 'unclosed")


@posix_only
def test_cli_errors_for_a_failing_command_and_a_missing_url(served, tmp_path):
    root, url, _, _ = served
    cases = {
        f"pipe:cat {root}/missing-000.tar": r"exit status 1: .*missing-000\.tar",
        f"{url}/missing-{{000..001}}.tar": r"2 URLs cannot be read, the first .*/missing-000\.tar: HTTP 404",
    }
    for spec, pattern in cases.items():
        result = CliRunner().invoke(main, ["index", spec, "--out", str(tmp_path / "i"), "--workers", "0",
                                           "--quiet"])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines


def test_without_fsspec_a_url_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # `import fsspec` fails as when it is not installed
    with pytest.raises(SourceError, match=re.escape("pip install 'overlap-audit[remote]'")):
        open_source("https://example.org/shard-{000..009}.tar")
    result = CliRunner().invoke(main, ["index", "s3://bucket/shard-000.tar", "--out", str(tmp_path / "j"),
                                       "--quiet"])
    assert result.exit_code == 2 and "overlap-audit[remote]" in result.output
    assert len(result.output.strip().splitlines()) == 1


def _index(tmp_path, spec: str, name: str, workers: int = 0):
    out = tmp_path / name
    result = CliRunner().invoke(main, ["index", spec, "--out", str(out), "--workers", str(workers), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def _shards(index_dir) -> list:
    return [pq.read_table(p).to_pylist() for p in sorted(index_dir.glob("shards/*.parquet"))]


def test_index_and_report_over_http_match_the_local_files(served, tmp_path):
    root, url, planted, eval_ids = served
    remote = _index(tmp_path, f"{url}/shard-{{000..001}}.tar", "remote", workers=2)  # decoded in workers
    local = _index(tmp_path, str(root / "shard-{000..001}.tar"), "local")
    rows = _shards(remote)
    assert rows and rows == _shards(local)  # same keys, ids, captions, vectors
    assert sum(len(r) for r in rows) == 24 and all(row["vector"] is not None for r in rows for row in r)

    preds = write_predictions(tmp_path / "preds.csv", "val", eval_ids, [1] * len(eval_ids))
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(remote), "--eval", f"val={url}/eval.parquet",
                                       "--predictions", str(preds), "--out", str(out), "--workers", "0",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    splits = pq.read_table(out / "splits.parquet").to_pylist()
    assert {r["id"] for r in splits} == set(eval_ids)
    assert {r["id"] for r in splits if r["overlap"]} <= set(planted)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "image not shown" not in page  # corpus thumbnails read back over HTTP, evaluation ones too
    assert len(re.findall(r'src="data:image/webp;base64,', page)) == 2 * len(eval_ids)


@posix_only
def test_a_pipe_source_in_a_manifest_is_not_rerun(served, tmp_path):
    root, _, _, _ = served
    index_dir = _index(tmp_path, f"pipe:cat {root / 'shard-000.tar'}", "piped")
    key = _shards(index_dir)[0][0]["key"]
    (item,) = corpus_items(index_dir, [key]).values()
    assert item.data is None and "pipe: command" in item.skip_reason
    assert "never from an index manifest" in item.skip_reason
