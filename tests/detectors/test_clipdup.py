"""clipdup end to end on the CPU: train a few steps, checkpoint, resume, index and report with it."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from overlap_audit.cli import main  # noqa: E402
from overlap_audit.detectors import get_detector  # noqa: E402
from overlap_audit.errors import DetectorError  # noqa: E402

from ..helpers import write_folder, write_predictions  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tile_sets):
    corpus, _ = tile_sets
    root = write_folder(tmp_path_factory.mktemp("train") / "imgs", {f"{t}.png": im for t, im in corpus[:24]})
    out = tmp_path_factory.mktemp("ckpt") / "run"
    args = ["train-detector", str(root), "--out", str(out), "--dim", "32", "--input-size", "32", "--batch-size",
            "8", "--steps", "6", "--workers", "0", "--quiet", "--device", "cpu"]
    # log every 10 steps and at the end: one entry at step 6
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return root, out, args


def test_training_logs_and_checkpoints(trained):
    root, out, args = trained
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 6 and 0 <= log[-1]["proxy_accuracy"] <= 1
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and state["model_config"]["arch"] == "small"
    r = CliRunner().invoke(main, args)  # again without --resume: refused, nothing overwritten
    assert r.exit_code == 2 and "--resume" in r.output


def test_resume_continues_where_it_stopped(trained, tmp_path):
    import shutil

    root, out, args = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    more = [a if a != str(out) else str(copy) for a in args]
    more[more.index("--steps") + 1] = "9"
    r = CliRunner().invoke(main, more + ["--resume"])
    assert r.exit_code == 0, r.output
    steps = [json.loads(line)["step"] for line in (copy / "train_log.jsonl").read_text().splitlines()]
    assert steps == [6, 9]  # continued from step 6, not restarted
    other = list(more)
    other[other.index("--steps") + 1] = "12"
    r = CliRunner().invoke(main, other + ["--resume", "--lr", "0.01"])
    assert r.exit_code == 2 and "only --steps and --init may change" in r.output


def test_detector_from_checkpoint(trained, photos):
    _, out, _ = trained
    det = get_detector(f"clipdup:{out}")
    assert det.dim == 32 and det.metric == "cosine" and det.version.startswith("1+")
    v = det.embed_images([photos["coffee"], photos["rocket"]])
    assert v.shape == (2, 32) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert det.default_threshold is None
    with pytest.raises(DetectorError, match="not found"):
        get_detector("clipdup:/nonexistent")


def test_index_and_report_with_clipdup(trained, tmp_path, eval_set):
    root, out, _ = trained
    r = CliRunner().invoke(main, ["index", str(root), "--out", str(tmp_path / "idx"), "--detector", f"clipdup:{out}",
                                  "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    ev, planted, clean = eval_set
    preds = write_predictions(tmp_path / "p.csv", "val", planted + clean, [1] * (len(planted) + len(clean)))
    base = ["report", str(tmp_path / "idx"), "--eval", f"val={ev}", "--predictions", str(preds), "--workers", "0",
            "--quiet"]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "r0")])
    assert r.exit_code == 2 and "no calibrated default threshold" in r.output
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "r"), "--threshold", "0.9"])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["detector"]["name"] == "clipdup" and data["datasets"][0]["n_all"] == 50
    # verification (on by default) starts from clipdup's own, wider relaxation: 1 - 14 (1 - 0.9)
    assert data["verify"]["relax"] == 14.0 and data["verify"]["datasets"]["val"]["first_stage"] == pytest.approx(-0.4)


def test_shipped_checkpoint(photos):
    from overlap_audit.detectors.clipdup import SHIPPED

    if not SHIPPED.exists():
        with pytest.raises(DetectorError, match="no default clipdup checkpoint"):
            get_detector("clipdup")
        return
    det = get_detector("clipdup")
    assert SHIPPED.stat().st_size < 8_000_000  # a few MB
    assert det.default_threshold is not None and 0 < det.default_threshold < 1
    assert (SHIPPED.parent / "MODEL_CARD.md").exists()
    a = det.embed_images([photos["coffee"].resize((128, 128))])
    b = det.embed_images([photos["coffee"].resize((100, 100))])
    c = det.embed_images([photos["rocket"].resize((128, 128))])
    assert float((a @ b.T)[0, 0]) > float((a @ c.T)[0, 0])  # a resized copy is closer than another photo


def test_luma_training_and_detector(tmp_path, tile_sets, photos):
    from PIL import ImageEnhance

    from overlap_audit.detectors.clipdup import to_tensor_array

    corpus, _ = tile_sets
    root = write_folder(tmp_path / "imgs", {f"{t}.png": im for t, im in corpus[:16]})
    out = tmp_path / "run"
    args = ["train-detector", str(root), "--out", str(out), "--dim", "16", "--input-size", "32", "--batch-size", "8",
            "--strength", "mixed", "--input-mode", "luma", "--schedule", "cosine", "--workers", "0", "--quiet",
            "--device", "cpu"]
    r = CliRunner().invoke(main, [*args, "--steps", "4"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, [*args, "--steps", "6", "--resume"])  # the cosine run's checkpoint reloads
    assert r.exit_code == 0, r.output
    assert json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["step"] == 6
    det = get_detector(f"clipdup:{out}")
    assert det.input_mode == "luma" and det.preprocess(photos["coffee"]).shape == (1, 32, 32)
    assert to_tensor_array(photos["coffee"], 32).shape == (3, 32, 32)
    coffee = photos["coffee"].resize((128, 128))
    grey = coffee.convert("L").convert("RGB")  # same luma, no colour at all
    v = det.embed_images([coffee, grey, ImageEnhance.Color(coffee).enhance(1.5), photos["rocket"]])
    sims = v @ v.T
    assert sims[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert sims[0, 2] > 0.99 and sims[0, 3] < sims[0, 2]


def test_learning_rate_schedule():
    from overlap_audit.settings import DetectorTrainConfig

    const = DetectorTrainConfig(steps=100, lr=0.01)
    assert const.lr_at(0) == const.lr_at(99) == 0.01
    cos = DetectorTrainConfig(steps=100, lr=0.01, schedule="cosine")
    lrs = [cos.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.005) and type(lrs[0]) is float  # warm-up over 2 steps
    assert max(lrs) == pytest.approx(0.01, rel=1e-3) and lrs[-1] < 1e-5
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # decays after the warm-up


def test_value_input_ignores_hue_and_saturation(photos):
    from PIL import Image

    from overlap_audit.detectors.clipdup import to_tensor_array

    coffee = photos["coffee"].resize((96, 96))
    hsv = np.asarray(coffee.convert("HSV")).copy()
    hsv[..., 0] += 40  # a hue rotation (uint8 wraps around the colour circle)
    hsv[..., 1] = (hsv[..., 1] * 0.6).astype(np.uint8)  # and less saturation
    edited = Image.fromarray(hsv, mode="HSV").convert("RGB")
    assert np.abs(np.asarray(edited, float) - np.asarray(coffee, float)).mean() > 5  # a visible change
    v, v2 = to_tensor_array(coffee, 32, "value"), to_tensor_array(edited, 32, "value")
    assert v.shape == (1, 32, 32) and np.abs(v - v2).max() < 1e-6
    luma, luma2 = to_tensor_array(coffee, 32, "luma"), to_tensor_array(edited, 32, "luma")
    assert np.abs(luma - luma2).mean() > 0.01  # luma is not invariant to these edits
    with pytest.raises(ValueError, match="input_mode must be one of"):
        to_tensor_array(coffee, 32, "cmyk")


def test_maxmin_input_ignores_hue_and_keeps_colour_on_white(photos):
    from PIL import Image

    from overlap_audit.detectors.clipdup import to_tensor_array
    from overlap_audit.detectors.clipdup_net import DuplicateNet, DuplicateNetConfig

    coffee = photos["coffee"].resize((96, 96))
    hsv = np.asarray(coffee.convert("HSV")).copy()
    hsv[..., 0] += 40  # a hue rotation only
    rotated = Image.fromarray(hsv, mode="HSV").convert("RGB")
    a, b = to_tensor_array(coffee, 32, "maxmin"), to_tensor_array(rotated, 32, "maxmin")
    assert a.shape == (2, 32, 32) and np.abs(a - b).max() < 0.02  # HSV's own rounding, nothing more
    red = Image.new("RGB", (64, 64), "white")
    red.paste((255, 0, 0), (16, 16, 48, 48))
    assert to_tensor_array(red, 16, "value").std() == 0  # value alone loses a saturated shape on white
    assert to_tensor_array(red, 16, "maxmin")[1].std() > 0.3  # the min channel keeps it
    import torch

    net = DuplicateNet(DuplicateNetConfig.named("small", dim=16, channels=2, standardize=True))
    out = net(torch.from_numpy(np.stack([a, b])))
    assert out.shape == (2, 16)


def _saturation(image, k: float):
    from PIL import Image

    hsv = np.asarray(image.convert("HSV")).astype(np.float32)
    hsv[..., 1] *= k
    return Image.fromarray(np.clip(hsv, 0, 255).astype(np.uint8), mode="HSV").convert("RGB")


def test_maxchroma_input_ignores_hue_and_saturation_scale():
    """Shaded clip art on white: a hue rotation leaves max and chroma alone; a saturation scale multiplies the
    chroma channel, so the network's per-channel standardisation gives the same input — where maxmin's min
    channel, V(1 - S), moves towards the max channel and its jointly standardised input moves (with one value
    everywhere the two would agree: both channels' deviations from it scale alike)."""
    from PIL import Image

    from overlap_audit.detectors.clipdup import CHANNEL_FLOORS, to_tensor_array
    from overlap_audit.detectors.clipdup_net import DuplicateNet, DuplicateNetConfig

    art = Image.new("RGB", (96, 96), "white")
    art.paste((150, 0, 0), (10, 10, 50, 60))  # dark red
    art.paste((40, 90, 255), (40, 30, 86, 80))
    art.paste((120, 100, 20), (20, 66, 44, 90))  # olive
    pale = _saturation(art, 0.6)
    assert np.abs(np.asarray(pale, float) - np.asarray(art, float)).mean() > 10  # a visible change
    a, b = to_tensor_array(art, 32, "maxchroma"), to_tensor_array(pale, 32, "maxchroma")
    assert a.shape == (2, 32, 32) and np.abs(a[0] - b[0]).max() < 0.02  # the max channel: unchanged
    # the chroma: scaled by the saturation's factor (up to the resize's overshoot, clipped at 255 in the original)
    assert np.abs(a[1] * 0.6 - b[1]).mean() < 0.005 and np.abs(a[1] * 0.6 - b[1]).max() < 0.06

    def change(mode, floors=()):  # mean absolute change of the input the network sees
        net = DuplicateNet(DuplicateNetConfig.named("small", dim=16, channels=2, standardize=True, channel_floors=floors))
        x = net.standardise(torch.from_numpy(np.stack([to_tensor_array(im, 32, mode) for im in (art, pale)])))
        return float((x[0] - x[1]).abs().mean())

    assert change("maxchroma", CHANNEL_FLOORS["maxchroma"]) < 0.02 < 0.1 < change("maxmin")


def test_maxmin_weights_map_to_maxchroma_exactly(trained, tmp_path, photos):
    """maxmin_to_maxchroma keeps the first convolution's output on the raw input; a maxchroma fine-tuning run
    starts from maxmin weights, and maxchroma weights refuse a maxmin run."""
    from overlap_audit.detectors.clipdup import CHANNEL_FLOORS
    from overlap_audit.training.clipdup import maxmin_to_maxchroma
    from overlap_audit.detectors.clipdup_net import DuplicateNet, DuplicateNetConfig

    root, _, _ = trained
    torch.manual_seed(5)
    cfg = DuplicateNetConfig.named("small", dim=16, channels=2, standardize=True)
    net = DuplicateNet(cfg)
    mapped, cfg2 = maxmin_to_maxchroma(net.state_dict(), cfg)
    assert cfg2.channel_floors == CHANNEL_FLOORS["maxchroma"]
    net2 = DuplicateNet(cfg2)
    net2.load_state_dict(mapped)
    x = torch.rand(3, 2, 24, 24)  # max and min ...
    x[:, 1] = x[:, 1] * x[:, 0]  # ... with min <= max
    chroma = torch.stack([x[:, 0], x[:, 0] - x[:, 1]], dim=1)
    with torch.no_grad():
        assert torch.allclose(net.stem[0](x), net2.stem[0](chroma), atol=1e-5)
    with pytest.raises(DetectorError, match="max-and-min"):
        maxmin_to_maxchroma(mapped, cfg2)  # already mapped
    base = ["train-detector", str(root), "--dim", "16", "--input-size", "32", "--batch-size", "8", "--steps", "2",
            "--workers", "0", "--quiet", "--device", "cpu"]
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "mm"), "--input-mode", "maxmin"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "mc"), "--input-mode", "maxchroma",
                                  "--init", str(tmp_path / "mm")])
    assert r.exit_code == 0, r.output
    det = get_detector(f"clipdup:{tmp_path / 'mc'}")
    assert det.input_mode == "maxchroma" and det.config.channel_floors == CHANNEL_FLOORS["maxchroma"]
    v = det.embed_images([photos["coffee"], _saturation(photos["coffee"], 0.7)])
    assert v.shape == (2, 16) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # both inputs call the same images low-information (a grey gradient of 3 levels, a pale tint, photos)
    from PIL import Image

    faint = Image.fromarray(np.tile(np.linspace(120, 123, 64).astype(np.uint8), (64, 1))).convert("RGB")
    tint = Image.new("RGB", (64, 64), (200, 200, 200))
    tint.paste((205, 198, 200), (0, 0, 32, 64))
    images = [faint, tint, photos["coffee"], _saturation(photos["rocket"], 0.3)]
    maxmin = get_detector(f"clipdup:{tmp_path / 'mm'}")
    flags = [d.low_information(np.stack([d.preprocess(im) for im in images])).tolist() for d in (det, maxmin)]
    assert flags[0] == flags[1] == [True, True, False, False]
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "back"), "--input-mode", "maxmin",
                                  "--init", str(tmp_path / "mc")])
    assert r.exit_code != 0 and "does not fit" in r.output


