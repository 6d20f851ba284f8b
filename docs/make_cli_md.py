"""Write docs/cli.md from the commands' own ``--help`` text.

    python docs/make_cli_md.py            # rewrite docs/cli.md
    python docs/make_cli_md.py --check    # exit 1 when docs/cli.md differs from what this would write

The text is click's own help formatting at a fixed width, so the file is the same on every machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

WIDTH = 100
PROG = "overlap-audit"
DEFAULT_OUT = Path(__file__).resolve().parent / "cli.md"
REGENERATE = "python docs/make_cli_md.py"


def _help(cmd: click.Command, info_name: str, parent: click.Context | None) -> str:
    # terminal_width fixes click's wrap width; without it click asks the terminal it runs in. The command's
    # context_settings (e.g. -h as a help option) apply as they do when click runs it.
    settings = {**cmd.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = click.Context(cmd, info_name=info_name, parent=parent, **settings)
    return cmd.get_help(ctx).rstrip() + "\n"


def render() -> str:
    """docs/cli.md as the current CLI describes itself: the group's help, then each command's, in the
    order the group defines them."""
    from overlap_audit.cli import main

    root = click.Context(main, info_name=PROG, **{**main.context_settings, "terminal_width": WIDTH,
                                                  "max_content_width": WIDTH})
    parts = [
        "# Command-line reference\n",
        f"Generated from each command's `--help` by `{REGENERATE}`; do not edit by hand "
        "(a test fails when this file and the commands differ).\n",
        "Commands: " + " · ".join(f"[`{name}`](#{PROG}-{name})" for name in main.commands) + "\n",
        f"## {PROG}\n",
        "```text\n" + _help(main, PROG, None) + "```\n",
    ]
    for name, cmd in main.commands.items():
        parts.append(f"## {PROG} {name}\n")
        parts.append("```text\n" + _help(cmd, name, root) + "```\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/cli.md from the commands' --help.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs instead of writing it")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUT, help="the file (default: docs/cli.md)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != text:
            print(f"{args.output} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
