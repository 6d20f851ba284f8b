"""Options that several commands take, each declared once and used as a decorator (``@options.device``)."""

from __future__ import annotations

import sys

import click

from ..settings import DEFAULT_GALLERY, DEVICES, IndexSettings, StatsSettings


def out_dir(help: str):
    """``--out DIR`` (required), with the command's own help."""
    return click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help=help)


def workers_option(default: int | None = None,
                   help: str = "Decoding worker processes (default: one per CPU, at most 8; 0 = in this process)."):
    return click.option("--workers", type=click.IntRange(min=0), default=default, show_default=default is not None,
                        help=help)


def device_option(help: str):
    return click.option("--device", type=click.Choice(DEVICES), default=IndexSettings.device, show_default=True,
                        help=help)


device = device_option("Where FAISS, torch detectors and a --model run.")
training_device = device_option("Where torch trains (auto: the GPU when torch sees one).")
workers = workers_option()
batch_size = click.option("--batch-size", type=click.IntRange(min=1), default=IndexSettings.batch_size,
                          show_default=True, help="Images per detector batch.")
max_pixels = click.option("--max-pixels", type=click.IntRange(min=1), default=IndexSettings.max_pixels,
                          show_default=True,
                          help="Images larger than this are skipped as decompression bombs (the default is PIL's).")
quiet = click.option("--quiet", is_flag=True, help="No progress bar (there is one only when stderr is a terminal), "
                     "and no informational messages on stderr.")
seed = click.option("--seed", type=int, default=0, show_default=True)
ci_level = click.option("--ci-level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=StatsSettings.ci_level,
                        show_default=True, help="Confidence level of the Clopper–Pearson intervals.")
gallery = click.option("--gallery", type=click.IntRange(min=0), default=DEFAULT_GALLERY, show_default=True,
                       help="Matched pairs shown per dataset in report.html (those nearest the threshold first).")

# the commands that read an index and evaluation sets (report, pairs)
index_dir = click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
eval_sets = click.option("--eval", "evals", multiple=True, required=True, metavar="NAME=SOURCE",
                         help="An evaluation set (repeatable). A folder's first-level sub-folders are its classes; "
                              "hf:PATH[:SPLIT], clip_benchmark:PATH[:SPLIT] and cifar:PATH[:SPLIT] read those "
                              "layouts with their class names.")
index_detector = click.option("--detector", default=None,
                              help="Must match the index's detector (default: the index's own).")


def matching(f):
    """The options of the matching step: --detector, --batch-size, --workers, --device, --max-pixels."""
    for option in reversed((index_detector, batch_size, workers, device, max_pixels)):
        f = option(f)
    return f


cache_dir = click.option("--cache-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
                         help="Keep the evaluation sets' embeddings and search results, and the verified pairs' "
                              "comparisons, here for the next run on the same index and sets "
                              "[default: $XDG_CACHE_HOME/overlap-audit/eval].")
no_cache = click.option("--no-cache", is_flag=True,
                        help="Embed and search every evaluation set and compare every verified pair again; store "
                             "nothing.")


def cache(f):
    """--cache-dir and --no-cache."""
    return cache_dir(no_cache(f))


def cache_setting(cache_dir: str | None, no_cache: bool) -> dict:
    """The ``cache_dir`` keyword the two options give ({}: the library's default cache)."""
    if no_cache and cache_dir:
        raise click.UsageError("--cache-dir does not go with --no-cache")
    return {"cache_dir": None} if no_cache else {"cache_dir": cache_dir} if cache_dir else {}


def progress(quiet: bool) -> bool:
    """Whether a command draws progress bars: unless --quiet, and only on a terminal. In a file or a pipe a
    bar's redraws are noise, and two bars at once (a report's calibration and its own pairs, judged in two
    threads) move the cursor between their lines with escape sequences."""
    return not quiet and sys.stderr.isatty()
