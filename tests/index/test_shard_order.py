"""Shards finished out of order (a Ray run's actors) enter the index in order, so an interrupted run always
leaves a contiguous run of shards that --resume reads past."""

import os
import shutil

import numpy as np
import pyarrow.parquet as pq

from overlap_audit.index import build_index
from overlap_audit.index.manifest import SHARD_DIR
from overlap_audit.index.shards import (ShardsInOrder, finished_shards, pending_shard_path, remove_pending_shards,
                                        shard_path, shard_paths)
from overlap_audit.settings import IndexSettings

from .test_index_shards import info_for, write_example


def test_shards_finished_out_of_order_are_committed_in_order(tmp_path):
    info = info_for("cosine")
    (tmp_path / SHARD_DIR).mkdir()
    for n in range(4):
        write_example(tmp_path, n, info, np.random.default_rng(n), 5 * n)
        os.replace(shard_path(tmp_path, n), pending_shard_path(tmp_path, n))
    commits = []
    in_order = ShardsInOrder(tmp_path, 0, 0, lambda n, items: commits.append((n, items)))
    in_order.done(2, 5)
    in_order.done(1, 5)
    # shards 1 and 2 are written but wait for shard 0: an interruption now leaves no gap on disk
    assert commits == [] and finished_shards(tmp_path) == [] and in_order.waiting == [1, 2]
    in_order.done(0, 5)
    assert commits == [(0, 5), (1, 10), (2, 15)] and finished_shards(tmp_path) == [0, 1, 2]
    assert in_order.waiting == [] and shard_paths(tmp_path) == [shard_path(tmp_path, n) for n in range(3)]
    assert remove_pending_shards(tmp_path) == 1 and not pending_shard_path(tmp_path, 3).exists()


def test_resume_after_an_interruption_that_left_pending_shards(tmp_path, corpus_dir):
    """A run interrupted with shard 0 committed, shard 1 unfinished and shard 2 pending resumes to the
    uninterrupted index: the pending shard is embedded again, nothing is taken as a gap."""
    whole = build_index([str(corpus_dir)], tmp_path / "whole", IndexSettings(workers=0, shard_size=40))
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    for f in cut.iterdir():
        if f.is_file() and f.name != "progress.json":
            f.unlink()
    shard_path(cut, 1).unlink()
    os.replace(shard_path(cut, 2), pending_shard_path(cut, 2))
    for n in range(3, whole.n_shards):
        shard_path(cut, n).unlink()
    resumed = build_index([str(corpus_dir)], cut, IndexSettings(workers=0, shard_size=40, resume=True))
    assert resumed.n_shards == whole.n_shards and not list((cut / SHARD_DIR).glob("pending-*"))

    def rows(index_dir):
        return [pq.read_table(p, columns=["key", "vector", "skip_reason"]).to_pylist() for p in shard_paths(index_dir)]

    assert rows(cut) == rows(tmp_path / "whole")
