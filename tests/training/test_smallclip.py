"""The small CLIP: tokenizer, towers, loss, pretraining (library, CLI, subprocess), checkpoints, loading."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from overlap_audit.zeroshot import smallclip
from overlap_audit.cli import main
from overlap_audit.errors import ModelError
from overlap_audit.zeroshot.scoring import ZeroShotModel, build_classifier
from overlap_audit.zeroshot.smallclip import load, resolve
from overlap_audit.training.smallclip import Pairs, caption_from_path, load_pairs, pretrain
from overlap_audit.settings import PretrainConfig
from overlap_audit.zeroshot.smallclip_net import (EMPTY_BUCKET, SmallClipNetConfig, SmallClipNet, contrastive_loss, token_ids,
                                           tokens)

from ..helpers import write_folder

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TINY = SmallClipNetConfig(image_size=32, widths=(8, 16), embed_dim=16, buckets=512, token_dim=8, text_hidden=16)
NAMES = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]


@pytest.fixture(scope="module")
def caption_folder(tmp_path_factory, photos):
    """Real photos (3 tiles each) with NAME.txt captions: the photo's name on line 1, a translation below."""
    from overlap_audit.demos.synthetic import tiles

    root = tmp_path_factory.mktemp("captioned")
    files = {}
    for name in NAMES:
        for i, tile in enumerate(tiles(photos[name], 2, 64)[:3]):
            files[f"{name}/{name}-{i}.png"] = tile
    write_folder(root, files)
    for name in NAMES:
        for i in range(3):
            (root / name / f"{name}-{i}.txt").write_text(f"a photo of {name}, tile {i}\nfr.utf8=une photo\n")
    return root


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_is_deterministic_and_shares_ngrams_with_unseen_words():
    assert token_ids("Full moon!", 1000) == token_ids("full   MOON", 1000)
    assert tokens("moon")[:3] == ["w:moon", "g:<mo", "g:moo"]
    seen, unseen = set(token_ids("truck", 4096)), set(token_ids("firetruck", 4096))
    assert seen & unseen and unseen - seen           # shares "ruck", "uck>" ... but is its own word too
    assert all(1 <= i < 4096 for i in unseen)


def test_tokenizer_handles_empty_and_wordless_texts():
    assert token_ids("", 100) == [EMPTY_BUCKET]
    assert token_ids("  ,;!  ", 100) == [EMPTY_BUCKET]
    net = SmallClipNet(TINY).eval()
    emb = net.encode_text(["", "?", "a cat"])
    assert emb.shape == (3, TINY.embed_dim)
    assert torch.allclose(emb[0], emb[1])            # both are "no word"
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def test_caption_from_path():
    assert caption_from_path("science/astronomy/full_moon_01.png") == "full moon, astronomy, science"
    assert caption_from_path("signs_and_symbols/x-ray_02.png") == "x ray, signs and symbols"
    assert caption_from_path("cat.png") == "cat"
    assert caption_from_path("animals/0001.png") == "animals"   # numbers alone are no words


# ---------------------------------------------------------------- towers and loss


def test_tower_shapes_and_unit_norm():
    torch.manual_seed(0)
    net = SmallClipNet(TINY).eval()
    with torch.no_grad():
        img = net.image(torch.randn(5, 3, 32, 32))
        txt = net.encode_text(["a", "b c", "d", "e", "f"])
    assert img.shape == (5, 16) and txt.shape == (5, 16)
    assert torch.allclose(img.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(5), atol=1e-5)
    assert math.isclose(net.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)


def test_contrastive_loss_matches_hand_computed_2x2():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    scale = torch.tensor(math.log(2.0))   # logits = 2 * cosines = [[1.2, 0], [1.6, 2]]
    loss, acc = contrastive_loss(a, b, scale)
    # rows (image->text): -log softmax([1.2, 0])[0], -log softmax([1.6, 2])[1]
    row = (math.log(1 + math.exp(-1.2)) + math.log(1 + math.exp(-0.4))) / 2
    # columns (text->image): logits.T = [[1.2, 1.6], [0, 2]]
    col = (math.log(1 + math.exp(0.4)) + math.log(1 + math.exp(-2.0))) / 2
    assert math.isclose(loss.item(), (row + col) / 2, rel_tol=1e-6)
    assert acc.item() == 1.0                       # both rows pick their own text


