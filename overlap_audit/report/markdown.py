"""report.md: the Figure-17 table, the numbers beyond the paper, and a reading of each result."""

from __future__ import annotations

from .format import (DASH, EDGE_TEXT, ci_level_text, corpus_set_aside, dataset_cells, edge_cells, edge_head,
                     edge_sentence, interval, model_line, percent, pvalue, recall_line, signed_percent,
                     similarity_text, threshold_origin_parts, verification_line, yes_no)
from ..inert import markdown
from .value import DatasetReport, Report

TOP_CLASSES = 5  # classes per set in report.md (all of them: report.json, report.html, Report.class_table)


def _cell(text: str) -> str:
    """Untrusted text (a dataset name, an id) for Markdown, a table cell included: markup and control
    characters escaped, so a name can neither split a row nor add links, HTML or terminal escapes."""
    return markdown(text)


_TABLE_COLUMNS = ("n", "overlap_rate", "acc_all", "acc_clean", "acc_overlap", "delta", "p_value", "significant",
                  "ci_overlap", "ci_clean", "ci_delta")


def format_table(report: Report) -> str:
    """The Figure-17 table as Markdown (accuracies and intervals in %)."""
    level = ci_level_text(report.ci_level)
    head = ("| Dataset | n | Overlap % | All | Clean | Overlap | All − Clean | p-value | sig. "
            f"| {level} CI Overlap | {level} CI Clean | {level} CI All − Clean |")
    rows = [head, "|" + "---|" * 12]
    for d in report.datasets:
        c = dataset_cells(d)
        rows.append(f"| {_cell(d.name)} | " + " | ".join(c[k] for k in _TABLE_COLUMNS) + " |")
    return "\n".join(rows)


def format_extended_table(report: Report) -> str:
    """The numbers beyond the paper, as Markdown (in percentage points)."""
    level = ci_level_text(report.ci_level)
    rows = [
        "| Dataset | Overlap − Clean | two-sample p (test) | sig. | Newcombe "
        f"{level} CI All − Clean | p Bonferroni | p Holm | min. detectable gap (All − Clean) | "
        "corrected for detector error: overlap %, All − Clean [CI] |",
        "|" + "---|" * 9,
    ]
    for d in report.datasets:
        e = d.extended
        if e is None:
            continue
        sig = yes_no(d.two_sample_significant)
        test = f"{pvalue(e.two_sample_p)} ({e.two_sample_method})" if e.two_sample_method else DASH
        if e.min_detectable_gap is not None:
            mdg = f"{percent(e.min_detectable_gap)} ({percent(e.min_detectable_delta)})"
        else:
            mdg = DASH if d.stats.p_value is None else "none detectable"
        corr = DASH
        if e.detector is not None:
            c = e.detector
            corr = (f"{percent(c.overlap_rate)}, {signed_percent(c.delta)} {interval(c.ci_delta, signed=True)}"
                    if c.delta is not None else f"undefined: {c.note}")
        rows.append(
            f"| {_cell(d.name)} | {signed_percent(e.gap)} | {test} | {sig} "
            f"| {interval(e.ci_delta_newcombe, signed=True)} "
            f"| {pvalue(d.adjusted.get('bonferroni'))} | {pvalue(d.adjusted.get('holm'))} | {mdg} | {corr} |"
        )
    return "\n".join(rows)


def _rule_text(d: DatasetReport) -> str:
    """The rule's sentence with the dataset's name escaped (the rest of it is numbers and fixed words)."""
    sentence = d.disagreement.sentence
    prefix = f"{d.name}: "
    return f"{_cell(d.name)}: {sentence[len(prefix):]}" if sentence.startswith(prefix) else _cell(sentence)


def interpretation(report: Report) -> list[str]:
    """One sentence per dataset that reads its result the way a reader should; where the comparison within
    classes disagrees with the pooled one (``stats.stratified.disagreement``), that rule's sentence instead."""
    lines = []
    for d in report.datasets:
        e, s = d.extended, d.stats
        if s.p_value is None:
            lines.append(f"- {_cell(d.name)}: no test (no {'Overlap' if not s.n_overlap else 'Clean'} examples).")
            continue
        if d.disagreement is not None and d.disagreement.disagrees:
            c = d.stratified.comparison
            text = f"- {_rule_text(d)}"
            if c.inflation is not None:
                text += (f" Within classes, overlap changes All by {signed_percent(c.inflation)} points "
                         f"({ci_level_text(report.ci_level)} interval {interval(c.ci_inflation, signed=True)}).")
        elif d.significant:
            text = (f"- {_cell(d.name)}: Overlap accuracy exceeds Clean accuracy ({report.correction}-significant); "
                    f"overlap inflates the reported accuracy by {signed_percent(s.delta)} points "
                    f"({ci_level_text(report.ci_level)} interval {interval(s.ci_delta, signed=True)} paper-style"
                    + (f", {interval(e.ci_delta_newcombe, signed=True)} Newcombe" if e is not None else "") + ").")
        else:
            text = f"- {_cell(d.name)}: not significant"
            if e is not None and e.min_detectable_gap is not None:
                text += (f"; the test had 80% power against an Overlap − Clean gap of "
                         f"{percent(e.min_detectable_gap)} points (All − Clean {percent(e.min_detectable_delta)}), "
                         "so no effect that large was present.")
            else:
                text += "; too few Overlap examples for the test to detect any gap."
        if e is not None and e.detector is not None and e.detector.ci_delta is not None:
            text += (f" Allowing for the detector's measured error, the inflation is at most "
                     f"{signed_percent(e.detector.ci_delta[1])} points.")
        lines.append(text)
    return lines


