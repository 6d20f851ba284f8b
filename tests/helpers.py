"""Helpers the tests share: planted copies, image bytes, broken files, folders and predictions written to disk."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from overlap_audit.demos.synthetic import augment

PLANTED = {
    "resize": lambda im: im.resize((int(im.width * 0.7), int(im.height * 0.7)), Image.Resampling.BILINEAR),
    "jpeg": lambda im: jpeg(im, 75),
    "crop": lambda im: im.crop((2, 2, im.width - 2, im.height - 2)),
    "brighten": lambda im: augment(im, "brighten", np.random.default_rng(3)),
}


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def huge_png_header(width: int = 20000, height: int = 10000) -> bytes:
    """A tiny file whose PNG header claims width×height pixels (200 megapixels by default)."""
    raw = png_bytes(Image.new("L", (1, 1)))
    ihdr_data = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr_data
    ihdr = struct.pack(">I", len(ihdr_data)) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return raw[:8] + ihdr + raw[8 + 25:]


BROKEN = {
    "zero.png": b"",
    "truncated.png": None,  # filled in by broken_files(): a real PNG cut short
    "notes.jpg": b"this is not an image at all\n",
    "bomb.png": None,  # a PNG header claiming 200 megapixels
}


def broken_files(photo: Image.Image) -> dict[str, bytes]:
    good = png_bytes(photo.resize((64, 64)))
    return {
        "zero.png": b"",
        "truncated.png": good[: len(good) // 2],
        "notes.jpg": b"this is not an image at all\n",
        "bomb.png": huge_png_header(),
    }


def write_folder(root: Path, images: dict[str, Image.Image | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, im in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(im, bytes):
            path.write_bytes(im)
        elif rel.lower().endswith((".jpg", ".jpeg")):
            im.convert("RGB").save(path, quality=95)
        else:
            im.save(path)
    return root


def write_predictions(path: Path, dataset: str, ids: list[str], correct: list[int]) -> Path:
    lines = ["dataset,id,correct"] + [f"{dataset},{i},{c}" for i, c in zip(ids, correct)]
    path.write_text("\n".join(lines) + "\n")
    return path


def report_decisions(out_dir: Path) -> tuple[dict, list[dict]]:
    """What a report decided: its report.json without what changes from run to run (when it ran, how long
    each phase took, what came from the caches) and its splits.parquet rows."""
    import json

    import pyarrow.parquet as pq

    report = json.loads((Path(out_dir) / "report.json").read_text())
    for key in ("created", "timings"):
        report.pop(key, None)
    for d in ((report.get("verify") or {}).get("datasets") or {}).values():
        d.pop("n_cached", None)
    for d in ((report.get("calibration") or {}).get("datasets") or {}).values():
        d.pop("seconds", None)
    return report, pq.read_table(Path(out_dir) / "splits.parquet").to_pylist()
