import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from overlap_audit.detectors import get_detector  # noqa: E402
from overlap_audit.errors import DetectorError  # noqa: E402

pytestmark = pytest.mark.torch


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3)) * 3.0  # not normalised: the adapter normalises


@pytest.fixture
def scripted(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "toy.torchscript.pt"
    torch.jit.script(Toy()).save(str(path))
    (tmp_path / "toy.torchscript.pt.json").write_text(json.dumps({"input_size": 40, "resize": "short_side"}))
    return path


def test_torchscript_adapter(scripted, photos):
    det = get_detector(f"torchscript:{scripted}")
    assert det.dim == 6 and det.input_size == 40 and det.metric == "cosine" and det.version.startswith("1+")
    assert det.preprocess(photos["coffee"]).shape == (3, 40, 40)
    v = det.embed_images([photos["coffee"], photos["rocket"], photos["coffee"]])
    assert v.shape == (3, 6) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(v[0], v[2], atol=1e-6)
    assert det.default_threshold is None


def test_clip_image_alias(scripted):
    det = get_detector(f"clip-image:{scripted}")
    assert det.name == "clip-image" and det.info.name == "clip-image" and det.dim == 6
    with pytest.raises(DetectorError, match="TorchScript export"):
        get_detector("clip-image")


def test_torchscript_errors(tmp_path, scripted):
    with pytest.raises(DetectorError, match="not found"):
        get_detector(f"torchscript:{tmp_path / 'nope.pt'}")
    with pytest.raises(DetectorError, match="needs a path"):
        get_detector("torchscript")
    bad = tmp_path / "bad.pt"
    torch.jit.script(torch.nn.Identity()).save(str(bad))  # returns [N, 3, H, W], not [N, D]
    with pytest.raises(DetectorError, match=r"\[N, D\]"):
        get_detector(f"torchscript:{bad}")
