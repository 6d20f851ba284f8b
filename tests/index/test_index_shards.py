"""The index's shards (overlap_audit.index.shards): they round-trip through the public functions, rows are
found by key, and the package's modules import each other in one direction only."""

import ast
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import overlap_audit.index as index_pkg
from overlap_audit.errors import ResumeError
from overlap_audit.index.manifest import SHARD_DIR
from overlap_audit.index.shards import (finished_shards, iter_shard_vectors, read_shard, read_shard_vectors,
                                        rows_by_key, shard_first_rows, shard_item_ids, shard_path, shard_paths,
                                        usable_mask, vector_width, write_shard)
from overlap_audit.values import DetectorInfo, Skipped

PACKAGE = Path(index_pkg.__file__).parent


def info_for(metric: str) -> DetectorInfo:
    dim = 64 if metric == "hamming" else 8
    return DetectorInfo(spec="t", name="t", version="1", dim=dim, metric=metric, default_threshold=0.9)


def vector(rng, info: DetectorInfo) -> np.ndarray:
    if info.metric == "hamming":
        return rng.integers(0, 256, vector_width(info), dtype=np.uint8)
    v = rng.standard_normal(info.dim).astype(np.float32)
    return v / np.linalg.norm(v)


def write_example(out: Path, shard_no: int, info: DetectorInfo, rng, first: int) -> dict:
    """Five items: two indexed (one with a recall copy), one low-information, one skipped, one indexed."""
    ids = [f"im{first + i}.png" for i in range(5)]
    vectors = [vector(rng, info), vector(rng, info), vector(rng, info), None, vector(rng, info)]
    copies = [vector(rng, info), None, vector(rng, info), None, None]  # the low-information row's copy: unused
    rows = dict(keys=[f"src/{i}" for i in ids], sources=["src"] * 5, ids=ids,
                captions=["a cat", None, None, None, "a dog"], labels=["cat", None, None, None, "dog"],
                vectors=vectors, low_information=[False, False, True, False, False],
                reasons=[None, None, None, "cannot decode", None], copies=copies)
    write_shard(shard_path(out, shard_no), info, **rows)
    return rows


@pytest.mark.parametrize("metric", ["cosine", "hamming"])
def test_shards_round_trip(tmp_path, metric):
    info = info_for(metric)
    rng = np.random.default_rng(0)
    (tmp_path / SHARD_DIR).mkdir()
    written = [write_example(tmp_path, n, info, rng, 5 * n) for n in range(3)]

    assert shard_paths(tmp_path) == [tmp_path / SHARD_DIR / f"shard-{n:06d}.parquet" for n in range(3)]
    assert finished_shards(tmp_path) == [0, 1, 2]
    assert [row for _, row in shard_first_rows(tmp_path)] == [0, 3, 6]
    usable = [0, 1, 4]
    for n, rows in enumerate(written):
        path = shard_path(tmp_path, n)
        assert shard_item_ids(path) == list(zip(rows["sources"], rows["ids"]))
        table = pq.read_table(path)
        assert usable_mask(table).tolist() == [True, True, False, False, True]
        assert table["caption"].to_pylist() == rows["captions"] and table["label"].to_pylist() == rows["labels"]
        vectors = read_shard_vectors(path, info)
        assert vectors.dtype == (np.uint8 if metric == "hamming" else np.float32)
        np.testing.assert_array_equal(vectors, np.stack([rows["vectors"][i] for i in usable]))
        shard = read_shard(path, info)
        assert shard.keys == rows["keys"] and shard.ids == rows["ids"] and shard.reasons == rows["reasons"]
        assert shard.skipped == [Skipped("src", rows["ids"][3], "cannot decode")]
        assert shard.usable.tolist() == [True, True, False, False, True]
        assert shard.has_query.tolist() == [True, False, False, False, False]
        np.testing.assert_array_equal(shard.query_vectors[0], rows["copies"][0])

    streamed = list(iter_shard_vectors(tmp_path, info))
    assert [first for first, _ in streamed] == [0, 3, 6]
    for (_, vectors), rows in zip(streamed, written):
        np.testing.assert_array_equal(vectors, np.stack([rows["vectors"][i] for i in usable]))
    assert not list(tmp_path.rglob(".*.tmp-*"))  # written atomically


def test_rows_are_found_by_key_across_shards(tmp_path):
    info = info_for("cosine")
    (tmp_path / SHARD_DIR).mkdir()
    for n in range(3):
        write_example(tmp_path, n, info, np.random.default_rng(n), 5 * n)
    # a key from the first and the last shard, a skipped item's key, one in no shard, and None
    rows = rows_by_key(tmp_path, ["src/im0.png", "src/im14.png", "src/im8.png", "src/nope", None],
                       ["source", "id", "caption", "label", "skip_reason", "no_such_column"])
    assert rows == {
        "src/im0.png": {"source": "src", "id": "im0.png", "caption": "a cat", "label": "cat", "skip_reason": None,
                        "no_such_column": None},
        "src/im14.png": {"source": "src", "id": "im14.png", "caption": "a dog", "label": "dog", "skip_reason": None,
                         "no_such_column": None},
        "src/im8.png": {"source": "src", "id": "im8.png", "caption": None, "label": None,
                        "skip_reason": "cannot decode", "no_such_column": None},
    }
    assert rows_by_key(tmp_path, [], ["id"]) == {}
    assert rows_by_key(tmp_path / "nowhere", ["src/im0.png"], ["id"]) == {}


def test_a_gap_in_the_shards_is_refused(tmp_path):
    info = info_for("cosine")
    (tmp_path / SHARD_DIR).mkdir()
    for n in (0, 2):
        write_example(tmp_path, n, info, np.random.default_rng(n), 5 * n)
    with pytest.raises(ResumeError, match="contiguous"):
        finished_shards(tmp_path)
    assert finished_shards(tmp_path / "nowhere") == []


def imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every import in a file, at any depth; relative modules made absolute."""
    package = "overlap_audit.index"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    return found


def test_ray_imports_no_private_name():
    private = [(m, n) for m, n in imports(PACKAGE / "ray.py") if m != "__future__"
               and (n.startswith("_") or any(part.startswith("_") for part in m.split(".")))]
    assert private == []


def test_index_modules_import_in_one_direction():
    # each may import only those before it
    order = ["manifest", "items", "shards", "integrity", "mih", "views", "load", "ann", "ray", "search", "finish", "build"]
    assert sorted(order) == sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    for position, name in enumerate(order):
        for module, imported in imports(PACKAGE / f"{name}.py"):
            target = module.split(".")[2] if module.startswith("overlap_audit.index.") else None
            if module == "overlap_audit.index":
                target = imported
            assert target is None or target in order[:position], f"{name}.py imports {module} {imported}"
