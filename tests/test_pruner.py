import torch
from torch import nn

from compress.prune.plan import PruneConfig
from compress.prune.apply import compare, prune


class _Const(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x, self.value)


def test_compare_rejects_nan_and_inf():
    x = torch.randn(2, 3)
    assert compare(_Const(1.0), _Const(1.0), (x,)) == 0.0
    assert compare(_Const(1.0), _Const(float("nan")), (x,)) == float("inf")
    assert compare(_Const(1.0), _Const(float("inf")), (x,)) == float("inf")


def test_prune_canonicalizes_multihead_attention():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            h = self.inp(x)
            a, _ = self.attn(h, h, h, need_weights=False)
            return self.out(a + h)

    m = M().eval()
    x = torch.randn(1, 5, 8)
    ref = m(x)
    res = prune(m, (x,), PruneConfig(ratio=0.5), 1, {"model": "test"})
    assert torch.allclose(m(x), ref, atol=1e-5)  # canonicalisation preserved the function
    assert res.model.attn.num_heads == 2
    assert res.max_rel_error <= 1e-4