def test_logit_scale_is_clamped_at_100():
    net = SmallClipNet(TINY)
    with torch.no_grad():
        net.logit_scale.fill_(7.0)
    net.clamp_scale()
    assert math.isclose(net.logit_scale.exp().item(), 100.0, rel_tol=1e-5)


# ---------------------------------------------------------------- data


def test_load_pairs_uses_first_caption_line_and_path_rule(caption_folder):
    pairs = load_pairs([str(caption_folder)], 32, caption_from="caption", workers=0)
    assert len(pairs) == 18 and pairs.images.shape == (18, 3, 32, 32) and pairs.images.dtype == np.uint8
    assert pairs.captions[0] == "a photo of astronaut, tile 0"    # not the fr.utf8 line
    by_path = load_pairs([str(caption_folder)], 32, caption_from="path", workers=0)
    assert by_path.captions[0] == "astronaut, astronaut"          # file "astronaut-0.png" in folder astronaut


def test_load_pairs_skips_items_without_caption(tmp_path, photos):
    write_folder(tmp_path, {"a.png": photos["coffee"].resize((40, 40)), "b.png": photos["rocket"].resize((40, 40))})
    (tmp_path / "a.txt").write_text("a cup of coffee")
    pairs = load_pairs([str(tmp_path)], 32, caption_from="caption", workers=0)
    assert pairs.captions == ["a cup of coffee"]
    assert pairs.skipped == [(f"{tmp_path.name}:b.png", "no caption (caption_from=caption)")]


# ---------------------------------------------------------------- pretraining


def _loss_on(net: SmallClipNet, pairs: Pairs) -> float:
    """The contrastive loss of all pairs as one batch, no augmentation (BatchNorm in train mode, no update)."""
    net.train()
    with torch.no_grad():
        pixels = smallclip.normalise(torch.from_numpy(pairs.images))
        loss, _ = contrastive_loss(net.image(pixels), net.encode_text(pairs.captions), net.logit_scale)
    return loss.item()


def test_a_few_pretraining_steps_lower_the_contrastive_loss(tmp_path, caption_folder):
    pairs = load_pairs([str(caption_folder)], 32, caption_from="caption", workers=0)
    torch.manual_seed(0)
    before = _loss_on(SmallClipNet(TINY), pairs)   # the same initial weights pretrain() starts from (seed 0)
    cfg = PretrainConfig(steps=40, batch_size=18, lr=5e-3, warmup=5, seed=0, caption_from="caption", wrap=0.0,
                      part_dropout=0.0)
    result = pretrain([str(caption_folder)], tmp_path / "run", cfg, TINY, device="cpu", threads=1, workers=0)
    model = load(tmp_path / "run")
    after = _loss_on(model.net, pairs)
    assert result.step == 40 and result.n_pairs == 18
    assert after < before - 0.5, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [10, 20, 30, 40]
    assert {"loss", "accuracy", "temperature", "lr"} <= set(log[0])


