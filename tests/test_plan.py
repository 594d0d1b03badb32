"""Channel selection and the plan file: determinism, global ranking, rounding, ignore, validation."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.graph import build_graph
from compress.graph.canonical import canonicalize
from compress.prune.plan import PruneConfig, PrunePlan, class_step, round_keep
from compress.prune.apply import prune

SOURCE = {"model": "test", "input_shape": [2, 3, 8, 8]}


class Net(nn.Module):
    """Three prunable groups: features.0 (8), features.3 (12, with a residual), fc1 (10)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        )
        self.res = nn.Conv2d(12, 12, 1)
        self.fc1 = nn.Linear(12, 10)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x):
        y = self.features(x)
        y = y + torch.relu(self.res(y))
        return self.fc2(torch.relu(self.fc1(y.mean((2, 3)))))


def _net(seed=0):
    torch.manual_seed(seed)
    m = Net().eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for bn in (m.features[1], m.features[4]):
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.2)
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.2)
    return m


X = (torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5)),)


def _calib():
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(4, 3, 8, 8, generator=g),) for _ in range(2)]


def _group_by_producer(res, module):
    for g, gp in zip(res.graph.groups, res.plan.groups):
        if any(k[0].rsplit(".", 1)[0] == module for k in g.producers):
            return g, gp
    raise AssertionError(f"no group produced by {module}")


def _prune(model, round_to=1, calib=None, **cfg):
    return prune(model, X, PruneConfig(**cfg), round_to, SOURCE, calib=calib)


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "random", "taylor", "fisher", "activation", "apoz"])
@pytest.mark.parametrize("global_ranking", [False, True])
def test_same_model_seed_and_config_give_byte_identical_plans(criterion, global_ranking):
    cfg = dict(ratio=0.4, criterion=criterion, global_ranking=global_ranking, seed=3)
    a = _prune(_net(), round_to=2, calib=_calib(), **cfg)
    b = _prune(_net(), round_to=2, calib=_calib(), **cfg)
    assert a.plan.to_json() == b.plan.to_json()
    for (n, t), (_, u) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(t, u), n


def test_random_criterion_seed_changes_the_plan():
    a = _prune(_net(), ratio=0.5, criterion="random", seed=1).plan
    b = _prune(_net(), ratio=0.5, criterion="random", seed=2).plan
    assert [g.keep for g in a.groups] != [g.keep for g in b.groups]


# ------------------------------------------------------------------ plan file
def test_plan_json_round_trips_and_describes_the_pruned_model():
    res = _prune(_net(), ratio=0.5, round_to=2)
    text = res.plan.to_json()
    back = PrunePlan.from_json(text)
    assert back == res.plan and back.to_json() == text
    d = json.loads(text)
    assert d["source"] == SOURCE and d["config"]["ratio"] == 0.5 and d["round_to"] == 2
    shapes = {n: tuple(t.shape) for n, t in res.model.state_dict().items()}
    for gp in back.groups:
        name, dim = gp.producers[0].rsplit(":", 1)
        assert shapes[name][int(dim)] == gp.channels_after
        assert gp.channels_before > gp.channels_after > 0
    for name, dims in back.param_keep().items():
        for dim, idx in dims.items():
            assert shapes[name][dim] == len(idx)


def test_plan_with_another_schema_version_or_garbage_is_rejected():
    text = _prune(_net(), ratio=0.5).plan.to_json()
    d = json.loads(text)
    d["schema_version"] = 99
    with pytest.raises(CompressError, match="schema_version"):
        PrunePlan.from_json(json.dumps(d), "x/plan.json")
    with pytest.raises(CompressError, match="x/plan.json"):
        PrunePlan.from_json("{not json", "x/plan.json")
    d = json.loads(text)
    del d["groups"]
    with pytest.raises(CompressError, match="x/plan.json"):
        PrunePlan.from_json(json.dumps(d), "x/plan.json")


# ------------------------------------------------------------------ uniform and global ranking
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.75])
def test_uniform_ratio_applies_to_every_group(ratio):
    res = _prune(_net(), ratio=ratio)
    for g, gp in zip(res.graph.groups, res.plan.groups):
        assert len(gp.keep) == max(1, int(np.floor(g.size * (1 - ratio) + 0.5)))


