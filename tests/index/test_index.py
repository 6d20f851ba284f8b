import dataclasses
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from overlap_audit.detectors import get_detector
from overlap_audit.embed import embed_source
from overlap_audit.errors import IndexDirError, IndexMismatchError, ResumeError
from overlap_audit.index import build_index, check_detector, load_index, load_manifest, search, skipped_items
from overlap_audit.settings import IndexSettings
from overlap_audit.sources import open_source

from ..helpers import write_folder


def shard_ids(index_dir):
    ids = []
    for shard in sorted((index_dir / "shards").glob("shard-*.parquet")):
        ids += pq.read_table(shard)["id"].to_pylist()
    return ids


@pytest.fixture(scope="module")
def built(corpus_index):
    return corpus_index, load_manifest(corpus_index)

def test_manifest_describes_the_index(built):
    out, m = built
    data = json.loads((out / "manifest.json").read_text())
    assert data["detector"] == {"spec": "phash", "name": "phash", "version": "1+trim4", "dim": 64,
                                "metric": "hamming", "default_threshold": 1 - 9 / 64, "content": "trim"}
    assert data["counts"]["given"] == 124 and data["counts"]["embedded"] == 120 and data["counts"]["skipped"] == 4
    broken = {"broken/zero.png", "broken/truncated.png", "broken/notes.jpg", "broken/bomb.png"}
    assert "skipped" not in data and {s["id"] for s in data["skipped_sample"]} == broken  # all four: under 20
    assert data["index_type"] == "flat" and data["extra"]["faiss_index"] == "IndexBinaryFlat" and data["n_shards"] == 3
    assert data["extra"]["recall"]["exact"] is True and "auto" in data["extra"]["index_choice"]
    assert data["package_version"] and data["created"] and data["complete"] is True
    assert not (out / "progress.json").read_text() == ""
    corpus = load_index(out)
    assert len(corpus) == m.n_indexed == 120 - m.n_low_information


def test_search_equals_brute_force(built, tile_sets):
    out, _ = built
    corpus = load_index(out)
    det = get_detector("phash")
    _, other = tile_sets
    queries = det.embed_images([im for _, im in other[:25]])
    nb = search(corpus, [str(i) for i in range(25)], queries, k=5)
    all_vectors = np.stack([corpus.index.reconstruct(i) for i in range(len(corpus))])
    brute = det.similarity(queries, all_vectors)
    np.testing.assert_allclose(nb.similarities, -np.sort(-brute, axis=1)[:, :5], atol=1e-6)
    for q in range(25):
        for j in range(5):
            row = list(corpus.keys).index(nb.ids[q, j])
            assert brute[q, row] == pytest.approx(nb.similarities[q, j])


def test_k_larger_than_corpus_pads_with_none(tmp_path, photos):
    root = write_folder(tmp_path / "c", {"a.png": photos["coffee"].resize((64, 64)),
                                         "b.png": photos["rocket"].resize((64, 64))})
    build_index([str(root)], tmp_path / "i", IndexSettings(workers=0))
    det = get_detector("phash")
    nb = search(load_index(tmp_path / "i"), ["q"], det.embed_images([photos["coffee"].resize((50, 50))]), k=4)
    assert nb.ids[0, 0] == "a.png" and nb.ids[0, 2] is None and np.isnan(nb.similarities[0, 3])


