"""report.html: escaping, gallery ordering, fetching pairs back from their sources, and the page in a real
headless Chromium (loads with no console errors, one row per dataset, images decode, planted script inert)."""

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from overlap_audit.api import build_index
from overlap_audit.evidence import write_html_report
from overlap_audit.index import corpus_items
from overlap_audit.settings import IndexSettings
from overlap_audit.report import format_markdown, format_table, load_report
from overlap_audit.report.html import SORT_SCRIPT, Gallery, GalleryPair, esc, gallery_order, render_html
from overlap_audit.report.value import REPORT_HTML
from overlap_audit.report.format import interval
from overlap_audit.sources import fetch_items, open_source

from ..helpers import PLANTED, png_bytes, write_folder
from .test_report import make_report
from ..sources.test_sources import make_tar

XSS_CAPTION = "<img src=x onerror=\"document.title='pwned';document.body.setAttribute('data-pwned','1')\">"
XSS_SCRIPT = "</code></div><script>document.title='pwned'</script>"
XSS_NAME = "<b>bold</b>&amp;x"
TITLE = "Data overlap report"


# ---------------------------------------------------------------- units


def test_esc_escapes_text_and_attribute_values():
    assert esc(XSS_CAPTION) == ("&lt;img src=x onerror=&quot;document.title=&#x27;pwned&#x27;;document.body."
                                "setAttribute(&#x27;data-pwned&#x27;,&#x27;1&#x27;)&quot;&gt;")
    assert esc(None) == "" and esc(3) == "3" and esc("a&b") == "a&amp;b"


def test_every_untrusted_field_is_escaped_in_the_page():
    pair = GalleryPair(eval_id=XSS_SCRIPT, eval_label=XSS_CAPTION, eval_caption=XSS_CAPTION, corpus_key=XSS_SCRIPT,
                       corpus_caption=XSS_SCRIPT, similarity=0.9, overlap=True, low_information=False,
                       eval_thumb=None, eval_problem=XSS_CAPTION, corpus_thumb=None, corpus_problem='" onmouseover="x',
                       deciding=True)
    rep = make_report()
    rep = type(rep)(**{**rep.__dict__, "datasets": [type(rep.datasets[0])(**{**rep.datasets[0].__dict__,
                                                                          "name": XSS_NAME})]})
    page = render_html(rep, [Gallery(XSS_NAME, 0.875, [pair], 0, 0, note=XSS_SCRIPT)])
    assert "<script" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert '" onmouseover="' not in page and "&quot; onmouseover=&quot;x" in page
    assert page.count("&lt;img src=x onerror=") >= 3 and "&lt;/code&gt;&lt;/div&gt;&lt;script&gt;" in page
    assert "Content-Security-Policy" in page and "img-src data:" in page


def test_markdown_and_html_write_the_same_numbers_the_same_way():
    rep = make_report()
    md_rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in format_table(rep).splitlines()]
    md = {row[0]: dict(zip(md_rows[0], row)) for row in md_rows[2:]}
    page = render_html(rep, [])
    head = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", page)]
    rows = [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r'<tr class="dataset-row[^"]*">(.*?)</tr>', page)]
    web = {row[0]: dict(zip(head, row)) for row in rows}
    assert set(md) == set(web) == {"a", "b"}
    shared = set(md_rows[0]) & set(head)
    assert len(shared) >= 10
    for name in md:
        assert {h: md[name][h] for h in shared} == {h: web[name][h] for h in shared}
        assert md[name]["sig."] == web[name]["significant"]
    ci = interval(rep.dataset("a").stats.ci_delta, signed=True)
    assert ci == "[-4.1, +10.2]" and ci in format_markdown(rep) and ci in page


def test_gallery_order_puts_the_pairs_that_decide_the_threshold_first():
    sims = [0.5, 0.9, 0.88, float("nan"), 0.86, 0.95, 0.84, 0.2, 0.87]
    order, n = gallery_order(sims, 0.87, limit=20, around=2)
    # just above (0.88, 0.87: ">=" puts 0.87 above), just below (0.86, 0.84), then the rest highest first
    assert order[:n] == [2, 8, 4, 6] and n == 4
    assert order[n:] == [5, 1, 0, 7]
    assert 3 not in order  # no neighbour
    assert gallery_order(sims, 0.87, limit=3, around=2) == ([2, 8, 4], 3)
    # all above: the lowest ones decide; ties by row
    assert gallery_order([0.99, 0.95, 0.95, 0.97], 0.9, limit=10, around=2) == ([1, 2, 0, 3], 2)
    assert gallery_order([], 0.5, limit=10) == ([], 0)


