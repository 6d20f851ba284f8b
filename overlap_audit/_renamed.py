"""Old module paths that still import, with a DeprecationWarning naming the new one.

The table is the one record of module renames; ``overlap_audit/__init__.py`` installs the finder (a
lookup in a dict, nothing imported until an old name is asked for).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

RENAMED_MODULES = {
    "overlap_audit.types": "overlap_audit.values",
    "overlap_audit.io": "overlap_audit.atomic",
    "overlap_audit.calibration": "overlap_audit.simulation",
    "overlap_audit.detector_calibration": "overlap_audit.calibrate",
    "overlap_audit.models": "overlap_audit.zeroshot.models",
    "overlap_audit.scoring": "overlap_audit.zeroshot.scoring",
    "overlap_audit.smallclip_model": "overlap_audit.zeroshot.smallclip_net",
    "overlap_audit.smallclip": "overlap_audit.zeroshot.smallclip",
    "overlap_audit.demo": "overlap_audit.demos.synthetic",
    "overlap_audit.realdata": "overlap_audit.demos.realdata",
    "overlap_audit.search": "overlap_audit.index.search",
    "overlap_audit.ann": "overlap_audit.index.ann",
    "overlap_audit.distributed": "overlap_audit.index.ray",
    "overlap_audit.html": "overlap_audit.report.html",
}


_IDENTITY = ("__name__", "__spec__", "__package__", "__loader__")


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module it was renamed to, leaving that module's identity as it was (the
    import system stamps the old name's spec on the module it is given; ``exec_module`` undoes that)."""

    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self._identity = {k: getattr(module, k, None) for k in _IDENTITY}
        return module

    def exec_module(self, module) -> None:
        identity = getattr(self, "_identity", None) or {k: getattr(sys.modules[self.new], k, None) for k in _IDENTITY}
        for key, value in identity.items():
            setattr(module, key, value)


class RenamedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``overlap_audit.OLD`` as the module it was renamed to."""

    def find_spec(self, fullname, path=None, target=None):
        new = RENAMED_MODULES.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} is now {new}; the old name will be removed", DeprecationWarning, stacklevel=3)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, RenamedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(RenamedModuleFinder())


def renamed_attribute(module: str, renames: dict[str, str], name: str, namespace: dict):
    """For a module's ``__getattr__``: an old name in ``renames`` gives the new object, with a warning.

    A new name is ``ATTR`` (in the same module) or ``MODULE:ATTR`` (imported by name when asked for, so the
    old home of a name does not import its new one).
    """
    new = renames.get(name)
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    where, _, attr = new.rpartition(":")
    warnings.warn(f"{module}.{name} is now {where or module}.{attr}; the old name will be removed",
                  DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(where), attr) if where else namespace[attr]
