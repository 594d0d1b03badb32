"""--criterion thinet: greedy channel selection by the next layer's reconstruction error (Luo et al. 2017)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.graph import build_graph
from compress.prune.apply import prune
from compress.prune.importance import DATA_CRITERIA, score
from compress.prune.plan import PruneConfig
from compress.prune.selection import contributions, greedy_order, pivot_order


def test_greedy_removes_what_the_next_layer_misses_least_not_the_smallest():
    """Channel 1 cancels most of channel 0: once 1 is gone, removing 0 too restores the sum almost
    exactly, so ThiNet removes the largest channel second, which magnitude never would."""
    rng = np.random.default_rng(0)
    u = rng.standard_normal(200)
    u /= np.linalg.norm(u)
    w = rng.standard_normal(200)
    w -= (w @ u) * u
    w *= 0.95 / np.linalg.norm(w)
    xh = np.stack([u, -0.9 * u, w], 1)
    assert greedy_order(xh).tolist() == [1, 0, 2]
    assert np.argsort((xh ** 2).sum(0)).tolist() == [1, 2, 0]       # by magnitude


def test_greedy_objective_is_the_papers():
    """Each step removes the channel minimising Σ_i (Σ_{removed} x̂[i, c])² (brute force over candidates)."""
    rng = np.random.default_rng(1)
    xh = rng.standard_normal((50, 6)) * rng.random(6)
    order = greedy_order(xh).tolist()
    removed: list[int] = []
    for c in order:
        cost = {k: float((xh[:, removed + [k]].sum(1) ** 2).sum()) for k in range(6) if k not in removed}
        assert cost[c] == min(cost.values())
        removed.append(c)


def test_conv_contribution_sums_to_the_output():
    torch.manual_seed(0)
    m = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 5, 5)
    g = torch.Generator().manual_seed(0)
    xh = contributions(m, x, g, 64)
    g = torch.Generator().manual_seed(0)
    b = torch.randint(0, 2, (64,), generator=g)
    p = torch.randint(0, 25, (64,), generator=g)
    j = torch.randint(0, 4, (64,), generator=g)
    y = m(x).flatten(2)[b, j, p]
    assert torch.allclose(xh.sum(1), y, atol=1e-5)


class Dead(nn.Module):
    """Hidden unit 2 is the largest by weight but the next layer ignores it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(5, 6), nn.Linear(6, 3)
        with torch.no_grad():
            self.a.weight[2] *= 10
            self.b.weight[:, 2] = 0

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_thinet_ranks_an_ignored_unit_first_and_prunes():
    assert "thinet" in DATA_CRITERIA
    m = Dead().eval()
    x = torch.randn(2, 5)
    graph = build_graph(m, (x,))
    calib = [(torch.randn(8, 5, generator=torch.Generator().manual_seed(i)),) for i in range(4)]
    (s,) = score(m, graph, "thinet", calib=calib).values()
    assert len(s) == 6 and np.isfinite(s).all() and int(np.argmin(s)) == 2
    assert int(np.argmin(score(m, graph, "l1")[0])) != 2
    res = prune(m, (x,), PruneConfig(ratio=0.5, criterion="thinet"), 1, {"model": "t"}, calib=calib)
    assert 2 not in res.plan.groups[0].keep
    again = score(m, graph, "thinet", calib=calib)
    assert np.array_equal(again[0], s)                                 # seeded: deterministic


def test_pivot_order_picks_the_spanning_columns_first():
    """Column 2 = column 0 + column 1: any two of the three span all, so the third is chosen last;
    the largest goes first (Chee et al.'s ID by column-pivoted QR)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(100) * 3, rng.standard_normal(100)
    z = np.stack([a, b, a + b, 0.1 * rng.standard_normal(100)], 1)
    order = pivot_order(z, np.arange(4)).tolist()
    assert order[0] == 2 and order[-1] != 3 and order.index(3) == 2
    # by blocks: a class of two columns counts its residual Frobenius norm; a class its span covers goes last
    z2 = np.stack([a, b, b, 0.1 * rng.standard_normal(100)], 1)
    assert pivot_order(z2, np.array([0, 0, 1, 2])).tolist() == [0, 2, 1]


def test_id_keeps_a_basis_and_reconstruct_then_recovers_exactly():
    """A hidden unit that is a linear combination of others is what id removes; --reconstruct then
    restores the output exactly (the ID pruning of Chee et al.: selection + least-squares refit)."""
    import copy

    from compress.prune import reconstruct as R

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3)).eval()       # no nonlinearity: rank 4 hidden
    with torch.no_grad():
        m[0].weight[4] = m[0].weight[0] + 0.5 * m[0].weight[1]
        m[0].bias[4] = m[0].bias[0] + 0.5 * m[0].bias[1]
    x = torch.randn(2, 4)
    graph = build_graph(m, (x,))
    calib = [(torch.randn(8, 4, generator=torch.Generator().manual_seed(i)),) for i in range(8)]
    res = prune(m, (x,), PruneConfig(ratio=0.2, criterion="id"), 1, {"model": "t"}, calib=calib)
    assert len(res.plan.groups[0].keep) == 4
    pruned = copy.deepcopy(res.model)
    R.reconstruct(m, pruned, res.plan.param_keep(), calib, R.ReconstructConfig(damps=(1e-10,)))
    test = torch.randn(16, 4)
    with torch.no_grad():
        assert float((pruned(test) - m(test)).abs().max()) < 1e-4
    assert score(m, graph, "id", calib=calib)[0].shape == (5,)
