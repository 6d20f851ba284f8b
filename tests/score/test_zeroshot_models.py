"""report --model end to end with real models: a randomly initialised open_clip model (open_clip's own
factory, transforms and tokenizer) and a tiny transformers CLIPModel saved to a directory, scored on real
images; their predictions are checked against the same computation done directly with each library."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from overlap_audit.api import ReportSettings, run_report
from overlap_audit.settings import MatchSettings, ZeroShotSettings
from overlap_audit.cli import main
from overlap_audit.errors import ModelError
from overlap_audit.zeroshot.loaders import load_model, parse_model_spec, resolve_model_device, weights_sha256
from overlap_audit.report import load_report
from overlap_audit.zeroshot.scoring import build_classifier

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TINY_OPEN_CLIP = {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
CLASSNAMES = {"seen": "seen thing", "new": "new_thing", "extra_a": "spoon", "extra_b": "fork", "extra_c": "knife"}
TEMPLATES = ["a photo of a {}.", "art of the {}", "{}"]


def _spread(module: torch.nn.Module) -> None:
    """Wider random weights for an image tower: at the default init a tiny tower maps every image to nearly
    the same embedding, so every image would get the same class and the checks below would prove little."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)


@pytest.fixture(scope="module")
def open_clip_files(tmp_path_factory):
    """A tiny open_clip config JSON and a random-init checkpoint of it (about 0.8M parameters, most of
    them the token embedding of open_clip's 49408-token vocabulary)."""
    import open_clip

    d = tmp_path_factory.mktemp("openclip")
    cfg = d / "tinyclip.json"
    cfg.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("tinyclip")
    _spread(model.visual)
    torch.save(model.state_dict(), d / "tiny.pt")
    return cfg, d / "tiny.pt"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level BPE's reversible byte -> printable character table."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny transformers CLIPModel with a byte-level CLIP tokenizer (no merges) and an image processor,
    saved with save_pretrained into one directory, all built offline."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("hfclip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _bytes_to_unicode().values():
        vocab[c] = len(vocab)
    for c in _bytes_to_unicode().values():
        vocab[c + "</w>"] = len(vocab)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16)
    model = CLIPModel(cfg)
    _spread(model.vision_model)
    _spread(model.visual_projection)
    model.save_pretrained(d)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, corpus_dir):
    out = tmp_path_factory.mktemp("models") / "index"
    r = CliRunner().invoke(main, ["index", str(corpus_dir), "--out", str(out), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def classnames_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("names") / "names.json"
    path.write_text(json.dumps(CLASSNAMES))
    return path


@pytest.fixture(scope="module")
def templates_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("templates") / "t.txt"
    path.write_text("\n".join(TEMPLATES) + "\n")
    return path


def _rows(path):
    return {(r["dataset"], r["id"]): r for r in pq.read_table(path).to_pylist()}


def _expected(root, ids, encode_image, encode_texts, labels, names, templates):
    """The paper's zero-shot top-1 computed directly: prompt embeddings normalised, averaged, normalised;
    images normalised; argmax of the cosine."""
    weights = []
    for name in names:
        t = torch.nn.functional.normalize(encode_texts([tp.replace("{}", name) for tp in templates]).float(), dim=-1)
        weights.append(torch.nn.functional.normalize(t.mean(0), dim=0))
    w = torch.stack(weights)
    out = {}
    for i in ids:
        img = Image.open(root / i).convert("RGB")
        e = torch.nn.functional.normalize(encode_image(img).float(), dim=-1)
        out[i] = labels[int((e @ w.T).argmax())]
    return out


def test_open_clip_model_scores_end_to_end(tmp_path, index_dir, eval_set, open_clip_files, classnames_file,
                                           templates_file):
    import open_clip

    root, planted, clean = eval_set
    cfg, ckpt = open_clip_files
    spec = f"open_clip:{cfg}:{ckpt}"
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={root}", "--model", spec,
                                  "--classnames", str(classnames_file), "--templates", f"val={templates_file}",
                                  "--out", str(out), "--workers", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert f"Model `{spec}`" in r.output and "predictions.parquet" in r.output

    table = pq.read_table(out / "predictions.parquet")
    assert table.column_names == ["dataset", "id", "label", "prediction", "correct", "top5"]
    assert str(table.schema.field("top5").type) == "list<element: string>"
    rows = _rows(out / "predictions.parquet")
    assert set(rows) == {("val", i) for i in planted + clean}
    splits = {r["id"]: r for r in pq.read_table(out / "splits.parquet").to_pylist()}
    assert set(splits) == {i for _, i in rows}
    for (_, i), row in rows.items():
        assert row["label"] == i.split("/")[0]
        assert row["correct"] == (row["prediction"] == row["label"]) == splits[i]["correct"]
        # the classnames file's five labels are all classes, even those no image has
        assert len(row["top5"]) == 5 and row["top5"][0] == row["prediction"] and set(row["top5"]) <= set(CLASSNAMES)

    # the same computation done directly with open_clip
    model, _, transform = open_clip.create_model_and_transforms("tinyclip", pretrained=str(ckpt))
    model.eval()
    tok = open_clip.get_tokenizer("tinyclip")
    with torch.no_grad():
        want = _expected(root, planted + clean, lambda im: model.encode_image(transform(im)[None])[0],
                         lambda t: model.encode_text(tok(t)), list(CLASSNAMES), list(CLASSNAMES.values()), TEMPLATES)
    assert {i: rows[("val", i)]["prediction"] for i in want} == want
    assert len(set(want.values())) > 1  # a comparison that a constant classifier would not pass by luck

    data = json.loads((out / "report.json").read_text())
    m = data["model"]
    assert m["spec"] == spec and m["device"] == "cpu"
    assert m["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert m["templates"]["val"]["templates"] == TEMPLATES and m["templates"]["val"]["source"] == str(templates_file)
    assert m["classnames"]["val"] == str(classnames_file)
    assert data["predictions"] == str(out / "predictions.parquet")
    assert spec in (out / "report.md").read_text()
    acc = sum(r["correct"] for r in rows.values()) / len(rows)
    assert data["datasets"][0]["acc_all"] == pytest.approx(acc)
    assert load_report(out).to_dict() == data

    # the predictions file reruns the report with --predictions, to the same numbers
    again = tmp_path / "again"
    r = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={root}", "--predictions",
                                  str(out / "predictions.parquet"), "--out", str(again), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    first, second = data["datasets"][0], json.loads((again / "report.json").read_text())["datasets"][0]
    for key in ("n_all", "n_overlap", "acc_all", "acc_overlap", "acc_clean", "p_value"):
        assert first[key] == second[key], key


def test_hf_model_scores_end_to_end_and_identically_twice(tmp_path, index_dir, eval_set, hf_dir):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    root, planted, clean = eval_set
    outs = []
    for workers in (0, 2):  # in this process, then in the fork pool: the same predictions
        out = tmp_path / f"rep{workers}"
        rep = run_report(index_dir, [("val", str(root))],
                         ReportSettings(out, zero_shot=ZeroShotSettings(f"hf:{hf_dir}", templates=None),
                                        match=MatchSettings(workers=workers, device="cpu")))
        assert rep.model["templates"]["val"]["count"] == 80 and rep.model["templates"]["val"]["source"] == "default"
        outs.append(out)
    assert pq.read_table(outs[0] / "predictions.parquet").equals(pq.read_table(outs[1] / "predictions.parquet"))
    rows = _rows(outs[0] / "predictions.parquet")
    assert set(rows) == {("val", i) for i in planted + clean}
    assert all(len(r["top5"]) == 2 for r in rows.values())  # two classes: seen, new
    assert rep.model["weights_sha256"] == weights_sha256(hf_dir)
    assert rep.model["weights_sha256"] == hashlib.sha256((hf_dir / "model.safetensors").read_bytes()).hexdigest()

    model = CLIPModel.from_pretrained(hf_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(hf_dir, local_files_only=True)
    from overlap_audit.zeroshot.scoring import default_templates

    def text(t):
        return model.get_text_features(**tok(t, padding=True, return_tensors="pt")).pooler_output

    def image(im):
        return model.get_image_features(**proc(images=[im], return_tensors="pt")).pooler_output[0]

    with torch.no_grad():
        want = _expected(root, planted + clean, image, text, ["new", "seen"], ["new", "seen"], default_templates())
    assert {i: rows[("val", i)]["prediction"] for i in want} == want
    assert len(set(want.values())) > 1


def test_classifier_of_a_real_model_is_the_normalised_prompt_mean(open_clip_files):
    cfg, ckpt = open_clip_files
    model = load_model(f"open_clip:{cfg}:{ckpt}", device="cpu")
    clf = build_classifier(model, ["a", "b", "c"], ["cat", "dog", "hot dog"], TEMPLATES)
    assert clf.weights.shape == (3, 16) and clf.weights.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(clf.weights, axis=1), 1.0, rtol=1e-5)
    prompts = model.encode_texts([t.replace("{}", "hot dog") for t in TEMPLATES]).numpy()
    np.testing.assert_allclose(np.linalg.norm(prompts, axis=1), 1.0, rtol=1e-5)
    mean = prompts.mean(axis=0)
    np.testing.assert_allclose(clf.weights[2], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    assert not np.allclose(clf.weights[0], clf.weights[1])
    pixels = model.preprocess([Image.new("RGB", (50, 40), (200, 30, 30))])
    assert tuple(pixels.shape) == (1, 3, 32, 32)


def test_skipped_images_are_skipped_for_model_and_detector_alike(tmp_path, index_dir, eval_set, open_clip_files):
    root, planted, clean = eval_set
    ev = tmp_path / "ev"
    shutil.copytree(root, ev)
    (ev / "new" / "broken.png").write_bytes(b"not an image")
    cfg, ckpt = open_clip_files
    out = tmp_path / "r"
    r = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={ev}", "--model",
                                  f"open_clip:{cfg}:{ckpt}", "--templates", str(ev / ".." / "none.txt"),
                                  "--out", str(out), "--workers", "0", "--quiet"])
    assert r.exit_code == 2 and "cannot read templates file" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["report", str(index_dir), "--eval", f"val={ev}", "--model",
                                  f"open_clip:{cfg}:{ckpt}", "--out", str(out), "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "skipped val:new/broken.png: not an image" in r.output
    ids = {i for _, i in _rows(out / "predictions.parquet")}
    assert ids == {r["id"] for r in pq.read_table(out / "splits.parquet").to_pylist()} == set(planted + clean)


def test_model_errors_are_clear(tmp_path, index_dir, eval_set, open_clip_files, hf_dir):
    root, planted, clean = eval_set
    cfg, ckpt = open_clip_files
    cases = {
        f"open_clip:{cfg}:{tmp_path / 'missing.pt'}": "does not exist",
        f"open_clip:ViT-B-32:{tmp_path / 'missing.pt'}": "does not exist",
        f"open_clip:ViT-B-23:{ckpt}": "unknown open_clip architecture 'ViT-B-23'",
        "open_clip:ViT-B-32:openai": "would need a download",
        "open_clip:ViT-B-32:laion2b_s34b_b79k": "would need a download",
        "open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K": "needs the network",
        "open_clip:ViT-B-32": "give the checkpoint too",
        "hf:openai/clip-vit-base-patch32": "would need the network",
        f"hf:{tmp_path / 'nodir'}": "is not a directory",
        f"hf:{tmp_path}": "has no config.json",
        "clip:ViT-B-32": "is not one of",
    }
    for spec, message in cases.items():
        with pytest.raises(ModelError, match=message):
            parse_model_spec(spec)
    assert "list_models()" in str(pytest.raises(ModelError, parse_model_spec, f"open_clip:ViT-B-23:{ckpt}").value)
    assert "hf:/path/to/clip-dir" in str(pytest.raises(ModelError, parse_model_spec,
                                                       "hf:openai/clip-vit-base-patch32").value)

    # a checkpoint of another architecture, and a file that is no checkpoint at all
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**TINY_OPEN_CLIP, "embed_dim": 8}))
    with pytest.raises(ModelError, match="cannot load .* as open_clip 'other'"):
        load_model(f"open_clip:{other}:{ckpt}", device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(ModelError, match="junk.pt"):
        load_model(f"open_clip:{cfg}:{junk}", device="cpu")
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text('{"embed_dim": 8}')
    with pytest.raises(ModelError, match="lacks vision_cfg, text_cfg"):
        parse_model_spec(f"open_clip:{bad_cfg}:{ckpt}")
    broken_hf = tmp_path / "hf"
    shutil.copytree(hf_dir, broken_hf)
    (broken_hf / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match="image processor"):
        load_model(f"hf:{broken_hf}", device="cpu")
    if not torch.cuda.is_available():
        from overlap_audit.errors import DeviceError

        with pytest.raises(DeviceError, match="no GPU"):
            resolve_model_device("cuda")

    runner = CliRunner()
    base = ["report", str(index_dir), "--eval", f"val={root}", "--out", str(tmp_path / "r"), "--workers", "0"]
    r = runner.invoke(main, base + ["--model", "open_clip:ViT-B-32:openai"])
    assert r.exit_code == 2 and r.output.startswith("error:") and "would need a download" in r.output
    r = runner.invoke(main, base)
    assert r.exit_code == 2 and "exactly one of --predictions" in r.output
    r = runner.invoke(main, base + ["--classnames", str(cfg)])
    assert r.exit_code == 2 and "go with --model" in r.output

    # an evaluation set without labels (images at the top level) cannot be scored zero-shot
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in planted[:3]:
        shutil.copy(root / i, flat / os.path.basename(i))
    r = runner.invoke(main, ["report", str(index_dir), "--eval", f"flat={flat}", "--model", f"open_clip:{cfg}:{ckpt}",
                             "--out", str(tmp_path / "r2"), "--workers", "0", "--quiet"])
    assert r.exit_code == 2 and "has no label" in r.output and "--predictions" in r.output


def test_installed_command_scores_a_model(tmp_path, index_dir, eval_set, open_clip_files):
    exe = shutil.which("overlap-audit", path=os.path.dirname(sys.executable))
    assert exe
    root, planted, clean = eval_set
    cfg, ckpt = open_clip_files
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([exe, "report", str(index_dir), "--eval", f"val={root}", "--model", f"open_clip:{cfg}:{ckpt}",
                        "--out", str(tmp_path / "rep"), "--quiet"], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert "| val | 50 |" in r.stdout and "predictions.parquet" in r.stdout
    assert len(pq.read_table(tmp_path / "rep" / "predictions.parquet")) == 50


def _size(image):
    return np.array(image.size)


def test_one_decoding_pass_feeds_detector_and_model(tmp_path, photos):
    """The model gets the full image even where the detector has a large JPEG decoded at a reduced scale,
    and the detector's arrays are the same as without a model."""
    from overlap_audit.detectors import get_detector
    from overlap_audit.embed import Decoder
    from overlap_audit.values import RawItem

    det = get_detector("phash")  # decode_size 128: a 1024x768 JPEG is decoded at 1/4 scale for it
    photo = next(iter(photos.values())).resize((1024, 768))
    photo.save(tmp_path / "a.jpg", quality=90)
    photo.save(tmp_path / "b.png")
    items = [RawItem("s", "a.jpg", path=str(tmp_path / "a.jpg")), RawItem("s", "b.png", path=str(tmp_path / "b.png")),
             RawItem("s", "c.png", data=b"")]
    for workers in (0, 2):
        with Decoder(det, workers=workers, model_input=_size) as decoder:
            both = list(decoder.decode(items))
        with Decoder(det, workers=workers) as decoder:
            alone = list(decoder.decode(items))
        assert all(e.pixels is None for e in alone)
        assert both[0].pixels.tolist() == [1024, 768] and both[1].pixels.tolist() == [1024, 768]
        assert both[2].reason == "zero-byte file" and both[2].pixels is None
        for b, a in zip(both, alone):
            assert b[2] == a[2] and (a[1] is None or np.array_equal(b[1], a[1]))


def test_shipped_small_clip_loads_through_the_model_spec(tmp_path):
    from overlap_audit.zeroshot import smallclip
    from overlap_audit.zeroshot.scoring import ZeroShotModel

    model = load_model("overlap-audit:openclipart-small", device="cpu")
    assert isinstance(model, ZeroShotModel)
    shipped = smallclip.resolve("openclipart-small")
    assert weights_sha256(shipped) == hashlib.sha256(shipped.read_bytes()).hexdigest()
    emb = model.encode_texts(["a drawing of a frog.", "a drawing of a frog.", "a rocket"])
    emb = emb.detach().numpy() if hasattr(emb, "detach") else np.asarray(emb)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-5)
    assert np.array_equal(emb[0], emb[1]) and not np.allclose(emb[0], emb[2])
    with pytest.raises(ModelError):
        load_model(f"overlap-audit:{tmp_path / 'nothing-here'}", device="cpu")


# ---------------------------------------------------------------- clip-image: the scoring model as a detector


def _clip_image_specs(open_clip_files, hf_dir):
    cfg, ckpt = open_clip_files
    return [f"open_clip:{cfg}:{ckpt}", f"hf:{hf_dir}", "overlap-audit:openclipart-small"]


def test_clip_image_is_the_scoring_models_own_image_embedding(open_clip_files, hf_dir, photos):
    """clip-image:MODEL loads MODEL through the zero-shot loaders: the same preprocessing and the same
    normalised image embedding, a version per weights, and only the transform shipped to decoding workers."""
    import pickle

    from overlap_audit.detectors import get_detector

    images = [photos["coffee"], photos["rocket"], photos["coffee"].resize((300, 200))]
    versions = set()
    for spec in _clip_image_specs(open_clip_files, hf_dir):
        det = get_detector(f"clip-image:{spec}", device="cpu")
        model = load_model(spec, device="cpu")
        expected = np.asarray(model.encode_images(model.preprocess(images)), dtype=np.float32)
        got = det.embed_images(images)
        assert det.name == "clip-image" and det.metric == "cosine" and det.default_threshold is None
        assert got.shape == (3, det.dim) and det.dim == expected.shape[1]
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-5)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        pixels = np.stack([det.preprocess(im) for im in images])
        np.testing.assert_allclose(pixels[:, :3], np.asarray(model.preprocess(images)), atol=1e-6)
        versions.add(det.version)
        shipped = pickle.dumps(det)
        assert len(shipped) < 100_000, (spec, len(shipped))  # the weights stay in the main process
        worker = pickle.loads(shipped)
        np.testing.assert_array_equal(worker.preprocess(photos["rocket"]), det.preprocess(photos["rocket"]))
    assert len(versions) == 3


