import json

import numpy as np
from click.testing import CliRunner

from overlap_audit.cli import main
from overlap_audit.calibrate import calibrate
from overlap_audit.thresholds import precision_recall

from .conftest import write_folder


def test_precision_recall_by_hand():
    pos = np.array([0.9, 0.8, 0.5])
    neg = np.array([0.85, 0.3, 0.2, 0.1])
    t, p, r = precision_recall(pos, neg)
    at = dict(zip(t.tolist(), zip(p.tolist(), r.tolist())))
    assert at[0.9] == (1.0, 1 / 3)
    assert at[0.85] == (0.5, 1 / 3)  # 0.9 true, 0.85 false
    assert at[0.8] == (2 / 3, 2 / 3)
    assert at[0.5] == (3 / 4, 1.0)


def test_calibrate_on_held_out_photos(tmp_path, tile_sets):
    corpus, _ = tile_sets
    root = write_folder(tmp_path / "held", {f"{t}.png": im.resize((128, 128)) for t, im in corpus[:60]})
    cal = calibrate(str(root), "phash", target_precision=0.99, strength="mild", workers=0)
    assert cal.n_images == 60 and cal.threshold is not None
    assert cal.precision >= 0.99 and 0 < cal.recall <= 1
    thresholds = [c["threshold"] for c in cal.curve]
    assert thresholds == sorted(thresholds)
    out = tmp_path / "cal.json"
    r = CliRunner().invoke(main, ["calibrate", str(root), "--detector", "phash", "--strength", "mild", "--workers",
                                  "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["threshold"] == cal.threshold and "| threshold |" in r.output
