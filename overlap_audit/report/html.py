"""report.html: one self-contained page to check an audit by eye.

The page holds the per-dataset table, a Figure-17-style plot (PNG, drawn with matplotlib), per dataset
its per-class table (sortable by a click on a heading) and a gallery of matched pairs (evaluation image
beside its nearest corpus image) with the pairs just above and just below the threshold first. Thumbnails
are small WebP data: URIs; the page loads nothing else, and its one script is the table sorter, admitted
by its sha256 hash in the Content-Security-Policy (a page without a per-class table has none). Captions,
ids, labels, paths and dataset names come from the web: every one passes through ``esc`` (the one place
text enters the page), and the CSP (data: images, inline style, that one script) is defence in depth.

The images come in as ``RawItem``s already fetched (``evidence.build_galleries`` reads them from the
evaluation sources and the index); this module draws them. The page and the review sheet share the
thumbnails, galleries and the one escaping function, so all HTML is written in one place.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from dataclasses import dataclass

import numpy as np

from ..imaging import ImageRejected, decode_image
from ..limits import DEFAULT_MAX_PIXELS
from ..values import RawItem
from .format import (DASH, EDGE_TEXT, ci_level_text, corpus_set_aside, dataset_cells, edge_cells, edge_head,
                     edge_sentence, interval, model_line, percent, pvalue, recall_line, signed_percent,
                     similarity_text, threshold_origin_parts, verification_line)
from .value import DatasetReport, Report

DEFAULT_AROUND = 8  # pairs just above and just below the threshold shown first
THUMB_SIZE = 112
THUMB_QUALITY = 60
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}td.name{text-align:left}tr.sig td{background:#fff1ee}
.pairs{display:flex;flex-wrap:wrap;gap:.6em}
.pair{border:2px solid #bbb;border-radius:4px;padding:.3em;margin:0;width:244px;font-size:12px}
.pair.overlap{border-color:#c0392b}.pair.lowinfo{border-style:dashed}
.pair .imgs{display:flex;gap:4px}.pair img,.pair .missing{width:116px;height:116px;object-fit:contain;background:#eee}
.pair .missing{display:flex;align-items:center;justify-content:center;text-align:center;font-size:10px;color:#900;overflow:hidden}
.pair .t{overflow-wrap:anywhere}.sim{font-weight:bold}.note{color:#555}h3{margin-bottom:.3em}
table.sortable th{cursor:pointer;user-select:none}table.sortable th[aria-sort=ascending]::after{content:" ▲"}
table.sortable th[aria-sort=descending]::after{content:" ▼"}
"""