def test_clip_image_low_information_through_each_models_normalisation(open_clip_files, hf_dir, photos):
    """Blank and near-uniform images are flagged whatever preprocessing the model uses — also where it pads a
    non-square image on white, which would make a blank image a framed box; photos, and a saturated colour
    on white, are not."""
    from overlap_audit.detectors import get_detector

    rng = np.random.default_rng(0)
    grey = Image.new("RGB", (120, 90), (128, 128, 128))
    faint = Image.fromarray(np.clip(100 + rng.normal(0, 0.5, (90, 120, 3)), 0, 255).astype(np.uint8))
    black = Image.new("RGB", (64, 64), "black")
    disc = Image.new("RGB", (96, 96), "white")
    disc.paste((200, 20, 20), (30, 30, 66, 66))
    for spec in _clip_image_specs(open_clip_files, hf_dir):
        det = get_detector(f"clip-image:{spec}", device="cpu")
        batch = np.stack([det.preprocess(im) for im in (grey, faint, black, photos["astronaut"], disc)])
        assert det.low_information(batch).tolist() == [True, True, True, False, False], spec


def test_clip_image_errors_name_the_forms(tmp_path):
    from overlap_audit.detectors import get_detector
    from overlap_audit.errors import DetectorError

    with pytest.raises(DetectorError, match="zero-shot model spec"):
        get_detector("clip-image")
    with pytest.raises(DetectorError, match="no small CLIP"):
        get_detector(f"clip-image:overlap-audit:{tmp_path / 'missing'}")
    with pytest.raises(DetectorError, match="pretrained tag"):
        get_detector("clip-image:open_clip:ViT-B-32:openai")
    with pytest.raises(DetectorError, match="not found"):  # neither a model spec nor an existing TorchScript file
        get_detector(f"clip-image:{tmp_path / 'tower.pt'}")


