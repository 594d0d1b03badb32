"""Tiny models for the lowering tests, importable as MODEL specs (`tests.lower.lowering_models:vit_mlp`, from the
repository root): a ViT-style MLP block, a BERT-style encoder taking token ids, and a ResNet-style
bottleneck block whose 1x1 convs (one with stride 2) are replaced by the sparse modules; a CNN whose stem
conv reads 3 input channels (2:4 keeps it dense) and a model none of whose layers can take 2:4."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ViTMLP(nn.Module):
    """LayerNorm -> Linear(dim, 4 dim) -> GELU -> Linear(4 dim, dim), residual; then a head."""

    compress_input_shape = (2, 16, 64)

    def __init__(self, dim: int = 64, hidden: int = 200, classes: int = 10) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
        return self.head(x.mean(1))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn_out = nn.Linear(dim, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.intermediate = nn.Linear(dim, hidden)
        self.output = nn.Linear(hidden, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads

        def split(y):
            return y.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), -1) @ v
        x = self.ln1(x + self.attn_out(att.transpose(1, 2).reshape(b, t, d)))
        return self.ln2(x + self.output(F.gelu(self.intermediate(x))))


class TinyBert(nn.Module):
    """Token + position embeddings, 2 post-norm encoder layers (BERT's layout), last hidden state."""

    compress_input_shape = (2, 12)
    compress_input_dtype = "int64"
    compress_vocab_size = 100

    def __init__(self, vocab: int = 100, dim: int = 64, heads: int = 4, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(64, dim)
        self.ln = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, hidden) for _ in range(layers))

    def forward(self, ids):
        x = self.ln(self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device)))
        for layer in self.layers:
            x = layer(x)
        return x


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3, 1x1 expand, 1x1 stride-2 projection shortcut; GAP + Linear."""

    compress_input_shape = (2, 32, 12, 12)

    def __init__(self, cin: int = 32, mid: int = 16, cout: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.down = nn.Conv2d(cin, cout, 1, stride=2, bias=True)
        self.fc = nn.Linear(cout, classes)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = F.relu(self.bn3(self.conv3(y)) + self.down(x))
        return self.fc(y.mean((2, 3)))


class OddLinear(nn.Module):
    """A Linear whose reduction dimension (10) is not a multiple of 4: 2:4 must refuse it."""

    compress_input_shape = (2, 12)

    def __init__(self) -> None:
        super().__init__()
        self.ok = nn.Linear(12, 8)
        self.proj = nn.Linear(8, 8)
        self.odd = nn.Linear(8, 10)
        self.bad = nn.Linear(10, 4)

    def forward(self, x):
        return self.bad(self.odd(self.proj(self.ok(x))))


class StemCNN(nn.Module):
    """A ResNet-style stem on 3 input channels (3x3, stride 2: reduction dim 3, which 2:4 cannot take),
    a 1x1 conv, a 3x3 conv, GAP and a Linear head."""

    compress_input_shape = (2, 3, 16, 16)

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 1, bias=False)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.conv3(F.relu(self.conv2(y))))
        return self.fc(y.mean((2, 3)))


class AllOdd(nn.Module):
    """Only reduction dimensions that are not multiples of 4: no layer can take 2:4."""

    compress_input_shape = (2, 10)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(10, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        return self.b(self.a(x))


def _randomized(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def vit_mlp() -> nn.Module:
    torch.manual_seed(0)
    return _randomized(ViTMLP())


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    return _randomized(TinyBert())


def bottleneck() -> nn.Module:
    torch.manual_seed(0)
    return _randomized(Bottleneck())


def odd_linear() -> nn.Module:
    torch.manual_seed(0)
    return OddLinear().eval()


def stem_cnn() -> nn.Module:
    torch.manual_seed(0)
    return _randomized(StemCNN())


def all_odd() -> nn.Module:
    torch.manual_seed(0)
    return AllOdd().eval()
