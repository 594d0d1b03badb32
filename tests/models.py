"""Small test models, importable as MODEL specs (`python -m compress prune tests.models:tiny_gqa ...`
from the repository root).

`TinyGQA` is a Llama-style decoder-only transformer: token embedding tied to the LM head,
RMSNorm, rotary positions, grouped-query causal attention (4 query heads share 2 kv heads)
and a SwiGLU MLP. Head counts are read from the projection shapes in `forward`, so the
model keeps working after heads are removed. Two ways of sharing kv heads are covered:
`gqa="repeat"` repeats kv heads with expand + reshape (Hugging Face's `repeat_kv`),
`gqa="sdpa"` passes `enable_gqa=True` to `F.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x, n_rep: int):
    """(b, hk, t, d) -> (b, hk * n_rep, t, d); kv head j serves query heads j*n_rep ... j*n_rep+n_rep-1."""
    if n_rep == 1:
        return x
    b, hk, t, d = x.shape
    return x[:, :, None, :, :].expand(b, hk, n_rep, t, d).reshape(b, hk * n_rep, t, d)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, gqa: str) -> None:
        super().__init__()
        self.head_dim, self.gqa = head_dim, gqa
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        n_rep = q.shape[1] // k.shape[1]
        if self.gqa == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):  # SwiGLU
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, hidden, heads, kv_heads, head_dim, intermediate, gqa) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(hidden)
        self.self_attn = Attention(hidden, heads, kv_heads, head_dim, gqa)
        self.post_attention_layernorm = RMSNorm(hidden)
        self.mlp = MLP(hidden, intermediate)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyGQA(nn.Module):
    def __init__(self, vocab: int = 256, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                 head_dim: int = 16, layers: int = 2, intermediate: int = 128, max_len: int = 64,
                 gqa: str = "repeat", tie: bool = True) -> None:
        super().__init__()
        assert heads % kv_heads == 0 and gqa in ("repeat", "sdpa")
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(Block(hidden, heads, kv_heads, head_dim, intermediate, gqa)
                                    for _ in range(layers))
        self.norm = RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.embed_tokens.weight
        inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)

    def forward(self, input_ids):
        t = input_ids.shape[1]
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def _init(model: nn.Module, seed: int) -> nn.Module:
    """Seeded, non-trivial weights (norm gains away from 1), without touching the global RNG."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                std = 1.0 / math.sqrt(p.shape[1]) if "embed" not in name else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * std)
            else:
                p.copy_(1.0 + 0.5 * torch.rand(p.shape, generator=g) - 0.25)
    return model


def _tag(model: nn.Module, seq: int = 12) -> nn.Module:
    model.compress_input_shape = (1, seq)
    model.compress_input_dtype = "int64"
    model.compress_vocab_size = model.embed_tokens.num_embeddings
    return model.eval()


def tiny_gqa() -> nn.Module:
    """vocab 256, hidden 64, 4 query heads sharing 2 kv heads (head_dim 16), 2 layers, kv via repeat_kv."""
    return _tag(_init(TinyGQA(), seed=0))


def tiny_gqa_sdpa() -> nn.Module:
    """The same shape, kv heads shared by `scaled_dot_product_attention(..., enable_gqa=True)`."""
    return _tag(_init(TinyGQA(gqa="sdpa"), seed=0))


class TinyCNN(nn.Module):
    """Conv-BN-ReLU stem, an inverted residual block (expand, depthwise, project, skip),
    a concat branch and a linear head: the coupled-channel cases of a CNN in a few kB."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(64, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.branch = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU())
        self.fuse = nn.Conv2d(64, 48, 1)
        self.head = nn.Linear(48, classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        x = torch.cat([x, self.branch(x)], 1)
        x = F.relu(self.fuse(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def tiny_cnn() -> nn.Module:
    """A small CNN (input 1,3,32,32) with seeded weights and BN statistics."""
    model = _init(TinyCNN(), seed=0)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
    model.compress_input_shape = (1, 3, 32, 32)
    return model.eval()


def tiny_grouped_cnn() -> nn.Module:
    """A stem, a grouped 3x3 conv (3 groups of 8 channels, as in ResNeXt/RegNet), a 1x1 conv and a
    linear head (input 1,3,16,16), seeded."""
    model = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                          nn.Conv2d(24, 24, 3, 1, 1, groups=3, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                          nn.Conv2d(24, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    model = _init(model, seed=0)
    model.compress_input_shape = (1, 3, 16, 16)
    return model.eval()


class BertTwoInputs(nn.Module):
    """A Hugging Face BERT sequence classifier (random weights, built from a small config) whose forward
    needs two tensors, token ids and their attention mask, as a deployed classifier takes them."""

    compress_inputs = (("input_ids", (1, 12), "int64"), ("attention_mask", (1, 12), "int64"))
    compress_vocab_size = 64

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32, num_labels=3,
                         attn_implementation="eager")
        self.bert = BertForSequenceClassification(cfg)

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits


def bert_two_inputs() -> nn.Module:
    return BertTwoInputs()