# Sorts a table.sortable by the clicked column: numbers by data-v, text by it too; empty cells last either way.
# The page's CSP admits exactly this text by its sha256 (``script_csp``), so no other script can run.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var up = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var numeric = th.getAttribute("data-type") === "number";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var d = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        return up ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def script_csp(script: str, csp: str = CSP) -> str:
    """``csp`` that also runs exactly ``script`` (inline), named by its sha256 hash."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return f"{csp}; script-src 'sha256-{digest}'"


def esc(value) -> str:
    """Untrusted text as HTML text or attribute value (quotes escaped too); None is empty."""
    return "" if value is None else html.escape(str(value), quote=True)


BOX_COLOUR = (230, 0, 160)  # the content box drawn on a thumbnail


def thumbnail(item: RawItem | None, *, size: int = THUMB_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS,
              box: dict | None = None) -> tuple[str | None, str | None]:
    """(a small WebP data: URI, None) for an item's image, or (None, why it cannot be shown). A trimmed
    content ``box`` (as in splits.parquet: left, top, right, bottom in an image of width x height) is drawn
    on it."""
    if item is None:
        return None, "not found"
    if item.skip_reason:
        return None, item.skip_reason
    try:
        image = decode_image(item.data, item.path, max_pixels=max_pixels, min_size=size)
    except ImageRejected as exc:
        return None, str(exc)
    image.thumbnail((size, size))
    if box and box.get("trimmed") and box.get("width") and box.get("height"):
        from PIL import ImageDraw

        sx, sy = image.width / box["width"], image.height / box["height"]
        outline = (box["left"] * sx, box["top"] * sy, box["right"] * sx - 1, box["bottom"] * sy - 1)
        ImageDraw.Draw(image).rectangle(outline, outline=BOX_COLOUR, width=1)
    buf = io.BytesIO()
    image.save(buf, format="WEBP", quality=THUMB_QUALITY, method=4)
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), None


def gallery_order(similarities, threshold: float, limit: int, around: int = DEFAULT_AROUND) -> tuple[list[int], int]:
    """Rows to show and how many of them decide the threshold.

    First the ``around`` pairs just above the threshold and the ``around`` just below it (those decide
    it), then every other pair; each part by similarity, highest first. Rows without a neighbour (NaN)
    are left out. At most ``limit`` rows. Returns (rows, number of deciding rows at the front).
    """
    sims = np.asarray(similarities, dtype=np.float64)
    rows = np.nonzero(~np.isnan(sims))[0]
    by_sim = rows[np.lexsort((rows, -sims[rows]))]  # highest first; ties by row
    # the split's own rule: similarities are float32, and so is the threshold they are compared with
    is_above = sims.astype(np.float32) >= np.float32(threshold)
    above = [int(r) for r in by_sim if is_above[r]]
    below = [int(r) for r in by_sim if not is_above[r]]
    deciding = above[-around:] if around else []
    deciding += below[:around]
    chosen = set(deciding)
    rest = [int(r) for r in by_sim if int(r) not in chosen]
    order = (deciding + rest)[:max(0, limit)]
    return order, min(len(deciding), len(order))


@dataclass(frozen=True)
class GalleryPair:
    """One evaluation example beside its nearest corpus item, ready to draw."""

    eval_id: str
    eval_label: str | None
    eval_caption: str | None
    corpus_key: str
    corpus_caption: str | None
    similarity: float
    overlap: bool
    low_information: bool
    eval_thumb: str | None
    eval_problem: str | None
    corpus_thumb: str | None
    corpus_problem: str | None
    deciding: bool
    number: int | None = None  # the pair's number in a review sheet
    view: str | None = None  # the query view that matched (a trimming detector)
    eval_box: dict | None = None  # content boxes as in splits.parquet
    corpus_box: dict | None = None
    eval_class_name: str | None = None  # the label's readable name, from the report's --classnames file
    verify_score: float | None = None  # verification (report --verify); None where the pair was not verified
    verified: bool | None = None  # the verdict: True same picture, False evidence against, None nothing to say


@dataclass(frozen=True)
class Gallery:
    """One dataset's gallery: the pairs shown and what was left out."""

    dataset: str
    threshold: float
    pairs: list[GalleryPair]
    n_left_out: int
    n_no_neighbour: int
    note: str | None = None


def figure17_labels(datasets) -> dict[tuple[float, float], str]:
    """One label per plotted point (overlap %, All − Clean %, to 0.1): datasets at the same point share it,
    their names joined, instead of printing over each other; a significant one is marked " *"."""
    labels: dict[tuple[float, float], list[str]] = {}
    for d in datasets:
        point = (round(100 * d.stats.overlap_rate, 1), round(100 * d.stats.delta, 1))
        labels.setdefault(point, []).append(d.name + (" *" if d.significant else ""))
    return {point: ", ".join(names) for point, names in labels.items()}