def test_fetch_items_from_folder_parquet_and_webdataset(tmp_path, photos):
    small = {n: photos[n].resize((16, 16)) for n in ("coffee", "rocket")}
    write_folder(tmp_path / "f", {"a/coffee.png": small["coffee"], "b/rocket.png": small["rocket"]})
    (tmp_path / "f" / "a" / "coffee.txt").write_text("a cup\nfr.utf8=une tasse\n")
    got = fetch_items(open_source(str(tmp_path / "f"), labels_from_folders=True), ["a/coffee.png", "gone.png"])
    assert got["a/coffee.png"].path.endswith("coffee.png") and got["a/coffee.png"].caption.startswith("a cup")
    assert got["a/coffee.png"].label == "a" and "no longer in source" in got["gone.png"].skip_reason

    pq.write_table(pa.table({"key": ["k1", "k2", "k3"], "jpg": [png_bytes(small["coffee"]), None,
                                                              png_bytes(small["rocket"])],
                             "caption": ["c1", "c2", "c3"]}), tmp_path / "p.parquet")
    got = fetch_items(open_source(str(tmp_path / "p.parquet")), ["k3", "k2", "zz"])
    assert got["k3"].data[:4] == b"\x89PNG" and got["k3"].caption == "c3"
    assert got["k2"].skip_reason == "no image data in column 'jpg'" and "no longer" in got["zz"].skip_reason

    make_tar(tmp_path / "s.tar", [("s/0", {"png": png_bytes(small["coffee"]), "txt": b"first"}),
                                  ("s/1", {"png": png_bytes(small["rocket"]), "txt": b"second"})])
    got = fetch_items(open_source(str(tmp_path / "s.tar")), ["s/1"])
    assert list(got) == ["s/1"] and got["s/1"].caption == "second"


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def audit(tmp_path_factory, tile_sets):
    """A corpus with captions, an evaluation set with planted copies, hostile captions and a hostile file
    name, two datasets (one with a hostile name), indexed by the library and reported by the installed CLI."""
    base = tmp_path_factory.mktemp("htmlaudit")
    corpus, other = tile_sets
    corpus_dir = write_folder(base / "corpus", {f"{tid}.png": im for tid, im in corpus[:40]})
    for i, (tid, _) in enumerate(corpus[:40]):
        (corpus_dir / f"{tid}.txt").write_text(XSS_SCRIPT if i == 0 else f"corpus tile {tid}")
    files, ids = {}, []
    for i, (tid, im) in enumerate(corpus[:40:4]):
        kind = list(PLANTED)[i % len(PLANTED)]
        files[f"seen/{tid}-{kind}.png"] = PLANTED[kind](im)
    for tid, im in other[:10]:
        files[f"new/{tid}.png"] = im
    files["seen/<i>odd name.png"] = corpus[0][1]  # an exact copy of the corpus tile with the hostile caption
    eval_dir = write_folder(base / "eval", files)
    ids = sorted(files)
    (eval_dir / "seen" / "<i>odd name.txt").write_text(XSS_CAPTION + "\nfr.utf8=traduction\n")
    first_seen = sorted(f for f in files if f.startswith("seen/") and "odd" not in f)[0]
    (eval_dir / first_seen).with_suffix(".txt").write_text(XSS_CAPTION)
    lines = ["dataset,id,correct"] + [f"{ds},{i},{int(n % 3 != 0)}" for ds in ("val", XSS_NAME)
                                      for n, i in enumerate(ids)]
    (base / "preds.csv").write_text("\n".join(lines) + "\n")
    build_index([str(corpus_dir)], base / "index", IndexSettings(workers=0))
    exe = shutil.which("overlap-audit", path=os.path.dirname(sys.executable))
    r = subprocess.run([exe, "report", str(base / "index"), "--eval", f"val={eval_dir}", "--eval",
                        f"{XSS_NAME}={eval_dir}", "--predictions", str(base / "preds.csv"), "--out",
                        str(base / "rep"), "--gallery", "20", "--workers", "0", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "report.html" in r.stdout
    return base, len(ids)


def test_report_html_is_written_small_and_escaped(audit):
    base, n = audit
    page = (base / "rep" / REPORT_HTML).read_text(encoding="utf-8")
    # one script, the table sorter, admitted by its hash; every planted one is text
    assert page.count("<script") == 1 and f"<script>{SORT_SCRIPT}</script>" in page
    assert "<img src=x" not in page and "<i>odd" not in page
    assert "&lt;img src=x onerror=" in page and "&lt;i&gt;odd name.png" in page
    uris = re.findall(r'src="(data:image/webp;base64,[^"]+)"', page)
    assert len(uris) == 2 * 2 * 20  # two datasets, 20 pairs each, two images per pair
    for uri in uris[:6]:
        raw = base64.b64decode(uri.split(",", 1)[1])
        assert len(raw) < 6000 and max(Image.open(io.BytesIO(raw)).size) <= 112
    assert page.count(f"20 pair(s) shown at threshold {load_report(base / 'rep').datasets[0].threshold:.4f}; "
                      f"{n - 20} left out") == 2
    assert len(page) < 400_000


def test_the_reports_within_class_numbers_are_stratify_on_its_splits(audit):
    """The installed CLI's report: each set's stratified results equal stratify() on splits.parquet's columns."""
    from overlap_audit.stats.stratified import stratify

    base, n = audit
    rep = load_report(base / "rep")
    table = rep.splits_table()
    for d in rep.datasets:
        rows = [r for r in table.to_pylist() if r["dataset"] == d.name]
        assert len(rows) == n and {r["label"] for r in rows} == {"seen", "new"}
        direct = stratify([r["label"] for r in rows], [r["overlap"] for r in rows], [r["correct"] for r in rows],
                          alpha=rep.alpha, ci_level=rep.ci_level)
        assert d.stratified == direct
        assert rep.class_table(d.name).column("label").to_pylist() == [r.label for r in direct.table.rows]


def test_gallery_shows_deciding_pairs_first_in_the_page(audit, tmp_path):
    base, n = audit
    shutil.copytree(base / "rep", tmp_path / "rep")
    page = write_html_report(tmp_path / "rep", gallery=50, around=3).read_text(encoding="utf-8")
    assert page.count("all 21 pair(s) shown") == 2
    section = page.split('id="gallery-0"')[1].split("</section>")[0]
    deciding, rest = section.split("All other pairs")
    t = load_report(base / "rep").dataset("val").threshold
    sims_dec = [float(x) for x in re.findall(r'class="sim">([0-9.]+)<', deciding)]
    sims_rest = [float(x) for x in re.findall(r'class="sim">([0-9.]+)<', rest)]
    above = [s for s in sims_dec if s >= t]
    below = [s for s in sims_dec if s < t]
    assert above and below and sims_dec == above + below
    assert above == sorted(above, reverse=True) and below == sorted(below, reverse=True)
    assert sims_rest == sorted(sims_rest, reverse=True)
    assert len(above) == 3 and len(below) == 3 and len(sims_rest) == n - 6
    assert all(s >= max(above) or s <= min(below) for s in sims_rest)


def test_a_removed_corpus_source_is_said_per_pair(audit, tmp_path):
    base, _ = audit
    rep = tmp_path / "rep"
    shutil.copytree(base / "rep", rep)
    data = json.loads((rep / "report.json").read_text())
    moved = tmp_path / "index"
    shutil.copytree(base / "index", moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["sources"][0]["paths"] = [str(tmp_path / "gone")]
    (moved / "manifest.json").write_text(json.dumps(manifest))
    data["index"]["path"] = str(moved)
    (rep / "report.json").write_text(json.dumps(data))
    page = write_html_report(rep, gallery=5).read_text(encoding="utf-8")
    assert page.count("image not shown: source") == 2 * 5 and "is no longer readable" in page
    assert page.count('src="data:image/webp') == 2 * 5  # evaluation images still shown
    items = corpus_items(moved, ["nope"])
    assert "not in this index" in items["nope"].skip_reason


def test_gallery_shows_class_names_from_the_reports_classnames_file(audit, tmp_path):
    base, _ = audit
    rep = tmp_path / "rep"
    shutil.copytree(base / "rep", rep)
    names = tmp_path / "classnames.json"
    names.write_text(json.dumps({"seen": "seen <b>before</b>", "new": "brand new"}))
    data = json.loads((rep / "report.json").read_text())
    data["model"] = {"spec": "x", "weights_sha256": "0" * 64, "device": "cpu", "templates": {},
                     "classnames": {"val": str(names)}}
    (rep / "report.json").write_text(json.dumps(data))
    page = write_html_report(rep, gallery=40).read_text(encoding="utf-8")
    val = page.split('id="gallery-0"')[1].split("</section>")[0]
    assert "(class seen &lt;b&gt;before&lt;/b&gt;, label seen)" in val and "(class brand new, label new)" in val
    other = page.split('id="gallery-1"')[1].split("</section>")[0]  # no classnames file for it: its labels
    assert "(class seen)" in other and "brand new" not in other


# ---------------------------------------------------------------- real Chromium


def test_page_in_chromium(audit, browser):
    base, n = audit
    browser.open(base / "rep" / REPORT_HTML)
    assert browser.problems() == []
    assert browser.evaluate("document.title") == TITLE
    assert browser.evaluate("document.body.hasAttribute('data-pwned')") is False
    assert browser.evaluate("document.querySelectorAll('script').length") == 1  # the table sorter
    assert browser.evaluate("document.scripts[0].textContent") == SORT_SCRIPT
    assert browser.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    rows = browser.evaluate("Array.from(document.querySelectorAll('#datasets tbody tr'), r => r.cells[0].textContent)")
    assert rows == ["val", XSS_NAME]
    images = browser.evaluate("Array.from(document.images, i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) == 1 + 2 * 2 * 20  # the plot and every thumbnail
    assert all(c and w > 0 and h > 0 for c, w, h in images)
    text = browser.evaluate("document.body.innerText")
    assert XSS_CAPTION in text and "<i>odd name.png" in text and XSS_SCRIPT in text


def test_the_browser_check_would_catch_an_unescaped_caption(browser, tmp_path):
    """Control: the same payload written raw (no escaping, no CSP) does run, and the checks above see it."""
    page = tmp_path / "raw.html"
    page.write_text(f"<!DOCTYPE html><html><head><title>{TITLE}</title></head><body><p>{XSS_CAPTION}</p>"
                    "</body></html>", encoding="utf-8")
    browser.open(page)
    assert browser.evaluate("document.title") == "pwned"
    assert browser.evaluate("document.body.hasAttribute('data-pwned')") is True
    page.write_text("<!DOCTYPE html><html><head><title>t</title></head><body><script>console.error('boom')"
                    "</script></body></html>", encoding="utf-8")
    browser.open(page)
    assert any("boom" in p for p in browser.problems())


def test_plot_draws_dataset_names_as_text_not_mathtext():
    from types import SimpleNamespace

    from overlap_audit.report.html import figure17_png

    stats = SimpleNamespace(delta=0.02, overlap_rate=0.1, ci_delta=(0.0, 0.04))
    report = SimpleNamespace(ci_level=0.995, correction="bonferroni", datasets=[
        SimpleNamespace(name="ev$\\bad$", stats=stats, significant=False),
        SimpleNamespace(name="$x$ & <b>", stats=stats, significant=True)])
    png = figure17_png(report)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_plot_labels_sets_at_one_point_once():
    from types import SimpleNamespace

    from overlap_audit.report.html import figure17_labels

    same = SimpleNamespace(delta=0.02, overlap_rate=0.1, ci_delta=None)
    other = SimpleNamespace(delta=-0.01, overlap_rate=0.3, ci_delta=None)
    labels = figure17_labels([SimpleNamespace(name="a", stats=same, significant=False),
                              SimpleNamespace(name="b", stats=same, significant=True),
                              SimpleNamespace(name="c", stats=other, significant=False)])
    assert labels == {(10.0, 2.0): "a, b *", (30.0, -1.0): "c"}


def test_gallery_groups_pairs_by_the_splits_float32_rule():
    import numpy as np

    from overlap_audit.report.html import gallery_order
    from overlap_audit.decide.split import split
    from overlap_audit.values import Embeddings, Neighbors

    t = 0.9952  # not a float32 value
    at = float(np.float32(t))  # a similarity exactly at the threshold, as the split sees it
    sims = [0.999, at, 0.99]
    rows, deciding = gallery_order(sims, t, limit=10, around=1)
    emb = Embeddings(ids=["a", "b", "c"], vectors=np.zeros((3, 2), np.float32),
                     low_information=np.zeros(3, bool))
    nb = Neighbors(query_ids=["a", "b", "c"], ids=np.array([["x"], ["y"], ["z"]]),
                   similarities=np.array([[s] for s in sims], np.float32))
    overlap = split("d", emb, nb, t).overlap
    assert bool(overlap[1]) and rows[:2] == [1, 2] and deciding == 2  # b is the lowest above, c the highest below


def test_model_line_says_which_set_had_how_many_templates():
    from overlap_audit.report import model_line

    model = {"spec": "m", "weights_sha256": "0" * 64, "device": "cpu",
             "templates": {"cifar10": {"count": 18}, "tuxpaint": {"count": 1}}}
    assert "prompt templates per class: cifar10 18, tuxpaint 1;" in model_line(model)
    model["templates"]["tuxpaint"]["count"] = 18
    assert "with 18 prompt template(s) per class;" in model_line(model)
