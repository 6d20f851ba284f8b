"""What every command shares: the one-line error printer (library parameters shown as the flags that set
them), logging, the command class, and the printing of a report."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click

from .. import __version__

# library parameter -> the flag that sets it, where the flag is not the parameter's name with dashes
# (``flag``): the error printer shows a library message's parameters (``errors.param``) as these
FLAGS = {
    "out_dir": "--out",
    "evals": "--eval",
    "zero_shot": "--model",
    "target_precision": "--precision",
    "ray_address": "--ray",
    "debs_dir": "--debs",
    "verify.threshold": "--verify-threshold",
    "verify.first_stage": "--verify-from",
}


def flag(name: str) -> str:
    """The command-line flag of the library parameter ``name``."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def echo(message: str = "", *, err: bool = False) -> None:
    """click.echo with control characters (terminal escape sequences in a file name) shown as escapes."""
    from ..inert import terminal

    click.echo(terminal(message, keep_newlines=True), err=err)
    _to_log_file(message)


def _to_log_file(message: str) -> None:
    """What a command prints (its summary, skipped items, thresholds, errors) into the --log-file as well."""
    log = logging.getLogger("overlap_audit")
    files = [h for h in log.handlers if isinstance(h, _FileHandler)]
    if files and message.strip():
        from ..inert import terminal

        record = log.makeRecord("overlap_audit.output", logging.INFO, __file__, 0,
                                terminal(message.strip("\n"), keep_newlines=True), None, None)
        for h in files:
            h.handle(record)


class _EchoHandler(logging.Handler):
    """Log records as lines on stderr (the one click is writing to at the time)."""

    def emit(self, record: logging.LogRecord) -> None:
        from ..inert import terminal

        try:  # click.echo, not echo: the --log-file has the record already
            click.echo(terminal(self.format(record), keep_newlines=True), err=True)
        except Exception:  # noqa: BLE001 - logging must not break the command
            self.handleError(record)


class _OthersWarnings(_EchoHandler):
    """Other libraries' warnings on stderr, as logging's last-resort handler prints them for a root logger without
    handlers; the ``overlap_audit`` records are left to its own handlers."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.addFilter(lambda record: not record.name.startswith("overlap_audit"))


class _FileHandler(logging.FileHandler):
    """The --log-file handler (one per run: the previous one is closed when a command starts again)."""


def _configure_logging(quiet: bool, verbose: bool = False, log_file: str | None = None) -> None:
    """The ``overlap_audit`` logger: INFO messages to stderr (DEBUG with --verbose, only warnings with
    --quiet); with --log-file, every message (DEBUG included) with its time to that file as well."""
    root = logging.getLogger()
    if not root.handlers:
        # a library's logging.basicConfig() (scipy's boschloo_exact logs through the root logger, which calls it)
        # adds a stderr handler to a root without one, and our records reach it too: every debug line of a
        # --log-file run printed on stderr a second time, --quiet or not. A handler of our own keeps it from
        # doing so and still shows other libraries' warnings, as the last-resort handler did
        root.addHandler(_OthersWarnings())
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
    echo("error: " + " ".join(str(message).split("\n")), err=True)
    sys.exit(status)


def interrupted(hint: str = "") -> NoReturn:
    """A run stopped by Ctrl-C (SIGINT): one line on stderr (on a terminal after a newline, which ends a
    progress bar's line), then exit status 130, as a shell reports a command SIGINT ended."""
    echo(("\n" if sys.stderr.isatty() else "") + "interrupted" + (f": {hint}" if hint else ""), err=True)
    sys.exit(130)


def _message(exc: Exception) -> str:
    from ..errors import OverlapAuditError

    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    if isinstance(exc, OverlapAuditError):
        return exc.render(flag)
    return str(exc)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("debug"))


class Command(click.Command):
    """A command that sets up logging from its --quiet and the group's --verbose / --log-file, and reports
    the errors a user can cause (ours, and the OS's: paths, permissions) as one line ``error: ...`` with exit
    status 2 (the group's --debug: the traceback instead; --verbose logs it as well)."""

    def invoke(self, ctx: click.Context):
        from ..errors import OverlapAuditError

        group = ctx.find_root().params
        try:
            _configure_logging(bool(ctx.params.get("quiet")), bool(group.get("verbose")), group.get("log_file"))
        except OSError as exc:
            _fail(exc)
        logging.getLogger("overlap_audit").debug("overlap-audit %s %s: %s", __version__, ctx.info_name,
                                                 " ".join(sys.argv[1:]))
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # before click turns it into an Abort, echoing a blank line
            interrupted()
        except (OverlapAuditError, OSError) as exc:
            if _debug(ctx):
                raise
            logging.getLogger("overlap_audit").debug("error", exc_info=exc)
            _fail(_message(exc))


class Group(click.Group):
    """The command group: usage errors (a bad option value, a missing argument) as one line too."""

    command_class = Command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
            _fail(exc.format_message() + where, exc.exit_code)
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):  # click's conversion of a Ctrl-C outside a command
                interrupted()
            _fail("aborted", 1)
        sys.exit(rv if isinstance(rv, int) else 0)


def echo_report(rep, *, before: tuple[str, ...] = (), after: tuple[str, ...] = (), search: bool = False,
                 skipped: bool = False) -> None:
    """Print a report: ``before``, the search line (``search``), the model line, the tables, the
    interpretation, the skipped evaluation items (``skipped``), then ``after``."""
    from ..inert import terminal
    from ..report import format_extended_table, format_table, interpretation, model_line, recall_line

    for text in before:
        echo(text + "\n")
    if search:
        echo(f"search: {rep.index.get('search')}; {recall_line(rep.index.get('recall', {}))}\n")
    if rep.model:
        echo(model_line(rep.model) + "\n")
    echo(format_table(rep))
    echo("\n" + format_extended_table(rep))
    echo("\n" + "\n".join(interpretation(rep)))
    if skipped:
        for d in rep.datasets:
            for s in d.skipped:
                echo(f"skipped {terminal(d.name)}:{terminal(s.id)}: {terminal(s.reason)}")
    for text in after:
        echo("\n" + text)


def example(command: str) -> str:
    """A command's --help epilog: one example, kept on its line."""
    return f"\b\nExample:\n  {command}"

