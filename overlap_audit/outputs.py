"""The output-directory policy: a run's --out kept apart from everything the run reads."""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import OutputDirError, param


def _within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    return os.path.commonpath([path, folder]) == folder


def check_output_apart(out_dir: str | os.PathLike, reads: Iterable[tuple[str, str, bool]]) -> None:
    """Refuse an output directory that is, or lies inside, a folder a run reads, and anything the run reads
    that lies inside the output directory. ``reads`` holds ``(what, path, is_folder)``, e.g.
    ``("corpus source", *source_location(spec))``; only folders (``is_folder``) are refused as a place for
    the output. Paths are compared resolved, so a link does not hide an overlap.
    """
    out = os.path.realpath(out_dir)
    for what, path, is_folder in reads:
        path = os.path.realpath(path)
        if is_folder and _within(out, path):
            where = "is" if out == path else "lies inside"
            raise OutputDirError(f"{param('out_dir', out)} {where} the {what} {path}: files written there would be "
                                 f"read as part of it on a later run; give an {param('out_dir')} outside it")
        if _within(path, out):
            raise OutputDirError(f"the {what} {path} lies inside {param('out_dir', out)}: writing there would replace "
                                 f"or mix with what is read; give an {param('out_dir')} that does not hold it")
