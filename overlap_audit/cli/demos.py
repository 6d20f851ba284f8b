"""The demos: demo (synthetic) and demo-real."""

from __future__ import annotations

import click

from . import options
from .base import Command, echo_report, example


@click.command(cls=Command, epilog=example("overlap-audit demo demo-out"))
@click.argument("out_dir", type=click.Path(file_okay=False))
@options.seed
def demo(out_dir, seed) -> None:
    """Build a small corpus and evaluation set with planted duplicates, then index and report."""
    from ..demos.synthetic import run_demo

    result = run_demo(out_dir, seed=seed)
    echo_report(result.report, after=(result.summary(), f"demo files in {out_dir}/; report in {out_dir}/report/ "
                                       "(report.json, report.md, report.html, splits.parquet)"))


@click.command("demo-real", cls=Command, epilog=example("overlap-audit demo-real demo-real-out --detector phash"))
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
    from ..demos.realdata import run_real_demo

    result = run_real_demo(out_dir, cache_dir=cache_dir, debs_dir=debs_dir, model=model, templates=templates,
                           detector=detector, workers=workers, progress=options.progress(quiet), gallery=gallery)
    echo_report(result.report, before=(result.summary(),),
                 after=(f"report in {result.report_dir}/ (report.html, report.json, report.md, splits.parquet, "
                        "predictions.parquet)",))