def figure17_png(report: Report) -> bytes | None:
    """The Figure-17-style plot as PNG bytes: overlap % against All − Clean with its interval;
    significant datasets filled. None when no dataset has both numbers."""
    from matplotlib.figure import Figure

    points = [d for d in report.datasets if d.stats.delta is not None and d.stats.overlap_rate is not None]
    if not points:
        return None
    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax = fig.add_subplot()
    for d in points:
        s = d.stats
        x, y = 100 * s.overlap_rate, 100 * s.delta
        lo, hi = (100 * s.ci_delta[0], 100 * s.ci_delta[1]) if s.ci_delta else (y, y)
        color = "#c0392b" if d.significant else "#2c3e50"
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", color=color, capsize=3,
                    markerfacecolor=color if d.significant else "white")
    for (x, y), text in figure17_labels(points).items():
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 5),
                    fontsize=8, parse_math=False)  # a name is text: "$x$" must not be read as mathtext
    ax.axhline(0, color="#999", linewidth=0.8)
    ax.set_xlim(left=0)
    ax.set_xlabel("Detected data overlap (%)")
    ax.set_ylabel("All − Clean accuracy (%)")
    ax.set_title(f"{ci_level_text(report.ci_level)} intervals; filled = {report.correction}-significant",
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_TABLE_COLUMNS = ("threshold", "n", "overlap_rate", "acc_all", "acc_clean", "acc_overlap", "delta", "p_value",
                  "p_value_adjusted", "significant", "ci_overlap", "ci_clean", "ci_delta")


def _table(report: Report) -> str:
    level = ci_level_text(report.ci_level)
    head = ["Dataset", "threshold", "n", "Overlap %", "All", "Clean", "Overlap", "All − Clean", "p-value",
            "p adjusted", "significant", f"{level} CI Overlap", f"{level} CI Clean", f"{level} CI All − Clean"]
    out = ['<table id="datasets"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for d in report.datasets:
        cells = dataset_cells(d)
        out.append(f'<tr class="dataset-row{" sig" if d.significant else ""}"><td class="name">{esc(d.name)}</td>'
                   + "".join(f"<td>{esc(cells[k])}</td>" for k in _TABLE_COLUMNS) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


# the per-class table: (column, heading, numeric, cell text)
_CLASS_COLUMNS = (
    ("label", "class", False, lambda r: r.label),
    ("n", "n", True, lambda r: str(r.n)),
    ("n_overlap", "Overlap", True, lambda r: str(r.n_overlap)),
    ("n_clean", "Clean", True, lambda r: str(r.n_clean)),
    ("acc_overlap", "acc. Overlap", True, lambda r: percent(r.acc_overlap)),
    ("acc_clean", "acc. Clean", True, lambda r: percent(r.acc_clean)),
    ("gap", "Overlap − Clean", True, lambda r: signed_percent(r.gap)),
    ("inflation", "part of stratified All − Clean", True, lambda r: signed_percent(r.inflation)),
    ("mix_residual", "class mix residual", True,
     lambda r: DASH if r.mix_residual is None else f"{r.mix_residual:+.1f}"),
)


def _sort_value(value) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, (int, float)) else str(value)


def _within_text(d: DatasetReport, level: str) -> str:
    c, mix = d.stratified.comparison, d.stratified.mix
    rd = c.risk_difference
    parts = [f"{c.n_classes_informative} classes informative, {c.n_classes_dropped} dropped (no Overlap or no Clean "
             f"example; {c.n_overlap_dropped} Overlap examples in them)"]
    if rd is not None:
        parts.append(f"Overlap − Clean within classes {signed_percent(rd.estimate)} points "
                     f"{interval(rd.ci, signed=True)} ({level}), p = {pvalue(c.p_value)} ({c.method})")
    if c.inflation is not None:
        parts.append(f"stratified All − Clean {signed_percent(c.inflation)} {interval(c.ci_inflation, signed=True)}")
    if mix.method:
        parts.append(f"class mix p = {pvalue(mix.p_value)} ({mix.method})")
    if mix.acc_overlap_expected is not None:
        parts.append(f"Overlap accuracy {percent(mix.acc_overlap)}% observed, {percent(mix.acc_overlap_expected)}% "
                     "expected from Clean's per-class accuracies")
    return "Within classes: " + "; ".join(parts) + "."


def _class_section(i: int, d: DatasetReport, level: str) -> str:
    """One set's per-class table, sortable by a click on a column heading."""
    out = [f'<section class="classes" id="classes-{i}"><h2>{esc(d.name)}: per class</h2>']
    if d.stratified is None:
        out.append('<p class="note">No example of this set has a label: nothing is compared within classes.</p>')
        return "\n".join(out + ["</section>"])
    out.append(f"<p>{esc(_within_text(d, level))}</p>")
    if d.disagreement is not None and d.disagreement.disagrees:
        out.append(f'<p class="disagrees"><b>{esc(d.disagreement.sentence)}</b></p>')
    out.append(f'<p class="note">Click a column heading to sort ({len(d.stratified.table.rows)} classes, most Overlap '
               'examples first).</p>')
    out.append(f'<table class="sortable class-table" id="class-table-{i}"><thead><tr>'
               + "".join(f'<th data-type="{"number" if num else "text"}" data-column="{key}">{esc(head)}</th>'
                         for key, head, num, _ in _CLASS_COLUMNS) + "</tr></thead><tbody>")
    for r in d.stratified.table.rows:
        out.append("<tr>" + "".join(
            f'<td{"" if num else " class=name"} data-v="{esc(_sort_value(getattr(r, key)))}">{esc(text(r))}</td>'
            for key, _, num, text in _CLASS_COLUMNS) + "</tr>")
    out.append("</tbody></table></section>")
    return "\n".join(out)


def _edge_section(report: Report) -> str:
    """The Overlap pairs at the detector's size limit or nearly uniform, and the statistics without them."""
    edged = [d for d in report.datasets if d.edge is not None]
    if not edged:
        return ""
    out = ['<section class="edge" id="edge-cases"><h2>Overlap at the detector\'s limits</h2>',
           f"<p>{esc(EDGE_TEXT)}</p>",
           '<table id="edge-table"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in edge_head(report))
           + "</tr></thead><tbody>"]
    for d in edged:
        cells = edge_cells(d)
        out.append(f'<tr><td class="name">{esc(cells[0])}</td>' + "".join(f"<td>{esc(c)}</td>" for c in cells[1:])
                   + "</tr>")
    out.append("</tbody></table>")
    out += [f'<p class="disagrees"><b>{esc(t)}</b></p>' for t in (edge_sentence(d) for d in edged) if t]
    for d in edged:
        if d.edge.ids:
            out.append(f'<p class="note">{esc(d.name)}: {esc(", ".join(d.edge.ids[:50]))}'
                       f'{esc(f" … and {len(d.edge.ids) - 50} more (all in report.json)") if len(d.edge.ids) > 50 else ""}</p>')
    out.append("</section>")
    return "\n".join(out)


def _image(uri: str | None, problem: str | None, alt: str) -> str:
    if uri:
        return f'<img src="{esc(uri)}" alt="{esc(alt)}">'
    return f'<div class="missing" title="{esc(problem)}">image not shown: {esc(problem)}</div>'


def _pair(p: GalleryPair) -> str:
    kind = "low-information (never Overlap)" if p.low_information else ("Overlap" if p.overlap else "Clean")
    classes = "pair" + (" overlap" if p.overlap else " clean") + (" lowinfo" if p.low_information else "")
    lines = [
        f'<figure class="{classes}"><div class="imgs">',
        _image(p.eval_thumb, p.eval_problem, f"evaluation image {p.eval_id}"),
        _image(p.corpus_thumb, p.corpus_problem, f"corpus image {p.corpus_key}"),
        "</div><figcaption>",
        f'<div>{f"<b>#{p.number}</b> " if p.number is not None else ""}'
        f'<span class="sim">{similarity_text(p.similarity)}</span> {esc(kind)}</div>',
        f'<div class="t">eval: <code>{esc(p.eval_id)}</code>'
        + (f" (class {esc(p.eval_class_name)}, label {esc(p.eval_label)})" if p.eval_class_name
           else f" (class {esc(p.eval_label)})" if p.eval_label else "") + "</div>",
    ]
    if p.eval_caption:
        lines.append(f'<div class="t caption">“{esc(p.eval_caption)}”</div>')
    lines.append(f'<div class="t">corpus: <code>{esc(p.corpus_key)}</code></div>')
    if p.corpus_caption:
        lines.append(f'<div class="t caption">“{esc(p.corpus_caption)}”</div>')
    if p.eval_box or p.corpus_box:
        lines.append(f'<div class="t box">content box: eval {esc(box_text(p.eval_box))}; corpus '
                     f'{esc(box_text(p.corpus_box))}' + (f"; matched on the {esc(p.view)} view" if p.view else "")
                     + "</div>")
    if p.verify_score is not None:
        verdict = ("nothing to say either way (the threshold decides)" if p.verified is None
                   else "verified (same picture)" if p.verified else "rejected (a different picture)")
        lines.append(f'<div class="t verify">verification: {p.verify_score:.3f}, {verdict}</div>')
    lines.append("</figcaption></figure>")
    return "\n".join(lines)


def box_text(box: dict | None) -> str:
    """A content box as a reader checks it: trimmed to W×H of the image's W×H (share of its area), or whole."""
    if not box:
        return "not recorded"
    if not box.get("trimmed"):
        return f"whole ({box['width']}×{box['height']})"
    w, h = box["right"] - box["left"], box["bottom"] - box["top"]
    share = w * h / max(1, box["width"] * box["height"])
    return f"trimmed to {w}×{h} of {box['width']}×{box['height']} ({percent(share)}% of its area)"


def _gallery(i: int, g: Gallery) -> str:
    out = [f'<section class="gallery" id="gallery-{i}"><h2>{esc(g.dataset)}: matched pairs</h2>']
    shown = len(g.pairs)
    at = f"at threshold {similarity_text(g.threshold)}"
    text = (f"{shown} pair(s) shown {at}; {g.n_left_out} left out (raise --gallery to see more)" if g.n_left_out
            else f"all {shown} pair(s) shown {at}")
    if g.n_no_neighbour:
        text += f"; {g.n_no_neighbour} example(s) had no neighbour"
    out.append(f'<p class="note">{esc(text)}.</p>')
    if g.note:
        out.append(f'<p class="note">Images missing: {esc(g.note)}.</p>')
    deciding = [p for p in g.pairs if p.deciding]
    rest = [p for p in g.pairs if not p.deciding]
    if deciding:
        out.append("<h3>Just above and just below the threshold (these decide it)</h3>")
        out.append('<div class="pairs deciding">' + "\n".join(_pair(p) for p in deciding) + "</div>")
    if rest:
        out.append("<h3>All other pairs, most similar first</h3>")
        out.append('<div class="pairs">' + "\n".join(_pair(p) for p in rest) + "</div>")
    out.append("</section>")
    return "\n".join(out)


def render_html(report: Report, galleries: list[Gallery], title: str = "Data overlap report") -> str:
    """The whole page as one string."""
    det = report.detector
    level = ci_level_text(report.ci_level)
    classes = [_class_section(i, d, level) for i, d in enumerate(report.datasets)]
    # the script only where there is a table to sort: a page without one runs none
    sortable = any(d.stratified is not None for d in report.datasets)
    png = figure17_png(report)
    plot = (f'<img id="figure17" alt="overlap against All − Clean" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">' if png else
            '<p class="note">No dataset has both Overlap and Clean examples: nothing to plot.</p>')
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(script_csp(SORT_SCRIPT) if sortable else CSP)}">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Detector <code>{esc(det.spec)}</code> (version {esc(det.version)}, {esc(det.dim)}-d, {esc(det.metric)}); "
        f"index <code>{esc(report.index.get('path'))}</code> with {esc(report.index.get('n_indexed'))} corpus items"
        f"{esc(corpus_set_aside(report.index))}; "
        f"k = {esc(report.k)}. Search: {esc(report.index.get('search', 'exact'))}; "
        f"{esc(recall_line(report.index.get('recall', {})))}.</p>",
        (f"<p>{esc(verification_line(report.verify))}</p>" if report.verify is not None else ""),
        "<p>Thresholds: " + "; ".join(f"{esc(n)} {esc(t)}" for n, t in threshold_origin_parts(report)) + ".</p>",
        f"<p>p-value: one-sided binomial test (Overlap accuracy greater than Clean); significance after "
        f"{esc(report.correction)} correction at alpha = {esc(f'{report.alpha:g}')}. Intervals: Clopper–Pearson at "
        f"{esc(ci_level_text(report.ci_level))}. Accuracies in %.</p>",
        (f"<p>{esc(model_line(report.model))}</p>" if report.model else
         f"<p>Predictions read from <code>{esc(report.predictions)}</code>.</p>"),
        _table(report),
        plot,
        _edge_section(report),
        *classes,
        *(_gallery(i, g) for i, g in enumerate(galleries)),
        f'<p class="note">overlap-audit {esc(report.package_version)}, {esc(report.created)}.</p>',
        *([f"<script>{SORT_SCRIPT}</script>"] if sortable else []),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def render_review_html(galleries: list[Gallery], around: float, csv_name: str) -> str:
    """The review sheet of ``overlap-audit pairs``: numbered pairs nearest ``around``, per dataset."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
        f"<title>Pairs to review</title><style>{_STYLE}</style></head><body>",
        "<h1>Pairs to review</h1>",
        f"<p>The pairs nearest similarity {esc(similarity_text(around))}, most similar first; red border: Overlap by the "
        f"report's decision at that threshold (the threshold and, where on, verification). "
        f"For each pair, write 1 (the same image) or 0 (not) in the <code>is_duplicate</code> column of "
        f"<code>{esc(csv_name)}</code> on the line with its number, then run <code>overlap-audit threshold "
        f"{esc(csv_name)}</code>. Leave a pair empty to skip it.</p>",
    ]
    for i, g in enumerate(galleries):
        parts.append(f'<section class="gallery" id="gallery-{i}"><h2>{esc(g.dataset)}</h2>')
        parts.append('<div class="pairs">' + "\n".join(_pair(p) for p in g.pairs) + "</div></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
