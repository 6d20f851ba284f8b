"""Build the real-overlap development set's images and candidate pairs (and, given the review, pairs.csv).

    python benchmarks/devset/make_devset.py --out DIR [--cache DIR] [--k 10] [--labels review.txt]

1. Fetches Debian's openclipart-png (the corpus) and tuxpaint-stamps-default with ``apt-get download`` +
   ``dpkg -x`` (overlap_audit.demos.realdata.fetch_debian_package; cached under ~/.cache/overlap-audit).
2. Lists the Tux Paint stamps that exist only as SVG (no PNG of the same name beside them) and renders each
   with cairosvg to a PNG of 512 px on its long side, transparent background, in DIR/eval/ (same relative
   path, .png), with DIR/manifest.json. The PNG stamps and the SVGs with a PNG twin are never opened: they
   are the held-out set of the README's real-data demo.
3. Embeds every corpus image and every rendered stamp with phash and clipdup, each on the whole image and on
   the content-trimmed view (``trim_to_content``), after reducing it to 384 px on its long side, caching the
   corpus embeddings in DIR/work/. For every
   stamp, the candidates are the union of the top-k corpus neighbours under each of the four, plus the top k
   (by clipdup similarity) of the corpus files whose name shares a word with the stamp's name. They go to
   DIR/candidates.csv, and one contact sheet per stamp to DIR/sheets/ (the stamp, then its candidates
   numbered in candidates.csv's order; both sides shown trimmed, on white) for review by eye.
4. With ``--labels FILE`` (the review: one line per stamp, ``STAMP: dup=1,4 unsure=7 # note``, every
   candidate not listed is a negative), writes pairs.csv beside this script.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/devset/make_devset.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.devset.make_devset", *sys.argv[1:]])

import argparse
import csv
import io
import json
import multiprocessing as mp
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from overlap_audit.demos.realdata import (CORPUS_PACKAGE, CORPUS_SUBDIR, EVAL_PACKAGE, STAMPS_SUBDIR,
                                          default_cache_dir, fetch_debian_package)
from overlap_audit.detectors import get_detector
from overlap_audit.imaging import ImageRejected, decode_image

HERE = Path(__file__).resolve().parent
RENDER_SIZE = 512  # long side of a rendered stamp, pixels
CONTENT_LEVEL = 245  # a pixel darker than this in any channel (on white) is content
SIGNALS = ("phash", "clipdup", "phash-trim", "clipdup-trim")
THUMB = 144
WORK_SIZE = 384  # images are reduced to this long side before the candidate signals see them
# words that say nothing about which drawing a file is
STOP_WORDS = {"the", "and", "with", "for", "of", "a", "an", "svg", "png", "cartoon", "clipart", "clip", "art",
              "icon", "simple", "small", "big", "new", "old", "black", "white", "color", "colour", "red",
              "green", "blue", "yellow", "brown", "orange", "pink", "purple", "grey", "gray", "left", "right",
              "openclipart", "architetto", "francesco", "rosa", "version", "ver", "edited", "edit", "remix",
              "mirror", "front", "side", "view", "outline", "line", "lineart", "stamp", "tuxpaint"}


def trim_to_content(image: Image.Image) -> Image.Image:
    """The content box of an RGB image on white: the bounding box of pixels darker than 245 in any channel
    (the whole image when there is none)."""
    arr = np.asarray(image.convert("RGB"))
    mask = arr.min(axis=2) < CONTENT_LEVEL
    if not mask.any():
        return image
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return image.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))


def name_tokens(path: str) -> set[str]:
    """The words of a file name (stem only; lower case; digits, short words and STOP_WORDS dropped)."""
    stem = re.sub(r"([a-z])([A-Z])", r"\1 \2", Path(path).stem).lower()
    words = set(re.split(r"[^a-z]+", stem))
    words |= {w[:-1] for w in words if len(w) > 4 and w.endswith("s")}  # plurals: apples -> apple
    return {w for w in words if len(w) >= 3 and w not in STOP_WORDS}


# ---------------------------------------------------------------------------------------------- fetching


def package_version(cache: Path, package: str) -> str:
    root = cache / "extracted" / package / ".complete"
    return root.read_text().strip() if root.exists() else "?"


def fetch(cache: Path) -> tuple[Path, Path]:
    corpus_pkg = fetch_debian_package(CORPUS_PACKAGE, cache)
    stamps_pkg = fetch_debian_package(EVAL_PACKAGE, cache)
    return corpus_pkg, stamps_pkg


def svg_only_stamps(stamps_pkg: Path) -> list[str]:
    """The SVG stamps with no PNG of the same name beside them, relative to the package root."""
    root = stamps_pkg / STAMPS_SUBDIR
    return sorted(str(p.relative_to(stamps_pkg)) for p in root.rglob("*.svg")
                  if p.is_file() and not p.with_suffix(".png").exists())


def render_svg(svg: Path, size: int = RENDER_SIZE) -> bytes:
    """An SVG rendered to PNG bytes with ``size`` px on its long side, transparent background."""
    import cairosvg

    # unsafe: allow XML entities (some Inkscape files declare their namespaces as entities); the files
    # come from a Debian package, not from strangers
    png = cairosvg.svg2png(url=str(svg), output_width=size, unsafe=True)
    w, h = Image.open(io.BytesIO(png)).size
    if h > w:
        png = cairosvg.svg2png(url=str(svg), output_height=size, unsafe=True)
    return png


def render_stamps(stamps_pkg: Path, stamps: list[str], out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    rendered, failed = [], []
    for rel in stamps:
        dest = out / "eval" / Path(rel).relative_to(STAMPS_SUBDIR).with_suffix(".png")
        if not dest.exists():
            try:
                png = render_svg(stamps_pkg / rel)
            except Exception as exc:  # noqa: BLE001 - a stamp cairosvg cannot draw is listed, not fatal
                failed.append((rel, f"{type(exc).__name__}: {exc}"))
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(png)
        rendered.append(rel)
    return rendered, failed


def eval_png(out: Path, stamp: str) -> Path:
    return out / "eval" / Path(stamp).relative_to(STAMPS_SUBDIR).with_suffix(".png")


# ---------------------------------------------------------------------------------------------- embedding

_STATE: dict = {}


def _init(detectors: dict, work_size: int | None, thumbs: bool, library_trim: bool = False) -> None:
    _STATE.update(detectors=detectors, work_size=work_size, thumbs=thumbs, library_trim=library_trim)


def views(path: str):
    """{(detector name, trimmed?): preprocessed array} and a trimmed thumbnail (PNG bytes) of one image, or
    the reason it cannot be read."""
    try:
        img = decode_image(path=path)
    except ImageRejected as exc:
        return str(exc)
    if _STATE["work_size"]:  # phash reads 32 px and clipdup 96 px: a few hundred pixels are plenty
        img.thumbnail((_STATE["work_size"],) * 2, Image.Resampling.BICUBIC, reducing_gap=2.0)
    if _STATE.get("library_trim"):  # the audit's own content normalisation (overlap_audit.content)
        from overlap_audit.content import trim

        trimmed = trim(img)[0]
    else:  # the rule the candidates were found with (the review's numbering depends on it)
        trimmed = trim_to_content(img)
    out = {}
    for name, det in _STATE["detectors"].items():
        out[(name, False)] = det.preprocess(img)
        out[(name, True)] = det.preprocess(trimmed)
    thumb = b""
    if _STATE["thumbs"]:
        t = trimmed.copy()
        t.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        t.save(buf, format="PNG")
        thumb = buf.getvalue()
    return out, thumb


def embed_views(paths: list[str], detectors: dict, *, work_size: int | None = WORK_SIZE,
                thumbs_dir: Path | None = None, workers: int = 2, batch: int = 256, library_trim: bool = False):
    """Every detector's embeddings of every image, whole and trimmed: ({(name, trimmed?): array}, the
    indices of the images that decode, [(index, reason)] of the rest). Decoding runs in ``workers``
    processes; with ``work_size`` each image is first reduced to that long side. ``library_trim``: the trimmed
    view is ``overlap_audit.content.trim``'s instead of ``trim_to_content``'s."""
    keep, failed = [], []
    keys = [(n, t) for n in detectors for t in (False, True)]
    parts: dict = {key: [] for key in keys}
    pending: dict = {key: [] for key in keys}

    def flush():
        for key in keys:
            if pending[key]:
                parts[key].append(detectors[key[0]].embed(np.stack(pending[key])))
                pending[key] = []

    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_init, initargs=(detectors, work_size, thumbs_dir is not None, library_trim)) as pool:
        for i, r in enumerate(pool.imap(views, paths, chunksize=8)):
            if isinstance(r, str):
                failed.append((i, r))
                continue
            keep.append(i)
            for key in keys:
                pending[key].append(r[0][key])
            if thumbs_dir is not None:
                (thumbs_dir / f"{i}.png").write_bytes(r[1])
            if len(pending[keys[0]]) >= batch:
                flush()
            if (i + 1) % 1000 == 0:
                print(f"  {i + 1}/{len(paths)}", file=sys.stderr, flush=True)
    flush()
    return {key: np.concatenate(parts[key]) for key in keys}, np.array(keep, dtype=np.int64), failed


def embed_paths(paths: list[str], thumbs_dir: Path | None = None):
    """The four candidate signals' embeddings of ``paths`` ({signal: array}), kept indices, failures."""
    emb, keep, failed = embed_views(paths, {"phash": get_detector("phash"), "clipdup": get_detector("clipdup")},
                                    thumbs_dir=thumbs_dir)
    return {f"{n}{'-trim' if t else ''}": e for (n, t), e in emb.items()}, keep, failed


