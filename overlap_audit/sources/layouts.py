"""Evaluation sets in the layouts they are downloaded in, read in place: the Hugging Face hub's Parquet
files and ``datasets``' ``save_to_disk`` folders, LAION CLIP_benchmark's WebDataset folders, and the CIFAR-10
/ CIFAR-100 python batches that torchvision downloads.

``open_layout`` recognises a spec (``hf:PATH[:SPLIT]``, ``clip_benchmark:PATH[:SPLIT]``, ``cifar:PATH[:SPLIT]``,
or such a folder given as a bare path) and says how to read it: a ``Layout`` with the files of the chosen
split (default ``test``; a layout with one split uses it) and, where the layout names them, the class names
(label ``i`` is ``classnames[i]``) and prompt templates. ``iter_layout`` streams its items as RawItems.

Ids: a hub Parquet or ``save_to_disk`` row is its index in the split (``"0"``, ``"1"``, ...: the ``i`` of
``dataset[i]`` in ``datasets``), counted over the split's files in order (a single file given alone counts
from 0); a CIFAR row is ``<batch file>:<row>`` (``test_batch:17``); a CLIP_benchmark sample is its tar key.
Labels are the integer class indices as text; a hub label of -1 (no label) reads as unlabelled.

Why one module of this length: four small readers that share the split and id rules and the class-name
and template handling.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import SourceError
from ..values import RawItem
from .cifar import CIFAR_LAYOUTS, cifar_root, cifar_variant, iter_cifar, load_batch
from .remote import check_urls, is_url, open_url, url_name

__all__ = ["LAYOUT_KINDS", "LAYOUT_PREFIXES", "Layout", "iter_layout", "layout_path", "open_layout"]

LAYOUT_PREFIXES = ("hf", "clip_benchmark", "cifar")
# the Source kinds read here; a CLIP_benchmark folder is read as plain WebDataset ("wds") by sources
LAYOUT_KINDS = ("hf", "hf-disk", "cifar")
DEFAULT_SPLIT = "test"
HUB_IMAGE_COLUMNS = ("image", "img")
CLIP_BENCHMARK_CLASSNAMES = "classnames.txt"
CLIP_BENCHMARK_TEMPLATES = "zeroshot_classification_templates.txt"
HF_DATASETS_EXTRA = "pip install 'overlap-audit[hf-datasets]' (the `datasets` package)"


@dataclass(frozen=True)
class Layout:
    """A recognised evaluation-set layout: the Source kind that reads it, the files of its split, and the
    class names (label ``i`` is ``classnames[i]``) and templates it ships, if any."""

    kind: str                  # "hf" | "hf-disk" | "cifar" | "wds"
    paths: tuple[str, ...]     # the chosen split's files
    name: str                  # the default dataset name: the layout's folder
    classnames: tuple[str, ...] | None = None
    templates: tuple[str, ...] | None = None


def open_layout(spec: str) -> Layout | None:
    """The layout a spec names: by its prefix, or a bare path to a hub, ``save_to_disk``, CLIP_benchmark or
    CIFAR folder (or a hub Parquet file without an id column). None for any other spec."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in LAYOUT_PREFIXES:
        path, split = _path_and_split(rest)
        if is_url(path):
            if prefix == "clip_benchmark":
                return _open_clip_benchmark_url(spec, path, split)
            raise SourceError(f"source {spec!r}: {prefix}: reads a local folder; download it and give its path "
                              "(a URL is read as WebDataset tars, Parquet files with an id column, or a "
                              "CLIP_benchmark folder: clip_benchmark:URL)")
        if not os.path.exists(path):
            raise SourceError(f"source {spec!r}: no such file or directory {path!r}")
        opener = {"hf": _open_hf, "clip_benchmark": _open_clip_benchmark, "cifar": _open_cifar}[prefix]
        return opener(spec, path, split)
    path = os.path.expanduser(spec)
    if os.path.isfile(path) and path.endswith(".parquet") and _is_hub_parquet(path):
        return _open_hf(spec, path, None)
    if not os.path.isdir(path):
        return None
    if cifar_variant(path) is not None or cifar_root(path):
        return _open_cifar(spec, path, None)
    if os.path.isfile(os.path.join(path, CLIP_BENCHMARK_CLASSNAMES)) and _clip_benchmark_splits(path):
        return _open_clip_benchmark(spec, path, None)
    if _is_saved_dataset(path) or _hub_files(path):
        return _open_hf(spec, path, None)
    return None


