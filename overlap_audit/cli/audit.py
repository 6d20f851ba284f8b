"""The audit's commands: index, check, report, pairs, threshold, detectors."""

from __future__ import annotations

import click

from ..settings import (CONTENT_MODES, CORRECTIONS, INDEX_TYPES, CalibrationSettings, IndexSettings, MatchSettings,
                        StatsSettings, ZeroShotSettings)
from . import options
from .base import Command, echo, echo_report, example, interrupted


# the VerifySettings fields a thresholds file may set per dataset, as the commands name them
KNOB_WORDS = {"first_stage": "first stage", "accept": "photo accept", "threshold": "drawing verification score"}


def threshold_line(rep, threshold: float | None, thresholds_file: str | None) -> str:
    """One line: each dataset's threshold and where it came from (a thresholds file may name only some)."""
    from ..decide.points import load_points
    from ..decide.split import threshold_origins

    points = load_points(thresholds_file) if thresholds_file else None
    per_dataset = points.thresholds if points else {}
    names = [d.name for d in rep.datasets]
    origins = threshold_origins(names, threshold=threshold, per_dataset=per_dataset)
    origins.update((rep.calibration or {}).get("origins", {}))  # the report knows which were calibrated
    fallback = {"threshold": "from --threshold", "default": f"from the default of {rep.detector.spec}",
                "calibrated": "calibrated on the set's own images"}
    parts = []
    for d in rep.datasets:
        origin = origins[d.name]
        where = f"from {thresholds_file}" if origin == "file" else fallback[origin]
        if thresholds_file and origin != "file":
            where += f", not named in {thresholds_file}"
        knobs = points.verify.get(d.name, {}) if points and origin == "file" else {}
        if knobs:
            where += "; " + ", ".join(f"{KNOB_WORDS[k]} {v:.4f}" for k, v in knobs.items())
        parts.append(f"{d.name} {d.threshold:.4f} ({where})")
    return "thresholds: " + "; ".join(parts)



@click.command(cls=Command, epilog=example("overlap-audit index /data/laion-parquet/ --out laion-index --detector phash"))
@click.argument("sources", nargs=-1, required=True)
@options.out_dir("Index directory to write.")
@click.option("--detector", default=IndexSettings.detector, show_default=True, help="Detector name (see `overlap-audit detectors`).")
@options.batch_size
@options.workers
@options.device
@click.option("--content", type=click.Choice(CONTENT_MODES), default="trim", show_default=True,
              help="Content normalisation: trim (embed each image's content box: margins, transparent borders "
                   "and letterbox bars cut away) or whole (the image as it is). Reports use what the index was "
                   "built with.")
@click.option("--resume", is_flag=True, help="Finish an interrupted run in --out, keeping its finished shards.")
@click.option("--shard-size", type=click.IntRange(min=1), default=IndexSettings.shard_size, show_default=True,
              help="Items per embedding shard (the unit of resumption).")
@options.max_pixels
@click.option("--index-type", type=click.Choice(INDEX_TYPES), default=IndexSettings.index_type, show_default=True,
              help="auto: exact flat while it fits --memory-budget, else IVF-PQ (multi-index hash tables for a "
                   "large corpus of 64-bit hashes); the others on request.")
@click.option("--memory-budget", default="8GB", show_default=True, help="Memory the index may use (8GB, 512MB).")
@click.option("--views", "views", type=float, multiple=True, metavar="AREA",
              help="Corpus views: also index each item's centre crop holding this fraction of its area (repeat for "
                   "several), so a copy that is a crop of it is found; reports then search each query's centre "
                   "90% and 80% and the query turned by 3 and 5 degrees both ways too (measured in "
                   "BENCHMARKS.md, Corpus views). Default: the detector's (phash: 0.7; others: none).")
@click.option("--no-views", is_flag=True, help="Index no corpus views (one vector per item).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|local",
              help="Embed the shards on a Ray cluster (pip install 'overlap-audit[ray]').")