def corpus_embeddings(corpus_pkg: Path, work: Path):
    """The corpus's ids (relative to the package root) and embeddings, cached in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    ids_file = work / "corpus_ids.json"
    if ids_file.exists() and all((work / f"corpus_{s}.npy").exists() for s in SIGNALS):
        meta = json.loads(ids_file.read_text())
        return meta["ids"], {s: np.load(work / f"corpus_{s}.npy") for s in SIGNALS}, meta["skipped"]
    root = corpus_pkg / CORPUS_SUBDIR
    paths = sorted(str(p) for p in root.rglob("*.png") if p.is_file())
    thumbs = work / "corpus_thumbs"
    thumbs.mkdir(exist_ok=True)
    print(f"embedding {len(paths)} corpus images", file=sys.stderr)
    emb, keep, failed = embed_paths(paths, thumbs)
    ids = [str(Path(paths[i]).relative_to(corpus_pkg)) for i in keep]
    # thumbnails are named by the index in ``ids`` from here on
    for j, i in enumerate(keep):
        (thumbs / f"{i}.png").rename(thumbs / f"c{j}.png")
    skipped = [(str(Path(paths[i]).relative_to(corpus_pkg)), why) for i, why in failed]
    for s in SIGNALS:
        np.save(work / f"corpus_{s}.npy", emb[s])
    ids_file.write_text(json.dumps({"ids": ids, "skipped": skipped}, indent=1))
    return ids, emb, skipped


def similarity(signal: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    det = get_detector("phash" if signal.startswith("phash") else "clipdup")
    return det.similarity(a, b)


# ---------------------------------------------------------------------------------------------- candidates


def top_k(sim: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores of each row, best first (ties: lower index first)."""
    order = np.argsort(-sim, axis=1, kind="stable")
    return order[:, :k]


