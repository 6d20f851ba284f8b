"""Old module paths and names still resolve, to the same objects, with a DeprecationWarning naming the new one."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from overlap_audit._renamed import RENAMED_MODULES


@pytest.mark.parametrize("old, new", sorted(RENAMED_MODULES.items()))
def test_an_old_module_path_is_the_new_module(old, new):
    # a fresh interpreter: the old name must not be in sys.modules already
    code = (f"import warnings, importlib\nwarnings.simplefilter('error')\n"
            f"try:\n    importlib.import_module({old!r})\nexcept DeprecationWarning as w:\n    print(w)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"{old} is now {new}" in out.stdout
    sys.modules.pop(old, None)  # an earlier import of the old name: found again, as a first import is
    with pytest.warns(DeprecationWarning, match=f"{old} is now {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__name__ == new and module.__spec__.name == new  # the new module keeps its own identity


@pytest.mark.parametrize("module, old, new_module, new", [
    ("overlap_audit.stats", "correct", "overlap_audit.stats", "family_correction"),
    ("overlap_audit.zeroshot.smallclip", "SmallClip", "overlap_audit.zeroshot.smallclip", "SmallClipModel"),
    ("overlap_audit.zeroshot.smallclip", "TrainConfig", "overlap_audit.zeroshot.smallclip_train", "PretrainConfig"),
    ("overlap_audit.zeroshot.smallclip", "pretrain", "overlap_audit.zeroshot.smallclip_train", "pretrain"),
    ("overlap_audit.zeroshot.smallclip_net", "SmallCLIP", "overlap_audit.zeroshot.smallclip_net", "SmallClipNet"),
    ("overlap_audit.detectors.clipdup", "TrainConfig", "overlap_audit.detectors.clipdup_train",
     "DetectorTrainConfig"),
    ("overlap_audit.detectors.clipdup", "train", "overlap_audit.detectors.clipdup_train", "train"),
    ("overlap_audit.detectors.clipdup_model", "ModelConfig", "overlap_audit.detectors.clipdup_model",
     "DuplicateNetConfig"),
])
def test_an_old_name_is_the_new_object(module, old, new_module, new):
    with pytest.warns(DeprecationWarning, match=f"{module}.{old} is now {new_module}.{new}"):
        got = getattr(importlib.import_module(module), old)
    assert got is getattr(importlib.import_module(new_module), new)


def test_an_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError):
        importlib.import_module("overlap_audit.stats").no_such_name  # noqa: B018
