"""Each criterion ranks weights as its definition says, on cases built so that the answer is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError
from compress.sparse import masks as M


class TwoLinear(nn.Module):
    def __init__(self, w1, w2) -> None:
        super().__init__()
        self.a = nn.Linear(w1.shape[1], w1.shape[0], bias=False)
        self.b = nn.Linear(w2.shape[1], w2.shape[0], bias=False)
        with torch.no_grad():
            self.a.weight.copy_(w1)
            self.b.weight.copy_(w2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_magnitude_per_layer_and_global():
    big, small = torch.arange(1.0, 17.0).reshape(4, 4), torch.arange(1.0, 17.0).reshape(4, 4) / 100
    m = TwoLinear(big, small)
    per_layer = M.magnitude_masks(m, 0.5)
    assert per_layer["a"].sum() == 8 and per_layer["b"].sum() == 8
    assert per_layer["a"].reshape(-1)[8:].all() and not per_layer["a"].reshape(-1)[:8].any()  # the 8 largest kept
    glob = M.magnitude_masks(m, 0.5, scope="global")
    assert glob["a"].all() and not glob["b"].any()     # one threshold: all of the small layer goes


def test_layer_masks_keep_exact_fraction_and_per_row():
    s = {"x": torch.rand(10, 30)}
    mk = M.layer_masks(s, 0.7)["x"]
    assert int(mk.sum()) == 90
    rows = M.layer_masks(s, 0.7, per_row=True)["x"]
    assert (rows.sum(1) == 9).all()


def test_movement_keeps_weights_moving_away_from_zero():
    w = torch.tensor([[2.0, 1.0, -1.0, 0.5]])
    m = TwoLinear(w, torch.ones(1, 1))
    mv = M.Movement(m, {"a": m.a})
    c = torch.tensor([[1.0, -1.0, -1.0, -1.0]])   # dL/dW = c: SGD moves W against c
    for _ in range(3):
        m.zero_grad()
        (m.a.weight * c).sum().backward()
        mv.update()
    s = mv.scores()["a"]
    # S = -sum W * grad: 2.0 shrinks (-6), 1.0 grows (+3), -1.0 shrinks (-3), 0.5 grows (+1.5)
    assert torch.allclose(s, torch.tensor([[-6.0, 3.0, -3.0, 1.5]], dtype=torch.float64))
    keep = mv.masks(0.5)["a"]
    assert keep.tolist() == [[False, True, False, True]]   # the largest weight goes: it moves toward zero
    mv.apply(0.5)
    assert m.a.weight.detach().tolist() == [[0.0, 1.0, -0.0, 0.5]]


def test_movement_without_gradient_is_a_clear_error():
    m = TwoLinear(torch.ones(2, 2), torch.ones(1, 2))
    with pytest.raises(CompressError, match="after loss.backward"):
        M.Movement(m).update()


def test_wanda_is_weight_times_input_norm():
    w = torch.tensor([[0.1, 1.0, 1.0, 1.0], [1.0, 0.2, 0.3, 0.4]])
    m = TwoLinear(w, torch.ones(1, 2))
    x = torch.randn(64, 4) * torch.tensor([100.0, 1.0, 1.0, 1.0])   # feature 0 is huge
    s = M.wanda_scores(m, [(x[:32],), (x[32:],)], {"a": m.a})["a"]
    expected = w.abs().double() * x.double().norm(dim=0)[None, :]
    assert torch.allclose(s, expected)
    keep = M.layer_masks({"a": s}, 0.25, per_row=True)["a"]
    assert keep[0, 0]                                  # small weight, huge input: Wanda keeps it
    assert not M.magnitude_masks(m, 0.25, layers={"a": m.a})["a"][0, 0]   # magnitude drops it


def test_wanda_conv_uses_im2col_columns():
    conv = nn.Conv2d(4, 2, 3, padding=1, bias=False)
    model = nn.Sequential(conv)
    x = torch.randn(2, 4, 5, 5)
    s = M.wanda_scores(model, [(x,)], {"0": conv})["0"]
    cols = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 4 * 9).double()   # (c, kh, kw) order
    expected = conv.weight.detach().abs().double() * cols.norm(dim=0).reshape(4, 3, 3)[None]
    assert torch.allclose(s, expected)


def test_snip_is_abs_weight_times_gradient_and_ignores_dead_inputs():
    torch.manual_seed(0)
    w1 = torch.randn(3, 4)
    w1[:, 3] = 10.0                                    # largest weights, but input feature 3 is always 0
    m = TwoLinear(w1, torch.randn(5, 3))
    x = torch.randn(16, 4)
    x[:, 3] = 0
    y = torch.randint(0, 5, (16,))
    s = M.snip_scores(m, [(x, y)], {"a": m.a, "b": m.b})
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    assert torch.allclose(s["a"], (m.a.weight * m.a.weight.grad).abs().double())
    assert (s["a"][:, 3] == 0).all()
    assert M.layer_masks(s, 0.25)["a"][:, 3].sum() == 0


def test_grasp_is_weight_times_hessian_gradient_product():
    torch.manual_seed(0)
    m = TwoLinear(torch.randn(3, 4), torch.randn(2, 3))
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    got = M.grasp_scores(m, [(x, y)], {"a": m.a, "b": m.b}, loss_fn=lambda mdl, b: F.cross_entropy(mdl(b[0]), b[1]))
    w1, w2 = m.a.weight.detach().double(), m.b.weight.detach().double()

    def loss(flat):
        a, b = flat[:12].reshape(3, 4), flat[12:].reshape(2, 3)
        return F.cross_entropy(torch.relu(x.double() @ a.T) @ b.T, y)

    flat = torch.cat([w1.reshape(-1), w2.reshape(-1)])
    g = torch.autograd.functional.jacobian(loss, flat)
    h = torch.autograd.functional.hessian(loss, flat)
    ref = flat * (h @ g)
    assert torch.allclose(got["a"].reshape(-1), ref[:12], atol=1e-6)
    assert torch.allclose(got["b"].reshape(-1), ref[12:], atol=1e-6)


def test_synflow_matches_the_closed_form_of_a_linear_chain():
    torch.manual_seed(0)
    w1, w2 = torch.randn(3, 4), torch.randn(2, 3)
    m = TwoLinear(w1, w2)
    s = M.synflow_scores(m, (torch.randn(1, 4),), {"a": m.a, "b": m.b})
    a, b = w1.abs().double(), w2.abs().double()
    # R = 1^T |W2| |W1| 1: dR/dW1_ij = sum_k |W2|_ki, dR/dW2_ki = sum_j |W1|_ij
    assert torch.allclose(s["a"], a * b.sum(0)[:, None])
    assert torch.allclose(s["b"], b * a.sum(1)[None, :])
    assert m.a.weight.min() < 0                        # the model itself is untouched


def test_synflow_iterative_keeps_the_requested_density():
    torch.manual_seed(0)
    m = TwoLinear(torch.randn(16, 8), torch.randn(4, 16))
    mk = M.synflow_masks(m, (torch.randn(1, 8),), 0.75, iterations=10)
    assert sum(int(v.sum()) for v in mk.values()) == round(0.25 * (128 + 64))


def test_data_criteria_without_calibration_data_are_clear_errors():
    m = TwoLinear(torch.ones(2, 2), torch.ones(1, 2))
    for crit in ("wanda", "snip", "grasp", "movement"):
        with pytest.raises(CompressError, match="calib"):
            M.scores(crit, m, batches=[])
    with pytest.raises(CompressError, match="unknown criterion"):
        M.scores("random", m)