def test_training_on_trimmed_views_with_edited_copies(tmp_path, tile_sets, monkeypatch):
    """--trim: the anchors and their augmented copies pass through overlap_audit.content.trim before the
    network sees them; --edit-p mixes edited copies in; both are recorded with the run."""
    import overlap_audit.content as content

    corpus, _ = tile_sets
    root = write_folder(tmp_path / "imgs", {f"{t}.png": im for t, im in corpus[:12]})
    seen = []
    real_trim = content.trim

    def counting_trim(image):
        seen.append(image.size)
        return real_trim(image)

    monkeypatch.setattr(content, "trim", counting_trim)
    out = tmp_path / "run"
    args = ["train-detector", str(root), "--out", str(out), "--dim", "16", "--input-size", "32", "--batch-size", "8",
            "--steps", "2", "--workers", "0", "--quiet", "--device", "cpu", "--trim", "--edit-p", "0.5"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert len(seen) == 12 + 2 * 8  # every anchor once, then every copy of both steps
    trained = json.loads((out / "train_summary.json").read_text())
    assert trained["trim"] is True and trained["edit_p"] == 0.5
    r = CliRunner().invoke(main, [*args[:-3], "--resume", "--steps", "3"])  # resuming without them is refused
    assert r.exit_code == 2 and "only --steps and --init may change" in r.output
    r = CliRunner().invoke(main, [*args[:-2], "--edit-p", "1.5"])
    assert r.exit_code == 2
