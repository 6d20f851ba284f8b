"""The comparison within classes in the report: computed per set as stats.stratified computes it, carried
through report.json, shown in report.md (table, top classes, the headline sentence that changes when and only
when the pooled and the within-class comparisons disagree) and report.html (a per-class table a click sorts)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from overlap_audit.api import _dataset_reports
from overlap_audit.settings import StatsSettings
from overlap_audit.errors import ReportError
from overlap_audit.report import Report, format_markdown, interpretation, load_report
from overlap_audit.report.html import SORT_SCRIPT, render_html, script_csp
from overlap_audit.report.value import CLASS_TABLE_COLUMNS, REPORT_FORMAT
from overlap_audit.stats.stratified import stratify
from overlap_audit.values import DetectorInfo, Neighbors, Split

ACC = np.linspace(0.3, 0.95, 10)  # class j's accuracy


def generated(seed: int, *, confound: bool, memorise: float = 0.0, n: int = 4000):
    """Labels, Overlap and correctness of a set of 10 classes: with ``confound`` Overlap sits in the three
    easiest classes (and barely elsewhere) and is exactly as accurate as Clean within each class; without it
    Overlap is spread evenly, and ``memorise`` adds to an Overlap example's chance of being right."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 10, n)
    rate = np.where(cls >= 7, 0.4, 0.02) if confound else np.full(n, 0.1)
    overlap = rng.random(n) < rate
    correct = rng.random(n) < ACC[cls] + memorise * overlap
    return [f"class{j}" for j in cls], overlap, correct


def split(name: str, labels, overlap) -> Split:
    n = len(labels)
    neighbors = Neighbors(query_ids=[f"{name}-{i}" for i in range(n)], ids=np.full((n, 1), "c0", object),
                          similarities=np.where(overlap, 0.95, 0.5).astype(np.float32)[:, None])
    low = np.zeros(n, bool)
    low[np.nonzero(~overlap)[0][:7]] = True  # a few Clean examples flagged low-information
    return Split(dataset=name, threshold=0.9, ids=[f"{name}-{i}" for i in range(n)], labels=list(labels),
                 neighbors=neighbors, overlap=np.asarray(overlap, bool), low_information=low)


def make(sets: dict[str, tuple], st: StatsSettings = StatsSettings()) -> tuple[Report, dict[str, Split], dict]:
    splits = {name: split(name, labels, overlap) for name, (labels, overlap, _) in sets.items()}
    correct = {name: np.asarray(c, bool) for name, (_, _, c) in sets.items()}
    names = list(sets)
    datasets = _dataset_reports(names, splits, correct, {n: [] for n in names}, {n: 0.9 for n in names}, st,
                                {n: (None, None) for n in names})
    det = DetectorInfo("phash", "phash", "1", 64, "hamming", 0.875)
    report = Report(det, {"path": "idx", "n_indexed": 100, "n_low_information": 17, "n_skipped": 2}, datasets, 5,
                    st.alpha, st.ci_level, st.correction, "p.csv", "0.2.0", "now")
    return report, splits, correct


@pytest.fixture(scope="module")
def confounded_report():
    return make({"confounded": generated(0, confound=True), "memorised": generated(1, confound=False, memorise=0.12),
                 "plain": generated(2, confound=False), "unlabelled": ([None] * 300, *generated(3, confound=False,
                                                                                              n=300)[1:])})


def test_the_reports_numbers_are_stratify_on_the_split(confounded_report):
    report, splits, correct = confounded_report
    for name in ("confounded", "memorised", "plain"):
        sp = splits[name]
        assert report.dataset(name).stratified == stratify(sp.labels, sp.overlap, correct[name], alpha=report.alpha,
                                                           ci_level=report.ci_level)
    assert report.dataset("unlabelled").stratified is None and report.dataset("unlabelled").disagreement is None


