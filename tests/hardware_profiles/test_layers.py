"""extract_layers: one LayerSig per kernel the runtime runs, with onnxruntime's fusions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.hardware_profiles import extract_layers


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.act = nn.SiLU()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.pw(self.dw(x)))
        x = self.act(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_fusions_depthwise_linear(one_thread):
    layers = extract_layers(Block().eval(), (torch.randn(1, 3, 32, 32),))
    by = {s.module: s for s in layers if s.module}
    stem = by["stem.0"]
    assert (stem.op, stem.cin, stem.cout, stem.kernel, stem.stride, stem.h) == ("conv", 3, 16, (3, 3), (2, 2), 32)
    assert stem.fusion == "conv+bn+relu" and stem.fixed_in and not stem.fixed_out
    dw = by["dw.0"]
    assert dw.op == "dwconv" and dw.groups == 16 and dw.fusion == "conv+bn+relu6" and dw.h == 16
    pw = by["pw.0"]
    assert pw.fusion == "conv+bn+add+relu"          # the residual add and the relu after it: one kernel
    fc = by["fc"]
    assert (fc.op, fc.cin, fc.cout, fc.tokens) == ("linear", 16, 10, 1) and fc.fixed_out
    kinds = [(s.op, s.kind) for s in layers]
    assert ("memory", "silu") in kinds and ("memory", "gap") in kinds
    # no separate BN, relu or add layers survive the fusions
    assert not any(s.op == "memory" and s.kind in ("unary", "binary") for s in layers)
    assert len(layers) == 6


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(32, 96)
        self.out = nn.Linear(32, 32)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 4, 8).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, 32))


def test_attention(one_thread):
    layers = extract_layers(Attn().eval(), (torch.randn(1, 12, 32),))
    ops = [(s.op, s.kind, s.fusion) for s in layers]
    assert ops[0] == ("linear", "", "linear") and layers[0].tokens == 12 and layers[0].cout == 96
    mm = [s for s in layers if s.op == "matmul"]
    assert len(mm) == 2 and all(s.groups == 4 and s.tokens == 12 for s in mm)
    assert mm[0].macs() == 4 * 12 * 8 * 12               # q @ k^T: heads x L x E x S
    assert any(s.kind == "softmax" for s in layers)
    assert layers[-1].op == "linear" and layers[-1].fixed_out


def test_pruned_channels_change_the_signature(one_thread):
    a = extract_layers(nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 8, 1)).eval(), (torch.randn(1, 3, 16, 16),))
    b = extract_layers(nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval(), (torch.randn(1, 3, 16, 16),))
    assert [s.cout for s in a][0] == 32 and [s.cout for s in b][0] == 16
    assert a[1].h == 14 and a[1].cin == 32 and b[1].cin == 16


class Embed(nn.Module):
    """A token embedding plus a learned (1, T, H) position table, then a squeeze-style (N, T, 1) gate."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Linear(8, 16)
        self.pos = nn.Parameter(torch.randn(1, 6, 16))
        self.gate = nn.Linear(16, 1)

    def forward(self, x):
        h = self.tok(x) + self.pos
        return h * torch.sigmoid(self.gate(h))


def test_memory_kinds_do_not_depend_on_the_batch(one_thread):
    """The planner traces at batch 2, a profile's calibration at batch 1: an operand with batch 1 (a position table)
    is a plain binary op at either batch, so the network's fingerprint (and its own calibration row) matches."""
    from compress.hardware_profiles.predictor import structure

    m = Embed().eval()
    kinds = {b: [s.kind for s in extract_layers(m, (torch.randn(b, 6, 8),)) if s.op == "memory"] for b in (1, 2)}
    assert kinds[1] == kinds[2] and "binary" in kinds[1] and "broadcast" in kinds[1]
    assert structure(extract_layers(m, (torch.randn(1, 6, 8),))) == structure(extract_layers(m, (torch.randn(2, 6, 8),)))


class Attention(nn.Module):
    def __init__(self, heads: int, dim: int = 8):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(16, 3 * heads * dim), nn.Linear(heads * dim, 16)

    def forward(self, x):
        n, t, _ = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, -1))


def test_head_pruning_keeps_the_fingerprint(one_thread):
    """Heads are channels: a transformer with heads pruned keeps its dense model's fingerprint (and calibration)."""
    from compress.hardware_profiles.predictor import structure

    x = (torch.randn(1, 6, 16),)
    four, two = extract_layers(Attention(4).eval(), x), extract_layers(Attention(2).eval(), x)
    assert any(s.fusion == "attention.softmax" for s in four)
    assert structure(four) == structure(two)
    assert structure(four) != structure(extract_layers(Attention(4).eval(), (torch.randn(1, 5, 16),)))  # tokens count


def _macs(op, layers):
    return sum(s.macs() for s in layers if s.op == op)


def test_batch_folded_into_other_dims_is_counted_per_sample(one_thread):
    """torch's multi-head attention runs its projections on (L, B, E) and its products on (B * heads, L, d); a window
    attention folds its windows into the batch ((B * windows, heads, L, d)). Per sample, every token and every window
    counts, at batch 1 and 2 alike (the planner traces at 2)."""
    from torchvision.models.swin_transformer import SwinTransformerBlock

    from compress.hardware_profiles.predictor import structure

    class MHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    t, e, heads = 10, 32, 4
    for b in (1, 2):
        layers = extract_layers(MHA().eval(), (torch.randn(b, t, e),))
        assert [s.tokens for s in layers if s.op == "linear"] == [t, t]          # in-projection, out-projection
        assert _macs("linear", layers) == t * e * 3 * e + t * e * e
        assert _macs("matmul", layers) == 2 * heads * t * (e // heads) * t      # q @ k^T, attn @ v

    dim, heads, win, side = 16, 2, 4, 8          # 4 windows of 16 tokens, shifted
    blk = SwinTransformerBlock(dim, heads, [win, win], [win // 2, win // 2]).eval()
    fold = {b: extract_layers(blk, (torch.randn(b, side, side, dim),)) for b in (1, 2)}
    tokens, windows = side * side, (side // win) ** 2
    for layers in fold.values():
        assert {s.tokens for s in layers if s.op == "linear"} == {tokens}
        assert _macs("linear", layers) == tokens * dim * (3 * dim + dim + 4 * dim + 4 * dim)   # qkv, proj, MLP
        assert _macs("matmul", layers) == 2 * windows * heads * (win * win) * (dim // heads) * (win * win)
        soft = [s for s in layers if s.kind == "softmax"]
        assert soft and soft[0].elements() == windows * heads * (win * win) ** 2
    assert structure(fold[1]) == structure(fold[2])