@options.quiet
def index(sources, out_dir, detector, content, batch_size, workers, device, resume, shard_size, max_pixels,
          index_type, memory_budget, views, no_views, ray_address, quiet) -> None:
    """Embed the corpus SOURCES (image folders, Parquet, WebDataset shards) and build the FAISS index."""
    from ..index import build_index, views_line
    from ..inert import terminal
    from ..report import recall_line

    if views and no_views:
        raise click.UsageError("give --views or --no-views, not both")
    settings = IndexSettings(detector=detector, content=content, batch_size=batch_size, workers=workers,
                             device=device, resume=resume, shard_size=shard_size, max_pixels=max_pixels,
                             index_type=index_type, memory_budget=memory_budget, ray_address=ray_address,
                             views=() if no_views else (tuple(views) or None))
    try:
        m = build_index(list(sources), out_dir, settings, progress=options.progress(quiet))
    except KeyboardInterrupt:
        interrupted("run the same command with --resume to continue")
    echo(f"index: {m.index_type} ({m.extra.get('index_choice', '')}); {recall_line(m.extra.get('recall', {}))}")
    echo(f"indexed {m.n_indexed} of {m.n_given} items with {m.detector.spec} into {out_dir} "
          f"({m.index_type}{views_line(m.views, ())}); {m.n_skipped} skipped, {m.n_low_information} "
          "low-information not indexed")
    if m.n_indexed == 0:
        echo("warning: the index holds no items; a report against it would have nothing to compare", err=True)
    for s in m.skipped_sample:
        echo(f"  skipped {terminal(s.source)}:{terminal(s.id)}: {terminal(s.reason)}")
    if m.n_skipped > len(m.skipped_sample):
        echo(f"  ... and {m.n_skipped - len(m.skipped_sample)} more (all with their reasons in the skip_reason "
             f"column of {out_dir}/shards/*.parquet, or overlap_audit.index.skipped_items)")


@click.command(cls=Command, epilog=example("overlap-audit check laion-index"))
@options.index_dir
def check(index_dir) -> None:
    """Check every file of INDEX_DIR against its manifest: sizes, row counts, checksums, the FAISS index."""
    from ..index import check_index, views_line

    r = check_index(index_dir)
    click.echo(f"{r.path}: intact (generation {r.generation}, {r.index_type}{views_line(r.views, ())}, "
               f"{r.n_indexed} indexed; "
               f"{r.n_files} files, {r.n_bytes / 1e6:.1f} MB checksummed in {r.seconds:.2f} s)")
    if r.stale:
        click.echo(f"note: {len(r.stale)} file(s) of an interrupted rebuild are left beside it and unused "
                   f"({', '.join(r.stale)}); the next `overlap-audit index ... --resume` removes them")


@click.command(cls=Command, epilog=example("overlap-audit report laion-index --eval cifar10=/data/cifar10/test --predictions "
                               "preds.csv --out audit"))