class TwoLayers(nn.Module):
    """Two groups of 8: fc1's outputs (6 nearly dead, 2 strong) and fc2's (all alike)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        with torch.no_grad():
            self.fc1.weight.fill_(1e-3)
            self.fc1.weight[6:].fill_(1.0)
            self.fc2.weight.fill_(0.1)
            self.fc3.weight.fill_(0.1)
            self.fc3.weight[:, 0].fill_(0.11)   # a strict order inside fc2's group

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _two_layer_prune(**cfg):
    m = TwoLayers().eval()
    res = prune(m, (torch.randn(2, 6),), PruneConfig(criterion="l1", global_ranking=True, **cfg), 1, SOURCE)
    return _group_by_producer(res, "fc1")[1], _group_by_producer(res, "fc2")[1]


def test_global_ranking_takes_channels_where_they_matter_least():
    g1, g2 = _two_layer_prune(ratio=0.25)
    assert len(g1.keep) == 4 and set(g1.keep) >= {6, 7}
    assert len(g2.keep) == 8
    # per-group ranking would take 2 from each
    m = TwoLayers().eval()
    res = prune(m, (torch.randn(2, 6),), PruneConfig(ratio=0.25, criterion="l1"), 1, SOURCE)
    assert [len(gp.keep) for gp in res.plan.groups] == [6, 6]


def test_global_ranking_respects_max_group_ratio():
    g1, g2 = _two_layer_prune(ratio=0.25, max_group_ratio=0.25)
    assert len(g1.keep) == 6 and set(g1.keep) >= {6, 7}
    assert len(g2.keep) == 6 and 0 in g2.keep


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.7])
def test_global_ranking_removes_the_requested_fraction_overall(ratio):
    res = _prune(_net(seed=1), ratio=ratio, criterion="l2", global_ranking=True)
    before = sum(gp.channels_before for gp in res.plan.groups)
    after = sum(gp.channels_after for gp in res.plan.groups)
    removed = before - after
    widest = max(int(g.width.max()) for g in res.graph.groups)
    assert ratio * before <= removed < ratio * before + widest
    for g, gp in zip(res.graph.groups, res.plan.groups):
        assert g.size - len(gp.keep) <= 0.9 * g.size


def test_global_ranking_cap_binds_when_the_ratio_is_high():
    res = _prune(_net(seed=1), ratio=0.8, global_ranking=True, max_group_ratio=0.5)
    for g, gp in zip(res.graph.groups, res.plan.groups):
        assert len(gp.keep) == g.size - g.size // 2


# ------------------------------------------------------------------ round_to
class Chain(nn.Module):
    """Groups of 3, 16 and 10 channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(5, 3), nn.Linear(3, 16), nn.Linear(16, 10), nn.Linear(10, 2)

    def forward(self, x):
        return self.d(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


@pytest.mark.parametrize("ratio,expect", [(0.5, (3, 8, 4)), (0.3, (3, 12, 8)), (0.9, (3, 4, 4)), (0.05, (3, 16, 8))])
def test_round_to_keeps_multiples_and_leaves_small_groups_alone(ratio, expect):
    res = prune(Chain().eval(), (torch.randn(2, 5),), PruneConfig(ratio=ratio), 4, SOURCE)
    assert (res.model.a.out_features, res.model.b.out_features, res.model.c.out_features) == expect
    assert res.model.c.in_features == expect[1] and res.model.d.in_features == expect[2]


def test_round_to_counts_whole_heads():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.attn, self.out = nn.Linear(6, 16), nn.MultiheadAttention(16, 4, batch_first=True), nn.Linear(16, 2)

        def forward(self, x):
            h = self.inp(x)
            return self.out(self.attn(h, h, h, need_weights=False)[0])

    m = Block().eval()
    canonicalize(m)
    res = prune(m, (torch.randn(2, 5, 6),), PruneConfig(ratio=0.3), 8, SOURCE)
    g, gp = _group_by_producer(res, "attn.q_proj")
    assert list(g.width) == [4] * 4 and class_step(g.width, 8) == 2
    assert len(gp.keep) == 2 and gp.channels_after == 8
    assert res.model.attn.num_heads == 2 and res.model.attn.q_proj.out_features == 8


def test_round_to_applies_per_conv_group_in_two_group_convs():
    """A 2-group conv removes the same local channels from both groups; with round_to=16 each group
    keeps a multiple of 16 (the runtime's blocked layout needs it per group): 22.4 of 32 per group
    rounds to 16, where a total step of 16 channels would keep 24 per group."""
    m = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1, groups=2), nn.ReLU(),
                      nn.Conv2d(64, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    res = prune(copy.deepcopy(m), (torch.randn(1, 3, 8, 8),), PruneConfig(ratio=0.3), 16, SOURCE)
    assert res.model[2].groups == 2
    assert res.model[2].in_channels == 32 and res.model[2].out_channels == 32     # 16 per group kept of 32
    assert (res.model[2].out_channels // 2) % 16 == 0
    graph = build_graph(copy.deepcopy(m), (torch.randn(1, 3, 8, 8),))
    assert any(g.spread for g in graph.groups) and not all(g.spread for g in graph.groups)
    assert class_step(np.array([2] * 32), 16, spread=True) == 16 and class_step(np.array([2] * 32), 16) == 8


def test_round_keep_and_class_step():
    assert round_keep(3, 1.5, 4) == 3          # smaller than a step: untouched
    assert round_keep(16, 0.4, 4) == 4         # never below one step
    assert round_keep(16, 8.0, 4) == 8
    assert round_keep(16, 9.9, 4) == 8 and round_keep(16, 10.1, 4) == 12
    assert round_keep(10, 0.0, 1) == 1         # never empty
    assert class_step(np.array([64] * 12), 16) == 1
    assert class_step(np.array([8] * 4), 16) == 2
    assert class_step(np.array([1] * 4), 8) == 8
    assert class_step(np.array([2, 3]), 8) == 1


# ------------------------------------------------------------------ ignore
def test_ignored_module_keeps_the_channels_it_produces():
    res = _prune(_net(), ratio=0.5, ignore=("features.3",))
    g, gp = _group_by_producer(res, "features.3")
    assert len(gp.keep) == g.size
    assert res.model.features[3].out_channels == 12 and res.model.res.out_channels == 12
    # the group it only reads is still pruned
    g0, gp0 = _group_by_producer(res, "features.0")
    assert len(gp0.keep) < g0.size and res.model.features[3].in_channels == len(gp0.keep)


def test_ignoring_a_parent_module_covers_its_children():
    res = _prune(_net(), ratio=0.5, ignore=("features",))
    for mod in ("features.0", "features.3"):
        g, gp = _group_by_producer(res, mod)
        assert len(gp.keep) == g.size
    g, gp = _group_by_producer(res, "fc1")
    assert len(gp.keep) < g.size


def test_ignored_groups_are_left_out_of_the_global_budget():
    res = _prune(_net(seed=1), ratio=0.5, global_ranking=True, ignore=("fc1",))
    g, ignored = _group_by_producer(res, "fc1")
    assert len(ignored.keep) == g.size
    others = [gp for gp in res.plan.groups if gp is not ignored]
    before = sum(gp.channels_before for gp in others)
    removed = before - sum(gp.channels_after for gp in others)
    assert 0.5 * before <= removed < 0.5 * before + 1


@pytest.mark.parametrize("name", ["features.9", "nope", "features.0.weight"])
def test_ignoring_a_module_the_model_lacks_raises_with_its_name(name):
    with pytest.raises(CompressError, match=name.replace(".", r"\.")):
        _prune(_net(), ratio=0.5, ignore=(name,))


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("ratio", [0, 0.0, 1, 1.0, -0.2, 1.5, float("nan"), "0.5", None])
def test_ratio_outside_open_unit_interval_raises(ratio):
    with pytest.raises(CompressError, match="ratio"):
        PruneConfig(ratio=ratio).validate()
    model = _net()
    with pytest.raises(CompressError, match="ratio"):
        prune(model, X, PruneConfig(ratio=ratio), 1, SOURCE)


@pytest.mark.parametrize("round_to", [0, -4])
def test_round_to_must_be_positive(round_to):
    with pytest.raises(CompressError, match="round"):
        PruneConfig(ratio=0.5, round_to=round_to).validate()


def test_pruning_does_not_touch_the_source_model():
    m = _net()
    before = copy.deepcopy(m.state_dict())
    _prune(m, ratio=0.5, criterion="taylor", calib=_calib())
    for n, t in m.state_dict().items():
        assert torch.equal(t, before[n]), n
    assert all(p.grad is None for p in m.parameters())


def test_build_graph_is_deterministic():
    a, b = build_graph(_net(), X), build_graph(_net(), X)
    assert [list(g.classes) for g in a.groups] == [list(g.classes) for g in b.groups]
    assert a.dims.keys() == b.dims.keys() and all(np.array_equal(a.dims[k], b.dims[k]) for k in a.dims)
