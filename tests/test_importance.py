"""Each importance criterion ranks channels as its definition (compress.prune.importance docstring) says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.graph import build_graph
from compress.prune.importance import DATA_CRITERIA, score


class ConvBN(nn.Module):
    """c1 -> bn -> relu -> c2: one prunable group, the 4 output channels of c1."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.c1 = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, 5, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.bn(self.c1(x))))


class Residual(nn.Module):
    """a -> (a + b(a)) -> c: a's and b's outputs share one mask; b and c both read it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        y = self.a(x)
        y = y + torch.tanh(self.b(y))
        return self.c(y)


X = (torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)),)


def _calib(n_batches=2, batch=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 6, 6, generator=g),) for _ in range(n_batches)]


def _only_group(graph, producer):
    gs = [g for g in graph.groups if (producer, 0) in g.producers]
    assert len(gs) == 1, graph.groups
    return gs[0]


def _conv_bn(c=4):
    m = ConvBN(c).eval()
    graph = build_graph(m, X)
    g = _only_group(graph, "c1.weight")
    # classes are in producer order: class i is output channel i of c1
    assert [int((graph.dims[("c1.weight", 0)] == c_).nonzero()[0][0]) for c_ in g.classes] == list(range(c))
    return m, graph, g


def _ranking(s):
    return list(np.argsort(-np.asarray(s), kind="stable"))


# ------------------------------------------------------------------ magnitude
def test_l1_sums_abs_of_every_weight_slice_of_the_class():
    m, graph, g = _conv_bn()
    with torch.no_grad():
        scale = torch.tensor([0.1, 1.0, 5.0, 2.0])
        m.c1.weight.copy_(torch.randn_like(m.c1.weight).sign() * scale.view(-1, 1, 1, 1))
        m.c2.weight.copy_(torch.randn_like(m.c2.weight))
    s = score(m, graph, "l1")[g.id]
    expect = (m.c1.weight.abs().sum((1, 2, 3)) + m.c2.weight.abs().sum((0, 2, 3))).detach().double().numpy()
    np.testing.assert_allclose(s, expect, rtol=1e-6)
    assert _ranking(s) == [2, 3, 1, 0]


def test_l2_and_l1_disagree_on_one_big_weight_vs_many_small():
    m, graph, g = _conv_bn()
    with torch.no_grad():
        m.c1.weight.fill_(0.1)
        m.c1.weight[0].zero_()
        m.c1.weight[0, 0, 1, 1] = 3.0          # one big weight: L1 3, L2 9
        m.c1.weight[1].fill_(0.5)              # 27 weights of 0.5: L1 13.5, L2 6.75
        m.c2.weight.fill_(0.01)
    l1 = score(m, graph, "l1")[g.id]
    l2 = score(m, graph, "l2")[g.id]
    assert l1[1] > l1[0]
    assert l2[0] > l2[1]
    assert _ranking(l2)[0] == 0 and _ranking(l1)[0] == 1


# ------------------------------------------------------------------ bn
def test_bn_ranks_by_abs_gamma_not_by_weight_magnitude():
    m, graph, g = _conv_bn()
    with torch.no_grad():
        m.bn.weight.copy_(torch.tensor([0.5, -3.0, 0.1, 1.0]))
        m.c1.weight.copy_(torch.tensor([4.0, 1.0, 8.0, 2.0]).view(-1, 1, 1, 1).expand_as(m.c1.weight))
    s = score(m, graph, "bn")[g.id]
    np.testing.assert_allclose(s, [0.5, 3.0, 0.1, 1.0], rtol=1e-6)
    assert _ranking(s) == [1, 3, 0, 2]
    assert _ranking(score(m, graph, "l1")[g.id]) == [2, 0, 3, 1]


def test_bn_falls_back_to_magnitude_where_a_group_has_no_norm_layer():
    m = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([1.0, 3.0, 0.5, 2.0]).view(-1, 1).expand(4, 6))
        m[2].weight.fill_(0.1)
    graph = build_graph(m, (torch.randn(2, 6),))
    (g,) = graph.groups
    s = score(m, graph, "bn")[g.id]
    assert np.all(s > 0)
    assert _ranking(s) == [1, 3, 0, 2]


# ------------------------------------------------------------------ taylor / fisher
def _useless_big_channel(m, how):
    """Channel 2 has by far the largest weights but cannot change the loss."""
    with torch.no_grad():
        m.c1.weight.copy_(torch.randn_like(m.c1.weight) * 0.3)
        m.c1.weight[2].mul_(50.0)
        m.bn.weight.fill_(1.0)
        m.bn.bias.fill_(0.5)
        m.bn.running_mean.zero_()
        m.bn.running_var.fill_(1.0)
        if how == "zero_consumer":
            m.c2.weight[:, 2].zero_()
        else:  # dead ReLU: the channel is negative on every input
            m.bn.weight[2] = 1e-3
            m.bn.bias[2] = -100.0


@pytest.mark.parametrize("how", ["zero_consumer", "dead_relu"])
@pytest.mark.parametrize("criterion", ["taylor", "fisher"])
def test_gradient_criteria_rank_a_big_useless_channel_last(criterion, how):
    m, graph, g = _conv_bn()
    _useless_big_channel(m, how)
    assert _ranking(score(m, graph, "l1")[g.id])[0] == 2
    s = score(m, graph, criterion, calib=_calib())[g.id]
    assert _ranking(s)[-1] == 2
    assert abs(s[2]) < 1e-9 * max(abs(s).max(), 1e-30)
    assert np.all(np.delete(s, 2) > 0)


def test_gradient_criteria_on_a_classifier_output():
    # a 2-D output is scored with cross-entropy on its own argmax; a channel no one reads is still worthless
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        m[0].bias.fill_(1.0)                  # every hidden unit is active on most inputs
        m[0].weight[1].mul_(100.0)
        m[2].weight[:, 1].zero_()
    graph = build_graph(m, (torch.randn(2, 6),))
    (g,) = graph.groups
    calib = [(torch.randn(8, 6),)]
    for crit in ("taylor", "fisher"):
        s = score(m, graph, crit, calib=calib)[g.id]
        assert _ranking(s)[-1] == 1, crit
        assert np.all(np.delete(s, 1) > 0), crit


def _fisher_reference(model, graph, g, calib):
    """Group Fisher from its definition: one multiplicative mask per class, inserted in front of every
    reader of the class, shared by all of them; score = sum over samples of (dL/dm)^2 / 2."""
    readers = {k[0].rsplit(".", 1)[0]: k for k, role in graph.roles.items() if role == "reader"}
    mods = dict(model.named_modules())
    out = np.zeros(g.size)
    for batch in calib:
        for i in range(batch[0].shape[0]):
            x = batch[0][i:i + 1]
            masks = {int(c): torch.ones((), dtype=torch.float64, requires_grad=True) for c in g.classes}
            handles = []
            for mname, key in readers.items():
                roots = graph.dims[key]
                if not np.isin(roots, g.classes).any():
                    continue

                def pre(mod, args, roots=roots):
                    (inp,) = args
                    scale = torch.stack([masks[int(r)] if int(r) in masks else torch.ones((), dtype=torch.float64)
                                         for r in roots]).to(inp.dtype)
                    return (inp * scale.view(1, -1, *([1] * (inp.dim() - 2))),)

                handles.append(mods[mname].register_forward_pre_hook(pre))
            try:
                y = model(x)
                loss = 0.5 * y.float().pow(2).mean()
                grads = torch.autograd.grad(loss, [masks[int(c)] for c in g.classes])
            finally:
                for h in handles:
                    h.remove()
            out += 0.5 * np.array([float(gr) ** 2 for gr in grads])
    return out


def test_fisher_shares_one_mask_across_a_residual_coupled_group():
    m = Residual().eval()
    graph = build_graph(m, X)
    g = _only_group(graph, "a.weight")
    assert ("b.weight", 0) in g.producers           # residual add couples a's and b's outputs
    calib = _calib(n_batches=1, batch=3)
    s = score(m, graph, "fisher", calib=calib)[g.id]
    ref = _fisher_reference(m, graph, g, calib)
    np.testing.assert_allclose(s, ref, rtol=1e-3, atol=1e-12)

    # the coupled reader b contributes: without its mask the score is different
    only_c = {k: v for k, v in graph.roles.items() if not k[0].startswith("b.")}
    graph_c = type(graph)(groups=graph.groups, dims=graph.dims, roles=only_c, unsupported=[])
    s_c = score(m, graph_c, "fisher", calib=calib)[g.id]
    assert not np.allclose(s, s_c, rtol=1e-2)
    # and the contributions are summed before squaring (one shared mask), not squared per reader
    only_b = {k: v for k, v in graph.roles.items() if not k[0].startswith("c.")}
    s_b = score(m, type(graph)(groups=graph.groups, dims=graph.dims, roles=only_b, unsupported=[]),
                "fisher", calib=calib)[g.id]
    assert not np.allclose(s, s_b + s_c, rtol=1e-2)


# ------------------------------------------------------------------ activation / apoz
def _relu_input(m, calib):
    acts = []
    h = m.c2.register_forward_pre_hook(lambda mod, args: acts.append(args[0].detach().double()))
    with torch.no_grad():
        for b in calib:
            m(*b)
    h.remove()
    return torch.cat(acts)


def test_activation_ranks_an_always_zero_channel_last():
    m, graph, g = _conv_bn()
    with torch.no_grad():
        m.bn.running_mean.zero_()
        m.bn.running_var.fill_(1.0)
        m.bn.weight.copy_(torch.tensor([1.0, 1.0, 1.0, 0.0]))
        m.bn.bias.copy_(torch.tensor([0.5, 2.0, 1.0, -1.0]))   # channel 3 is relu(-1) = 0 always
        m.c1.weight[3].mul_(20.0)                               # ... despite the biggest weights
    calib = _calib()
    s = score(m, graph, "activation", calib=calib)[g.id]
    a = _relu_input(m, calib)
    np.testing.assert_allclose(s, a.abs().mean((0, 2, 3)).numpy(), rtol=1e-6)
    assert s[3] == 0.0 and np.all(s[:3] > 0)
    assert _ranking(s)[-1] == 3


def test_apoz_ranks_a_mostly_zero_channel_last_even_if_its_activations_are_large():
    m, graph, g = _conv_bn()
    with torch.no_grad():
        m.bn.running_mean.zero_()
        m.bn.running_var.fill_(1.0)
        m.bn.weight.copy_(torch.tensor([1.0, 1.0, 50.0, 1.0]))
        m.bn.bias.copy_(torch.tensor([2.0, 3.0, -60.0, 2.5]))  # channel 2: rarely > 0, then very large
        m.c1.weight.copy_(torch.randn_like(m.c1.weight) * 0.4)
    calib = _calib(n_batches=3, batch=8)
    a = _relu_input(m, calib)
    zero_frac = (a == 0).double().mean((0, 2, 3)).numpy()
    assert zero_frac[2] > 0.5 and zero_frac[2] < 1.0, zero_frac      # the set-up is what it claims
    s = score(m, graph, "apoz", calib=calib)[g.id]
    np.testing.assert_allclose(s, 1.0 - zero_frac, rtol=1e-6)
    assert _ranking(s)[-1] == 2
    assert _ranking(score(m, graph, "activation", calib=calib)[g.id])[0] == 2


# ------------------------------------------------------------------ random
def test_random_is_seeded():
    m, graph, g = _conv_bn(8)
    a = score(m, graph, "random", seed=3)[g.id]
    b = score(m, graph, "random", seed=3)[g.id]
    c = score(m, graph, "random", seed=4)[g.id]
    assert a.shape == (g.size,)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # independent of the weights
    with torch.no_grad():
        m.c1.weight.mul_(7.0)
    np.testing.assert_array_equal(score(m, graph, "random", seed=3)[g.id], a)


# ------------------------------------------------------------------ errors and shape of the result
@pytest.mark.parametrize("criterion", DATA_CRITERIA)
@pytest.mark.parametrize("calib", [None, []])
def test_data_criterion_without_calib_raises(criterion, calib):
    m, graph, _ = _conv_bn()
    with pytest.raises(CompressError, match="calib"):
        score(m, graph, criterion, calib=calib)


def test_unknown_criterion_raises():
    m, graph, _ = _conv_bn()
    with pytest.raises(CompressError, match="l3"):
        score(m, graph, "l3")


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn", "taylor", "fisher", "activation", "apoz", "random"])
def test_every_criterion_gives_one_finite_score_per_class(criterion):
    m = Residual().eval()
    graph = build_graph(m, X)
    s = score(m, graph, criterion, calib=_calib(1, 2))
    assert set(s) == {g.id for g in graph.groups}
    for g in graph.groups:
        assert s[g.id].shape == (g.size,)
        assert np.isfinite(s[g.id]).all()