def format_within_classes(report: Report) -> str:
    """The comparison within classes per set (Markdown), in percentage points."""
    level = ci_level_text(report.ci_level)
    rows = [
        "| Dataset | classes informative / dropped | Overlap in dropped classes | Overlap − Clean within classes "
        f"[{level} CI] | p (method) | sig. | stratified All − Clean [{level} CI] | class mix p (method) | "
        "Overlap accuracy: expected from Clean's classes / observed |",
        "|" + "---|" * 9,
    ]
    for d in report.datasets:
        if d.stratified is None:
            rows.append(f"| {_cell(d.name)} | no labels: not compared |" + f" {DASH} |" * 7)
            continue
        c, mix = d.stratified.comparison, d.stratified.mix
        rd = c.risk_difference
        gap = f"{signed_percent(rd.estimate)} {interval(rd.ci, signed=True)}" if rd is not None else DASH
        p = f"{pvalue(c.p_value)} ({c.method})" if c.method else DASH
        infl = f"{signed_percent(c.inflation)} {interval(c.ci_inflation, signed=True)}" if c.inflation is not None else DASH
        mix_p = f"{pvalue(mix.p_value)} ({mix.method})" if mix.method else DASH
        acc = (f"{percent(mix.acc_overlap_expected)} / {percent(mix.acc_overlap)}"
               if mix.acc_overlap_expected is not None else DASH)
        sig = yes_no(d.disagreement.stratified_significant if d.disagreement is not None else None)
        rows.append(f"| {_cell(d.name)} | {c.n_classes_informative} / {c.n_classes_dropped} | {c.n_overlap_dropped} "
                    f"| {gap} | {p} | {sig} | {infl} | {mix_p} | {acc} |")
    return "\n".join(rows)


def format_top_classes(d: DatasetReport, k: int = TOP_CLASSES) -> list[str]:
    """The ``k`` classes of a set with the most Overlap examples (Markdown lines), and the classes driving the mix."""
    if d.stratified is None:
        return []
    table = d.stratified.table
    lines = [f"### {_cell(d.name)}: the {min(k, len(table.rows))} of {len(table.rows)} classes with most Overlap "
             "examples", "",
             "| class | n | Overlap | Clean | acc. Overlap | acc. Clean | Overlap − Clean | part of stratified "
             "All − Clean | class mix residual |",
             "|" + "---|" * 9]
    for r in table.top(k):
        resid = f"{r.mix_residual:+.1f}" if r.mix_residual is not None else DASH
        lines.append(f"| {_cell(r.label)} | {r.n} | {r.n_overlap} | {r.n_clean} | {percent(r.acc_overlap)} "
                     f"| {percent(r.acc_clean)} | {signed_percent(r.gap)} | {signed_percent(r.inflation)} | {resid} |")
    drivers = d.stratified.mix.drivers
    if drivers:
        shown = ", ".join(f"{_cell(m.label)} ({m.n_overlap} Overlap, {m.expected_overlap:.1f} expected)"
                          for m in drivers[:10])
        lines += ["", f"Classes whose share of Overlap differs from their share of the set beyond chance: {shown}"
                  + (f", and {len(drivers) - 10} more" if len(drivers) > 10 else "") + "."]
    return lines


def _within_classes_section(report: Report) -> list[str]:
    """report.md's section on the comparison within classes."""
    lines = [
        "",
        "## Within classes",
        "",
        "The pooled comparison treats Overlap and Clean as if they differed only in being seen; when Overlap sits "
        "in easier or harder classes, its gap measures class difficulty too. Here each class is compared with "
        "itself: Overlap − Clean within classes is the Mantel–Haenszel common difference (Sato's variance), its "
        "p-value one-sided (Overlap more accurate), exact conditional where counts are small, "
        "Cochran–Mantel–Haenszel otherwise, and sig. after the report's correction across the sets with labels. "
        "Stratified All − Clean weights each class's gap by its Overlap count. A class with no Overlap or no "
        "Clean example says nothing here and is dropped. The class mix compares Overlap's classes with Clean's "
        "(Pearson's chi-square, Monte Carlo where counts are small); Clean's per-class accuracies predict the "
        "expected Overlap accuracy. In percentage points.",
        "",
        format_within_classes(report),
    ]
    for d in report.datasets:
        top = format_top_classes(d)
        if top:
            lines += ["", *top]
    return lines