def test_float_detector_uses_flat_inner_product(tmp_path, tile_sets):
    corpus, _ = tile_sets
    root = write_folder(tmp_path / "c", {f"{tid}.png": im for tid, im in corpus[:30]})
    m = build_index([str(root)], tmp_path / "i", IndexSettings(detector="tiny", workers=0))
    assert m.extra["faiss_index"] == "IndexFlatIP" and m.detector.metric == "cosine"
    det = get_detector("tiny")
    corpus_index = load_index(tmp_path / "i")
    q = det.embed_images([corpus[3][1]])
    nb = search(corpus_index, ["q"], q, k=3)
    assert nb.ids[0, 0] == f"{corpus[3][0]}.png" and nb.similarities[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_several_sources_qualify_ids(tmp_path, photos):
    a = write_folder(tmp_path / "a", {"x.png": photos["coffee"].resize((64, 64))})
    b = write_folder(tmp_path / "b", {"x.png": photos["rocket"].resize((64, 64))})
    build_index([str(a), str(b)], tmp_path / "i", IndexSettings(workers=0))
    assert sorted(load_index(tmp_path / "i").keys) == ["a/x.png", "b/x.png"]


def test_existing_directory_needs_resume(built, corpus_dir):
    out, _ = built
    with pytest.raises(ResumeError, match="pass resume=True"):
        build_index([str(corpus_dir)], out, IndexSettings(workers=0))
    same = build_index([str(corpus_dir)], out, IndexSettings(workers=0, resume=True, shard_size=50, views=()))
    assert same.n_indexed == load_manifest(out).n_indexed  # complete: nothing redone
    with pytest.raises(ResumeError, match="different views"):  # built without corpus views
        build_index([str(corpus_dir)], out, IndexSettings(workers=0, resume=True, shard_size=50, views=(0.7,)))
    with pytest.raises(ResumeError, match="different detector"):
        build_index([str(corpus_dir)], out, IndexSettings(workers=0, resume=True, shard_size=50, detector="tiny"))


def test_detector_mismatch_is_refused(built):
    out, _ = built
    m = load_manifest(out)
    with pytest.raises(IndexMismatchError, match="detector 'phash'.*tiny"):
        check_detector(m, get_detector("tiny").info, str(out))
    with pytest.raises(IndexMismatchError, match="dimension 64"):
        check_detector(m, get_detector("phash256").info, str(out))
    newer = get_detector("phash")
    newer.version = "2"
    with pytest.raises(IndexMismatchError, match=r"version '1\+trim4'.*'2\+trim4'"):
        check_detector(m, newer.info, str(out))


def test_an_index_built_without_content_normalisation_is_refused(built):
    """A manifest from before content normalisation (no "content", a bare version) or built with content
    "whole" cannot be searched with the (default) trimming detector, and the message says why."""
    out, _ = built
    m = load_manifest(out)
    old = dataclasses.replace(m, detector=dataclasses.replace(m.detector, version="1", content=None))
    with pytest.raises(IndexMismatchError, match=r"version '1' \(installed: '1\+trim4', i\.e\. no content "
                                                 r"normalisation where this detector uses content 'trim'\)"):
        check_detector(old, get_detector("phash").info, str(out))
    whole = get_detector("phash", content="whole")
    assert whole.info.version == "1" and whole.info.content == "whole"
    with pytest.raises(IndexMismatchError, match="content 'trim' where this detector uses content 'whole'"):
        check_detector(m, whole.info, str(out))
    check_detector(old, whole.info, str(out))  # the same embeddings as before content normalisation: accepted


class Interrupt(Exception):
    pass


def test_interrupted_index_resumes_without_redoing_or_duplicating(tmp_path, corpus_dir, built):
    out = tmp_path / "index"

    def stop_after_two(shard, done):
        if shard == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        build_index([str(corpus_dir)], out, IndexSettings(workers=2, shard_size=30), on_shard=stop_after_two)
    assert not (out / "manifest.json").exists() and not (out / "index.faiss").exists()
    with pytest.raises(IndexDirError, match="--resume"):
        load_index(out)
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "shards").iterdir()}
    assert sorted(finished) == ["shard-000000.parquet", "shard-000001.parquet"]
    with pytest.raises(ResumeError, match="shard_size"):
        build_index([str(corpus_dir)], out, IndexSettings(workers=2, shard_size=31, resume=True))

    written = []
    m = build_index([str(corpus_dir)], out, IndexSettings(workers=2, shard_size=30, resume=True),
                    on_shard=lambda shard, done: written.append(shard))
    assert written == [2, 3, 4]  # only the remaining shards were embedded
    for name, stamp in finished.items():
        p = out / "shards" / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp  # finished shards untouched
    ids = shard_ids(out)
    assert len(ids) == len(set(ids)) == 124
    fresh_out, fresh = built
    assert m.n_indexed == fresh.n_indexed and m.n_skipped == fresh.n_skipped
    assert sorted(load_index(out).keys) == sorted(load_index(fresh_out).keys)


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path, tile_sets):
    corpus, other = tile_sets
    images = {f"{tid}.png": im.resize((384, 384)) for tid, im in corpus + other}
    root = write_folder(tmp_path / "big", images)
    out = tmp_path / "index"
    cmd = [sys.executable, "-m", "overlap_audit.cli", "index", str(root), "--out", str(out), "--workers", "1",
           "--shard-size", "20", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "shards").exists() and len(list((out / "shards").glob("shard-*.parquet"))) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail(f"index finished before it could be killed: {proc.stderr.read().decode()}")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    kept = sorted(p.name for p in (out / "shards").glob("shard-*.parquet"))
    assert len(kept) < -(-len(images) // 20)
    result = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ids = shard_ids(out)
    assert len(ids) == len(set(ids)) == len(images)
    assert len(load_index(out)) == load_manifest(out).n_indexed
    assert not list(out.rglob(".*.tmp-*"))


def test_cuda_without_gpu_is_a_clear_error(tmp_path, photos):
    from overlap_audit.errors import DeviceError
    from overlap_audit.index import faiss_gpu_count

    if faiss_gpu_count() > 0:
        pytest.skip("this machine has a GPU FAISS")
    root = write_folder(tmp_path / "c", {"a.png": photos["coffee"].resize((32, 32))})
    with pytest.raises(DeviceError, match="faiss-gpu"):
        build_index([str(root)], tmp_path / "i", IndexSettings(device="cuda", workers=0))


def test_eval_embeddings_match_corpus_embeddings(corpus_dir, built):
    out, _ = built
    det = get_detector("phash")
    emb = embed_source(open_source(str(corpus_dir)), det, workers=0)
    nb = search(load_index(out), emb.ids, emb.vectors, k=1)
    usable = ~emb.low_information
    assert (nb.similarities[usable, 0] == 1.0).all()


def test_resume_refuses_a_changed_corpus(tmp_path, photos):
    files = {f"{i}.png": photos[n].resize((48, 48)) for i, n in enumerate(["coffee", "rocket", "astronaut",
                                                                           "chelsea", "camera", "coins"])}
    root = write_folder(tmp_path / "c", files)

    def stop(shard, done):
        raise Interrupt

    with pytest.raises(Interrupt):
        build_index([str(root)], tmp_path / "i", IndexSettings(workers=0, shard_size=2), on_shard=stop)
    (root / "0.png").unlink()
    with pytest.raises(ResumeError, match="corpus changed"):
        build_index([str(root)], tmp_path / "i", IndexSettings(workers=0, shard_size=2, resume=True))


def test_source_names_stay_distinct(tmp_path, photos):
    im = photos["coffee"].resize((32, 32))
    a = write_folder(tmp_path / "a" / "x", {"p.png": im})
    b = write_folder(tmp_path / "b" / "x", {"p.png": photos["rocket"].resize((32, 32))})
    c = write_folder(tmp_path / "x-2", {"p.png": photos["camera"].resize((32, 32))})
    m = build_index([str(a), str(b), str(c)], tmp_path / "i", IndexSettings(workers=0))
    assert [s["name"] for s in m.sources] == ["x", "x-3", "x-2"]
    assert sorted(load_index(tmp_path / "i").keys) == ["x-2/p.png", "x-3/p.png", "x/p.png"]


def test_damaged_index_is_a_clear_error(tmp_path, built):
    import shutil

    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexDirError, match="damaged"):
        load_index(copy)


def test_an_index_of_another_format_is_refused_with_one_line(tmp_path, built):
    import json
    import shutil

    out, _ = built

    def format_2(d):  # the previous format: every skipped item listed in the manifest
        d.update(format=2, skipped=d.pop("skipped_sample"))

    for name, edit, found in (("none", lambda d: d.pop("format"), "none"), ("old", format_2, "2"),
                              ("newer", lambda d: d.update(format=99), "99")):
        copy = tmp_path / name
        shutil.copytree(out, copy)
        data = json.loads((copy / "manifest.json").read_text())
        edit(data)
        (copy / "manifest.json").write_text(json.dumps(data))
        for read in (load_index, skipped_items):
            with pytest.raises(IndexDirError, match=f"index of format {found}, .* reads format 3 only: rebuild it") \
                    as exc:
                read(copy)
            assert "\n" not in str(exc.value)