def test_a_pure_class_confound_changes_the_headline_and_only_it(confounded_report):
    report, _, _ = confounded_report
    conf = report.dataset("confounded")
    assert conf.significant and conf.disagreement.disagrees and not conf.disagreement.stratified_significant
    without = replace(report, datasets=[replace(d, stratified=None, disagreement=None) for d in report.datasets])
    lines, before = interpretation(report), interpretation(without)
    assert len(lines) == len(before) == 4
    assert lines[0] != before[0]
    assert lines[0].startswith("- confounded: Overlap is more accurate than Clean when pooled (+")
    assert "pooled gap reflects class difficulty" in lines[0] and "Within classes, overlap changes All by" in lines[0]
    assert "inflates the reported accuracy" in before[0]  # what the pooled reading alone would have said
    # memorisation without a confound (both significant) and no effect at all: the headline is the pooled one
    assert report.dataset("memorised").significant and report.dataset("memorised").disagreement.stratified_significant
    assert not report.dataset("plain").significant
    assert lines[1:] == before[1:]
    assert not any(d.disagreement.disagrees for d in report.datasets[1:3])


def test_the_confound_alone_gives_the_sentence_and_no_confound_none():
    """The same set twice, once with Overlap moved into the easy classes: only that one reads as class difficulty."""
    labels, overlap, correct = generated(5, confound=True)
    rng = np.random.default_rng(6)
    even = rng.permutation(overlap)  # the same number of Overlap examples, spread over every class
    report, _, _ = make({"a": (labels, overlap, correct), "b": (labels, even, correct)})
    a, b = interpretation(report)
    assert "class difficulty" in a and "class difficulty" not in b and "within classes" not in b


def test_report_md_shows_the_within_class_table_top_classes_and_what_was_not_judged(confounded_report):
    report, _, _ = confounded_report
    md = format_markdown(report)
    c = report.dataset("confounded").stratified.comparison
    row = next(line for line in md.splitlines() if line.startswith("| confounded | 10 / 0 |"))
    rd = c.risk_difference
    assert f"{100 * rd.estimate:+.1f} [{100 * rd.ci[0]:+.1f}, {100 * rd.ci[1]:+.1f}]" in row
    assert f"({c.method})" in row and f"{100 * c.inflation:+.1f}" in row
    mix = report.dataset("confounded").stratified.mix
    assert f"{100 * mix.acc_overlap_expected:.1f} / {100 * mix.acc_overlap:.1f}" in row
    assert "| unlabelled | no labels: not compared |" in md
    top = md.split("### confounded: the 5 of 10 classes with most Overlap examples")[1].split("###")[0]
    shown = [line.split(" | ")[0][2:] for line in top.splitlines() if line.startswith("| class") and not line.startswith("| class |")]
    assert len(shown) == 5 and set(shown[:3]) == {"class7", "class8", "class9"}
    assert "share of Overlap differs from their share of the set beyond chance: class" in top
    assert "with 100 corpus items (17 more set aside as low-information (never matched); 2 skipped (unreadable))" in md
    assert "| confounded | 0.9000 | 7 (0.2%) | 0 |" in md


def test_no_labels_anywhere_is_said_and_has_no_class_table(confounded_report):
    report, _, _ = confounded_report
    only = replace(report, datasets=[report.dataset("unlabelled")])
    md = format_markdown(only)
    assert "No example of any set has a label: nothing is compared within classes." in md
    with pytest.raises(ReportError, match="none of its examples has a label"):
        only.class_table("unlabelled")
    page = render_html(only, [])
    assert "<script" not in page and "script-src" not in page


