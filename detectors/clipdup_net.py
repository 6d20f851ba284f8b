"""The CLIP paper's near-duplicate detector network (Appendix C), in torch: the network of the ``clipdup``
detector (the detector is ``clipdup``, its training ``clipdup_train``).

A ResNet with:
- anti-aliasing (Zhang 2019, "Making Convolutional Networks Shift-Invariant Again"): every strided
  downsampling becomes a stride-1 operation followed by a fixed binomial blur applied with stride 2
  (``BlurPool``); no layer with stride > 1 other than the blurs;
- weight normalisation (Salimans & Kingma 2016) instead of batch norm: no batch statistics, so nothing
  about duplicates leaks between the examples of a batch; a zero-initialised scalar gate on each residual
  branch keeps the deep un-normalised network trainable from the start;
- GELU activations, global average pooling, a linear projection to D (default 256), L2 normalisation.

Width and depth are parameters: ``resnet50`` is the bottleneck layout (3, 4, 6, 3) at width 64;
``small`` (1, 1, 1, 1) at width 16 trains on a CPU. ``info_nce`` is CLIP's symmetric contrastive loss at
a fixed temperature (0.07): each image against its augmented copy, every other image of the batch a
negative.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

ARCHS = {"resnet50": ((3, 4, 6, 3), 64), "small": ((1, 1, 1, 1), 16)}


@dataclass(frozen=True)
class DuplicateNetConfig:
    """What a checkpoint records about its variant."""

    arch: str = "small"
    depths: tuple[int, ...] = (1, 1, 1, 1)
    width: int = 16
    dim: int = 256
    temperature: float = 0.07
    channels: int = 3  # 3: RGB input; 1: luma only (invariant to hue and saturation by construction)
    standardize: bool = False  # per-image zero mean / unit variance at the input (brightness/contrast)
    # empty: standardise all channels together (std floor 0.02); else each channel on its own, with these
    # std floors, one per channel (max-and-chroma input: a saturation change scales the chroma channel alone)
    channel_floors: tuple[float, ...] = ()

    @classmethod
    def named(cls, arch: str, dim: int = 256, channels: int = 3, standardize: bool = False,
              channel_floors: tuple[float, ...] = ()) -> "DuplicateNetConfig":
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        if channels not in (1, 2, 3):
            raise ValueError(f"channels must be 1 (luma or value), 2 (max and min) or 3 (RGB), got {channels}")
        if channel_floors and (len(channel_floors) != channels or not standardize):
            raise ValueError(f"channel_floors needs standardize and one floor per channel ({channels}), "
                             f"got {channel_floors}")
        depths, width = ARCHS[arch]
        return cls(arch=arch, depths=depths, width=width, dim=dim, channels=channels, standardize=standardize,
                   channel_floors=tuple(float(f) for f in channel_floors))

    @classmethod
    def from_dict(cls, d: dict) -> "DuplicateNetConfig":
        """A config from a checkpoint; older checkpoints lack the input fields and are RGB, unstandardised."""
        return cls(arch=d["arch"], depths=tuple(d["depths"]), width=d["width"], dim=d["dim"],
                   temperature=d["temperature"], channels=int(d.get("channels", 3)),
                   standardize=bool(d.get("standardize", False)),
                   channel_floors=tuple(float(f) for f in d.get("channel_floors", ())))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["depths"] = list(self.depths)
        d["channel_floors"] = list(self.channel_floors)
        return d


class BlurPool(nn.Module):
    """Depthwise binomial blur [1, 2, 1]ᵀ[1, 2, 1] / 16, applied with stride 2 (anti-aliased subsampling)."""

    def __init__(self, channels: int, stride: int = 2):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = (k[:, None] * k[None, :]) / 16.0
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone())
        self.stride = stride
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel, stride=self.stride, groups=self.channels)


def _conv(cin: int, cout: int, k: int) -> nn.Module:
    return weight_norm(nn.Conv2d(cin, cout, k, stride=1, padding=k // 2, bias=True))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv(cin, width, 1)
        self.conv2 = _conv(width, width, 3)
        self.down = BlurPool(width) if stride == 2 else nn.Identity()
        self.conv3 = _conv(width, cout, 1)
        self.gate = nn.Parameter(torch.zeros(()))  # residual branch starts switched off
        shortcut: list[nn.Module] = []
        if stride == 2:
            shortcut.append(BlurPool(cin))
        if cin != cout:
            shortcut.append(_conv(cin, cout, 1))
        self.shortcut = nn.Sequential(*shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = self.down(F.gelu(self.conv2(y)))
        y = self.conv3(y)
        return F.gelu(self.shortcut(x) + self.gate * y)


class DuplicateNet(nn.Module):
    """Anti-aliased, weight-normalised GELU ResNet ending in an L2-normalised D-dim embedding."""

    def __init__(self, config: DuplicateNetConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.stem = nn.Sequential(_conv(config.channels, w, 3), nn.GELU(), BlurPool(w), _conv(w, w, 3), nn.GELU(), BlurPool(w))
        layers: list[nn.Module] = []
        cin = w
        for stage, depth in enumerate(config.depths):
            width = w * 2 ** stage
            for block in range(depth):
                stride = 2 if block == 0 and stage > 0 else 1
                layers.append(Bottleneck(cin, width, stride))
                cin = width * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.proj = weight_norm(nn.Linear(cin, config.dim))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the network sees it: unchanged, or standardised per image (config.standardize)."""
        if not self.config.standardize:
            return x
        # a copy that is brighter or of other contrast gives the same input; the floor (about 5 grey levels)
        # keeps near-uniform images from being blown up into noise
        if self.config.channel_floors:
            floors = torch.tensor(self.config.channel_floors, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            return (x - x.mean(dim=(2, 3), keepdim=True)) / torch.maximum(x.std(dim=(2, 3), keepdim=True), floors)
        return (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True).clamp_min(0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(self.standardise(x)))
        x = x.mean(dim=(2, 3))
        return F.normalize(self.proj(x), dim=1)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's symmetric InfoNCE between unit embeddings of images (a) and their copies (b).

    Returns (loss, proxy accuracy: how often each image's copy is its most similar item in the batch).
    """
    logits = a @ b.t() / temperature
    target = torch.arange(len(a), device=a.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    accuracy = (logits.argmax(dim=1) == target).float().mean()
    return loss, accuracy


def batch_global_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Each image-copy pair against every non-matching pair of the batch, in one softmax per positive.

    InfoNCE compares a copy only with the other items of its own row and column; a detector is used at one
    threshold for every query, so this term also asks that no pair of two different images (anywhere in the
    batch) be more similar than a true pair: -log(exp(s_ii/t) / (exp(s_ii/t) + sum_{j != k} exp(s_jk/t))).
    """
    logits = a @ b.t() / temperature
    n = len(a)
    pos = logits.diagonal()
    neg = logits.masked_select(~torch.eye(n, dtype=torch.bool, device=a.device))
    neg_lse = torch.logsumexp(neg, dim=0)
    return (torch.logaddexp(pos, neg_lse.expand_as(pos)) - pos).mean()
