"""The networks of the project's small CLIP (``overlap_audit.zeroshot.smallclip``), in torch.

- Tokenizer: lowercase word tokens plus the character n-grams of each word (with ``<`` ``>`` boundary
  marks, as in fastText: Bojanowski et al. 2017), each hashed (CRC-32) into a fixed number of buckets. No
  vocabulary file, nothing to download, and a word never seen in training still shares n-grams with
  related words ("firetruck" with "truck"). A text without any word gets one reserved "empty" bucket.
- Text tower: mean of the token bucket embeddings (an ``EmbeddingBag``), LayerNorm, a two-layer GELU MLP,
  projection to D, L2 normalisation.
- Image tower: a small conv net (a strided conv stem, then conv-BN-ReLU stages each after a 2x2
  max-pooling),
  global average pooling, projection to D, L2 normalisation.
- Loss: the CLIP paper's symmetric cross-entropy over the image–text cosine-similarity matrix, scaled by
  a learned temperature (logit scale initialised to log(1/0.07) and clipped so that it stays <= 100;
  Radford et al. 2021, Sec. 2.5 and Fig. 3).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = math.log(100.0)
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class SmallClipNetConfig:
    """The architecture; a checkpoint stores it and ``load`` rebuilds the model from it."""

    image_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128, 256)
    embed_dim: int = 128
    buckets: int = 16384
    token_dim: int = 64
    text_hidden: int = 256
    ngrams: tuple[int, ...] = (3, 4, 5)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["ngrams"] = list(self.ngrams)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SmallClipNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}")
        d = dict(d)
        for key in ("widths", "ngrams"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


# ---------------------------------------------------------------- tokenizer

EMPTY_BUCKET = 0  # the token of a text that has no word at all


def tokens(text: str, ngrams: Sequence[int] = (3, 4, 5)) -> list[str]:
    """The string tokens of a text: each lowercase word, and the character n-grams of ``<word>``."""
    out: list[str] = []
    for word in _WORD.findall(text.lower()):
        out.append("w:" + word)
        marked = f"<{word}>"
        for n in ngrams:
            if len(marked) > n:  # a word shorter than n is already its own token
                out.extend("g:" + marked[i:i + n] for i in range(len(marked) - n + 1))
    return out


def token_ids(text: str, buckets: int, ngrams: Sequence[int] = (3, 4, 5)) -> list[int]:
    """Hashed bucket ids (1..buckets-1) of a text's tokens; ``[EMPTY_BUCKET]`` when it has no word."""
    ids = [1 + zlib.crc32(t.encode("utf-8")) % (buckets - 1) for t in tokens(text, ngrams)]
    return ids or [EMPTY_BUCKET]


def encode_batch(texts: Sequence[str], buckets: int, ngrams: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat token ids, offsets) for ``nn.EmbeddingBag``."""
    flat: list[int] = []
    offsets: list[int] = []
    for text in texts:
        offsets.append(len(flat))
        flat.extend(token_ids(str(text), buckets, ngrams))
    return torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


# ---------------------------------------------------------------- towers


class TextTower(nn.Module):
    def __init__(self, cfg: SmallClipNetConfig):
        super().__init__()
        self.cfg = cfg
        self.bag = nn.EmbeddingBag(cfg.buckets, cfg.token_dim, mode="mean")
        nn.init.normal_(self.bag.weight, std=0.1)
        self.norm = nn.LayerNorm(cfg.token_dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.token_dim, cfg.text_hidden), nn.GELU(),
                                 nn.Linear(cfg.text_hidden, cfg.embed_dim))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(self.norm(self.bag(ids, offsets))), dim=1)


class ImageTower(nn.Module):
    def __init__(self, cfg: SmallClipNetConfig):
        super().__init__()
        w0 = cfg.widths[0]
        # a strided 4x4 stem halves the resolution at once: most of a CPU step is spent at full resolution
        layers: list[nn.Module] = [nn.Conv2d(3, w0, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(w0),
                                   nn.ReLU(inplace=True)]
        cin = w0
        for w in cfg.widths[1:]:
            layers += [nn.MaxPool2d(2), nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.features(x).mean(dim=(2, 3))), dim=1)


class SmallClipNet(nn.Module):
    """Both towers and the learned logit scale."""

    def __init__(self, cfg: SmallClipNetConfig):
        super().__init__()
        self.cfg = cfg
        self.image = ImageTower(cfg)
        self.text = TextTower(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        ids, offsets = encode_batch(texts, self.cfg.buckets, self.cfg.ngrams)
        device = self.logit_scale.device
        return self.text(ids.to(device), offsets.to(device))

    def clamp_scale(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's symmetric cross-entropy; returns (loss, image->text in-batch top-1 accuracy).

    Row i of both inputs is a matching pair; logits = exp(logit_scale) * image_emb @ text_emb.T.
    """
    logits = logit_scale.exp() * image_emb @ text_emb.t()
    target = torch.arange(len(image_emb), device=image_emb.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    accuracy = (logits.argmax(dim=1) == target).float().mean()
    return loss, accuracy
