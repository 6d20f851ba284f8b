"""The core install works without torch: a fresh virtualenv (no system site-packages) with
``pip install --no-deps -e .`` plus only the core requirements imports overlap_audit, never imports torch,
and runs ``overlap-audit index`` and ``report`` with phash. Runs in CI (``make test``); skipped, with the
reason, where pip cannot reach a package index."""

import json
import os
import re
import subprocess
import sys
import time
from importlib.metadata import requires
from pathlib import Path

import pytest

from .helpers import write_predictions

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT = 900  # seconds for all installs together (a cold pip cache downloads some 150 MB)
UNREACHABLE = re.compile(r"Could not find a version|No matching distribution|Failed to establish a new connection|"
                         r"Temporary failure in name resolution|Network is unreachable|ConnectionError|"
                         r"Max retries exceeded|ProxyError")


def core_requirements() -> list[str]:
    """The package's requirements outside every extra (what `pip install overlap-audit` brings)."""
    return [r for r in requires("overlap-audit") or [] if "extra ==" not in r]


def pip(venv_python: Path, *args: str, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        pytest.fail(f"installing the core requirements took more than {PIP_TIMEOUT} s")
    try:
        r = subprocess.run([str(venv_python), "-m", "pip", "install", "--disable-pip-version-check", *args],
                           capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        pytest.fail(f"installing the core requirements took more than {PIP_TIMEOUT} s: pip install {' '.join(args)}")
    if r.returncode != 0:
        out = r.stdout + r.stderr
        if UNREACHABLE.search(out):
            pytest.skip(f"pip cannot reach a package index here ({UNREACHABLE.search(out).group(0)}); the fresh-venv "
                        "check needs the core requirements from an index or a local mirror")
        pytest.fail(f"pip install {' '.join(args)} failed:\n{out[-3000:]}")


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory):
    reqs = core_requirements()
    assert reqs and not any(r.lower().startswith("torch") for r in reqs), reqs
    venv = tmp_path_factory.mktemp("core-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)  # no system site-packages
    python = venv / "bin" / "python"
    deadline = time.monotonic() + PIP_TIMEOUT
    pip(python, *reqs, deadline=deadline)
    pip(python, "--no-deps", "-e", str(ROOT), deadline=deadline)
    return venv


def test_core_install_has_no_torch_and_runs_index_and_report(core_venv, tmp_path, corpus_dir, eval_set):
    python, exe = core_venv / "bin" / "python", core_venv / "bin" / "overlap-audit"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = ("import importlib.util, sys; import overlap_audit, overlap_audit.cli, overlap_audit.api; "
             "print(overlap_audit.__file__); print(importlib.util.find_spec('torch') is None, 'torch' in sys.modules)")
    r = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    where, flags = r.stdout.split("\n")[:2]
    assert Path(where).resolve().is_relative_to(ROOT)  # the editable install of this checkout
    assert flags == "True False"  # torch is neither installed nor imported

    root, planted, clean = eval_set
    preds = write_predictions(tmp_path / "preds.csv", "val", planted + clean, [1] * len(planted + clean))
    run = dict(capture_output=True, text=True, env=env, timeout=300)
    r = subprocess.run([str(exe), "index", str(corpus_dir), "--out", str(tmp_path / "index"), "--detector", "phash",
                        "--workers", "0", "--quiet"], **run)
    assert r.returncode == 0, r.stderr
    assert "indexed 120 of 124 items with phash" in r.stdout
    r = subprocess.run([str(exe), "report", str(tmp_path / "index"), "--eval", f"val={root}", "--predictions",
                        str(preds), "--out", str(tmp_path / "report"), "--workers", "0", "--quiet"], **run)
    assert r.returncode == 0, r.stderr
    assert "| val | 50 |" in r.stdout
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["detector"]["name"] == "phash" and (tmp_path / "report" / "report.html").exists()