def layout_path(spec: str) -> str | None:
    """The path a prefixed layout spec (``hf:PATH[:SPLIT]``, ...) names, without its split; None for any other
    spec."""
    prefix, sep, rest = spec.partition(":")
    return _path_and_split(rest)[0] if sep and prefix in LAYOUT_PREFIXES else None


def iter_layout(kind: str, paths: tuple[str, ...], source_name: str) -> Iterator[RawItem]:
    """The items of a layout's files, in a deterministic order."""
    if kind == "hf":
        return _iter_hub(paths, source_name)
    if kind == "hf-disk":
        return _iter_saved(paths[0], source_name)
    if kind == "cifar":
        return iter_cifar(paths, source_name)
    raise SourceError(f"unknown evaluation-set layout {kind!r}")


def _path_and_split(rest: str) -> tuple[str, str | None]:
    """``PATH[:SPLIT]``: a trailing ``:SPLIT`` is a split unless the whole is an existing path."""
    whole = os.path.expanduser(rest)
    if os.path.exists(whole):
        return whole, None
    head, sep, tail = rest.rpartition(":")
    if is_url(rest):
        port = tail.isdigit() and not urlsplit(head).path  # https://host:8443 ends with a port, not a split
        if sep and is_url(head) and tail and "/" not in tail and not port:
            return head, tail
        return rest, None
    if sep and head and tail and "/" not in tail:
        return os.path.expanduser(head), tail
    return whole, None


def _folder_name(path: str) -> str:
    return Path(os.path.abspath(path)).name


def _pick_split(spec: str, split: str | None, available: list[str]) -> str:
    if not available:
        raise SourceError(f"source {spec!r}: no split found")
    if split is None:
        if DEFAULT_SPLIT in available:
            return DEFAULT_SPLIT
        if len(available) == 1:
            return available[0]
        raise SourceError(f"source {spec!r} has the splits {', '.join(available)} and no {DEFAULT_SPLIT!r}: "
                          f"name one, e.g. {spec}:{available[0]}")
    if split not in available:
        raise SourceError(f"source {spec!r} has no split {split!r} (it has {', '.join(available)})")
    return split


# ---------------------------------------------------------------- Hugging Face hub Parquet


