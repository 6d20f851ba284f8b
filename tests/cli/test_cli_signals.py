"""The commands run as a user runs them, in real subprocesses: a report stopped with Ctrl-C (SIGINT to its
process group, as a terminal sends it) while it verifies pairs and calibrates, and progress bars on a
terminal and on a pipe."""

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import psutil
import pytest

import overlap_audit

from ..helpers import report_decisions, write_predictions

# this checkout's package, whichever one the console script would import
CLI = [sys.executable, "-m", "overlap_audit.cli"]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(overlap_audit.__file__).parents[1]),
                                                   *filter(None, [os.environ.get("PYTHONPATH")])]))


def _report(index_dir, eval_root, predictions, out, cache, *extra) -> list[str]:
    return [*CLI, *extra, "report", str(index_dir), "--eval", f"val={eval_root}", "--predictions", str(predictions),
            "--out", str(out), "--cache-dir", str(cache), "--workers", "2"]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, seconds: float) -> bool:
    """Whether ``text`` appeared in the file at ``path`` while ``proc`` ran (within ``seconds``)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow  # three reports
def test_ctrl_c_while_verifying_stops_cleanly_and_a_rerun_decides_as_an_uninterrupted_run(
        tmp_path, corpus_index, eval_set):
    root, planted, clean = eval_set
    predictions = write_predictions(tmp_path / "preds.csv", "val", planted + clean,
                                    [1] * len(planted) + [i % 2 for i in range(len(clean))])
    work, cache, log = tmp_path / "work", tmp_path / "cache", tmp_path / "run.log"
    work.mkdir()
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(_report(corpus_index, root, predictions, work / "report", cache, "--log-file", str(log)),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=ENV, start_new_session=True)
    try:
        # the verification workers have started: the report's pairs are being judged beside calibration
        assert _wait_for(log, "worker processes started", proc, 120), (tmp_path / "stderr").read_text()
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches every process of the group
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = (tmp_path / "stderr").read_text()
    assert rc == 130, stderr
    assert "Traceback" not in stderr and "\r" not in stderr and "\x1b" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: no report written"), stderr
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive  # no worker outlives the run
    assert os.listdir(work) == []  # no report, no half-written file, no lock beside it
    assert not [p for p in cache.rglob("*") if ".tmp-" in p.name]

    # run again on what the interrupted run left in the cache: as a run that was never interrupted decides
    again = subprocess.run(_report(corpus_index, root, predictions, work / "report", cache), capture_output=True,
                           text=True, timeout=300, env=ENV)
    assert again.returncode == 0, again.stderr
    assert "\r" not in again.stderr and "\x1b" not in again.stderr  # no progress bar on a pipe
    whole = subprocess.run(_report(corpus_index, root, predictions, tmp_path / "whole", tmp_path / "fresh-cache",
                                   "--log-file", str(tmp_path / "whole.log")) + ["--quiet"],
                           capture_output=True, text=True, timeout=300, env=ENV)
    assert whole.returncode == 0, whole.stderr
    assert whole.stderr == ""  # --quiet: nothing on stderr, though the log file takes every debug line
    assert "phase calibrate" in (tmp_path / "whole.log").read_text()
    assert report_decisions(work / "report") == report_decisions(tmp_path / "whole")


def _on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run ``args`` with stdout and stderr on a pseudo-terminal: (exit status, what it wrote)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new one has 0 columns
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=ENV)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=300), b"".join(chunks).decode("utf-8", "replace")


def test_progress_bars_only_on_a_terminal(tmp_path, corpus_dir):
    """On a terminal a command draws its progress bars; on a pipe (a log file, CI) it draws none, since their
    redraws and cursor moves are noise there, and a report's two bars at once garbled it."""
    rc, shown = _on_a_terminal([*CLI, "index", str(corpus_dir), "--out", str(tmp_path / "a"), "--workers", "0"])
    assert rc == 0, shown
    assert "\rindex: " in shown and "img/s]" in shown  # the bar, redrawn
    piped = subprocess.run([*CLI, "index", str(corpus_dir), "--out", str(tmp_path / "b"), "--workers", "0"],
                           capture_output=True, text=True, timeout=300, env=ENV)
    assert piped.returncode == 0, piped.stderr
    assert "%|" not in piped.stderr and "\r" not in piped.stderr and "\x1b" not in piped.stderr
    quiet = subprocess.run([*CLI, "index", str(corpus_dir), "--out", str(tmp_path / "c"), "--workers", "0",
                            "--quiet"], capture_output=True, text=True, timeout=300, env=ENV)
    assert quiet.returncode == 0 and quiet.stderr == ""


def _python(*lines: str) -> subprocess.CompletedProcess:
    """``lines`` run as a script by a fresh interpreter with this checkout's package."""
    return subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, env=ENV,
                          timeout=60)


def test_ctrl_c_in_any_command_is_one_line_and_status_130():
    """A command stopped by Ctrl-C outside index and report (here one that raises KeyboardInterrupt, as Python
    does on SIGINT) prints exactly one line, with no blank line before it on a pipe, and exits 130."""
    done = _python("import click",
                   "from overlap_audit.cli.base import Group",
                   "@click.group(cls=Group)",
                   "def cli(): pass",
                   "@cli.command()",
                   "def stop(): raise KeyboardInterrupt",
                   "cli(['stop'], prog_name='overlap-audit')")
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted\n" and done.stdout == ""


def test_other_libraries_warnings_still_reach_stderr_and_no_library_doubles_our_log():
    """With the CLI's logging set up, a warning another library logs is shown (as Python's last-resort handler
    would), a library's logging.basicConfig() adds no second stderr handler, and our own records appear once."""
    done = _python("import logging",
                   "from overlap_audit.cli.base import _configure_logging",
                   "_configure_logging(quiet=False)",
                   "logging.getLogger('somelib').warning('somelib warns')",
                   "logging.basicConfig(level=logging.DEBUG)",
                   "logging.getLogger('somelib').info('somelib chatter')",
                   "logging.getLogger('overlap_audit.x').info('our line')")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["somelib warns", "our line"]
