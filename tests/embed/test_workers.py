"""Workers that cannot hang a run and inputs that cannot exhaust memory; every test is bounded in time."""

from __future__ import annotations

import gzip
import io
import os
import signal
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from overlap_audit.detectors.phash import PHash
from overlap_audit.embed import Decoded, Decoder, embed_source
from overlap_audit.errors import SourceError
from overlap_audit.imaging import ImageRejected, decode_image
from overlap_audit.limits import InputLimits, ReadRefused, read_file
from overlap_audit.sources import open_source

from ..helpers import png_bytes, write_folder

# An image of this size is the one the test detectors misbehave on.
BAD_SIZE = (13, 17)


@pytest.fixture(autouse=True)
def bounded():
    """Fail (instead of hanging the suite) when a test runs for more than a minute."""

    def stop(signum, frame):
        raise TimeoutError("test ran for more than 60 s: something hangs")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


class KillingHash(PHash):
    """phash, except that a decoding worker kills itself with SIGKILL on a BAD_SIZE image; with
    ``once_marker``, only the first time (the marker file records that it did)."""

    def __init__(self, once_marker: str | None = None):
        super().__init__()
        self.parent = os.getpid()
        self.once_marker = once_marker

    def preprocess(self, image: Image.Image) -> np.ndarray:
        if image.size == BAD_SIZE and os.getpid() != self.parent:
            if self.once_marker is None or not os.path.exists(self.once_marker):
                if self.once_marker is not None:
                    open(self.once_marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        return super().preprocess(image)


class HangingHash(PHash):
    """phash, except that a decoding worker sleeps for an hour on a BAD_SIZE image."""

    def __init__(self):
        super().__init__()
        self.parent = os.getpid()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        if image.size == BAD_SIZE and os.getpid() != self.parent:
            time.sleep(3600)
        return super().preprocess(image)


class UnsendableHash(PHash):
    """phash, except that a decoding worker's input for a BAD_SIZE image cannot be pickled."""

    def __init__(self):
        super().__init__()
        self.parent = os.getpid()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        if image.size == BAD_SIZE and os.getpid() != self.parent:
            return np.array([lambda: None], dtype=object)
        return super().preprocess(image)


@pytest.fixture
def folder_with_bad_image(tmp_path, photos):
    images = {f"img-{i:02d}.png": photos["coffee"].resize((40 + i, 40 + i)) for i in range(12)}
    images["img-05b.png"] = photos["rocket"].resize(BAD_SIZE)
    return write_folder(tmp_path / "set", images)


def _ids(root) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_a_worker_killed_by_an_item_is_retried_then_the_item_skipped(folder_with_bad_image):
    started = time.monotonic()
    emb = embed_source(open_source(str(folder_with_bad_image)), KillingHash(), workers=2)
    assert time.monotonic() - started < 60  # a bound on a hang: a killed worker must not stall the run
    assert [(s.id, s.reason) for s in emb.skipped] == [("img-05b.png", "decoding worker died (signal 9) twice")]
    assert emb.ids == [i for i in _ids(folder_with_bad_image) if i != "img-05b.png"]
    reference = embed_source(open_source(str(folder_with_bad_image)), PHash(), workers=0)
    np.testing.assert_array_equal(emb.vectors, reference.vectors[[i != "img-05b.png" for i in reference.ids]])


def test_a_worker_that_dies_once_is_replaced_and_the_item_embedded(folder_with_bad_image, tmp_path):
    det = KillingHash(once_marker=str(tmp_path / "died-once"))
    emb = embed_source(open_source(str(folder_with_bad_image)), det, workers=2)
    assert (tmp_path / "died-once").exists()  # the worker did die
    assert emb.skipped == [] and emb.ids == _ids(folder_with_bad_image)


def test_decoder_keeps_order_and_types_across_a_worker_death(folder_with_bad_image):
    items = list(open_source(str(folder_with_bad_image)).iter_items())
    with Decoder(KillingHash(), workers=2, chunk_size=3) as decoder:
        out = list(decoder.decode(items))
    assert all(isinstance(d, Decoded) for d in out)
    assert [d.item.id for d in out] == [it.id for it in items]
    assert [d.item.id for d in out if d.reason] == ["img-05b.png"]
    # the decoder is still usable after replacing its worker
    with Decoder(PHash(), workers=1, chunk_size=3) as decoder:
        assert sum(d.reason is None for d in decoder.decode(items)) == len(items)


def test_an_item_that_hangs_a_worker_is_skipped_after_the_timeout(folder_with_bad_image):
    limits = InputLimits(decode_timeout_s=5)  # a bound a busy machine's normal decodes stay under
    started = time.monotonic()
    emb = embed_source(open_source(str(folder_with_bad_image)), HangingHash(), workers=2, limits=limits)
    assert time.monotonic() - started < 60
    assert [(s.id, s.reason) for s in emb.skipped] == [("img-05b.png", "decoding took longer than 5 s: stopped")]
    assert len(emb.ids) == 12


def test_a_result_that_cannot_be_sent_skips_that_item_only(folder_with_bad_image):
    # a worker sends a task's results together: the one that cannot be pickled is found and skipped alone
    emb = embed_source(open_source(str(folder_with_bad_image)), UnsendableHash(), workers=2)
    assert [s.id for s in emb.skipped] == ["img-05b.png"]
    assert emb.skipped[0].reason.startswith("decoding failed: the result cannot be sent")
    reference = embed_source(open_source(str(folder_with_bad_image)), PHash(), workers=0)
    np.testing.assert_array_equal(emb.vectors, reference.vectors[[i != "img-05b.png" for i in reference.ids]])


def test_results_of_items_slower_than_the_hold_arrive_before_the_task_ends(folder_with_bad_image):
    # a hung item is charged the timeout only if every result before it was delivered: the results held by
    # the worker go out once an item has run HOLD_S
    items = list(open_source(str(folder_with_bad_image)).iter_items())
    bad = [it.id for it in items].index("img-05b.png")
    with Decoder(HangingHash(), workers=1, chunk_size=len(items), limits=InputLimits(decode_timeout_s=3)) as decoder:
        out = list(decoder.decode(items))
    assert [d.item.id for d in out if d.reason] == ["img-05b.png"]
    assert out[bad].reason == "decoding took longer than 3 s: stopped"
    assert all(d.array is not None for i, d in enumerate(out) if i != bad)


def test_a_slow_consumer_does_not_make_workers_time_out(folder_with_bad_image):
    items = list(open_source(str(folder_with_bad_image)).iter_items())[:3]
    limits = InputLimits(decode_timeout_s=2)
    with Decoder(PHash(), workers=1, chunk_size=1, limits=limits) as decoder:
        out = []
        for decoded in decoder.decode(items):
            out.append(decoded)
            time.sleep(3)  # longer than the timeout, while the worker's results wait to be read
    assert [d.reason for d in out] == [None] * 3


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_named_like_an_image_is_skipped_unopened(tmp_path, photos):
    root = write_folder(tmp_path / "set", {"a.png": photos["coffee"].resize((32, 32))})
    os.mkfifo(root / "x.png")
    os.mkfifo(root / "a.txt")  # a caption sidecar that is a FIFO is not read either
    items = {it.id: it for it in open_source(str(root)).iter_items()}
    assert items["x.png"].path is None and "FIFO" in items["x.png"].skip_reason
    assert items["a.png"].caption is None
    emb = embed_source(open_source(str(root)), PHash(), workers=1)
    assert emb.ids == ["a.png"] and [s.id for s in emb.skipped] == ["x.png"]
    with pytest.raises(ImageRejected, match="FIFO"):  # the decoder refuses it too, without blocking
        decode_image(path=str(root / "x.png"))


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_a_link_to_a_device_is_skipped(tmp_path, photos):
    root = write_folder(tmp_path / "set", {"a.png": photos["coffee"].resize((32, 32))})
    (root / "zero.png").symlink_to("/dev/zero")
    items = {it.id: it for it in open_source(str(root)).iter_items()}
    assert "character device" in items["zero.png"].skip_reason and items["zero.png"].path is None
    with pytest.raises(ReadRefused, match="character device"):
        read_file("/dev/zero", 1 << 20)


def test_files_over_the_cap_are_skipped_before_reading(tmp_path, photos):
    root = write_folder(tmp_path / "set", {"small.png": photos["coffee"].resize((8, 8)),
                                           "large.png": photos["coffee"].resize((128, 128))})
    cap = (root / "small.png").stat().st_size + 10
    items = {it.id: it for it in open_source(str(root)).iter_items(InputLimits(max_file_bytes=cap))}
    assert items["small.png"].skip_reason is None
    assert "exceeds the limit" in items["large.png"].skip_reason
    with pytest.raises(ImageRejected, match="exceeds the limit"):
        decode_image(path=str(root / "large.png"), max_bytes=cap)


def test_a_parquet_integer_image_column_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": ["a", "b"], "jpg": pa.array([10**9, 3], pa.int64())}), tmp_path / "x.parquet")
    with pytest.raises(SourceError, match="image column 'jpg' holds int64") as err:
        list(open_source(str(tmp_path / "x.parquet")).iter_items())
    assert "\n" not in str(err.value)


def test_parquet_cells_over_the_cap_are_skipped(tmp_path, photos):
    import pyarrow as pa
    import pyarrow.parquet as pq

    small, large = png_bytes(photos["coffee"].resize((8, 8))), png_bytes(photos["coffee"].resize((128, 128)))
    pq.write_table(pa.table({"key": ["s", "l"], "jpg": [small, large]}), tmp_path / "x.parquet")
    limits = InputLimits(max_cell_bytes=len(small) + 10)
    items = {it.id: it for it in open_source(str(tmp_path / "x.parquet")).iter_items(limits)}
    assert items["s"].data == small and items["l"].data is None
    assert "exceeds the limit" in items["l"].skip_reason


def _tar(path, members: list[tuple[str, bytes]], *, gz: bool = False) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1) if gz else buf.getvalue())


