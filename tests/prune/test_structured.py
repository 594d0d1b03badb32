"""Physical removal: sliced parameters, consistent module attributes, a model that still runs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.graph import build_graph
from compress.prune.plan import PruneConfig, removed_classes
from compress.prune.structured import apply_keep, zero_removed
from compress.prune.apply import prune


def _check_runs_like_reference(original, res, shape, dtype=torch.float32):
    """The pruned model runs on a new batch size and equals the original with removed channels zeroed."""
    ref = zero_removed(copy.deepcopy(original), res.graph.removed_indices(removed_classes(res.graph, res.plan)))
    x = torch.randn(shape) if dtype.is_floating_point else torch.randint(0, 10, shape)
    with torch.no_grad():
        want, got = ref.eval()(x), res.model(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 * max(want.abs().max(), 1e-6)


def _conv_consistent(m: nn.Conv2d):
    w = m.weight
    if m.transposed:
        assert (w.shape[0], w.shape[1] * m.groups) == (m.in_channels, m.out_channels)
    else:
        assert (w.shape[0], w.shape[1] * m.groups) == (m.out_channels, m.in_channels)
    if m.bias is not None:
        assert m.bias.shape[0] == m.out_channels


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.gc, self.bn3 = nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8)
        self.c3, self.gn = nn.Conv2d(8, 8, 1), nn.GroupNorm(4, 8)
        self.fc1, self.bnf = nn.Linear(8, 6), nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        x = torch.relu(self.bn3(self.gc(x)))
        x = torch.relu(self.gn(self.c3(x)))
        x = torch.relu(self.bnf(self.fc1(x.mean((2, 3)))))
        return self.fc2(x)


def test_apply_keep_fixes_conv_linear_and_norm_attributes(randomize):
    m = randomize(ConvNet()).eval()
    res = prune(m, (torch.randn(2, 3, 8, 8),), PruneConfig(ratio=0.5), 1, {})
    p = res.model
    # c1's channels: a grouped conv reads position j of both halves, so classes are pairs
    assert (p.c1.out_channels, p.bn1.num_features) == (4, 4)
    assert (p.dw.in_channels, p.dw.out_channels, p.dw.groups) == (4, 4, 4)
    assert p.bn2.num_features == 4
    assert (p.gc.in_channels, p.gc.out_channels, p.gc.groups) == (4, 4, 2)
    assert p.bn3.num_features == 4 and p.c3.in_channels == 4
    # whole GroupNorm groups are removed: 4 groups of 2 -> 2 groups of 2
    assert (p.c3.out_channels, p.gn.num_channels, p.gn.num_groups) == (4, 4, 2)
    assert (p.fc1.in_features, p.fc1.out_features, p.bnf.num_features, p.fc2.in_features) == (4, 3, 3, 3)
    assert p.fc2.out_features == 3
    for mod in p.modules():
        if isinstance(mod, nn.modules.conv._ConvNd):
            _conv_consistent(mod)
        if isinstance(mod, nn.modules.batchnorm._NormBase):
            assert mod.running_mean.shape == mod.running_var.shape == mod.weight.shape == (mod.num_features,)
        if isinstance(mod, nn.Linear):
            assert tuple(mod.weight.shape) == (mod.out_features, mod.in_features)
    _check_runs_like_reference(m, res, (5, 3, 8, 8))


def test_depthwise_with_channel_multiplier():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, groups=4), nn.BatchNorm2d(8),
                      nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    res = prune(m, (torch.randn(2, 3, 9, 9),), PruneConfig(ratio=0.5), 1, {})
    dw = res.model[2]
    assert (dw.in_channels, dw.out_channels, dw.groups) == (2, 4, 2)
    assert res.model[0].out_channels == 2 and res.model[3].num_features == 4 and res.model[5].in_channels == 4
    _conv_consistent(dw)
    _check_runs_like_reference(m, res, (3, 3, 9, 9))


def test_grouped_conv_with_many_groups_loses_whole_groups(randomize):
    # ResNeXt/RegNet style: 1x1 -> grouped 3x3 (8 groups of 4) -> 1x1; the group width stays 4
    m = randomize(nn.Sequential(nn.Conv2d(3, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                nn.Conv2d(32, 32, 3, padding=1, groups=8), nn.BatchNorm2d(32), nn.ReLU(),
                                nn.Conv2d(32, 5, 1))).eval()
    res = prune(m, (torch.randn(2, 3, 6, 6),), PruneConfig(ratio=0.5), 1, {})
    gc = res.model[3]
    assert (gc.in_channels, gc.out_channels, gc.groups) == (16, 16, 4)
    assert res.model[0].out_channels == 16 and res.model[6].in_channels == 16
    _conv_consistent(gc)
    _check_runs_like_reference(m, res, (3, 3, 6, 6))


def test_transposed_conv():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 6, 2, stride=2),
                      nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    res = prune(m, (torch.randn(2, 3, 5, 5),), PruneConfig(ratio=0.5), 1, {})
    up = res.model[2]
    assert (up.in_channels, up.out_channels) == (4, 3)
    _conv_consistent(up)
    _check_runs_like_reference(m, res, (1, 3, 5, 5))


def test_apply_keep_by_hand_on_linears():
    m = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    apply_keep(m, {"0.weight": {0: [0, 2]}, "0.bias": {0: [0, 2]}, "2.weight": {1: [0, 2]}})
    assert (m[0].in_features, m[0].out_features, m[2].in_features, m[2].out_features) == (5, 2, 2, 3)
    assert isinstance(m[0].weight, nn.Parameter) and m[0].weight.requires_grad
    assert m(torch.randn(7, 5)).shape == (7, 3)


def test_apply_keep_rejects_a_parameter_the_model_lacks():
    with pytest.raises(KeyError, match="1.weight"):
        apply_keep(nn.Sequential(nn.Linear(2, 2)), {"1.weight": {0: [0]}})


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.relu(self.mid(self.emb(ids))))


def test_tied_weights_stay_tied_after_pruning():
    m = Tied().eval()
    res = prune(m, (torch.randint(0, 10, (2, 5)),), PruneConfig(ratio=0.5), 1, {})
    p = res.model
    assert p.head.weight is p.emb.weight
    assert tuple(p.emb.weight.shape) == (10, 4)
    assert (p.emb.embedding_dim, p.head.in_features, p.head.out_features) == (4, 4, 10)
    assert (p.mid.in_features, p.mid.out_features) == (4, 4)
    assert len(list(p.parameters())) == len(list(m.parameters()))
    _check_runs_like_reference(m, res, (3, 7), dtype=torch.int64)
    # training still updates one tensor
    p.train()
    p(torch.randint(0, 10, (2, 5))).sum().backward()
    assert p.head.weight.grad is p.emb.weight.grad


def test_apply_keep_on_either_name_of_a_tied_weight():
    for name in ("a.weight", "b.weight"):
        m = nn.Module()
        m.a, m.b = nn.Linear(4, 6, bias=False), nn.Linear(4, 6, bias=False)
        m.b.weight = m.a.weight
        apply_keep(m, {name: {0: [1, 3]}})
        assert m.a.weight is m.b.weight and tuple(m.a.weight.shape) == (2, 4)
        assert m.a.out_features == m.b.out_features == 2
        assert [n for n, _ in m.named_parameters()] == ["a.weight"]


def test_zero_removed_zeroes_exactly_the_removed_slices():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    graph = build_graph(m, (torch.randn(2, 3, 6, 6),))
    (g,) = graph.groups
    removed = {int(g.classes[1]), int(g.classes[3])}
    before = copy.deepcopy(m.state_dict())
    zero_removed(m, graph.removed_indices(removed))
    sd = m.state_dict()
    for name, dim in [("0.weight", 0), ("0.bias", 0), ("1.weight", 0), ("1.bias", 0), ("3.weight", 1)]:
        t, t0 = sd[name].movedim(dim, 0), before[name].movedim(dim, 0)
        assert torch.all(t[[1, 3]] == 0), name
        assert torch.equal(t[[0, 2]], t0[[0, 2]]), name
    assert torch.equal(sd["3.bias"], before["3.bias"])


def test_hf_conv1d_mlp_keeps_its_output_width_attribute():
    """GPT-2's MLP is two Hugging Face Conv1D (a Linear with an (in, out) weight whose forward reshapes to `nf`
    features): pruning its hidden units must update `nf`, or the pruned model no longer runs."""
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc, self.c_proj = Conv1D(32, 8), Conv1D(8, 32)

        def forward(self, x):
            return self.c_proj(torch.relu(self.c_fc(x)))

    torch.manual_seed(0)
    m = MLP().eval()
    for p in m.parameters():
        nn.init.normal_(p)
    res = prune(m, (torch.randn(2, 5, 8),), PruneConfig(ratio=0.5), 1, {})
    p = res.model
    assert tuple(p.c_fc.weight.shape) == (8, 16) and p.c_fc.nf == 16
    assert tuple(p.c_proj.weight.shape) == (16, 8) and p.c_proj.nf == 8
    _check_runs_like_reference(m, res, (3, 4, 8))


def test_a_norm_without_parameters_or_running_statistics_does_not_stop_pruning():
    """InstanceNorm2d (affine=False, no running statistics: RAFT's encoders) holds no tensor to take a channel
    count from; pruning the model around it must not fail on it."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    res = prune(m, (torch.randn(2, 3, 6, 6),), PruneConfig(ratio=0.5), 1, {})
    assert res.model[3].out_channels == 4 and res.model[4].num_features == 4
    _check_runs_like_reference(m, res, (1, 3, 6, 6))


class HeadCountAttention(nn.Module):
    """Attention that reshapes by its `num_heads` attribute (Whisper's, BART's key/value view): the attribute
    must follow the heads removed."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim = heads, d // heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        a = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1) @ v
        return self.out_proj(a.transpose(1, 2).reshape(b, t, -1))


def test_attention_head_count_attribute_follows_the_removed_heads():
    torch.manual_seed(0)
    m = nn.Sequential(HeadCountAttention()).eval()
    res = prune(m, (torch.randn(2, 5, 32),), PruneConfig(ratio=0.5), 1, {})
    a = res.model[0]
    assert tuple(a.q_proj.weight.shape) == (16, 32) and a.num_heads == 2
    _check_runs_like_reference(m, res, (3, 4, 32))