def find_candidates(stamps: list[str], stamp_emb: dict, corpus_ids: list[str], corpus_emb: dict, k: int):
    """{stamp: {corpus id: {signal: score}}} — the union of every signal's top k."""
    cands: dict[str, dict[str, dict[str, float]]] = {s: {} for s in stamps}
    sims = {}
    for sig in SIGNALS:
        sims[sig] = similarity(sig, stamp_emb[sig], corpus_emb[sig])
        for i, row in enumerate(top_k(sims[sig], k)):
            for j in row:
                cands[stamps[i]].setdefault(corpus_ids[j], {})[sig] = float(sims[sig][i, j])
    corpus_tokens = [name_tokens(c) for c in corpus_ids]
    for i, stamp in enumerate(stamps):
        words = name_tokens(stamp)
        matches = [j for j, t in enumerate(corpus_tokens) if words & t]
        matches.sort(key=lambda j: -sims["clipdup"][i, j])
        for j in matches[:k]:
            cands[stamp].setdefault(corpus_ids[j], {})["name"] = float(sims["clipdup"][i, j])
    return cands, sims


def write_candidates(path: Path, cands: dict, sims: dict, corpus_index: dict[str, int], stamp_index: dict) -> None:
    """candidates.csv: stamp, index (the number on its contact sheet), corpus, signals, and every signal's
    score. Candidates are ordered by their best clipdup score (full or trimmed)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["stamp", "index", "corpus", "signals", *SIGNALS])
        for stamp, found in cands.items():
            i = stamp_index[stamp]
            for n, (cid, sigs) in enumerate(ordered(found, sims, i, corpus_index)):
                j = corpus_index[cid]
                w.writerow([stamp, n, cid, "+".join(s for s in (*SIGNALS, "name") if s in sigs),
                            *(f"{sims[s][i, j]:.4f}" for s in SIGNALS)])


def ordered(found: dict, sims: dict, i: int, corpus_index: dict[str, int]):
    def best(item):
        j = corpus_index[item[0]]
        return -max(sims["clipdup"][i, j], sims["clipdup-trim"][i, j])

    return sorted(found.items(), key=best)


def contact_sheet(stamp_img: Image.Image, thumbs: list[Image.Image], title: str, cols: int = 8) -> Image.Image:
    """The stamp (large, left) and numbered candidate thumbnails in a grid."""
    cell = THUMB + 20
    big = trim_to_content(stamp_img)
    big.thumbnail((2 * THUMB, 2 * THUMB), Image.Resampling.LANCZOS)
    rows = max(1, -(-len(thumbs) // cols))
    left = 2 * THUMB + 20
    sheet = Image.new("RGB", (left + cols * cell, max(rows * cell, 2 * THUMB + 40) + 20), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), title, fill="black")
    sheet.paste(big, (10, 20))
    for n, t in enumerate(thumbs):
        x, y = left + (n % cols) * cell, 20 + (n // cols) * cell
        draw.rectangle((x, y, x + THUMB + 2, y + THUMB + 2), outline=(180, 180, 180))
        sheet.paste(t, (x + 1 + (THUMB - t.width) // 2, y + 1 + (THUMB - t.height) // 2))
        draw.rectangle((x, y + THUMB + 3, x + 22, y + THUMB + 16), fill=(255, 255, 200))
        draw.text((x + 2, y + THUMB + 4), str(n), fill=(200, 0, 0))
    return sheet


# ---------------------------------------------------------------------------------------------- labels


def parse_review(path: Path) -> dict[str, tuple[set[int], set[int], str]]:
    """The review file: ``STAMP: dup=1,4 unsure=7 # note`` -> {stamp: (duplicate indices, unsure, note)}."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        head, _, note = line.partition("#")
        stamp, _, rest = head.partition(":")
        dup, unsure = set(), set()
        for field in rest.split():
            key, _, vals = field.partition("=")
            nums = {int(v) for v in vals.split(",") if v}
            if key == "dup":
                dup |= nums
            elif key == "unsure":
                unsure |= nums
            else:
                raise ValueError(f"{path}: unknown field {field!r} in {line!r}")
        out[stamp.strip()] = (dup, unsure, note.strip())
    return out


