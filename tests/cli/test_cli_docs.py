"""docs/cli.md is what docs/make_cli_md.py writes from the commands' --help; the Markdown files' relative
links resolve (docs/check_links.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "make_cli_md.py"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generator():
    return _load("make_cli_md")


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


def test_every_relative_link_resolves():
    check = _load("check_links")
    problems = [p for path in check.files(check.DEFAULT_FILES) for p in check.broken_links(path)]
    assert not problems, "broken links (python docs/check_links.py lists them):\n" + "\n".join(problems)


def test_a_broken_link_or_anchor_is_reported(tmp_path):
    check = _load("check_links")
    (tmp_path / "other.md").write_text("# A heading: with `code`\n\n## A heading: with `code`\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading-with-code) [ok](other.md#a-heading-with-code-1) [ok](#top)\n"
                    "[bad](other.md#missing) [bad](gone.md) `[in code](gone.md)`\n"
                    "```\n[in a fence](gone.md)\n```\n# Top\n", encoding="utf-8")
    problems = check.broken_links(page)
    assert len(problems) == 2, problems
    assert "#missing" in problems[0] and "gone.md: no such file" in problems[1]
