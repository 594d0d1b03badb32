"""Targeted coupling cases the property grammar found or that guard a rule against over-merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.graph import build_graph
from compress.prune.plan import PruneConfig
from compress.prune.apply import prune


class OneHead(nn.Module):
    def __init__(self, d=8, unflatten=False):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.unflatten = unflatten

    def split(self, t):
        b, n, _ = t.shape
        t = t.unflatten(-1, (-1, 8)) if self.unflatten else t.view(b, n, -1, 8)
        return t.transpose(1, 2)

    def forward(self, x):
        b, n, _ = x.shape
        y = F.scaled_dot_product_attention(self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x)))
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("unflatten", [False, True])
def test_a_single_head_split_by_minus_one_stays_whole(unflatten):
    # view(b, n, -1, 8) hard-codes the head size: with one head its 8 channels are one class
    m = OneHead(unflatten=unflatten).eval()
    x = torch.randn(2, 5, 8)
    graph = build_graph(m, (x,))
    q = graph.dims[("q.weight", 0)]
    assert len(np.unique(q)) == 1
    res = prune(m, (x,), PruneConfig(ratio=0.5), 1, {})
    assert res.model.q.out_features == 8 and res.max_rel_error <= 1e-4


class SE(nn.Module):
    def __init__(self, c=6, explicit_view=True):
        super().__init__()
        self.conv, self.fc1, self.fc2 = nn.Conv2d(3, c, 3, padding=1), nn.Linear(c, 2), nn.Linear(2, c)
        self.head = nn.Conv2d(c, 4, 1)
        self.explicit_view = explicit_view

    def forward(self, x):
        y = self.conv(x)
        b, c = y.shape[:2]
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3))))))
        s = s.view(b, c, 1, 1) if self.explicit_view else s[:, :, None, None]
        return self.head(y * s)


@pytest.mark.parametrize("explicit_view", [True, False])
def test_channel_view_with_unit_dims_keeps_channels_separate(explicit_view):
    m = SE(explicit_view=explicit_view).eval()
    x = torch.randn(2, 3, 6, 6)
    graph = build_graph(m, (x,))
    (g,) = [g for g in graph.groups if ("conv.weight", 0) in g.producers]
    assert g.size == 6 and ("fc2.weight", 0) in g.producers
    res = prune(m, (x,), PruneConfig(ratio=0.5), 1, {})
    assert res.model.conv.out_channels == 3 and res.max_rel_error <= 1e-4


class DenseSE(nn.Module):
    """cat([x, conv(x)]) then squeeze-excite: fc2's outputs tie the stem's and the dense conv's
    channels into one group, but each conv must keep at least one output channel."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.dense = nn.Conv2d(6, 2, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.cat([x, torch.relu(self.dense(x))], 1)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return self.head(y * s)


@pytest.mark.parametrize("criterion", ["l1", "random"])
@pytest.mark.parametrize("ratio", [0.5, 0.8, 0.9])
def test_no_layer_is_emptied_when_a_group_spans_a_concat(criterion, ratio):
    for seed in range(4):
        torch.manual_seed(seed)
        m = DenseSE().eval()
        with torch.no_grad():
            m.dense.weight.mul_(1e-3)     # magnitude would drop every dense channel first
        x = torch.randn(2, 3, 6, 6)
        res = prune(m, (x,), PruneConfig(ratio=ratio, criterion=criterion, seed=seed), 1, {})
        (gp,) = [gp for gp in res.plan.groups if "stem.weight:0" in gp.producers]
        assert "dense.weight:0" in gp.producers
        # the count is the ratio's, unless two disjoint layers need one class each
        assert len(gp.keep) == max(int(np.floor(8 * (1 - ratio) + 0.5)), 2)
        assert res.model.dense.out_channels >= 1 and res.model.stem.out_channels >= 1
        assert res.max_rel_error <= 1e-4