def test_report_json_round_trip_and_class_table(confounded_report, tmp_path):
    from overlap_audit.atomic import atomic_write_json

    report, _, _ = confounded_report
    atomic_write_json(tmp_path / "report.json", report.to_dict())
    text = (tmp_path / "report.json").read_text()
    assert "NaN" not in text and json.loads(text)["format"] == REPORT_FORMAT == 3
    data = json.loads(text)["datasets"][0]
    assert data["stratified"]["comparison"]["method"] in ("exact", "cmh")
    assert data["pooled_vs_stratified"]["sentence"].startswith("confounded: ")
    back = load_report(tmp_path)
    assert back == report
    table = back.class_table("confounded")
    rows = report.dataset("confounded").stratified.table.rows
    assert table.column_names == list(CLASS_TABLE_COLUMNS) and table.num_rows == 10
    assert table.column("label").to_pylist() == [r.label for r in rows]
    assert table.column("gap").to_pylist() == [r.gap for r in rows]
    assert sum(table.column("n").to_pylist()) == 4000
    pd = pytest.importorskip("pandas")
    assert isinstance(table.to_pandas(), pd.DataFrame)


def test_the_page_admits_only_the_sort_script_by_its_hash(confounded_report):
    report, _, _ = confounded_report
    page = render_html(report, [])
    assert page.count("<script") == 1 and f"<script>{SORT_SCRIPT}</script>" in page
    import base64
    import hashlib

    digest = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
    csp = page.split('http-equiv="Content-Security-Policy" content="')[1].split('"')[0]
    assert csp.startswith("default-src &#x27;none&#x27;;")
    assert csp.endswith(f"; script-src &#x27;sha256-{digest}&#x27;")  # the hash only: no unsafe-inline for scripts
    # printf x | openssl dgst -sha256 -binary | base64
    assert script_csp("x").endswith("script-src 'sha256-LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE='")
    assert page.count('class="sortable class-table"') == 3  # the three sets with labels


# ---------------------------------------------------------------- real Chromium


def test_a_click_on_a_heading_sorts_the_class_table(confounded_report, browser, tmp_path):
    report, _, _ = confounded_report
    page = tmp_path / "report.html"
    page.write_text(render_html(report, []), encoding="utf-8")
    browser.open(page)
    assert browser.problems() == []  # the hash admitted the script: a refused one is a console error

    def column(key: str) -> list[str]:
        return browser.evaluate(
            f"(() => {{ const t = document.getElementById('class-table-0'); "
            f"const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.dataset.column === '{key}'); "
            f"return Array.from(t.tBodies[0].rows, r => r.cells[i].getAttribute('data-v')); }})()")

    def click(key: str) -> None:
        browser.evaluate(f"document.querySelector('#class-table-0 th[data-column=\"{key}\"]').click()")

    rows = report.dataset("confounded").stratified.table.rows
    assert column("label") == [r.label for r in rows]  # as written: most Overlap first
    click("gap")
    gaps = [float(v) for v in column("gap")]
    assert gaps == sorted(r.gap for r in rows)
    assert browser.evaluate("document.querySelector('#class-table-0 th[data-column=\"gap\"]')"
                            ".getAttribute('aria-sort')") == "ascending"
    click("gap")
    assert [float(v) for v in column("gap")] == sorted((r.gap for r in rows), reverse=True)
    click("label")
    assert column("label") == sorted(r.label for r in rows)
    click("n_overlap")
    assert [int(float(v)) for v in column("n_overlap")] == sorted(r.n_overlap for r in rows)
    assert column("label")[-3:] != column("label")[:3]
    assert browser.problems() == []


def test_control_a_script_not_named_by_the_hash_is_refused(confounded_report, browser, tmp_path):
    """Control: the same page whose CSP names another script's hash does not sort, and the check sees it."""
    report, _, _ = confounded_report
    page = render_html(report, []).replace(SORT_SCRIPT.split("\n")[1], SORT_SCRIPT.split("\n")[1] + " ", 1)
    (tmp_path / "tampered.html").write_text(page, encoding="utf-8")
    browser.open(tmp_path / "tampered.html")
    assert any("script" in p.lower() for p in browser.problems())
    browser.evaluate("document.querySelector('#class-table-0 th[data-column=\"gap\"]').click()")
    assert browser.evaluate("document.querySelector('#class-table-0 th[data-column=\"gap\"]')"
                            ".hasAttribute('aria-sort')") is False
