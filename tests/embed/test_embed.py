import numpy as np

from overlap_audit.detectors import get_detector
from overlap_audit.embed import embed_source
from overlap_audit.sources import open_source


def test_workers_and_in_process_agree_and_keep_order(corpus_dir):
    det = get_detector("phash")
    src = open_source(str(corpus_dir))
    serial = embed_source(src, det, workers=0, batch_size=7)
    parallel = embed_source(src, det, workers=2, batch_size=64)
    assert serial.ids == parallel.ids
    np.testing.assert_array_equal(serial.vectors, parallel.vectors)
    assert [s.id for s in serial.skipped] == [s.id for s in parallel.skipped]


def test_every_item_is_embedded_or_skipped_with_a_reason(corpus_dir):
    det = get_detector("phash")
    emb = embed_source(open_source(str(corpus_dir)), det, workers=2)
    given = sorted(p.relative_to(corpus_dir).as_posix() for p in corpus_dir.rglob("*") if p.is_file())
    assert sorted(emb.ids + [s.id for s in emb.skipped]) == given
    reasons = {s.id: s.reason for s in emb.skipped}
    assert set(reasons) == {"broken/zero.png", "broken/truncated.png", "broken/notes.jpg", "broken/bomb.png"}
    assert "zero-byte" in reasons["broken/zero.png"]
    assert "decompression bomb" in reasons["broken/bomb.png"]
    assert emb.vectors.shape == (len(emb.ids), 8) and emb.vectors.dtype == np.uint8


def test_cosine_detector_vectors_are_unit_float32(corpus_dir):
    emb = embed_source(open_source(str(corpus_dir)), get_detector("tiny"), workers=0)
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape[1] == 256
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, rtol=1e-5)
