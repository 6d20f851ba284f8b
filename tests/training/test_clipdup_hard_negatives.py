"""clipdup fine-tuning (--init), hard-negative batches (--hard-negatives) and the value-or-min input."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from overlap_audit.cli import main  # noqa: E402
from overlap_audit.detectors import get_detector  # noqa: E402
from overlap_audit.detectors.clipdup import to_tensor_array  # noqa: E402
from overlap_audit.training.clipdup import batch_indices, mine_neighbours  # noqa: E402
from overlap_audit.settings import DetectorTrainConfig
from overlap_audit.detectors.clipdup_net import DuplicateNet, DuplicateNetConfig  # noqa: E402

from ..helpers import write_folder  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _hue_rotated(image: Image.Image, shift: int = 40) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] += shift  # uint8 wraps around the colour circle
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def test_value_or_min_input(photos):
    coffee = photos["coffee"].resize((96, 96))
    # a photo: the value channel itself (its value is far from flat)
    assert np.array_equal(to_tensor_array(coffee, 32, "value-or-min"), to_tensor_array(coffee, 32, "value"))
    # saturated colours on white: the value is flat (255), the min channel keeps the shapes
    logo = Image.new("RGB", (64, 64), "white")
    logo.paste((255, 0, 0), (8, 8, 30, 56))
    logo.paste((0, 0, 255), (36, 20, 56, 44))
    assert to_tensor_array(logo, 16, "value").std() == 0
    x = to_tensor_array(logo, 16, "value-or-min")
    assert x.shape == (1, 16, 16) and x.std() > 0.3
    assert np.abs(x - to_tensor_array(_hue_rotated(logo), 16, "value-or-min")).max() < 0.02  # hue-free
    # a flat image stays flat (low-information for the detector), no division by zero
    assert to_tensor_array(Image.new("RGB", (32, 32), (200, 30, 30)), 16, "value-or-min").std() == 0
    # continuous: a logo whose value is slightly uneven gives an input between value and min
    half = np.asarray(logo).copy()
    half[:, :32] = (half[:, :32] * 0.8).astype(np.uint8)
    half = Image.fromarray(half)
    hi, lo = to_tensor_array(half, 16, "maxmin")
    mixed = to_tensor_array(half, 16, "value-or-min")[0]
    ratio = hi.std() / lo.std()
    assert 0.15 < ratio < 0.35  # inside the blending band
    w = (ratio - 0.15) / 0.2
    assert np.allclose(mixed, w * hi + (1 - w) * lo, atol=1e-6)


def _tiny_net(dim=16, channels=1):
    torch.manual_seed(0)
    return DuplicateNet(DuplicateNetConfig.named("small", dim=dim, channels=channels, standardize=channels == 1)).eval()


def test_mine_neighbours_against_brute_force(tile_sets):
    corpus, _ = tile_sets
    images = [im for _, im in corpus[:40]]
    images.append(images[3].resize((80, 80)))  # 40: a resized duplicate of image 3 (the same picture)
    cfg = DetectorTrainConfig(input_size=32, input_mode="value", hard_negatives=4)
    net = _tiny_net()
    nb = mine_neighbours(net, images, cfg, "cpu", batch=16)
    assert nb.shape == (41, 3) and nb.dtype == np.int64
    with torch.no_grad():
        e = net(torch.from_numpy(np.stack([to_tensor_array(im, 32, "value") for im in images]))).numpy()
    sims = e @ e.T
    for i in range(41):
        assert i not in nb[i]  # never itself
        others = [j for j in np.argsort(-sims[i]) if j != i and {i, j} != {3, 40}]
        # the most similar first (3 and 40 tie to float rounding, so compare the similarities)
        assert np.allclose(sims[i, nb[i]], sims[i, others[:3]], atol=1e-5)
    assert 40 not in nb[3] and 3 not in nb[40]  # its own duplicate is never its hard negative
    assert sims[3, 40] > 0.99  # ... although the network finds it the most similar


def test_batch_indices_groups():
    rng = np.random.default_rng(0)
    assert sorted(batch_indices(rng, 10, 10, None)) == list(range(10))
    nb = np.array([[(i + 1) % 20, (i + 2) % 20] for i in range(20)])
    nb[5] = [-1, -1]  # no neighbour left for 5
    for seed in range(20):
        idx = batch_indices(np.random.default_rng(seed), 20, 9, nb)
        assert len(idx) == 9 and len(set(idx.tolist())) == 9  # full and distinct
        groups, i = 0, 0
        while i < len(idx):  # groups: a seed followed by its own neighbours
            s, i, groups = idx[i], i + 1, groups + 1
            while i < len(idx) and idx[i] in nb[s]:
                i += 1
        assert groups < 9  # not just random singletons
    assert len(batch_indices(rng, 3, 8, nb[:3] % 3)) == 3  # a batch larger than the corpus: every image once


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tile_sets):
    corpus, _ = tile_sets
    root = write_folder(tmp_path_factory.mktemp("hn") / "imgs", {f"{t}.png": im for t, im in corpus[:24]})
    out = tmp_path_factory.mktemp("hn-base") / "run"
    r = CliRunner().invoke(main, ["train-detector", str(root), "--out", str(out), "--dim", "16", "--input-size", "32",
                                  "--batch-size", "8", "--steps", "3", "--input-mode", "value", "--workers", "0",
                                  "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return root, out


def _finetune(root, base, out, steps, *extra):
    return CliRunner().invoke(main, ["train-detector", str(root), "--out", str(out), "--init", str(base),
                                     "--input-size", "32", "--batch-size", "8", "--steps", str(steps),
                                     "--input-mode", "value-or-min", "--hard-negatives", "3", "--mine-every", "2",
                                     "--lr", "0.01", "--workers", "0", "--quiet", "--device", "cpu", *extra])


def test_finetune_with_hard_negatives_and_resume(base_run, tmp_path):
    root, base = base_run
    r = _finetune(root, base, tmp_path / "full", 5)
    assert r.exit_code == 0, r.output
    trained = json.loads((tmp_path / "full" / "train_summary.json").read_text())
    assert trained["hard_negatives"] == 3 and trained["init"] == str(base) and len(trained["init_sha256"]) == 64
    state = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    assert state["neighbours"].shape == (24, 2)
    start = torch.load(base / "model.pt", weights_only=True)["model"]
    end = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    assert end["model_config"]["dim"] == 16  # the initial weights' architecture
    assert any(not torch.equal(start[k], end["model"][k]) for k in start)  # it trained
    # interrupted after 3 steps and resumed: the same weights as the uninterrupted run
    assert _finetune(root, base, tmp_path / "part", 3).exit_code == 0
    r = _finetune(root, base, tmp_path / "part", 5, "--resume")
    assert r.exit_code == 0, r.output
    resumed = torch.load(tmp_path / "part" / "model.pt", weights_only=True)["model"]
    for k, v in end["model"].items():
        assert torch.allclose(v, resumed[k], atol=1e-6), k
    det = get_detector(f"clipdup:{tmp_path / 'full'}")
    assert det.input_mode == "value-or-min" and det.embed_images([Image.new("RGB", (40, 40))]).shape == (1, 16)


def test_finetune_errors(base_run, tmp_path):
    root, base = base_run
    r = CliRunner().invoke(main, ["train-detector", str(root), "--out", str(tmp_path / "a"), "--init", str(base),
                                  "--input-mode", "rgb", "--steps", "1", "--workers", "0", "--quiet"])
    assert r.exit_code == 2 and "1-channel input" in r.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    r = CliRunner().invoke(main, ["train-detector", str(root), "--out", str(tmp_path / "b"), "--init", str(junk),
                                  "--input-mode", "value", "--steps", "1", "--workers", "0", "--quiet"])
    assert r.exit_code == 2 and "is not clipdup weights" in r.output
    r = CliRunner().invoke(main, ["train-detector", str(root), "--out", str(tmp_path / "c"), "--init",
                                  str(tmp_path / "nowhere"), "--steps", "1", "--workers", "0", "--quiet"])
    assert r.exit_code == 2 and "no clipdup weights there" in r.output
    r = _finetune(root, base, tmp_path / "d", 1, "--hard-negatives", "1")
    assert r.exit_code == 2 and "group size of at least 2" in r.output


def test_global_weight_is_recorded_changes_training_and_is_fixed_on_resume(base_run, tmp_path):
    root, base = base_run
    assert _finetune(root, base, tmp_path / "plain", 2).exit_code == 0
    r = _finetune(root, base, tmp_path / "global", 2, "--global-weight", "0.5")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "global" / "train_summary.json").read_text())["global_weight"] == 0.5
    plain = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)["model"]
    both = torch.load(tmp_path / "global" / "model.pt", weights_only=True)["model"]
    assert any(not torch.allclose(plain[k], both[k]) for k in plain)  # same batches, another loss
    r = _finetune(root, base, tmp_path / "global", 3, "--resume")  # resumed without it: refused
    assert r.exit_code == 2 and "global_weight" in r.output
    r = _finetune(root, base, tmp_path / "neg", 1, "--global-weight", "-1")
    assert r.exit_code == 2 and "--global-weight" in r.output


def _outlines() -> list[Image.Image]:
    """Faint thin outlines on white, each a different picture, and (last) a resized copy of the first."""
    from PIL import ImageDraw

    shapes = []
    for kind, box in [("ellipse", (16, 16, 112, 112)), ("ellipse", (34, 34, 94, 94)), ("rectangle", (24, 24, 104, 104)),
                      ("rectangle", (12, 40, 116, 88)), ("line", (10, 10, 118, 118)), ("ellipse", (16, 40, 112, 88))]:
        im = Image.new("RGB", (128, 128), "white")
        getattr(ImageDraw.Draw(im), kind)(box, **({"fill": (205, 205, 205)} if kind == "line" else
                                                  {"outline": (205, 205, 205)}), width=2)
        shapes.append(im)
    return shapes + [shapes[0].resize((100, 100), Image.Resampling.BICUBIC)]


def test_same_picture_rules_for_mining():
    """mean16 calls every faint outline "the same picture" as every other (little ink on white differs by
    little in raw pixels), so mining never opposes them; z32 compares them standardised: only the resized copy
    of the first outline is the same picture."""
    images = _outlines()
    net = _tiny_net()
    last = len(images) - 1
    for rule, expect_negatives in (("mean16", False), ("z32", True)):
        cfg = DetectorTrainConfig(input_size=32, input_mode="value-or-min", hard_negatives=len(images), same_picture=rule)
        nb = mine_neighbours(net, images, cfg, "cpu")
        assert nb.shape == (len(images), len(images) - 1)
        found = {i: set(nb[i][nb[i] >= 0].tolist()) for i in range(len(images))}
        assert last not in found[0] and 0 not in found[last]  # the resized copy: the same picture under both
        if expect_negatives:  # every other distinct outline is a hard negative of the first
            assert found[0] == set(range(1, last)), found[0]
            assert all(len(found[i]) >= last - 1 for i in range(1, last))
        else:
            assert len(found[0]) < last - 1, found[0]


def test_same_picture_rule_is_checked_recorded_and_fixed_on_resume(base_run, tmp_path):
    root, base = base_run
    r = _finetune(root, base, tmp_path / "z", 2, "--same-picture", "z32")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "z" / "train_summary.json").read_text())["same_picture"] == "z32"
    r = _finetune(root, base, tmp_path / "z", 3, "--resume")  # resumed with the other rule: refused
    assert r.exit_code == 2 and "same_picture" in r.output
    r = _finetune(root, base, tmp_path / "bad", 1, "--same-picture", "pixels")
    assert r.exit_code == 2 and "same-picture" in r.output


def test_value_weights_widen_to_max_and_min(base_run, tmp_path):
    """One-channel weights start a maxmin run: the first convolution gains a min channel with zero weights."""
    from overlap_audit.training.clipdup import widen_to_maxmin

    root, base = base_run
    state = torch.load(base / "model.pt", weights_only=True)
    wide, cfg = widen_to_maxmin(state["model"], DuplicateNetConfig.from_dict(state["model_config"]))
    key = "stem.0.parametrizations.weight.original1"
    assert cfg.channels == 2 and wide[key].shape[1] == 2
    assert torch.equal(wide[key][:, :1], state["model"][key].float()) and not wide[key][:, 1:].any()
    net = DuplicateNet(cfg).eval()
    net.load_state_dict(wide)
    # the min channel has no say yet: changing it changes nothing but the shared standardisation
    x = torch.rand(2, 2, 32, 32)
    y = x.clone()
    y[:, 1] = x[:, 0]  # a min channel equal to the max channel: the standardisation sees the max alone (up to
    # torch's unbiased std: n - 1 of twice the pixels)
    one = DuplicateNet(DuplicateNetConfig.from_dict(state["model_config"])).eval()
    one.load_state_dict(state["model"])
    with torch.no_grad():
        assert torch.allclose(net(y), one(x[:, :1]), atol=1e-3)
        assert not torch.allclose(net(x), one(x[:, :1]), atol=1e-3)  # another min channel moves the statistics
    # through the CLI, and the result is a two-channel detector
    r = CliRunner().invoke(main, ["train-detector", str(root), "--out", str(tmp_path / "mm"), "--init", str(base),
                                  "--input-mode", "maxmin", "--input-size", "32", "--batch-size", "8", "--steps", "2",
                                  "--workers", "0", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    det = get_detector(f"clipdup:{tmp_path / 'mm'}")
    assert det.input_mode == "maxmin" and det.embed_images([Image.new("RGB", (40, 40), "blue")]).shape == (1, 16)
    # RGB weights have no one-channel convolution to widen: refused as before
    rgb = tmp_path / "rgb"
    r = CliRunner().invoke(main, ["train-detector", str(root), "--out", str(rgb), "--dim", "16", "--input-size", "32",
                                  "--batch-size", "8", "--steps", "1", "--workers", "0", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["train-detector", str(root), "--out", str(tmp_path / "x"), "--init", str(rgb),
                                  "--input-mode", "maxmin", "--steps", "1", "--workers", "0", "--quiet"])
    assert r.exit_code == 2 and "3-channel input" in r.output
