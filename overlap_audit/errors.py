"""Errors a user can cause. Library code raises these; only the CLI turns them into exit codes.

A message names a parameter through ``param``: ``str(error)`` shows the Python name (``index_type``,
``device='cuda'``), and the CLI's error line shows the flag the user typed (``--index-type``,
``--device cuda``) through ``OverlapAuditError.render``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# a parameter inside a message: MARK name MARK, or MARK name SEP repr(value) SEP the CLI's value text MARK
# (control characters, which no message text holds, so a rendered message never shows them)
_MARK, _SEP = "\x1f", "\x1e"
_PARAM = re.compile(f"{_MARK}([\\w.]+)(?:{_SEP}([^{_SEP}{_MARK}]*){_SEP}([^{_MARK}]*))?{_MARK}")
_UNSET = object()


def param(name: str, value=_UNSET) -> str:
    """``name`` (a parameter of the library's functions and settings), with ``value`` if given, marked for an
    error message: rendered ``name`` or ``name=value`` in Python, ``--flag`` or ``--flag value`` on the command
    line (a ``True`` value: the flag alone)."""
    if value is _UNSET:
        return f"{_MARK}{name}{_MARK}"
    cli = "" if value is True else str(value).replace(_MARK, " ").replace(_SEP, " ")
    return f"{_MARK}{name}{_SEP}{value!r}{_SEP}{cli}{_MARK}"


def render(message: str, flag: Callable[[str], str] | None = None) -> str:
    """``message`` with its ``param`` marks as Python names, or with ``flag(name)`` for each (the CLI's)."""

    def one(m: re.Match) -> str:
        name, value, cli = m.groups()
        if flag is None:
            return name if value is None else f"{name}={value}"
        return flag(name) if not cli else f"{flag(name)} {cli}"

    return _PARAM.sub(one, message)


class OverlapAuditError(Exception):
    """Base of every error overlap-audit raises on purpose."""

    def __str__(self) -> str:
        return render(super().__str__())

    def render(self, flag: Callable[[str], str]) -> str:
        """The message with each parameter named by ``flag(name)`` (the CLI: the option's flag)."""
        return render(super().__str__(), flag)


class SourceError(OverlapAuditError):
    """A source path or its layout cannot be read (missing path, no image column, ...)."""


class DuplicateIdError(SourceError):
    """The same id occurs more than once within one source."""

    def __init__(self, source: str, ids: list[str]):
        self.source = source
        self.ids = list(ids)
        shown = ", ".join(repr(i) for i in self.ids[:10])
        more = f" (and {len(self.ids) - 10} more)" if len(self.ids) > 10 else ""
        super().__init__(
            f"duplicate ids in source {source!r}: {shown}{more}. Every id within one source must be unique."
        )


class DetectorError(OverlapAuditError):
    """A detector name or spec is unknown, or a detector cannot be loaded."""


class IndexDirError(OverlapAuditError):
    """An index directory is missing, incomplete, or inconsistent."""


class IndexDamagedError(IndexDirError):
    """A file of an index directory is missing, extra, or not what its manifest records."""

    def __init__(self, message: str, file: str = ""):
        super().__init__(message)
        self.file = file  # the file concerned, relative to the index directory


class IndexMismatchError(IndexDirError):
    """An index was built by another detector, detector version or dimension than the one asked for."""


class ResumeError(IndexDirError):
    """An index directory cannot be resumed (different settings) or would be overwritten."""


class PredictionsError(OverlapAuditError):
    """A predictions file is malformed or does not match the evaluation sets one to one."""


class ThresholdError(OverlapAuditError):
    """A threshold or thresholds file is invalid."""


class ReportError(OverlapAuditError):
    """A report file cannot be read back."""


class DeviceError(OverlapAuditError):
    """A device was asked for that this machine or this FAISS build does not have."""


class ModelError(OverlapAuditError):
    """A zero-shot model could not be loaded or used (missing checkpoint, unknown architecture, a name
    that would need the network)."""


class FetchError(OverlapAuditError):
    """A demo data package could not be downloaded or unpacked."""


class SettingsError(OverlapAuditError):
    """Settings that contradict each other (an option that only works together with another)."""


class OutputDirError(OverlapAuditError):
    """An output directory holds files this tool did not write (it never deletes or overwrites those)."""


class WriteError(OverlapAuditError):
    """A file could not be written (a full disk, a read-only folder, a library that failed to serialise)."""


class EmptyEvalSetError(OverlapAuditError):
    """An evaluation set has no example left to evaluate (every item was skipped)."""


class BusyError(OutputDirError):
    """Another run holds the directory (an index being built, a report being written there)."""
