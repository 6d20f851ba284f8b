"""Remote sources against real local servers started here: HTTPS with a self-signed certificate made here
(trusted through SSL_CERT_FILE, or not), a server that ignores range requests (Python's own http.server),
CLIP_benchmark folders served over HTTPS, and the causes a URL that cannot be read is reported with."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from overlap_audit.cli import main
from overlap_audit.errors import SourceError
from overlap_audit.sources import fetch_items, open_source
from overlap_audit.sources import remote

from .test_formats import NAMES, clip_benchmark_dir  # noqa: F401 - a fixture, used by name
from .test_formats import _encoded

pytestmark = pytest.mark.network


class NoRangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files as Python's http.server serves them: whole, whatever Range asks. ``/private/...`` is
    403, as a server that wants credentials answers."""

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        if self.path.startswith("/private/"):
            self.send_error(403)
            return None
        return super().send_head()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    crt, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=120)
    return crt, key


def _serve(root, cert=None):
    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(NoRangeHandler, directory=str(root)))
    if cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert[0]), str(cert[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scheme = "https" if cert is not None else "http"
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def https_root(tmp_path, cert, clip_benchmark_dir):  # noqa: F811 - the fixture imported above
    """The CLIP_benchmark folder of test_formats, a Parquet file and a private folder, served over HTTPS
    (no range requests): (local root, base URL)."""
    root, _ = clip_benchmark_dir
    (root / "train" / "nshards.txt").write_text("1\n")  # CLIP_benchmark writes one for every split
    pq.write_table(pa.table({"key": [f"k{n}" for n in range(6)], "png": [_encoded(n) for n in range(6)]}),
                   root / "eval.parquet", row_group_size=2)
    (root / "private").mkdir()
    shutil.copy(root / "test" / "0.tar", root / "private" / "0.tar")
    server, url = _serve(root, cert)
    yield root, url
    server.shutdown()
    server.server_close()


def _items(src) -> list[tuple]:
    return [(it.id, it.data, it.label, it.skip_reason) for it in src.iter_items()]


def test_clip_benchmark_over_https_reads_its_names_templates_and_shards(https_root, cert, monkeypatch):
    root, url = https_root
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    local = open_source(f"clip_benchmark:{root}")
    for spec in (f"clip_benchmark:{url}", f"clip_benchmark:{url}/:test"):
        src = open_source(spec)
        assert src.kind == "wds" and src.paths == (f"{url}/test/0.tar", f"{url}/test/1.tar")
        assert src.classnames == tuple(NAMES) == local.classnames
        assert src.templates == ("a photo of a {c}.", "a blurry photo of a {c}.") == local.templates
        assert _items(src) == _items(local) and len(_items(src)) == 6
    train = open_source(f"clip_benchmark:{url}:train")
    assert train.paths == (f"{url}/train/0.tar",) and [i.label for i in train.iter_items()] == ["2"]
    with pytest.raises(SourceError, match=r"val/nshards\.txt does not exist: .*name the split"):
        open_source(f"clip_benchmark:{url}:val")
    # the shard count names a shard the server does not have: the first missing URL, with its status
    (root / "test" / "nshards.txt").write_text("3")
    with pytest.raises(SourceError, match=re.escape(f"{url}/test/2.tar: HTTP 404")):
        open_source(f"clip_benchmark:{url}")
    (root / "test" / "nshards.txt").write_text("2")
    (root / "classnames.txt").unlink()
    with pytest.raises(SourceError, match=r"classnames\.txt does not exist"):
        open_source(f"clip_benchmark:{url}")
    # a bare URL of a folder says which prefixes read it
    with pytest.raises(SourceError, match="clip_benchmark: for a CLIP_benchmark folder"):
        open_source(url)
    with pytest.raises(SourceError, match=r"hf: reads a local folder; download it"):
        open_source(f"hf:{url}")


def test_hub_tree_urls_are_read_as_clip_benchmark_reads_them():
    from overlap_audit.sources.layouts import _clip_benchmark_roots

    assert _clip_benchmark_roots("https://huggingface.co/datasets/clip-benchmark/wds_cifar10/tree/main") == (
        "https://huggingface.co/datasets/clip-benchmark/wds_cifar10/raw/main",
        "https://huggingface.co/datasets/clip-benchmark/wds_cifar10/resolve/main", "wds_cifar10")
    assert _clip_benchmark_roots("https://example.org/sets/wds_cifar10/") == (
        "https://example.org/sets/wds_cifar10", "https://example.org/sets/wds_cifar10", "wds_cifar10")


def test_parquet_from_a_server_without_range_requests_is_copied_whole_once(https_root, cert, monkeypatch):
    root, url = https_root
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    src = open_source(f"{url}/eval.parquet")
    assert src.kind == "parquet" and src.count() == 6
    assert _items(src) == _items(open_source(str(root / "eval.parquet")))
    got = fetch_items(src, ["k4"])
    assert got["k4"].data == _encoded(4)
    copy = remote._COPIES[f"{url}/eval.parquet"]
    assert os.path.getsize(copy) == os.path.getsize(root / "eval.parquet")
    # over the cap: refused before reading, with what works instead
    monkeypatch.setattr(remote, "MAX_WHOLE_COPY_BYTES", 100)
    remote._COPIES.clear()
    with pytest.raises(SourceError, match=r"does not answer range requests.*larger than 100 bytes: download it"):
        list(open_source(f"{url}/eval.parquet").iter_items())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_url_that_cannot_be_read_says_why(https_root, cert, monkeypatch):
    root, url = https_root
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the system's CAs: the certificate is not trusted
    with pytest.raises(SourceError, match=r"certificate verify failed \(self-signed certificate\) for "
                                          r"127\.0\.0\.1:\d+: to trust it, name .* in SSL_CERT_FILE") as err:
        open_source(f"{url}/test/{{0..1}}.tar")
    # the first URL is named; the host's other URLs are not tried (each would fail the same way)
    assert f": {url}/test/0.tar: certificate" in str(err.value) and "URLs cannot be read" not in str(err.value)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    with pytest.raises(SourceError, match=re.escape(f"'{url}/test/7.tar': HTTP 404 File not found (check the URL)")):
        open_source(f"{url}/test/7.tar")
    with pytest.raises(SourceError, match=r"2 URLs cannot be read, the first .*/private/0\.tar: HTTP 403 "
                                          r"Forbidden \(the server refuses access: .*pipe:curl"):
        open_source(f"{url}/private/{{0..1}}.tar")
    port = _closed_port()
    with pytest.raises(SourceError, match=rf"connection refused by 127\.0\.0\.1:{port}: nothing listens there"):
        open_source(f"http://127.0.0.1:{port}/0.tar")
    # a server that accepts the connection and never answers: given up after the probe timeout
    monkeypatch.setattr(remote, "PROBE_TIMEOUT_S", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"no answer from 127\.0\.0\.1:\d+ within 1 s \(timeout\)"):
            open_source(f"http://127.0.0.1:{silent.getsockname()[1]}/0.tar")
        assert time.monotonic() - start < 60  # a bound on a hang, not a speed claim


def test_cli_names_the_cause_on_one_line_even_with_verbose(https_root, tmp_path, monkeypatch):
    root, url = https_root
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    result = CliRunner().invoke(main, ["--verbose", "index", f"{url}/test/{{0..1}}.tar", "--out",
                                       str(tmp_path / "i"), "--workers", "0"])
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "certificate verify failed (self-signed certificate)" in last
    assert f"{url}/test/0.tar" in last


@pytest.mark.slow
def test_a_new_process_trusts_the_certificate_named_by_ssl_cert_file(https_root, cert, tmp_path, monkeypatch):
    """SSL_CERT_FILE as a user sets it, before the process starts: the same CLIP_benchmark URL is refused
    without it and indexed with it; a report on it scores with the folder's own class names and templates."""
    root, url = https_root
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    command = [sys.executable, "-m", "overlap_audit.cli", "index", f"clip_benchmark:{url}", "--out",
               str(tmp_path / "index"), "--workers", "0", "--quiet"]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "certificate verify failed" in refused.stderr, refused.stderr
    trusted = subprocess.run(command, env={**env, "SSL_CERT_FILE": str(cert[0])}, capture_output=True, text=True,
                             timeout=300)
    assert trusted.returncode == 0, trusted.stderr
    shards = sorted((tmp_path / "index").glob("shards/*.parquet"))
    rows = [row for shard in shards for row in pq.read_table(shard).to_pylist()]
    assert sorted(row["id"] for row in rows) == [f"s{n:07d}" for n in range(6)]
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(tmp_path / "index"), "--eval", f"c10=clip_benchmark:{url}",
                                       "--model", "overlap-audit:openclipart-small", "--out", str(out),
                                       "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    predictions = pq.read_table(out / "predictions.parquet").to_pylist()
    assert sorted(row["id"] for row in predictions) == [f"s{n:07d}" for n in range(6)]
    assert all(set(row["top5"]) == {"0", "1", "2"} for row in predictions)  # every class of classnames.txt
    model = json.loads((out / "report.json").read_text())["model"]
    assert model["templates"]["c10"]["templates"] == ["a photo of a {}.", "a blurry photo of a {}."]
    assert "own class names" in model["classnames"]["c10"]
