"""The planner's cost model ties a window attention's products ((B x windows, heads, L, d), as Swin runs them) to
the group of its heads: pruning heads shrinks every window's products, and the plan's prediction is what the pruned
model's own layers add up to."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.hardware_profiles.layers import extract_layers
from compress.planner.solve import PlanConfig, plan_model, prepare
from compress.prune.apply import apply_plan
from tests.test_planner import _profile


class WindowAttention(nn.Module):
    """(B, 8, 8, C) split into 2 x 2 windows of 16 tokens, 4 heads each, no position bias."""

    def __init__(self, c: int = 32, heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim = heads, c // heads     # kept in step with q/k when heads are pruned
        self.q, self.k, self.v, self.o = (nn.Linear(c, c) for _ in range(4))

    def forward(self, x):
        b, h, w, c = x.shape
        win = x.view(b, 2, h // 2, 2, w // 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b * 4, (h // 2) * (w // 2), c)

        def split(t):
            return t.view(b * 4, -1, self.num_heads, self.head_dim).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(win)), split(self.k(win)), split(self.v(win)))
        y = y.transpose(1, 2).reshape(b * 4, -1, y.shape[1] * y.shape[-1])
        return self.o(y).view(b, 2, 2, h // 2, w // 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def _inputs():
    return (torch.randn(1, 8, 8, 32),)


def test_window_attention_products_shrink_with_the_heads(one_thread):
    torch.manual_seed(0)
    m = WindowAttention().eval()
    prep = prepare(copy.deepcopy(m), _inputs(), _profile(), PlanConfig(latency_budget=0.6))
    heads = next(g.id for g in prep.graph.groups if g.size == 4)
    mm = [(i, cl) for i, cl in enumerate(prep.cost.costed) if cl.sig.op == "matmul"]
    assert len(mm) == 2 and all(cl.sig.groups == 16 and cl.head_fold == 4 and heads in cl.groups for _, cl in mm)
    assert all(prep.cost.sig_at(i, {**prep.dense, heads: 2}).groups == 8 for i, _ in mm)
    plan, res, _ = plan_model(copy.deepcopy(m), _inputs(), _profile(), PlanConfig(latency_budget=0.95), {"model": "t"})
    out = apply_plan(copy.deepcopy(m), _inputs(), plan)
    assert out.model.num_heads < 4          # the plan pruned heads
    assert _profile().total_ms(extract_layers(out.model, _inputs())) == pytest.approx(res.predicted_ms, rel=1e-9)
