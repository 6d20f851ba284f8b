"""The detector network of the CLIP paper's Appendix C."""

import math

import pytest

torch = pytest.importorskip("torch")

from overlap_audit.detectors.clipdup_net import (  # noqa: E402
    BlurPool, DuplicateNet, DuplicateNetConfig, batch_global_nce, info_nce)

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return DuplicateNet(DuplicateNetConfig.named("small", dim=64)).eval()


def test_output_shape_and_normalisation(small):
    x = torch.rand(3, 3, 64, 64)
    z = small(x)
    assert z.shape == (3, 64)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)


def test_no_batch_norm_and_weight_norm_everywhere(small):
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    assert not any(isinstance(m, norms) for m in small.modules())
    weighted = [m for m in small.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert weighted and all(hasattr(m, "parametrizations") and "weight" in m.parametrizations for m in weighted)
    assert any(isinstance(m, torch.nn.GELU) for m in small.modules())


def test_a_blur_before_every_stride(small):
    strided = [m for m in small.modules() if getattr(m, "stride", 1) not in (1, (1, 1))]
    assert strided and all(isinstance(m, BlurPool) for m in strided)
    resnet50 = DuplicateNet(DuplicateNetConfig.named("resnet50"))
    assert sum(isinstance(m, BlurPool) for m in resnet50.modules()) == 2 + 3 * 2  # stem + 3 stages x 2 paths
    assert not any(isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1) for m in resnet50.modules())


def test_examples_do_not_interact_within_a_batch(small):
    x = torch.rand(4, 3, 48, 48)
    together = small(x)
    alone = torch.cat([small(x[i:i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)  # no batch statistics


def test_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    loss, acc = info_nce(a, b, temperature=0.5)
    s = [[0.6 / 0.5, 0.0], [0.8 / 0.5, 1.0 / 0.5]]  # logits[i][j] = a_i . b_j / t
    rows = [-math.log(math.exp(s[i][i]) / sum(math.exp(v) for v in s[i])) for i in range(2)]
    cols = [-math.log(math.exp(s[j][j]) / sum(math.exp(s[i][j]) for i in range(2))) for j in range(2)]
    assert loss.item() == pytest.approx((sum(rows) / 2 + sum(cols) / 2) / 2, abs=1e-6)
    assert acc.item() == 1.0


def test_batch_global_nce_by_hand():
    """Each true pair against every pair of two different images in the batch (here s_01 and s_10)."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    b = torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    t = 0.5
    s = [[sum(x * y for x, y in zip(a[i].tolist(), b[j].tolist())) / t for j in range(3)] for i in range(3)]
    negatives = sum(math.exp(s[j][k]) for j in range(3) for k in range(3) if j != k)
    expected = sum(-math.log(math.exp(s[i][i]) / (math.exp(s[i][i]) + negatives)) for i in range(3)) / 3
    assert batch_global_nce(a, b, temperature=t).item() == pytest.approx(expected, abs=1e-5)
    # unlike InfoNCE, it sees that pair 0 (0.6) is less similar than the non-pair (1, 2) (0.8): a negative of
    # another row outranks a true pair, so raising that true pair lowers the loss
    a0 = a.clone().requires_grad_(True)
    batch_global_nce(a0, b, temperature=t).backward()
    assert float(a0.grad[0] @ b[0]) < 0  # gradient descent moves a_0 towards b_0


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(1)
    net = DuplicateNet(DuplicateNetConfig.named("small", dim=32))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = torch.rand(8, 3, 32, 32)
    copies = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    first = None
    for _ in range(15):
        loss, _ = info_nce(net(x), net(copies))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_luma_standardised_input_ignores_brightness_and_contrast():
    torch.manual_seed(2)
    cfg = DuplicateNetConfig.named("small", dim=16, channels=1, standardize=True)
    net = DuplicateNet(cfg).eval()
    plain = DuplicateNet(DuplicateNetConfig.named("small", dim=16, channels=1)).eval()
    assert net.stem[0].in_channels == 1
    ramp = torch.linspace(0.2, 0.7, 32)
    x = torch.stack([ramp.expand(32, 32), ramp[:, None].expand(32, 32)])[:, None]  # two different pictures
    with torch.no_grad():
        for m in (net, plain):
            for block in m.layers:
                block.gate.fill_(1.0)  # residual branches on, as after training
        z, z2 = net(x), net(0.3 + 1.4 * (x - 0.2))  # brighter, more contrast, still inside 0..1
        assert torch.allclose(z, z2, atol=1e-5)
        assert not torch.allclose(z[0], z[1], atol=1e-4)  # the picture itself still matters
        assert not torch.allclose(plain(x), plain(0.3 + 1.4 * (x - 0.2)), atol=1e-4)


def test_config_round_trip_and_old_checkpoints():
    cfg = DuplicateNetConfig.named("small", dim=8, channels=1, standardize=True)
    assert DuplicateNetConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("channels", "standardize")}
    assert DuplicateNetConfig.from_dict(old) == DuplicateNetConfig.named("small", dim=8)  # RGB, unstandardised
    with pytest.raises(ValueError, match="channels"):
        DuplicateNetConfig.named("small", channels=4)
    with pytest.raises(ValueError, match="channel_floors"):
        DuplicateNetConfig.named("small", channels=2, standardize=True, channel_floors=(0.02,))  # one floor per channel
    per_channel = DuplicateNetConfig.named("small", dim=8, channels=2, standardize=True, channel_floors=(0.02, 0.05))
    assert DuplicateNetConfig.from_dict(per_channel.to_dict()) == per_channel


def test_per_channel_standardisation_undoes_a_scale_of_one_channel():
    torch.manual_seed(3)
    joint = DuplicateNet(DuplicateNetConfig.named("small", dim=16, channels=2, standardize=True)).eval()
    apart = DuplicateNet(DuplicateNetConfig.named("small", dim=16, channels=2, standardize=True,
                                           channel_floors=(0.02, 0.05))).eval()
    apart.load_state_dict(joint.state_dict())  # the same weights: only the standardisation differs
    ramp = torch.linspace(0.1, 0.9, 32)
    x = torch.stack([ramp.expand(32, 32), ramp[:, None].expand(32, 32)])[None]  # [1, 2, 32, 32]
    y = x.clone()
    y[:, 1] = 0.05 + 0.4 * y[:, 1]  # the second channel alone, at another contrast and level
    flat = x.clone()
    flat[:, 1] = 0.5 + 0.01 * (flat[:, 1] - 0.5)  # a second channel fainter than its floor
    with torch.no_grad():
        for m in (joint, apart):
            for block in m.layers:
                block.gate.fill_(1.0)
        assert torch.allclose(apart(x), apart(y), atol=1e-5)
        assert not torch.allclose(joint(x), joint(y), atol=1e-3)
        # below the floor, a faint channel is not blown up to unit variance: it stays nearly flat
        gone = torch.cat([x[:, :1], torch.full_like(x[:, :1], 0.5)], dim=1)  # no second channel at all
        assert (apart(flat) - apart(gone)).norm() < (apart(flat) - apart(x)).norm()