@options.index_dir
@options.eval_sets
@click.option("--predictions", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Parquet or CSV: dataset, id, and correct (0/1) or prediction + label. Or --model.")
@click.option("--model", "model", default=None, metavar="SPEC",
              help="Score this CLIP model zero-shot instead of reading --predictions: open_clip:ARCH:CHECKPOINT, "
                   "hf:DIR or overlap-audit:NAME|PATH (local files only).")
@click.option("--classnames", multiple=True, metavar="[NAME=]FILE",
              help="With --model: JSON {label: name} or CSV/TSV label,name (default: the names the evaluation "
                   "set ships, if any); NAME= for one dataset (repeatable).")
@click.option("--templates", multiple=True, metavar="[NAME=]FILE",
              help="With --model: prompt templates, one per line with {} or {c} (default: the set's own, if any, "
                   "else the CLIP paper's 80 ImageNet ones); NAME= for one dataset (repeatable).")
@click.option("--model-batch-size", type=click.IntRange(min=1), default=ZeroShotSettings.batch_size, show_default=True,
              help="Images per model batch.")
@options.out_dir("Report directory.")
@click.option("--threshold", type=float, default=None, help="Similarity threshold for every dataset "
              "(default: the detector's).")
@click.option("--thresholds", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSON file {"NAME": threshold}, or the operating points `threshold` writes (threshold, '
                   'first stage, photo accept per dataset); overrides --threshold and the verification settings '
                   'per dataset.')
@click.option("--k", type=click.IntRange(min=1), default=MatchSettings.k, show_default=True, help="Neighbours kept per example.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=StatsSettings.alpha,
              show_default=True, help="Family-wise significance level (Bonferroni across datasets).")
@options.ci_level
@click.option("--correction", type=click.Choice(CORRECTIONS), default=StatsSettings.correction, show_default=True,
              help="Which family-wise correction decides `significant` (both are reported).")
@click.option("--precision", default=None, metavar="P|K/N",
              help="Precision of the Overlap split (0.97, or 97/100 labelled pairs): adds the detector-error correction.")
@click.option("--recall", default=None, metavar="R|K/N", help="Recall of the Overlap split, as for --precision.")
@click.option("--detector-error", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSON {"NAME": {"precision": P or [K, N], "recall": R or [K, N]}} per dataset.')
@click.option("--exact", is_flag=True, help="Stream the stored corpus shards past the evaluation embeddings: exact "
              "whatever the index type, memory bounded by the evaluation sets plus one shard.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|local",
              help="Run the --exact stream as a map over shards on a Ray cluster.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Verify each match densely (overlap_audit.decide.verify): examples whose nearest corpus item is at or "
              "above --verify-from are compared with it, and Overlap is the verified ones. Catches edited copies "
              "below the threshold and rejects look-alikes above it. --no-verify: Overlap is every example at or "
              "above the threshold.")
@click.option("--verify-from", type=float, default=None, metavar="T",
              help="The first stage of verification [default: 1 - R (1 - threshold) per dataset, R the detector's "
                   "relaxation: 2.5, or 14 for clipdup].")
@click.option("--verify-threshold", type=click.FloatRange(0, 1), default=None, metavar="S",
              help="The verification score a pair needs [default: overlap_audit.decide.verify.VERIFY_THRESHOLD].")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="Calibrate the threshold of each dataset that --thresholds and --threshold leave open on its own "
                   "images: the lowest threshold whose estimated precision reaches --calibrate-precision (App. C "
                   "copies of a seeded sample for recall, the sample transposed (turned by 90 degrees and mirrored) and "
                   "searched in the corpus for false matches). --no-calibrate: the detector's default threshold.")
@click.option("--calibrate-precision", type=click.FloatRange(0, 1, min_open=True), default=None, metavar="P",
              help="The precision a calibrated threshold must reach [default: 0.99].")
@click.option("--corpus-matches", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also write the matched corpus items (corpus key, source, id, url, uid, caption, the evaluation "
                   "example, similarity) to FILE, for removing them from a training pool; the report directory "
                   "always holds them as corpus_matches.parquet.")
@click.option("--ignore-extra-sets", is_flag=True,
              help="Leave out the --predictions rows of datasets not given with --eval, instead of refusing them.")
@options.cache
@options.gallery
@options.matching
@options.quiet
def report(index_dir, evals, predictions, model, classnames, templates, model_batch_size, out_dir, threshold,
           thresholds, k, alpha, ci_level, correction, precision, recall, detector_error, detector, exact, ray_address,
           verify, verify_from, verify_threshold, calibrate, calibrate_precision, corpus_matches, ignore_extra_sets,
           cache_dir, no_cache, gallery, batch_size, workers, device, max_pixels, quiet) -> None:
    """Split each evaluation set into Overlap / Clean against INDEX_DIR and report the statistics."""
    from ..api import ReportSettings, run_report
    from ..sources import parse_eval_spec
    from ..zeroshot.scoring import assign_files

    parsed = [parse_eval_spec(e) for e in evals]
    names = [n for n, _ in parsed]
    if (classnames or templates) and not model:
        raise click.UsageError("--classnames and --templates go with --model")
    if (verify_from is not None or verify_threshold is not None) and not verify:
        raise click.UsageError("--verify-from and --verify-threshold do not go with --no-verify")
    from ..decide.rule import VerifySettings

    given = {} if verify_threshold is None else {"threshold": verify_threshold}
    verification = VerifySettings(first_stage=verify_from, **given) if verify else None
    zero_shot = None
    if model is not None:
        zero_shot = ZeroShotSettings(model, classnames=assign_files(classnames, names, "--classnames"),
                                     templates=assign_files(templates, names, "--templates"),
                                     batch_size=model_batch_size)
    cache = options.cache_setting(cache_dir, no_cache)
    if calibrate_precision is not None and not calibrate:
        raise click.UsageError("--calibrate-precision does not go with --no-calibrate")
    target = {} if calibrate_precision is None else {"target_precision": calibrate_precision}
    settings = ReportSettings(
        **cache, calibrate=CalibrationSettings(**target) if calibrate else None, out_dir=out_dir, predictions=predictions, zero_shot=zero_shot, gallery=gallery, verify=verification,
        corpus_matches=corpus_matches, ignore_extra_sets=ignore_extra_sets, match=MatchSettings(detector=detector, device=device, k=k, batch_size=batch_size, workers=workers,
                            max_pixels=max_pixels, progress=options.progress(quiet), exact=exact or bool(ray_address),
                            ray_address=ray_address),
        stats=StatsSettings(threshold=threshold, thresholds=thresholds, alpha=alpha, ci_level=ci_level,
                            correction=correction, precision=precision, recall=recall,
                            detector_error=detector_error))
    try:
        rep = run_report(index_dir, parsed, settings)
    except KeyboardInterrupt:
        interrupted(f"no report written (an earlier one in {out_dir} is left whole); run the same command again")
    extra = ", predictions.parquet" if rep.model else ""
    n_matches = rep.corpus_matches_table().num_rows
    after = (f"report written to {out_dir}/ (report.json, report.md, report.html, splits.parquet, "
             f"corpus_matches.parquet{extra})",
             f"{n_matches} matched (corpus item, example) pair(s)"
             + (f" also written to {corpus_matches}" if corpus_matches else ""))
    echo_report(rep, before=(threshold_line(rep, threshold, thresholds), cache_line(rep)), search=True, skipped=True,
                after=after + (phases_line(rep),))


def cache_line(rep) -> str:
    """Which evaluation sets came from the evaluation cache, and how many verified pairs' comparisons, in one
    line."""
    sets = rep.timings.get("sets", {})
    hits = [f"{n} ({s['n_items']} items)" for n, s in sets.items() if s.get("from_cache")]
    if not hits:
        line = f"evaluation cache: not used; {len(sets)} set(s) embedded and searched"
    else:
        where = next(s["cache_dir"] for s in sets.values() if s.get("from_cache"))
        line = (f"evaluation cache: {', '.join(hits)} read from {where} (not embedded again); "
                f"{len(sets) - len(hits)} set(s) embedded")
    verified = (rep.verify or {}).get("datasets", {})
    if verified:
        n_cached = sum(d.get("n_cached", 0) for d in verified.values())
        n_pairs = sum(d.get("n_pairs", 0) for d in verified.values())
        line += f"; {n_cached} of {n_pairs} verified pair(s) compared by an earlier run (not compared again)"
    return line


def phases_line(rep) -> str:
    """Seconds per phase, in one line."""
    seconds = rep.timings.get("seconds", {})
    return "seconds: " + ", ".join(f"{p} {s:.1f}" for p, s in seconds.items() if ":" not in p)


@click.command(cls=Command, epilog=example("overlap-audit decontaminate audit --out clean"))
@click.argument("report_dir", type=click.Path(exists=True, file_okay=False))
@options.out_dir("New or empty directory for the blocklist and the filtered Parquet files.")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="The corpus index (default: the one report.json names).")
def decontaminate(report_dir, out_dir, index_dir) -> None:
    """Write the blocklist of REPORT_DIR's matched corpus items (Parquet and CSV) and copies of the corpus's
    Parquet files (img2dataset's metadata beside the tars included) without them."""
    from ..decontaminate import BLOCKLIST, decontaminate as run

    r = run(report_dir, out_dir, index_dir=index_dir)
    echo(f"{r.n_blocked} matched corpus item(s) in {out_dir}/{BLOCKLIST}.parquet and {BLOCKLIST}.csv")
    echo(f"{len(r.files)} Parquet file(s) filtered: {r.dropped} row(s) dropped, {r.kept} kept"
         + (f"; {r.n_not_in_files} blocked item(s) are in no Parquet file (skip them by key)"
            if r.n_not_in_files else ""))


@click.command(cls=Command, epilog=example("overlap-audit pairs laion-index --eval cifar10=/data/cifar10/test --out review"))
@options.index_dir
@options.eval_sets
@click.option("--around", type=float, default=None, help="Show the pairs nearest this similarity "
              "(default: the detector's threshold).")
@click.option("--n", "n_pairs", type=click.IntRange(min=1), default=200, show_default=True,
              help="Pairs per dataset.")
@options.out_dir("Directory for pairs.html, pairs.csv and pairs.json (the decision rule the pairs were judged by).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Judge each pair as `report` does (its verification score and verdict, and the decision at "
                   "--around); --no-verify: the threshold alone, as `report --no-verify`.")
@click.option("--verify-from", type=float, default=None, metavar="T", help="As `report --verify-from`.")
@click.option("--verify-threshold", type=click.FloatRange(0, 1), default=None, metavar="S",
              help="As `report --verify-threshold`.")
@options.cache
@options.matching
@options.quiet
def pairs(index_dir, evals, around, n_pairs, out_dir, verify, verify_from, verify_threshold, cache_dir, no_cache,
          detector, batch_size, workers, device, max_pixels, quiet) -> None:
    """Write the pairs nearest a threshold as a review sheet (pairs.html) and a CSV to label (pairs.csv), each
    pair judged by the report's decision rule at that threshold."""
    from ..decide.rule import VerifySettings
    from ..evalcache import default_cache_dir
    from ..review import review_pairs
    from ..sources import parse_eval_spec

    if (verify_from is not None or verify_threshold is not None) and not verify:
        raise click.UsageError("--verify-from and --verify-threshold do not go with --no-verify")
    match = MatchSettings(detector=detector, device=device, k=1, batch_size=batch_size, workers=workers,
                          max_pixels=max_pixels, progress=options.progress(quiet))
    given = {} if verify_threshold is None else {"threshold": verify_threshold}
    cache = options.cache_setting(cache_dir, no_cache) or {"cache_dir": default_cache_dir()}
    sheet = review_pairs(index_dir, [parse_eval_spec(e) for e in evals], out_dir, around=around, n=n_pairs,
                         match=match, verify=VerifySettings(first_stage=verify_from, **given) if verify else None,
                         **cache)
    how = "verified; " if sheet.verified else ""
    for name, count in sheet.n_pairs.items():
        echo(f"{name}: {count} pairs nearest {sheet.around:.4f} ({how}{sheet.n_overlap[name]} Overlap by the "
             f"decision at {sheet.around:.4f})")
    echo(f"review {sheet.html}, fill in the is_duplicate column of {sheet.csv} (1 or 0), then run "
          f"`overlap-audit threshold {sheet.csv}`")


@click.command(cls=Command, epilog=example("overlap-audit threshold review/pairs.csv --precision 0.99"))
@click.argument("labels", type=click.Path(exists=True, dir_okay=False))
@click.option("--precision", "target", type=click.FloatRange(0, 1, min_open=True), default=0.99,
              show_default=True, help="Labelled precision the threshold must keep.")
@options.ci_level
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Thresholds file for `report --thresholds` (default: thresholds.json beside LABELS).")
@click.option("--rule", "rule_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The review sheet's pairs.json: the decision rule its pairs were judged by (default: the one "
                   "beside LABELS).")
def threshold(labels, target, ci_level, out_file, rule_file) -> None:
    """Per dataset, the operating point of the report's decision (the threshold and, with verification, the
    first stage and the photo accept) that keeps the most labelled duplicates at a labelled precision of at
    least --precision, from LABELS (a filled-in pairs.csv and the verdicts recorded in it). A knob other than
    the threshold moves from the review sheet's value only when that keeps at least two more labelled
    duplicates and does not lower the precision's lower confidence bound; the command says which knobs it
    chose and why it left the others."""
    from pathlib import Path

    from ..decide.points import KNOBS
    from ..review import pick_thresholds, write_thresholds

    choices = pick_thresholds(labels, rule=rule_file, target_precision=target, ci_level=ci_level)
    path, evidence = write_thresholds(choices, out_file or Path(labels).with_name("thresholds.json"))
    level = f"{100 * ci_level:g}%"
    for c in choices.values():
        counts = (f"{c.n_positive} duplicate(s), {c.n_negative} not, {c.n_unlabelled} unlabelled")
        if c.threshold is None:
            echo(f"{c.dataset}: no operating point ({counts}): {c.note}")
            continue
        if c.decision is None:
            knobs = "the similarity alone (LABELS has no verdicts: as `report --no-verify` decides)"
        elif c.decision.get("verify") is None:
            knobs = "the threshold alone (the pairs were written with --no-verify)"
        else:
            knobs = ", ".join(f"{KNOB_WORDS[KNOBS[k.name]]} {k.value:.4f}" for k in c.knobs)
        echo(f"{c.dataset}: threshold {c.threshold:.4f}; {knobs}: the decision's precision {c.precision:.3f} "
             f"({c.tp}/{c.tp + c.fp}; {level} CI [{c.precision_ci[0]:.3f}, {c.precision_ci[1]:.3f}]), "
             f"recall {c.recall:.3f} of the labelled duplicates ({c.tp}/{c.n_positive}; {level} CI "
             f"[{c.recall_ci[0]:.3f}, {c.recall_ci[1]:.3f}]); {counts}")
        for k in c.knobs:
            what = KNOB_WORDS[KNOBS[k.name]]
            echo(f"  {what} {k.default:.4f} -> {k.value:.4f}: {k.reason}" if k.moved
                 else f"  {what} left at {k.value:.4f}: {k.reason}")
    echo(f"operating points written to {path} (use `report --thresholds {path}`); evidence in {evidence}")


@click.command(cls=Command, epilog=example("overlap-audit detectors"))
def detectors() -> None:
    """List the available detectors."""
    from ..detectors import list_detectors

    for name, desc in list_detectors().items():
        echo(f"{name:10s} {desc}")
