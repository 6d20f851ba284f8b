"""The demos: a synthetic one on bundled photos (``synthetic``) and a real-data one on Debian's clip art
(``realdata``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputDirError


def check_demo_dir(out_dir: str | os.PathLike, own: tuple[str, ...]) -> None:
    """Refuse a demo directory holding anything besides the entries ``own`` the demo writes (named in the
    error): a demo never deletes or overwrites someone else's files."""
    out = Path(out_dir)
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise OutputDirError(f"{out} exists and is not a directory; give a new directory for the demo")
    foreign = sorted(e for e in os.listdir(out) if e not in own)
    if foreign:
        raise OutputDirError(f"{out} holds {str(out / foreign[0])!r}, which the demo does not write; give a new or "
                             "empty directory (or an earlier run of this demo)")