def test_checkpoint_round_trip_and_resume(tmp_path, caption_folder):
    cfg = PretrainConfig(steps=6, batch_size=8, warmup=2, caption_from="caption")
    kw = dict(device="cpu", threads=1, workers=0, checkpoint_every=3)
    straight = pretrain([str(caption_folder)], tmp_path / "straight", cfg, TINY, **kw)
    pretrain([str(caption_folder)], tmp_path / "split", PretrainConfig(**{**cfg.__dict__, "steps": 3}), TINY, **kw)
    with pytest.raises(ModelError, match="pass resume=True"):
        pretrain([str(caption_folder)], tmp_path / "split", cfg, TINY, **kw)
    with pytest.raises(ModelError, match="architecture"):
        pretrain([str(caption_folder)], tmp_path / "split", cfg, SmallClipNetConfig(**{**TINY.__dict__, "embed_dim": 8}),
                 resume=True, **kw)
    with pytest.raises(ModelError, match="lr changed"):
        pretrain([str(caption_folder)], tmp_path / "split", PretrainConfig(**{**cfg.__dict__, "lr": 1e-4}), TINY,
                 resume=True, **kw)
    resumed = pretrain([str(caption_folder)], tmp_path / "split", cfg, TINY, resume=True, **kw)
    assert resumed.resumed_from == 3 and resumed.step == 6
    a, b = load(tmp_path / "straight"), load(tmp_path / "split" / "model.pt")
    for (ka, va), (kb, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert ka == kb and torch.allclose(va.float(), vb.float(), atol=1e-5), ka   # resuming = not stopping
    assert math.isclose(straight.loss, resumed.loss, rel_tol=1e-4)
    with open(tmp_path / "split" / "train_log.jsonl", "a") as fh:
        fh.write('{"step": 7, "loss": 1.2')  # a crash mid-line must not stop a later resume
    finished = pretrain([str(caption_folder)], tmp_path / "split", cfg, TINY, resume=True, **kw)
    assert finished.step == 6 and finished.loss == resumed.loss        # nothing left to do: no NaN, same numbers
    assert load(tmp_path / "split").info["loss"] == resumed.loss


def test_pretrain_clip_cli(tmp_path, caption_folder):
    out = tmp_path / "cli"
    args = ["pretrain-clip", str(caption_folder), "--out", str(out), "--steps", "3", "--batch-size", "6",
            "--image-size", "32", "--threads", "1", "--workers", "0", "--quiet", "--caption-from", "caption"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "trained to step 3 on 18 image-caption pairs" in r.output
    model = load(out)
    assert model.image_size == 32 and model.info["step"] == 3
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--resume" in again.output
    more = CliRunner().invoke(main, args[:5] + ["5"] + args[6:] + ["--resume"])
    assert more.exit_code == 0 and "trained to step 5" in more.output


def test_pretrain_clip_subprocess(tmp_path, caption_folder):
    out = tmp_path / "proc"
    proc = subprocess.run([sys.executable, "-m", "overlap_audit.cli", "pretrain-clip", str(caption_folder),
                           "--out", str(out), "--steps", "2", "--batch-size", "4", "--image-size", "32",
                           "--threads", "1", "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()
    bad = subprocess.run([sys.executable, "-m", "overlap_audit.cli", "pretrain-clip", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "x"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error:" in bad.stderr


# ---------------------------------------------------------------- resolve and load


def test_resolve_errors_name_what_was_tried(tmp_path):
    with pytest.raises(ModelError, match="neither a shipped name"):
        resolve(str(tmp_path / "missing.pt"))
    with pytest.raises(ModelError, match="model.pt"):
        resolve(str(tmp_path))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        load(tmp_path / "junk.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not a small CLIP checkpoint"):
        load(tmp_path / "other.pt")


def test_shipped_model_loads_and_is_deterministic(photos):
    name = next(iter(smallclip.SHIPPED))
    path = resolve(name)
    assert path.is_file() and path.stat().st_size < 8_000_000
    model = load(name)
    assert isinstance(model, ZeroShotModel) and model.spec == name
    assert not model.net.training
    images = [photos["coffee"], photos["rocket"], photos["coffee"]]
    a = model.encode_images(model.preprocess(images))
    b = load(name).encode_images(model.preprocess(images))
    assert a.shape == (3, model.dim) and torch.equal(a, b) and torch.equal(a[0], a[2])
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)
    t = model.encode_texts(["a cup of coffee", "a rocket", "a cup of coffee"])
    assert torch.equal(t[0], t[2]) and torch.allclose(t.norm(dim=1), torch.ones(3), atol=1e-5)
    clf = build_classifier(model, ["animals", "food"], templates=["a drawing of {}."])
    assert clf.weights.shape == (2, model.dim)


def test_zero_shot_gives_the_same_predictions_from_pil_images_and_thumbnails(photos):
    from overlap_audit.demos.synthetic import tiles
    from overlap_audit.zeroshot.smallclip import SmallClipModel, square_thumbnail, zero_shot

    torch.manual_seed(1)
    model = SmallClipModel(SmallClipNet(TINY).eval(), "tiny", 32, {}, "cpu")
    images = [t for name in ("coffee", "rocket", "astronaut") for t in tiles(photos[name], 2, 48)]
    labels = [name for name in ("coffee", "rocket", "astronaut") for _ in range(4)]
    a = zero_shot(model, images, labels, templates=["a photo of {}."])
    b = zero_shot(model, np.stack([square_thumbnail(im, 32) for im in images]), labels, templates=["a photo of {}."])
    assert a.predicted == b.predicted and a.classes == ("astronaut", "coffee", "rocket")
    assert a.accuracy == float(np.mean([p == t for p, t in zip(a.predicted, labels)]))
    assert a.majority_rate == 4 / 12
