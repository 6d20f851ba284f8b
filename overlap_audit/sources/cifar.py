"""CIFAR-10 and CIFAR-100 as torchvision downloads them (the python batches): their variant, their batches read
without running pickled code, and their rows as PNG-encoded items. ``layouts`` opens them as a layout."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator

from ..errors import SourceError
from ..values import RawItem

# torchvision's folder names and files: (test files, train files, meta file, its names key, the labels key)
CIFAR_LAYOUTS = {
    "cifar-10": (("test_batch",), tuple(f"data_batch_{i}" for i in range(1, 6)), "batches.meta", "label_names",
                 "labels"),
    "cifar-100": (("test",), ("train",), "meta", "fine_label_names", "fine_labels"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only numpy arrays besides plain Python values, so a batch file cannot run code on load."""

    ALLOWED = {("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")
        return super().find_class(module, name)


def load_batch(path: str) -> dict[str, object]:
    """A CIFAR python batch (a dict pickled by Python 2) with text keys."""
    try:
        with open(path, "rb") as fh:
            # latin1, as torchvision reads them: Python 2 strings (the array's raw data among them) as text
            raw = _ArrayUnpickler(fh, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise SourceError(f"cannot read the CIFAR batch {path!r}: {exc}") from None
    if not isinstance(raw, dict):
        raise SourceError(f"the CIFAR batch {path!r} does not hold a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


def cifar_variant(root: str) -> str | None:
    for variant, (test, _, meta, *_rest) in CIFAR_LAYOUTS.items():
        if all(os.path.isfile(os.path.join(root, f)) for f in (*test, meta)):
            return variant
    return None


def cifar_root(path: str) -> bool:
    """Whether a folder is torchvision's CIFAR ``root``: its only folder is cifar-10-batches-py or
    cifar-100-python (beside it, at most the archive torchvision downloaded)."""
    folders = [e for e in os.listdir(path) if os.path.isdir(os.path.join(path, e))]
    return (len(folders) == 1 and folders[0] in ("cifar-10-batches-py", "cifar-100-python")
            and cifar_variant(os.path.join(path, folders[0])) is not None)


def _png(row) -> bytes:
    """A CIFAR row (3072 bytes: the red, green and blue 32x32 planes) as PNG bytes (lossless)."""
    from PIL import Image

    pixels = row.reshape(3, 32, 32).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def iter_cifar(paths: tuple[str, ...], source_name: str) -> Iterator[RawItem]:
    import numpy as np

    for path in paths:
        batch = load_batch(path)
        key = "fine_labels" if "fine_labels" in batch else "labels"
        data, labels = batch.get("data"), batch.get(key)
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or labels is None:
            raise SourceError(f"the CIFAR batch {path!r} needs 'data' (uint8 [N, 3072]) and {key!r}")
        if len(labels) != len(data):
            raise SourceError(f"the CIFAR batch {path!r} has {len(data)} images and {len(labels)} labels")
        pixels = data.astype(np.uint8, copy=False)
        file = os.path.basename(path)
        for i in range(len(pixels)):
            yield RawItem(source_name, f"{file}:{i}", data=_png(pixels[i]), label=str(int(labels[i])))