def write_pairs(candidates_csv: Path, review: dict, dest: Path) -> tuple[int, int, int]:
    """pairs.csv from candidates.csv and the review (only reviewed stamps); returns (stamps, positives,
    negatives)."""
    rows = list(csv.DictReader(open(candidates_csv, newline="")))
    n_pos = n_neg = 0
    with open(dest, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["stamp", "corpus", "label", "unsure", "signals", "note"])
        for r in rows:
            if r["stamp"] not in review:
                continue
            dup, unsure, note = review[r["stamp"]]
            n = int(r["index"])
            label, uns = int(n in dup), int(n in unsure)
            n_pos += label and not uns
            n_neg += not label and not uns
            w.writerow([r["stamp"], r["corpus"], label, uns, r["signals"], note if (label or uns) else ""])
    return len(review), n_pos, n_neg


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cache", type=Path, default=None, help="package cache (default ~/.cache/overlap-audit)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--labels", type=Path, default=None, help="the review file: writes pairs.csv from it")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    cache = (args.cache or default_cache_dir()).resolve()
    corpus_pkg, stamps_pkg = fetch(cache)
    stamps = svg_only_stamps(stamps_pkg)
    rendered, failed = render_stamps(stamps_pkg, stamps, out)
    print(f"{len(stamps)} SVG-only stamps, {len(rendered)} rendered, {len(failed)} failed", file=sys.stderr)
    ids, corpus_emb, skipped = corpus_embeddings(corpus_pkg, out / "work")
    manifest = {
        "corpus_package": package_version(cache, CORPUS_PACKAGE),
        "eval_package": package_version(cache, EVAL_PACKAGE),
        "rendering": f"cairosvg, {RENDER_SIZE} px on the long side, transparent background "
                     "(composited on white when decoded)",
        "stamps": rendered, "render_failed": failed,
        "corpus_root": str(corpus_pkg), "stamps_root": str(stamps_pkg),
        "corpus_images": len(ids), "corpus_skipped": skipped, "k": args.k, "signals": [*SIGNALS, "name"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))

    stamp_emb, keep, bad = embed_paths([str(eval_png(out, s)) for s in rendered], None)
    if bad:
        raise SystemExit(f"rendered stamps that do not decode: {bad}")
    cands, sims = find_candidates(rendered, stamp_emb, ids, corpus_emb, args.k)
    corpus_index = {c: j for j, c in enumerate(ids)}
    stamp_index = {s: i for i, s in enumerate(rendered)}
    write_candidates(out / "candidates.csv", cands, sims, corpus_index, stamp_index)
    n = sum(len(v) for v in cands.values())
    print(f"{n} candidate pairs for {len(rendered)} stamps -> {out / 'candidates.csv'}", file=sys.stderr)

    sheets = out / "sheets"
    sheets.mkdir(exist_ok=True)
    for i, stamp in enumerate(rendered):
        dest = sheets / f"{i:03d}.png"
        if dest.exists():
            continue
        img = decode_image(path=str(eval_png(out, stamp)))
        thumbs = [Image.open(out / "work" / "corpus_thumbs" / f"c{corpus_index[c]}.png").convert("RGB")
                  for c, _ in ordered(cands[stamp], sims, i, corpus_index)]
        contact_sheet(img, thumbs, f"{i:03d} {stamp}").save(dest)
    if args.labels:
        counts = write_pairs(out / "candidates.csv", parse_review(args.labels), HERE / "pairs.csv")
        print("pairs.csv: %d stamps, %d positive, %d negative pairs" % counts, file=sys.stderr)


if __name__ == "__main__":
    main()
