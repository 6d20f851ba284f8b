"""The device policy, one for torch and FAISS.

``cpu`` is the CPU. ``cuda`` asked for explicitly where the library sees no GPU is a ``DeviceError`` (a run
that was meant for a GPU must not crawl along on the CPU unnoticed). ``auto`` takes the GPU where there is
one and otherwise falls back to the CPU, saying so once per library on the ``overlap_audit`` logger.
"""

from __future__ import annotations

import logging

from .errors import DeviceError, param

DEVICES = ("auto", "cpu", "cuda")

log = logging.getLogger("overlap_audit")
_said: set[str] = set()


def _check(device: str | None) -> str:
    device = (device or "auto").lower()
    if device not in DEVICES:
        raise DeviceError(f"device must be auto, cpu or cuda (got {device!r})")
    return device


def _fallback(library: str) -> str:
    if library not in _said:
        _said.add(library)
        log.info("device auto: %s sees no GPU, using the CPU", library)
    return "cpu"


def faiss_gpu_count() -> int:
    """Number of GPUs FAISS can use here (0 with a CPU-only FAISS build)."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get is not None else 0
    except Exception:  # noqa: BLE001 - a GPU build on a machine without a driver
        return 0


def faiss_device(device: str | None = "auto") -> str:
    """``cpu`` or ``cuda`` for FAISS under the policy above."""
    device = _check(device)
    if device == "cpu":
        return "cpu"
    if faiss_gpu_count() > 0:
        return "cuda"
    if device == "cuda":
        raise DeviceError(f"{param('device', 'cuda')} was asked for but FAISS sees no GPU (install the faiss-gpu-cu12 "
                          "wheel, `pip install overlap-audit[gpu]`, on a machine with an NVIDIA driver), or use "
                          f"{param('device', 'cpu')}")
    return _fallback("FAISS")


def torch_device(device: str | None = "auto") -> str:
    """``cpu`` or ``cuda`` for torch under the policy above (imports torch, so call it when torch is needed)."""
    device = _check(device)
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise DeviceError(f"{param('device', 'cuda')} was asked for but torch sees no GPU (a CUDA build of torch on a "
                          f"machine with an NVIDIA driver), or use {param('device', 'cpu')} or "
                          f"{param('device', 'auto')}")
    return _fallback("torch")
