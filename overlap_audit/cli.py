"""The command line: each command parses its options, calls one library function and prints.

Why one module of this length: every command is a few lines of options and one call; keeping them
together keeps the shared error handling and printer in one place (the shared options are in
``cli_options``).
"""

from __future__ import annotations

import logging
import sys

import click

from . import __version__
from . import cli_options as options


def _echo(message: str = "", *, err: bool = False) -> None:
    """click.echo with control characters (terminal escape sequences in a file name) shown as escapes."""
    from .inert import terminal

    click.echo(terminal(message, keep_newlines=True), err=err)


class _EchoHandler(logging.Handler):
    """Log records as lines on stderr (the one click is writing to at the time)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _echo(self.format(record), err=True)
        except Exception:  # noqa: BLE001 - logging must not break the command
            self.handleError(record)


class _FileHandler(logging.FileHandler):
    """The --log-file handler (one per run: the previous one is closed when a command starts again)."""


def _configure_logging(quiet: bool, verbose: bool = False, log_file: str | None = None) -> None:
    """The ``overlap_audit`` logger: INFO messages to stderr (DEBUG with --verbose, only warnings with
    --quiet); with --log-file, every message (DEBUG included) with its time to that file as well."""
    log = logging.getLogger("overlap_audit")
    echo = next((h for h in log.handlers if isinstance(h, _EchoHandler)), None)
    if echo is None:
        echo = _EchoHandler()
        log.addHandler(echo)
    echo.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    for h in [h for h in log.handlers if isinstance(h, _FileHandler)]:
        log.removeHandler(h)
        h.close()
    if log_file:
        fh = _FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh.setLevel(logging.DEBUG)
        log.addHandler(fh)
    log.setLevel(logging.DEBUG if verbose or log_file else echo.level)


def _fail(message: str, status: int = 2) -> None:
    """One line ``error: ...`` on stderr, then exit."""
    _echo("error: " + " ".join(str(message).split("\n")), err=True)
    sys.exit(status)


def _message(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("debug"))


class _Command(click.Command):
    """A command that sets up logging from its --quiet and the group's --verbose / --log-file, and reports
    the errors a user can cause (ours, and the OS's: paths, permissions) as one line ``error: ...`` with exit
    status 2 (the group's --debug: the traceback instead; --verbose logs it as well)."""

    def invoke(self, ctx: click.Context):
        from .errors import OverlapAuditError

        group = ctx.find_root().params
        try:
            _configure_logging(bool(ctx.params.get("quiet")), bool(group.get("verbose")), group.get("log_file"))
        except OSError as exc:
            _fail(exc)
        logging.getLogger("overlap_audit").debug("overlap-audit %s %s: %s", __version__, ctx.info_name,
                                                 " ".join(sys.argv[1:]))
        try:
            return super().invoke(ctx)
        except (OverlapAuditError, OSError) as exc:
            if _debug(ctx):
                raise
            logging.getLogger("overlap_audit").debug("error", exc_info=exc)
            _fail(_message(exc))


class _Group(click.Group):
    """The command group: usage errors (a bad option value, a missing argument) as one line too."""

    command_class = _Command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
            _fail(exc.format_message() + where, exc.exit_code)
        except click.Abort:
            _fail("aborted", 1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _echo_report(rep, *, before: tuple[str, ...] = (), after: tuple[str, ...] = (), search: bool = False,
                 skipped: bool = False) -> None:
    """Print a report: ``before``, the search line (``search``), the model line, the tables, the
    interpretation, the skipped evaluation items (``skipped``), then ``after``."""
    from .inert import terminal
    from .report import format_extended_table, format_table, interpretation, model_line, recall_line

    for text in before:
        _echo(text + "\n")
    if search:
        _echo(f"search: {rep.index.get('search')}; {recall_line(rep.index.get('recall', {}))}\n")
    if rep.model:
        _echo(model_line(rep.model) + "\n")
    _echo(format_table(rep))
    _echo("\n" + format_extended_table(rep))
    _echo("\n" + "\n".join(interpretation(rep)))
    if skipped:
        for d in rep.datasets:
            for s in d.skipped:
                _echo(f"skipped {terminal(d.name)}:{terminal(s.id)}: {terminal(s.reason)}")
    for text in after:
        _echo("\n" + text)


def _example(command: str) -> str:
    """A command's --help epilog: one example, kept on its line."""
    return f"\b\nExample:\n  {command}"


def _threshold_line(rep, threshold: float | None, thresholds_file: str | None) -> str:
    """One line: each dataset's threshold and where it came from (a thresholds file may name only some)."""
    from .decide.split import load_thresholds, threshold_origins

    per_dataset = load_thresholds(thresholds_file) if thresholds_file else {}
    names = [d.name for d in rep.datasets]
    origins = threshold_origins(names, threshold=threshold, per_dataset=per_dataset)
    fallback = {"threshold": "--threshold", "default": f"the default of {rep.detector.spec}"}
    parts = []
    for d in rep.datasets:
        origin = origins[d.name]
        where = f"from {thresholds_file}" if origin == "file" else f"from {fallback[origin]}"
        if thresholds_file and origin != "file":
            where += f", not named in {thresholds_file}"
        parts.append(f"{d.name} {d.threshold:.4f} ({where})")
    return "thresholds: " + "; ".join(parts)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=_example("overlap-audit --log-file audit.log index /data/laion-parquet/ --out laion-index"))
@click.version_option(__version__, prog_name="overlap-audit")
@click.option("--debug", is_flag=True, help="Show the traceback of an error instead of its one-line message.")
@click.option("-v", "--verbose", is_flag=True, help="Debug messages on stderr too (and a traceback with an error).")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Append every log message, debug ones included, with its time to this file.")
def main(debug, verbose, log_file) -> None:
    """How much of a reported accuracy comes from test examples already in the pretraining data."""


@main.command(epilog=_example("overlap-audit index /data/laion-parquet/ --out laion-index --detector phash"))
@click.argument("sources", nargs=-1, required=True)
@options.out_dir("Index directory to write.")
@click.option("--detector", default="phash", show_default=True, help="Detector name (see `overlap-audit detectors`).")
@options.batch_size
@options.workers
@options.device
@click.option("--content", type=click.Choice(["trim", "whole"]), default="trim", show_default=True,
              help="Content normalisation: trim (embed each image's content box: margins, transparent borders "
                   "and letterbox bars cut away) or whole (the image as it is). Reports use what the index was "
                   "built with.")
@click.option("--resume", is_flag=True, help="Finish an interrupted run in --out, keeping its finished shards.")
@click.option("--shard-size", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Items per embedding shard (the unit of resumption).")
@options.max_pixels
@click.option("--index-type", type=click.Choice(["auto", "flat", "ivfpq", "hnsw"]), default="auto", show_default=True,
              help="Exact flat while it fits --memory-budget, else IVF-PQ; HNSW on request.")
@click.option("--memory-budget", default="8GB", show_default=True, help="Memory the index may use (8GB, 512MB).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS|local",
              help="Embed the shards on a Ray cluster (pip install 'overlap-audit[ray]').")
@options.quiet
def index(sources, out_dir, detector, content, batch_size, workers, device, resume, shard_size, max_pixels,
          index_type, memory_budget, ray_address, quiet) -> None:
    """Embed the corpus SOURCES (image folders, Parquet, WebDataset shards) and build the FAISS index."""
    from .index import IndexSettings, build_index
    from .inert import terminal
    from .report import recall_line

    settings = IndexSettings(detector=detector, content=content, batch_size=batch_size, workers=workers,
                             device=device, resume=resume, shard_size=shard_size, max_pixels=max_pixels,
                             index_type=index_type, memory_budget=memory_budget, ray_address=ray_address)
    try:
        m = build_index(list(sources), out_dir, settings, progress=not quiet)
    except KeyboardInterrupt:
        _echo("\ninterrupted: run the same command with --resume to continue", err=True)
        sys.exit(130)
    _echo(f"index: {m.index_type} ({m.extra.get('index_choice', '')}); {recall_line(m.extra.get('recall', {}))}")
    _echo(f"indexed {m.n_indexed} of {m.n_given} items with {m.detector.spec} into {out_dir} "
          f"({m.index_type}); {m.n_skipped} skipped, {m.n_low_information} low-information not indexed")
    if m.n_indexed == 0:
        _echo("warning: the index holds no items; a report against it would have nothing to compare", err=True)
    for s in m.skipped[:20]:
        _echo(f"  skipped {terminal(s.source)}:{terminal(s.id)}: {terminal(s.reason)}")
    if m.n_skipped > 20:
        _echo(f"  ... and {m.n_skipped - 20} more (listed in {out_dir}/manifest.json)")


@main.command(epilog=_example("overlap-audit check laion-index"))
@options.index_dir
def check(index_dir) -> None:
    """Check every file of INDEX_DIR against its manifest: sizes, row counts, checksums, the FAISS index."""
    from .index import check_index

    r = check_index(index_dir)
    click.echo(f"{r.path}: intact (generation {r.generation}, {r.index_type}, {r.n_indexed} indexed; "
               f"{r.n_files} files, {r.n_bytes / 1e6:.1f} MB checksummed in {r.seconds:.2f} s)")


@main.command(epilog=_example("overlap-audit report laion-index --eval cifar10=/data/cifar10/test --predictions "
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
@click.option("--model-batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Images per model batch.")
@options.out_dir("Report directory.")
@click.option("--threshold", type=float, default=None, help="Similarity threshold for every dataset "
              "(default: the detector's).")
@click.option("--thresholds", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSON file {"NAME": threshold} (overrides --threshold per dataset).')
@click.option("--k", type=click.IntRange(min=1), default=5, show_default=True, help="Neighbours kept per example.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Family-wise significance level (Bonferroni across datasets).")
@options.ci_level
@click.option("--correction", type=click.Choice(["bonferroni", "holm"]), default="bonferroni", show_default=True,
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
                   "relaxation: 2, or 5 for clipdup].")
@click.option("--verify-threshold", type=click.FloatRange(0, 1), default=None, metavar="S",
              help="The verification score a pair needs [default: overlap_audit.decide.verify.VERIFY_THRESHOLD].")
@click.option("--corpus-matches", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also write the matched corpus items (corpus key, source, id, url, uid, caption, the evaluation "
                   "example, similarity) to FILE, for removing them from a training pool; the report directory "
                   "always holds them as corpus_matches.parquet.")
@click.option("--ignore-extra-sets", is_flag=True,
              help="Leave out the --predictions rows of datasets not given with --eval, instead of refusing them.")
@options.gallery
@options.matching
@options.quiet
def report(index_dir, evals, predictions, model, classnames, templates, model_batch_size, out_dir, threshold,
           thresholds, k, alpha, ci_level, correction, precision, recall, detector_error, detector, exact, ray_address,
           verify, verify_from, verify_threshold, corpus_matches, ignore_extra_sets, gallery, batch_size, workers,
           device, max_pixels, quiet) -> None:
    """Split each evaluation set into Overlap / Clean against INDEX_DIR and report the statistics."""
    from .api import MatchSettings, ReportSettings, StatsSettings, ZeroShotSettings, run_report
    from .sources import parse_eval_spec
    from .zeroshot.scoring import assign_files

    parsed = [parse_eval_spec(e) for e in evals]
    names = [n for n, _ in parsed]
    if (classnames or templates) and not model:
        raise click.UsageError("--classnames and --templates go with --model")
    if (verify_from is not None or verify_threshold is not None) and not verify:
        raise click.UsageError("--verify-from and --verify-threshold do not go with --no-verify")
    from .decide.rule import VerifySettings
    from .decide.verify import VERIFY_THRESHOLD

    verification = (VerifySettings(threshold=VERIFY_THRESHOLD if verify_threshold is None else verify_threshold,
                                   first_stage=verify_from) if verify else None)
    zero_shot = None
    if model is not None:
        zero_shot = ZeroShotSettings(model, classnames=assign_files(classnames, names, "--classnames"),
                                     templates=assign_files(templates, names, "--templates"),
                                     batch_size=model_batch_size)
    settings = ReportSettings(
        out_dir=out_dir, predictions=predictions, zero_shot=zero_shot, gallery=gallery, verify=verification,
        corpus_matches=corpus_matches, ignore_extra_sets=ignore_extra_sets, match=MatchSettings(detector=detector, device=device, k=k, batch_size=batch_size, workers=workers,
                            max_pixels=max_pixels, progress=not quiet, exact=exact or bool(ray_address),
                            ray_address=ray_address),
        stats=StatsSettings(threshold=threshold, thresholds=thresholds, alpha=alpha, ci_level=ci_level,
                            correction=correction, precision=precision, recall=recall,
                            detector_error=detector_error))
    rep = run_report(index_dir, parsed, settings)
    extra = ", predictions.parquet" if rep.model else ""
    n_matches = rep.corpus_matches_table().num_rows
    after = (f"report written to {out_dir}/ (report.json, report.md, report.html, splits.parquet, "
             f"corpus_matches.parquet{extra})",
             f"{n_matches} matched (corpus item, example) pair(s)"
             + (f" also written to {corpus_matches}" if corpus_matches else ""))
    _echo_report(rep, before=(_threshold_line(rep, threshold, thresholds),), search=True, skipped=True, after=after)


@main.command(epilog=_example("overlap-audit decontaminate audit --out clean"))
@click.argument("report_dir", type=click.Path(exists=True, file_okay=False))
@options.out_dir("New or empty directory for the blocklist and the filtered Parquet files.")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="The corpus index (default: the one report.json names).")
def decontaminate(report_dir, out_dir, index_dir) -> None:
    """Write the blocklist of REPORT_DIR's matched corpus items (Parquet and CSV) and copies of the corpus's
    Parquet files (img2dataset's metadata beside the tars included) without them."""
    from .decontaminate import BLOCKLIST, decontaminate as run

    r = run(report_dir, out_dir, index_dir=index_dir)
    _echo(f"{r.n_blocked} matched corpus item(s) in {out_dir}/{BLOCKLIST}.parquet and {BLOCKLIST}.csv")
    _echo(f"{len(r.files)} Parquet file(s) filtered: {r.dropped} row(s) dropped, {r.kept} kept"
          + (f"; {r.n_not_in_files} blocked item(s) are in no Parquet file (skip them by key)"
             if r.n_not_in_files else ""))


@main.command("train-detector", epilog=_example("overlap-audit train-detector /data/held-out/ --out my-detector"))
@click.argument("sources", nargs=-1, required=True)
@options.out_dir("Checkpoint directory.")
@click.option("--arch", type=click.Choice(["small", "resnet50"]), default="small", show_default=True)
@click.option("--dim", type=click.IntRange(min=2), default=256, show_default=True, help="Embedding dimension.")
@click.option("--input-size", type=click.IntRange(min=16), default=96, show_default=True, help="Input pixels.")
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--strength", type=click.Choice(["mild", "medium", "strong", "mixed"]), default="medium",
              show_default=True, help="Augmentation strength; mixed: drawn per copy.")
@options.seed
@click.option("--max-images", type=click.IntRange(min=2), default=20_000, show_default=True,
              help="Images kept in memory as training thumbnails.")
@click.option("--input-mode", type=click.Choice(["rgb", "luma", "value", "maxmin", "value-or-min", "maxchroma"]),
              default="rgb",
              show_default=True,
              help="luma (grey) or value (HSV V = max(R,G,B), unchanged by hue and saturation edits): one channel; "
                   "maxmin: max and min of R, G, B, two channels unchanged by hue rotation; value-or-min: the "
                   "value, or the min channel where the value is flat (saturated colours on white); each "
                   "standardised per image (brightness/contrast); maxchroma: max and chroma (max - min), each "
                   "channel standardised on its own, so a saturation change is undone too.")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="Learning-rate schedule.")
@click.option("--hard-negatives", type=click.IntRange(min=0), default=0, show_default=True,
              help="Group size: each batch is made of groups of this many look-alike images (an image and its "
                   "nearest neighbours under the network being trained), so each must be told from its "
                   "look-alikes; 0: random batches.")
@click.option("--mine-every", type=click.IntRange(min=1), default=100, show_default=True,
              help="With --hard-negatives: find the neighbours again every this many steps.")
@click.option("--global-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Add, with this weight, a loss that ranks every true pair above every pair of two different "
                   "images anywhere in the batch (the detector is used at one threshold for all queries); 0: "
                   "the paper's InfoNCE alone.")
@click.option("--same-picture", type=click.Choice(["mean16", "z32"]), default="mean16", show_default=True,
              help="With --hard-negatives: how a neighbour is recognised as the same picture again (never used as "
                   "a negative): mean16, 16x16 inputs within 0.02 on average; z32, standardised 32x32 inputs "
                   "within 0.1 (contrast-free, so faint outlines and near-uniform skies are told apart).")
@click.option("--trim/--no-trim", "trim", default=False, show_default=True,
              help="Train on the views the audit embeds: the image and its augmented copy each cropped to its "
                   "content box (uniform or transparent margins left out).")
@click.option("--edit-p", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Chance that a training copy is first edited as republished clip art is: outline thickened "
                   "or thinned, recoloured, reshaded, given a drop shadow, or zoomed out on a canvas.")
@click.option("--init", "init", default=None,
              help="Start from these clipdup weights (a training directory, a weights file, or 'clipdup' for "
                   "the shipped ones) instead of random ones: fine-tuning. Their architecture is used; one-channel "
                   "weights can start a --input-mode maxmin run (the min channel starts with zero weights), "
                   "maxmin weights a maxchroma run.")
@options.workers
@options.training_device
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out.")
@options.quiet
def train_detector(sources, out_dir, arch, dim, input_size, batch_size, steps, lr, strength, seed, max_images,
                   input_mode, schedule, hard_negatives, mine_every, global_weight, same_picture, trim, edit_p, init,
                   workers, device, resume, quiet) -> None:
    """Train the CLIP paper's near-duplicate detector on SOURCES (self-supervised: images vs augmented copies)."""
    from .training.clipdup import DetectorTrainConfig, train

    cfg = DetectorTrainConfig(arch=arch, dim=dim, input_size=input_size, batch_size=batch_size, steps=steps, lr=lr,
                      strength=strength, seed=seed, max_images=max_images, input_mode=input_mode, schedule=schedule,
                      hard_negatives=hard_negatives, mine_every=mine_every, global_weight=global_weight,
                      same_picture=same_picture, trim=trim, edit_p=edit_p, init=init)
    last = train(list(sources), out_dir, cfg, device=device, resume=resume, workers=workers, progress=not quiet)
    _echo(f"trained to step {last.get('step')}: loss {last.get('loss', float('nan')):.4f}, proxy accuracy "
          f"{last.get('proxy_accuracy', float('nan')):.3f}; weights in {out_dir}/model.pt "
          f"(use --detector clipdup:{out_dir})")


@main.command("pretrain-clip", epilog=_example("overlap-audit pretrain-clip /data/pairs/ --out my-clip --steps 2000"))
@click.argument("sources", nargs=-1, required=True)
@options.out_dir("Checkpoint directory.")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True,
              help="Peak learning rate (linear warm-up, cosine decay to a tenth).")
@click.option("--image-size", type=click.IntRange(min=16), default=64, show_default=True, help="Input pixels.")
@click.option("--caption-from", type=click.Choice(["caption", "path", "auto"]), default="auto", show_default=True,
              help="caption: the source's caption (first line of NAME.txt); path: file name words, then its "
                   "folders; auto: caption where present, else path.")
@click.option("--max-items", type=click.IntRange(min=2), default=None, help="Use at most this many pairs.")
@options.seed
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@options.workers_option(1, "Decoding worker processes (0 = in this process).")
@options.training_device
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out (only --steps may change).")
@options.quiet
def pretrain_clip(sources, out_dir, steps, batch_size, lr, image_size, caption_from, max_items, seed, threads,
                  workers, device, resume, quiet) -> None:
    """Pretrain the project's small CLIP on the image–caption pairs of SOURCES (contrastive, learned temperature)."""
    from .training.smallclip import PretrainConfig, pretrain
    from .zeroshot.smallclip_net import SmallClipNetConfig

    cfg = PretrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, caption_from=caption_from,
                      max_items=max_items)
    r = pretrain(list(sources), out_dir, cfg, SmallClipNetConfig(image_size=image_size), device=device, resume=resume,
                 threads=threads, workers=workers, progress=not quiet)
    _echo(f"trained to step {r.step} on {r.n_pairs} image-caption pairs ({r.n_skipped} skipped) in "
          f"{r.seconds:.0f} s: loss {r.loss:.4f}, in-batch accuracy {r.accuracy:.3f}, temperature "
          f"{r.temperature:.4f}; weights in {out_dir}/model.pt")


@main.command(epilog=_example("overlap-audit calibrate /data/held-out/ --detector phash --precision 0.99 "
                               "--out calibration.json"))
@click.argument("source")
@click.option("--detector", default="phash", show_default=True)
@click.option("--precision", "target", type=click.FloatRange(0, 1, min_open=True), default=0.99, show_default=True)
@click.option("--strength", type=click.Choice(["mild", "medium", "strong"]), default="medium", show_default=True)
@click.option("--max-images", type=click.IntRange(min=3), default=2000, show_default=True)
@options.seed
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write the calibration JSON.")
@options.workers
def calibrate(source, detector, target, strength, max_images, seed, out_file, workers) -> None:
    """Choose a detector threshold from your own held-out images (their augmented copies as positives)."""
    from .calibrate import calibrate as run
    from .atomic import atomic_write_json

    cal = run(source, detector, target_precision=target, strength=strength, seed=seed, max_images=max_images,
              workers=workers)
    _echo(f"{cal.n_images} images ({cal.n_low_information} low-information left out), {strength} copies, "
          f"detector {cal.detector}")
    _echo("| threshold | precision | recall |\n|---|---|---|")
    for row in cal.curve:
        _echo(f"| {row['threshold']:.4f} | {row['precision']:.4f} | {row['recall']:.4f} |")
    if cal.threshold is None:
        _echo(f"no threshold reaches precision {target}")
    else:
        _echo(f"threshold {cal.threshold:.4f}: precision {cal.precision:.4f}, recall {cal.recall:.4f} "
              f"(lowest threshold with precision >= {target})")
    if out_file:
        atomic_write_json(out_file, cal.to_dict())


@main.command(epilog=_example("overlap-audit pairs laion-index --eval cifar10=/data/cifar10/test --out review"))
@options.index_dir
@options.eval_sets
@click.option("--around", type=float, default=None, help="Show the pairs nearest this similarity "
              "(default: the detector's threshold).")
@click.option("--n", "n_pairs", type=click.IntRange(min=1), default=200, show_default=True,
              help="Pairs per dataset.")
@options.out_dir("Directory for pairs.html and pairs.csv.")
@options.matching
@options.quiet
def pairs(index_dir, evals, around, n_pairs, out_dir, detector, batch_size, workers, device, max_pixels,
          quiet) -> None:
    """Write the pairs nearest a threshold as a review sheet (pairs.html) and a CSV to label (pairs.csv)."""
    from .api import MatchSettings
    from .review import review_pairs
    from .sources import parse_eval_spec

    match = MatchSettings(detector=detector, device=device, k=1, batch_size=batch_size, workers=workers,
                          max_pixels=max_pixels, progress=not quiet)
    sheet = review_pairs(index_dir, [parse_eval_spec(e) for e in evals], out_dir, around=around, n=n_pairs,
                         match=match)
    for name, count in sheet.n_pairs.items():
        _echo(f"{name}: {count} pairs nearest {sheet.around:.4f}")
    _echo(f"review {sheet.html}, fill in the is_duplicate column of {sheet.csv} (1 or 0), then run "
          f"`overlap-audit threshold {sheet.csv}`")


@main.command(epilog=_example("overlap-audit threshold review/pairs.csv --precision 0.99"))
@click.argument("labels", type=click.Path(exists=True, dir_okay=False))
@click.option("--precision", "target", type=click.FloatRange(0, 1, min_open=True), default=0.99,
              show_default=True, help="Labelled precision the threshold must keep.")
@options.ci_level
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Thresholds file for `report --thresholds` (default: thresholds.json beside LABELS).")
def threshold(labels, target, ci_level, out_file) -> None:
    """Per dataset, the lowest threshold whose labelled precision in LABELS (a filled-in pairs.csv) is at
    least --precision."""
    from pathlib import Path

    from .review import pick_thresholds, write_thresholds

    choices = pick_thresholds(labels, target_precision=target, ci_level=ci_level)
    path, evidence = write_thresholds(choices, out_file or Path(labels).with_name("thresholds.json"))
    level = f"{100 * ci_level:g}%"
    for c in choices.values():
        counts = (f"{c.n_positive} duplicate(s), {c.n_negative} not, {c.n_unlabelled} unlabelled")
        if c.threshold is None:
            _echo(f"{c.dataset}: no threshold ({counts}): {c.note}")
        else:
            _echo(f"{c.dataset}: threshold {c.threshold:.4f}: precision {c.precision:.3f} "
                  f"({c.tp}/{c.tp + c.fp}; {level} CI [{c.precision_ci[0]:.3f}, {c.precision_ci[1]:.3f}]), "
                  f"recall {c.recall:.3f} of the labelled duplicates ({c.tp}/{c.n_positive}; {level} CI "
                  f"[{c.recall_ci[0]:.3f}, {c.recall_ci[1]:.3f}]); {counts}")
    _echo(f"thresholds written to {path} (use `report --thresholds {path}`); evidence in {evidence}")


@main.command(epilog=_example("overlap-audit detectors"))
def detectors() -> None:
    """List the available detectors."""
    from .detectors import list_detectors

    for name, desc in list_detectors().items():
        _echo(f"{name:10s} {desc}")


@main.command(epilog=_example("overlap-audit demo demo-out"))
@click.argument("out_dir", type=click.Path(file_okay=False))
@options.seed
def demo(out_dir, seed) -> None:
    """Build a small corpus and evaluation set with planted duplicates, then index and report."""
    from .demos.synthetic import run_demo

    result = run_demo(out_dir, seed=seed)
    _echo_report(result.report, after=(result.summary(), f"demo files in {out_dir}/; report in {out_dir}/report/ "
                                       "(report.json, report.md, report.html, splits.parquet)"))


@main.command("demo-real", epilog=_example("overlap-audit demo-real demo-real-out --detector phash"))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Where the Debian packages are downloaded and unpacked (default ~/.cache/overlap-audit).")
@click.option("--debs", "debs_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="A folder holding the two .deb files already (nothing is downloaded).")
@click.option("--model", default="overlap-audit:openclipart-small", show_default=True,
              help="The CLIP model scored zero-shot (see report --model).")
@click.option("--templates", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Prompt templates (default: the shipped drawing templates, templates/drawings.txt).")
@click.option("--detector", default="phash", show_default=True,
              help="Near-duplicate detector, as for index (clipdup: the learned one, needs torch).")
@options.workers
@options.gallery
@options.quiet
def demo_real(out_dir, cache_dir, debs_dir, model, templates, detector, workers, gallery, quiet) -> None:
    """Audit on real data: openclipart-png as the corpus, tuxpaint-stamps-default as the evaluation set."""
    from .demos.realdata import run_real_demo

    result = run_real_demo(out_dir, cache_dir=cache_dir, debs_dir=debs_dir, model=model, templates=templates,
                           detector=detector, workers=workers, progress=not quiet, gallery=gallery)
    _echo_report(result.report, before=(result.summary(),),
                 after=(f"report in {result.report_dir}/ (report.html, report.json, report.md, splits.parquet, "
                        "predictions.parquet)",))


if __name__ == "__main__":  # pragma: no cover
    main()
