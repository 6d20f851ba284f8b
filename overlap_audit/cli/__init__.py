"""The command line: each command parses its options, calls one library function and prints.

The group and its options are here; ``base`` holds what every command shares (the one-line error printer,
logging), ``options`` the options several commands take, and the commands are grouped by job: ``audit``
(index, check, report, decontaminate, pairs, threshold, detectors), ``training`` (train-detector, pretrain-clip,
calibrate), ``demos`` (demo, demo-real).
"""

from __future__ import annotations

import click

from .. import __version__
from . import audit, demos, training
from .base import Group, example


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=example("overlap-audit --log-file audit.log index /data/laion-parquet/ --out laion-index"))
@click.version_option(__version__, prog_name="overlap-audit")
@click.option("--debug", is_flag=True, help="Show the traceback of an error instead of its one-line message.")
@click.option("-v", "--verbose", is_flag=True, help="Debug messages on stderr too (and a traceback with an error).")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Append every log message, debug ones included, with its time to this file.")
def main(debug, verbose, log_file) -> None:
    """How much of a reported accuracy comes from test examples already in the pretraining data."""


for command in (audit.index, audit.check, audit.report, audit.decontaminate, training.train_detector, training.pretrain_clip,
                training.calibrate, audit.pairs, audit.threshold, audit.detectors, demos.demo, demos.demo_real):
    main.add_command(command)
