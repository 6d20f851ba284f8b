"""docs/cli.md is what docs/make_cli_md.py writes from the commands' --help."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "make_cli_md.py"


def _generator():
    spec = importlib.util.spec_from_file_location("make_cli_md", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_md_matches_the_commands_help():
    expected = _generator().render()
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == expected, "docs/cli.md differs from the commands' --help: run `python docs/make_cli_md.py`"


def test_each_section_is_what_help_prints():
    from click.testing import CliRunner

    from overlap_audit.cli import main

    gen = _generator()
    text = gen.render()
    for args in [["--help"]] + [[name, "--help"] for name in main.commands]:
        if len(args) == 2:
            assert f"\n## overlap-audit {args[0]}\n" in text
        result = CliRunner().invoke(main, args, prog_name="overlap-audit", terminal_width=gen.WIDTH,
                                    max_content_width=gen.WIDTH)
        assert result.exit_code == 0, result.output
        assert "```text\n" + result.output.rstrip() + "\n```" in text, args


def test_check_fails_on_a_stale_file_and_passes_once_written(tmp_path):
    out = tmp_path / "cli.md"
    out.write_text("# stale\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = [sys.executable, str(SCRIPT), "--output", str(out)]
    stale = subprocess.run([*run, "--check"], capture_output=True, text=True, env=env, check=False)
    assert stale.returncode == 1
    assert "python docs/make_cli_md.py" in stale.stderr
    assert out.read_text(encoding="utf-8") == "# stale\n"
    subprocess.run(run, check=True, env=env)
    fresh = subprocess.run([*run, "--check"], capture_output=True, text=True, env=env, check=False)
    assert fresh.returncode == 0, fresh.stderr
    # the width is fixed, not the terminal's
    narrow = subprocess.run([*run, "--check"], capture_output=True, text=True, check=False,
                            env={**env, "COLUMNS": "40"})
    assert narrow.returncode == 0, narrow.stderr