def test_a_tar_member_over_the_cap_is_skipped_from_its_declared_size(tmp_path, photos):
    good = png_bytes(photos["coffee"].resize((8, 8)))
    _tar(tmp_path / "s.tar", [("a.png", good), ("b.png", good * 40), ("b.txt", b"caption"), ("c.png", good)])
    items = {it.id: it for it in open_source(str(tmp_path / "s.tar")).iter_items(
        InputLimits(max_member_bytes=len(good) * 2))}
    assert items["a"].data == good
    assert items["b"].data is None and "'b.png'" in items["b"].skip_reason
    assert "exceeds the limit" in items["b"].skip_reason and items["b"].caption == "caption"
    assert items["c"].data == good


def test_a_huge_member_of_a_small_tar_gz_is_not_read_into_memory(tmp_path, photos):
    good = png_bytes(photos["coffee"].resize((8, 8)))
    # 64 MB of zeros compresses to well under a megabyte; its member header declares the full size
    _tar(tmp_path / "s.tar.gz", [("a.png", good), ("big.png", bytes(64 << 20)), ("c.png", good)], gz=True)
    assert (tmp_path / "s.tar.gz").stat().st_size < 1 << 20
    items = {it.id: it for it in open_source(str(tmp_path / "s.tar.gz")).iter_items(
        InputLimits(max_member_bytes=1 << 20))}
    assert items["a"].data == good and items["c"].data == good
    assert "67,108,864 bytes exceeds the limit of 1,048,576" in items["big"].skip_reason


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_file_bytes"):
        InputLimits(max_file_bytes=0)
    with pytest.raises(ValueError, match="decode_timeout_s"):
        InputLimits(decode_timeout_s=0)


def test_the_index_manifest_records_the_limits(tmp_path, photos):
    from overlap_audit.index import build_index, load_manifest
    from overlap_audit.settings import IndexSettings

    root = write_folder(tmp_path / "set", {f"{i}.png": photos["coffee"].resize((30 + i, 30 + i)) for i in range(4)})
    limits = InputLimits(max_file_bytes=1 << 20, decode_timeout_s=30.0)
    build_index([str(root)], tmp_path / "idx", IndexSettings(workers=1, limits=limits))
    assert load_manifest(tmp_path / "idx").extra["limits"] == limits.to_dict()