def _edge_section(report: Report, listed: int = 20) -> list[str]:
    """report.md's section on the Overlap pairs at the detector's size limit or nearly uniform."""
    head = edge_head(report)
    lines = ["", "## Overlap at the detector's limits", "", EDGE_TEXT, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    edged = [d for d in report.datasets if d.edge is not None]
    lines += ["| " + " | ".join(_cell(c) for c in edge_cells(d)) + " |" for d in edged]
    changed = [t for t in (edge_sentence(d) for d in edged) if t]
    if changed:
        lines += [""] + [f"**{_cell(t)}**" for t in changed]
    for d in edged:
        if d.edge.ids:
            more = f" … and {len(d.edge.ids) - listed} more (all in report.json)" if len(d.edge.ids) > listed else ""
            lines += ["", f"{_cell(d.name)}: " + ", ".join(_cell(i) for i in d.edge.ids[:listed]) + more]
    return lines


def format_markdown(report: Report) -> str:
    """The whole report.md."""
    det = report.detector
    lines = [
        "# Data overlap report",
        "",
        f"Detector `{det.spec}` (version {det.version}, {det.dim}-d, {det.metric}); index `{report.index.get('path')}` "
        f"with {report.index.get('n_indexed')} corpus items{corpus_set_aside(report.index)}; k = {report.k}.",
        f"Search: {report.index.get('search', 'exact')}; {recall_line(report.index.get('recall', {}))}.",
        *([verification_line(report.verify)] if report.verify is not None else []),
        "Thresholds: " + "; ".join(f"{_cell(n)} {t}" for n, t in threshold_origin_parts(report)) + ".",
        *([model_line(report.model)] if report.model else []),
        f"p-value: one-sided binomial test, H0 Overlap accuracy = Clean accuracy (alternative: greater). "
        f"Significance after {report.correction.capitalize()} correction at alpha = {report.alpha:g} across "
        f"{sum(d.stats.p_value is not None for d in report.datasets)} dataset(s). Intervals: Clopper–Pearson at "
        f"{ci_level_text(report.ci_level)}. Accuracies in %.",
        "",
        format_table(report),
        "",
    ]
    verify = report.verify
    checked = (verify or {}).get("datasets", {})
    lines += ["| Dataset | threshold | low-information (never Overlap, not judged) | skipped |"
              + (" verification first stage | pairs verified | accepted (Overlap) | unreadable (kept the first decision) |"
                 " of which the corpus image changed since indexing |"
                 if verify is not None else ""),
              "|---|---|---|---|" + ("---|---|---|---|---|" if verify is not None else "")]
    for d in report.datasets:
        share = f" ({percent(d.n_low_information / d.stats.n_all)}%)" if d.stats.n_all else ""
        row = f"| {_cell(d.name)} | {similarity_text(d.threshold)} | {d.n_low_information}{share} | {len(d.skipped)} |"
        if verify is not None:
            v = checked.get(d.name)
            row += (f" {similarity_text(v['first_stage'])} | {v['n_verified']} | {v['n_accepted']} | {v['n_unreadable']} |"
                    f" {v['n_changed']} |" if v else " – | – | – | – | – |")
        lines.append(row)
    if any(d.extended is not None for d in report.datasets):
        lines += [
            "",
            "## Beyond the paper",
            "",
            "Overlap − Clean = acc_overlap − acc_clean, and All − Clean = overlap rate × (Overlap − Clean). The "
            "two-sample test (Boschloo's exact test, or Fisher's for large sets) treats Clean accuracy as an "
            "estimate too; its significance uses the same correction. Newcombe's hybrid score interval is "
            "scaled by the overlap rate. p Bonferroni / p Holm: the paper's p-value adjusted both ways. "
            "Minimum detectable gap: 80% power for the paper's test at the per-dataset level "
            "(alpha / m). In percentage points.",
            "",
            format_extended_table(report),
            "",
            *interpretation(report),
        ]
    if all(d.stratified is None for d in report.datasets):
        lines += ["", "## Within classes", "",
                  "No example of any set has a label: nothing is compared within classes."]
    else:
        lines += _within_classes_section(report)
    if any(d.edge is not None for d in report.datasets):
        lines += _edge_section(report)
    warned = [(d.name, w) for d in report.datasets for w in d.warnings]
    if warned:
        lines += ["", "## Warnings", ""] + [f"- {_cell(name)}: {_cell(w)}" for name, w in warned]
    skipped = [(d.name, s) for d in report.datasets for s in d.skipped]
    if skipped:
        lines += ["", "## Skipped evaluation items", ""]
        for name, s in skipped[:200]:
            lines.append(f"- {_cell(name)}: {_cell(s.id)}: {_cell(s.reason)}")
        if len(skipped) > 200:
            lines.append(f"- … and {len(skipped) - 200} more (all listed in report.json)")
    return "\n".join(lines) + "\n"
