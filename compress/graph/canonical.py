"""Rewrite modules whose fused parameters hide their channel structure.

`nn.MultiheadAttention` keeps q, k and v in one `in_proj_weight` and runs a fused kernel,
so its heads cannot shrink in place. `SplitMultiheadAttention` computes the same function
with separate q/k/v/out projections and a head count read from the weights, so removing
a head is removing rows of q, k, v and columns of out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitMultiheadAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, kdim: int, vdim: int,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed_dim, self.head_dim = embed_dim, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.q_proj = nn.Linear(embed_dim, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(kdim, num_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(vdim, num_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias)

    @property
    def num_heads(self) -> int:
        return self.q_proj.out_features // self.head_dim

    @classmethod
    def from_mha(cls, m: nn.MultiheadAttention) -> "SplitMultiheadAttention":
        if m.bias_k is not None or m.add_zero_attn:
            raise ValueError("add_bias_kv / add_zero_attn are not supported")
        e, h = m.embed_dim, m.num_heads
        bias = m.in_proj_bias is not None
        new = cls(e, h, e // h, m.kdim, m.vdim, bias=bias, batch_first=m.batch_first, dropout=m.dropout)
        with torch.no_grad():
            if m._qkv_same_embed_dim:
                q, k, v = m.in_proj_weight.chunk(3)
            else:
                q, k, v = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
            new.q_proj.weight.copy_(q); new.k_proj.weight.copy_(k); new.v_proj.weight.copy_(v)
            if bias:
                qb, kb, vb = m.in_proj_bias.chunk(3)
                new.q_proj.bias.copy_(qb); new.k_proj.bias.copy_(kb); new.v_proj.bias.copy_(vb)
                new.out_proj.bias.copy_(m.out_proj.bias)
            new.out_proj.weight.copy_(m.out_proj.weight)
        return new

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, tq, _ = query.shape
        tk = key.shape[1]
        q = self.q_proj(query).view(b, tq, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(b, tk, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(b, tk, -1, self.head_dim).transpose(1, 2)
        mask = None
        if attn_mask is not None:
            mask = attn_mask.logical_not() if attn_mask.dtype == torch.bool else attn_mask
            mask = mask.view(b, -1, tq, tk) if mask.dim() == 3 else mask
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(b, 1, 1, tk)
            kpm = kpm.logical_not() if kpm.dtype == torch.bool else kpm
            if mask is None:
                mask = kpm
            elif mask.dtype == torch.bool and kpm.dtype == torch.bool:
                mask = mask & kpm
            else:
                as_float = (lambda t: torch.zeros_like(t, dtype=q.dtype).masked_fill(~t, float("-inf"))
                            if t.dtype == torch.bool else t)
                mask = as_float(mask) + as_float(kpm)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / self.head_dim ** 0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            elif is_causal:
                causal = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril()
                scores = scores.masked_fill(~causal, float("-inf"))
            attn = F.dropout(scores.softmax(-1), p)
            out = attn @ v
            weights = attn.mean(1) if average_attn_weights else attn
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(b, tq, -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def canonicalize(model: nn.Module) -> list[str]:
    """Replace fused modules in place; return the names of the modules replaced."""
    replaced = []
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(mod, child_name, SplitMultiheadAttention.from_mha(child).train(child.training))
                replaced.append(f"{name}.{child_name}" if name else child_name)
    return replaced
