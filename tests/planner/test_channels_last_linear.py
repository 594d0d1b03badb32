"""The planner's cost model ties a Linear on a channels-last map (N, H, W, C), as ConvNeXt and Swin blocks run their
MLPs, to the groups that size its features (the last dim), as it does for (N, C) and (N, T, C) inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.hardware_profiles.layers import extract_layers
from compress.planner.solve import PlanConfig, plan_model, prepare
from compress.prune.apply import apply_plan
from tests.test_planner import _profile


class ChannelsLastMLP(nn.Module):
    """A ConvNeXt block in miniature: depthwise conv, then an MLP over the channels of (N, H, W, C)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 7, padding=3, groups=32)
        self.up, self.down = nn.Linear(32, 128), nn.Linear(128, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.down(torch.relu(self.up(y))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


def _inputs():
    return (torch.randn(1, 3, 16, 16),)


def test_linear_on_channels_last_maps_is_sized_by_its_groups(one_thread):
    torch.manual_seed(0)
    m = ChannelsLastMLP().eval()
    prep = prepare(copy.deepcopy(m), _inputs(), _profile(), PlanConfig(latency_budget=0.6))
    lin = {cl.sig.node: cl for cl in prep.cost.costed if cl.sig.op == "linear"}
    hidden = next(g.id for g in prep.graph.groups if g.size == 128)
    assert all(cl.groups for cl in lin.values()) and any(hidden in cl.groups for cl in lin.values())
    assert prep.cost.total({**prep.dense, hidden: 64}) < prep.cost.total(prep.dense)
    # so a budget only pruning can meet is met (it was "1.00 of dense": unreachable), and the prediction holds
    plan, res, _ = plan_model(copy.deepcopy(m), _inputs(), _profile(), PlanConfig(latency_budget=0.8), {"model": "t"})
    assert res.predicted_ms <= res.target_ms + 1e-9
    out = apply_plan(copy.deepcopy(m), _inputs(), plan)
    assert _profile().total_ms(extract_layers(out.model, _inputs())) == pytest.approx(res.predicted_ms, rel=1e-9)


class ChannelsLastGelu(ChannelsLastMLP):
    """The same block with a GELU between the Linears (a memory op of its own, on (N, H, W, 4C)) and a LayerNorm
    over the channels, as ConvNeXt runs them."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(32)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.down(torch.nn.functional.gelu(self.up(y))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


def test_memory_ops_on_channels_last_maps_shrink_with_their_channels(one_thread):
    """A GELU on (N, H, W, C) is read on its last dim: pruning the hidden channels shrinks its predicted cost, and the
    planner's prediction of the pruned model is what the pruned model's own layers add up to."""
    torch.manual_seed(0)
    m = ChannelsLastGelu().eval()
    prep = prepare(copy.deepcopy(m), _inputs(), _profile(), PlanConfig(latency_budget=0.6))
    hidden = next(g.id for g in prep.graph.groups if g.size == 128)
    i, gelu = next((i, cl) for i, cl in enumerate(prep.cost.costed) if cl.sig.op == "memory" and cl.sig.kind == "gelu")
    assert gelu.last_dim and hidden in gelu.groups
    assert prep.cost.sig_at(i, {**prep.dense, hidden: 64}).elements() == gelu.sig.elements() // 2
    plan, res, _ = plan_model(copy.deepcopy(m), _inputs(), _profile(), PlanConfig(latency_budget=0.8), {"model": "t"})
    out = apply_plan(copy.deepcopy(m), _inputs(), plan)
    assert _profile().total_ms(extract_layers(out.model, _inputs())) == pytest.approx(res.predicted_ms, rel=1e-9)
