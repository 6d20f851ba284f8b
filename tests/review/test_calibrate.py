import json

import numpy as np
from click.testing import CliRunner

from overlap_audit.cli import main
from overlap_audit.calibrate import calibrate, curve_rows
from overlap_audit.decide.thresholds import precision_recall

from ..helpers import write_folder


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


def test_curve_rows_are_dense_where_precision_crosses_the_target():
    # 1000 thresholds: precision climbs from 0 to 1 only in the last 50 rows (as among a calibration's negatives)
    thresholds = np.linspace(0, 1, 1000)
    precision = np.concatenate([np.zeros(950), np.linspace(0.02, 1.0, 50)])
    rows = curve_rows(thresholds, precision, 0.99)
    assert rows == sorted(set(rows)) and rows[0] == 0 and rows[-1] == 999
    between = [i for i in rows if 0.5 <= precision[i] <= 0.999]
    assert len(between) >= 15  # a 20-row even sampling shows at most one row there
    first = int(np.nonzero(precision >= 0.99)[0][0])
    assert {first - 1, first} <= set(rows)
    assert len(rows) <= 20 + 1 + 20 + 5
