"""Untrusted text (file names, ids, dataset names) made inert where it is shown: a terminal, Markdown, a CSV.

Ids come from the file system and the web: a name can hold terminal escape sequences, Markdown or HTML
markup, or a spreadsheet formula. Each function here shows the text without letting it act.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the bidirectional overrides/isolates that reorder what a reader sees
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_NEWLINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|~&])")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal(text, *, keep_newlines: bool = False) -> str:
    """Text safe to print: control characters (escape sequences included) become visible ``\\xNN`` escapes."""
    return (_CONTROL_KEEP_NEWLINES if keep_newlines else _CONTROL).sub(_escape, str(text))


def markdown(text) -> str:
    """Text that Markdown shows literally: controls escaped, then every markup character backslash-escaped."""
    return _MARKDOWN.sub(r"\\\1", terminal(text))


def csv_cell(text) -> str:
    """A CSV cell a spreadsheet will not run as a formula and a terminal will not act on: one starting with
    = + - @ (or a tab or carriage return) gets a leading ' (OWASP's CSV-injection advice), and control
    characters become visible escapes, as ``terminal`` shows them (``cat`` on the file runs no escape
    sequence). The exact text stays in the Parquet files beside such a CSV."""
    text = str(text)
    return terminal("'" + text if text[:1] in FORMULA_STARTS else text)


def csv_value(cell: str) -> str:
    """The text ``csv_cell`` was given (its protective quote removed)."""
    return cell[1:] if cell[:2] in tuple("'" + c for c in FORMULA_STARTS) else cell