def test_clip_image_index_and_report_end_to_end(tmp_path, eval_set, corpus_dir):
    """index and report with --detector clip-image:overlap-audit:openclipart-small, as a real subprocess;
    the report refuses another detector than the index's."""
    exe = shutil.which("overlap-audit", path=os.path.dirname(sys.executable))
    root, planted, clean = eval_set
    spec = "clip-image:overlap-audit:openclipart-small"
    r = subprocess.run([exe, "index", str(corpus_dir), "--out", str(tmp_path / "idx"), "--detector", spec,
                        "--workers", "1", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["detector"]["spec"] == spec and manifest["detector"]["dim"] == 128
    r = subprocess.run([exe, "report", str(tmp_path / "idx"), "--eval", f"val={root}", "--model",
                        "overlap-audit:openclipart-small", "--threshold", "0.99", "--out", str(tmp_path / "rep"),
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["detector"]["spec"] == spec
    (dataset,) = report["datasets"]
    assert dataset["threshold"] == 0.99 and dataset["n_all"] == len(planted) + len(clean)
    rows = pq.read_table(tmp_path / "rep" / "splits.parquet").to_pylist()
    # a planted copy (resized, recompressed, cropped by 2 px) finds the tile it was made from
    found = [r["neighbor_ids"][0] == r["id"].split("/")[1].rsplit("-", 1)[0] + ".png" for r in rows
             if r["id"] in planted]
    assert len(found) == len(planted) and sum(found) >= 0.8 * len(found), found
    r = subprocess.run([exe, "report", str(tmp_path / "idx"), "--eval", f"val={root}", "--model",
                        "overlap-audit:openclipart-small", "--detector", "phash", "--out", str(tmp_path / "rep2"),
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "phash" in r.stderr