def _hub_features(path: str) -> tuple[list[str], dict]:
    """A Parquet file's column names and the ``datasets`` features in its ``huggingface`` schema metadata."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise SourceError(f"cannot read Parquet file {path!r}: {exc}") from None
    raw = (schema.metadata or {}).get(b"huggingface")
    features = {}
    if raw:
        try:
            features = json.loads(raw).get("info", {}).get("features", {}) or {}
        except (ValueError, AttributeError):
            features = {}
    return schema.names, features if isinstance(features, dict) else {}


def _is_hub_parquet(path: str) -> bool:
    try:
        names, features = _hub_features(path)
    except SourceError:
        return False  # unreadable: the Parquet reader says why
    return bool(features) and not {"key", "id"} & set(names)


def _hub_split_of(path: str) -> str:
    """The split a hub file holds: ``data/<split>-00000-of-00001.parquet`` or ``data/<split>/0000.parquet``."""
    stem = Path(path).name.split(".")[0]
    parent = Path(path).parent.name
    if re.fullmatch(r"\d+", stem) and parent != "data":
        return parent
    return stem.split("-")[0]


def _hub_files(root: str) -> list[str]:
    """The hub Parquet files of a dataset folder: under ``data/`` (hub repositories) or at its top."""
    data = os.path.join(root, "data")
    if os.path.isdir(data):
        found = [os.path.join(data, e) for e in os.listdir(data) if e.endswith(".parquet")]
        for sub in sorted(os.listdir(data)):
            if os.path.isdir(os.path.join(data, sub)):
                found += [os.path.join(data, sub, e) for e in os.listdir(os.path.join(data, sub))
                          if e.endswith(".parquet")]
        if found:
            return sorted(found)
    top = sorted(os.path.join(root, e) for e in os.listdir(root) if e.endswith(".parquet"))
    if top:
        return top if all(_is_hub_parquet(p) for p in top) else []
    # config folders, as `datasets` resolves them: plain_text/test-00000-of-00001.parquet, and the hub's
    # auto-converted Parquet, default/test/0000.parquet
    configs = {}
    for config in sorted(os.listdir(root)):
        folder = os.path.join(root, config)
        if not os.path.isdir(folder) or config.startswith("."):
            continue
        files = [os.path.join(folder, e) for e in os.listdir(folder) if e.endswith(".parquet")]
        for sub in os.listdir(folder):
            if os.path.isdir(os.path.join(folder, sub)):
                files += [os.path.join(folder, sub, e) for e in os.listdir(os.path.join(folder, sub))
                          if e.endswith(".parquet")]
        if files and _is_hub_parquet(sorted(files)[0]):
            configs[config] = sorted(files)
    if len(configs) > 1:
        raise SourceError(f"{root!r} holds the hub configurations {', '.join(configs)}: name one, e.g. "
                          f"hf:{os.path.join(root, next(iter(configs)))}")
    return next(iter(configs.values()), [])


def _hub_columns(path: str) -> tuple[str, str | None, tuple[str, ...] | None]:
    """(image column, label column or None, the label's ClassLabel names or None) of a hub Parquet file.

    The image column is the first ``Image`` feature (else a column named image or img); the label column is
    ``label``, else ``fine_label``, else the first ``ClassLabel`` feature.
    """
    names, features = _hub_features(path)
    image = next((c for c in names if features.get(c, {}).get("_type") == "Image"), None)
    image = image or next((c for c in HUB_IMAGE_COLUMNS if c in names), None)
    if image is None:
        raise SourceError(f"Parquet file {path!r} has no image column (no Image feature in its `huggingface` "
                          f"metadata and none of {', '.join(HUB_IMAGE_COLUMNS)}; it has {', '.join(names)})")
    class_labels = [c for c in names if features.get(c, {}).get("_type") == "ClassLabel"]
    label = next((c for c in ("label", "fine_label") if c in names), None) or next(iter(class_labels), None)
    classnames = None
    if label is not None and features.get(label, {}).get("_type") == "ClassLabel":
        classnames = tuple(str(n) for n in features[label].get("names") or ()) or None
    return image, label, classnames


def _open_hf(spec: str, path: str, split: str | None) -> Layout:
    if os.path.isdir(path) and _is_saved_dataset(path):
        return _open_saved(spec, path, split)
    if os.path.isfile(path):
        if not path.endswith(".parquet"):
            raise SourceError(f"source {spec!r}: 'hf:' needs a dataset folder (data/<split>-*.parquet, or a "
                              "`datasets` save_to_disk folder) or one .parquet file")
        parent = os.path.dirname(os.path.abspath(path))
        files = [path]
        name = _folder_name(os.path.dirname(parent)) if Path(parent).name == "data" else Path(path).name
    else:
        name = _folder_name(path)
        by_split: dict[str, list[str]] = {}
        for f in _hub_files(path):
            by_split.setdefault(_hub_split_of(f), []).append(f)
        if not by_split:
            raise SourceError(f"source {spec!r}: no hub Parquet files (data/<split>-*.parquet, CONFIG/<split>-*.parquet, "
                              "save_to_disk folder (state.json or dataset_dict.json) here")
        split = _pick_split(spec, split, sorted(by_split))
        files = by_split[split]
    _, _, classnames = _hub_columns(files[0])
    return Layout("hf", tuple(os.path.abspath(f) for f in files), name, classnames=classnames)


def _label_text(value) -> str | None:
    if value is None or (isinstance(value, int) and value < 0):  # datasets writes -1 for "no label"
        return None
    return str(value)


def _dataset_root(path: str) -> str:
    """The folder of the dataset a hub Parquet file belongs to: the nearest folder above it (at most three
    levels: ``data/``, ``CONFIG/``, ``default/SPLIT/``) that holds the repository's README.md or
    dataset_info.json, else the file's own folder."""
    folder = os.path.dirname(os.path.realpath(path))
    up = folder
    for _ in range(3):
        if any(os.path.isfile(os.path.join(up, f)) for f in ("README.md", "dataset_info.json", "dataset_dict.json")):
            return up
        up = os.path.dirname(up)
    return folder


def _readable_roots(dataset: str) -> list[str]:
    """Where a dataset's rows may point for their image files: the dataset's own folder and the Hugging Face
    caches (``datasets`` records absolute paths into them when it saves a set whose images it downloaded)."""
    home = os.path.expanduser("~")
    roots = [_dataset_root(dataset) if os.path.isfile(dataset) else os.path.realpath(dataset),
             os.environ.get("HF_DATASETS_CACHE") or "", os.environ.get("HF_HOME") or "",
             os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"), "huggingface")]
    return [os.path.realpath(r) for r in roots if r]


def _hub_image(value, roots: list[str]) -> tuple[bytes | None, str | None, str | None]:
    """(bytes, path, skip reason) of a hub image cell: a ``{bytes, path}`` struct or plain bytes. A path is
    read only inside ``roots`` (``_readable_roots``): a shared file naming another file (``/etc/...``, a
    private folder) must not have it read into a report."""
    if value is None:
        return None, None, "no image in this row"
    if isinstance(value, dict):
        data, where = value.get("bytes"), value.get("path")
        if data:
            return bytes(data), None, None
        if where and os.path.isabs(where) and os.path.isfile(where):
            real = os.path.realpath(where)
            if any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
                return None, where, None
            return None, None, (f"the row's image path {where!r} lies outside the dataset's folder and the "
                                "Hugging Face cache: not read")
        return None, None, f"the row holds no image bytes (only the path {where!r}, which is not a file here)"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None, None
    return None, None, f"the image column holds {type(value).__name__}, not image bytes"


def _iter_hub(paths: tuple[str, ...], source_name: str) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    row = 0
    for path in paths:
        image, label, _ = _hub_columns(path)
        columns = [image] + ([label] if label else [])
        roots = _readable_roots(path)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=columns):
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                raw, where, reason = _hub_image(data[image][i], roots)
                lab = _label_text(data[label][i]) if label else None
                yield RawItem(source_name, str(row), data=raw, path=where, label=lab, skip_reason=reason)
                row += 1


# ---------------------------------------------------------------- datasets' save_to_disk


def _is_saved_dataset(path: str) -> bool:
    return (os.path.isfile(os.path.join(path, "dataset_dict.json"))
            or all(os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_info.json")))


def _datasets():
    try:
        import datasets
    except ImportError:
        raise SourceError(f"a `datasets` save_to_disk folder is read with the `datasets` package: "
                          f"{HF_DATASETS_EXTRA}") from None
    return datasets


def _open_saved(spec: str, path: str, split: str | None) -> Layout:
    folder = path
    dict_file = os.path.join(path, "dataset_dict.json")
    if os.path.isfile(dict_file):
        try:
            with open(dict_file, encoding="utf-8") as fh:
                splits = [str(s) for s in json.load(fh).get("splits", [])]
        except (OSError, ValueError, AttributeError) as exc:
            raise SourceError(f"source {spec!r}: cannot read {dict_file}: {exc}") from None
        split = _pick_split(spec, split, splits)
        folder = os.path.join(path, split)
    elif split is not None:
        raise SourceError(f"source {spec!r}: this save_to_disk folder holds one split; give it without :{split}")
    ds = _load_saved(folder)
    _, _, classnames = _saved_columns(ds, folder)
    return Layout("hf-disk", (os.path.abspath(folder),), _folder_name(path), classnames=classnames)


def _load_saved(folder: str):
    datasets = _datasets()
    try:
        ds = datasets.load_from_disk(folder)
    except Exception as exc:  # noqa: BLE001 - datasets raises several types for a bad folder
        raise SourceError(f"cannot read the `datasets` save_to_disk folder {folder!r}: {exc}") from None
    if not isinstance(ds, datasets.Dataset):
        raise SourceError(f"{folder!r} holds several splits: name one (hf:{folder}:SPLIT)")
    return ds


def _saved_columns(ds, folder: str) -> tuple[str, str | None, tuple[str, ...] | None]:
    """(image column, label column or None, ClassLabel names or None), by the rule of ``_hub_columns``."""
    datasets = _datasets()
    features = ds.features
    image = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    image = image or next((c for c in HUB_IMAGE_COLUMNS if c in features), None)
    if image is None:
        raise SourceError(f"the save_to_disk folder {folder!r} has no Image feature (it has "
                          f"{', '.join(features)})")
    class_labels = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    label = next((c for c in ("label", "fine_label") if c in features), None) or next(iter(class_labels), None)
    classnames = None
    if label is not None and isinstance(features[label], datasets.ClassLabel):
        classnames = tuple(str(n) for n in features[label].names) or None
    return image, label, classnames


def _iter_saved(folder: str, source_name: str) -> Iterator[RawItem]:
    datasets = _datasets()
    ds = _load_saved(folder)
    image, label, _ = _saved_columns(ds, folder)
    columns = [image] + ([label] if label else [])
    ds = ds.select_columns(columns)
    if isinstance(ds.features[image], datasets.Image):
        ds = ds.cast_column(image, datasets.Image(decode=False))  # bytes as stored: decoding is the workers'
    row = 0
    roots = _readable_roots(folder)
    for batch in ds.iter(batch_size=256):
        for i in range(len(batch[image])):
            raw, where, reason = _hub_image(batch[image][i], roots)
            lab = _label_text(batch[label][i]) if label else None
            yield RawItem(source_name, str(row), data=raw, path=where, label=lab, skip_reason=reason)
            row += 1


# ---------------------------------------------------------------- CLIP_benchmark WebDataset


def _clip_benchmark_splits(root: str) -> dict[str, list[str]]:
    """{split: its tar shards in shard order} of a CLIP_benchmark folder (``<split>/0.tar``, ``1.tar``...)."""
    out = {}
    for entry in sorted(os.listdir(root)):
        folder = os.path.join(root, entry)
        if os.path.isdir(folder):
            tars = [os.path.join(folder, t) for t in os.listdir(folder) if t.endswith(".tar")]
            if tars:
                out[entry] = sorted(tars, key=lambda t: (len(Path(t).stem), Path(t).stem))  # 2.tar before 10.tar
    return out


def _text_lines(path: str) -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return tuple(line.strip() for line in fh if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from None


def _open_clip_benchmark(spec: str, root: str, split: str | None) -> Layout:
    names_file = os.path.join(root, CLIP_BENCHMARK_CLASSNAMES)
    if not os.path.isdir(root) or not os.path.isfile(names_file):
        raise SourceError(f"source {spec!r}: a CLIP_benchmark folder holds {CLIP_BENCHMARK_CLASSNAMES} and "
                          f"<split>/N.tar shards; {root!r} has no {CLIP_BENCHMARK_CLASSNAMES}")
    splits = _clip_benchmark_splits(root)
    if not splits:
        raise SourceError(f"source {spec!r}: no <split>/N.tar shards in {root!r}")
    split = _pick_split(spec, split, sorted(splits))
    classnames = _text_lines(names_file)
    if not classnames:
        raise SourceError(f"{names_file} names no classes")
    templates_file = os.path.join(root, CLIP_BENCHMARK_TEMPLATES)
    templates = _text_lines(templates_file) if os.path.isfile(templates_file) else None
    return Layout("wds", tuple(os.path.abspath(t) for t in splits[split]), _folder_name(root),
                  classnames=classnames, templates=templates or None)


CLIP_BENCHMARK_NSHARDS = "nshards.txt"
CLIP_BENCHMARK_TYPE = "dataset_type.txt"
MAX_TEXT_BYTES = 16 << 20  # a class-name, template or shard-count file larger than this is not one


def _clip_benchmark_roots(url: str) -> tuple[str, str, str]:
    """(metadata root, tar root, dataset name) of a CLIP_benchmark folder URL. A Hugging Face hub folder as
    the browser shows it (``https://huggingface.co/datasets/USER/REPO/tree/BRANCH``) is read as
    CLIP_benchmark reads it: its text files from ``raw/BRANCH``, its tars (Git LFS) from ``resolve/BRANCH``."""
    url = url.rstrip("/")
    parts = urlsplit(url)
    segments = parts.path.strip("/").split("/")
    if parts.hostname == "huggingface.co" and len(segments) >= 5 and segments[0] == "datasets":
        base = f"{parts.scheme}://{parts.netloc}/" + "/".join(segments[:3])
        rest = "/".join(segments[4:])
        if segments[3] in ("tree", "raw", "resolve"):
            return f"{base}/raw/{rest}", f"{base}/resolve/{rest}", segments[2]
    return url, url, url_name(url)


def _url_text(url: str, what: str) -> str | None:
    """The text of a small file at ``url``; None when it does not exist; SourceError when it cannot be read."""
    try:
        with open_url(url, stream=True) as fh:
            data = fh.read(MAX_TEXT_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SourceError(f"the CLIP_benchmark {what} {url} cannot be read: {exc}") from None
    if len(data) > MAX_TEXT_BYTES:
        raise SourceError(f"the CLIP_benchmark {what} {url} is over {MAX_TEXT_BYTES:,} bytes: not a {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"the CLIP_benchmark {what} {url} is not UTF-8 text: {exc}") from None


def _open_clip_benchmark_url(spec: str, url: str, split: str | None) -> Layout:
    """A CLIP_benchmark folder over a URL, by CLIP_benchmark's own rule: ``<split>/nshards.txt`` gives the
    shards ``<split>/0.tar`` ... ``N-1.tar``, ``classnames.txt`` the class names, and
    ``zeroshot_classification_templates.txt`` (optional) the templates. A server has no listing, so a split
    other than ``test`` is named (``clip_benchmark:URL:train``)."""
    meta, tars, name = _clip_benchmark_roots(url)
    split = split or DEFAULT_SPLIT
    nshards_url = f"{meta}/{split}/{CLIP_BENCHMARK_NSHARDS}"
    text = _url_text(nshards_url, "shard count")
    if text is None:
        raise SourceError(f"source {spec!r}: {nshards_url} does not exist: a CLIP_benchmark folder holds "
                          f"<split>/{CLIP_BENCHMARK_NSHARDS}; name the split if it is not {DEFAULT_SPLIT!r} "
                          f"(clip_benchmark:URL:SPLIT), or give the tars themselves (URL/{split}/{{0..N}}.tar)")
    try:
        nshards = int(text.strip())
    except ValueError:
        raise SourceError(f"{nshards_url} holds {text.strip()[:40]!r}, not a number of shards") from None
    if nshards < 1:
        raise SourceError(f"{nshards_url} says {nshards} shards: nothing to read")
    kind = _url_text(f"{meta}/{CLIP_BENCHMARK_TYPE}", "dataset type")
    if kind is not None and kind.strip().lower() == "retrieval":
        raise SourceError(f"source {spec!r} is a CLIP_benchmark retrieval set ({CLIP_BENCHMARK_TYPE}), which has "
                          "no classes to score zero-shot; give its tars as a plain source (wds:URL/...)")
    names_url = f"{meta}/{CLIP_BENCHMARK_CLASSNAMES}"
    names = _url_text(names_url, "class-name file")
    classnames = tuple(line.strip() for line in (names or "").splitlines() if line.strip())
    if not classnames:
        raise SourceError(f"source {spec!r}: {names_url} " + ("does not exist" if names is None else "names no class")
                          + f": a CLIP_benchmark classification folder holds {CLIP_BENCHMARK_CLASSNAMES} (or give "
                          f"the tars as wds:{tars}/{split}/{{0..{nshards - 1}}}.tar, without class names)")
    templates = _url_text(f"{meta}/{CLIP_BENCHMARK_TEMPLATES}", "template file")
    shards = [f"{tars}/{split}/{n}.tar" for n in range(nshards)]
    check_urls(spec, shards)
    return Layout("wds", tuple(shards), name, classnames=classnames,
                  templates=tuple(t.strip() for t in (templates or "").splitlines() if t.strip()) or None)


# ---------------------------------------------------------------- CIFAR python batches


def _open_cifar(spec: str, root: str, split: str | None) -> Layout:
    variant = cifar_variant(root) if os.path.isdir(root) else None
    if variant is None and os.path.isdir(root):  # torchvision's root: the folder that holds the batches' folder
        inner = [os.path.join(root, d) for d in ("cifar-10-batches-py", "cifar-100-python")
                 if cifar_variant(os.path.join(root, d))]
        if len(inner) == 1:
            root = inner[0]
            variant = cifar_variant(root)
    if variant is None:
        raise SourceError(f"source {spec!r}: not a CIFAR python folder: give cifar:DIR with DIR the folder "
                          "cifar-10-batches-py (test_batch and batches.meta) or cifar-100-python (test and meta), "
                          "or torchvision's root, the folder that holds one of them")
    test, train, meta, names_key, _ = CIFAR_LAYOUTS[variant]
    available = {"test": test}
    if all(os.path.isfile(os.path.join(root, f)) for f in train):
        available["train"] = train
    split = _pick_split(spec, split, sorted(available))
    names = load_batch(os.path.join(root, meta)).get(names_key)
    if not isinstance(names, list) or not names:
        raise SourceError(f"{os.path.join(root, meta)} has no {names_key!r} list")
    classnames = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    return Layout("cifar", tuple(os.path.abspath(os.path.join(root, f)) for f in available[split]),
                  _folder_name(root), classnames=classnames)
