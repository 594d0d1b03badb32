"""The custom op compress::bsr_linear: CPU results, fake tensors, torch.export tracing and reloading."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.kernels import bsr_linear, bsr_linear_parts, register_ops
from tests.kernels._bsr_cases import TOL, bsr_from_mask, max_rel_err

MASK = torch.tensor([[True, False, True], [False, False, False], [True, True, True], [False, True, False]])


def _weight(dtype=torch.float32, seed=0):
    return bsr_from_mask(MASK, 16, dtype, torch.Generator().manual_seed(seed))


class PartsLinear(nn.Module):
    """What a lowered module keeps: the BSR parts as buffers (dense tensors), the bias as a parameter."""

    def __init__(self, bsr, bias):
        super().__init__()
        self.out_features = bsr.shape[0]
        self.register_buffer("crow", bsr.crow_indices().clone())
        self.register_buffer("col", bsr.col_indices().clone())
        self.register_buffer("values", bsr.values().clone())
        self.bias = nn.Parameter(bias)

    def forward(self, x):
        return torch.relu(bsr_linear_parts(x, self.crow, self.col, self.values, self.out_features, self.bias))


class SparseBufferLinear(nn.Module):
    def __init__(self, bsr):
        super().__init__()
        self.register_buffer("weight", bsr)

    def forward(self, x):
        return bsr_linear(x, self.weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_op_matches_dense(dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # torch's own BSR matmul
    bsr, dense = _weight(dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 48, generator=gen).to(dtype)
    bias = torch.randn(64, generator=gen).to(dtype)
    y = bsr_linear(x, bsr, bias)
    assert y.shape == (2, 7, 64) and y.dtype == dtype
    ref = x.double() @ dense.T + bias.double()
    assert max_rel_err(y, ref) <= TOL[dtype]
    y2 = torch.ops.compress.bsr_linear(x, bsr.crow_indices(), bsr.col_indices(), bsr.values(), 64, None)
    assert max_rel_err(y2, x.double() @ dense.T) <= TOL[dtype]


def test_cpu_op_uses_interpreter_when_triton_interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    bsr, dense = _weight()
    x = torch.randn(5, 48)
    assert max_rel_err(bsr_linear(x, bsr), x.double() @ dense.T) <= TOL[torch.float32]
    from compress.kernels import bsr_matmul

    assert True in bsr_matmul._KERNELS


def test_fake_tensor_shapes_and_checks():
    register_ops()
    from torch._subclasses.fake_tensor import FakeTensorMode

    bsr, _ = _weight()
    real = [t.clone() for t in (bsr.crow_indices(), bsr.col_indices(), bsr.values())]
    mode = FakeTensorMode()
    x = mode.from_tensor(torch.randn(3, 5, 48))
    parts = [mode.from_tensor(t) for t in real]
    with mode:
        y = torch.ops.compress.bsr_linear(x, *parts, 64, None)
        assert y.shape == (3, 5, 64) and y.dtype == torch.float32
        with pytest.raises(CompressError, match="crow_indices"):
            torch.ops.compress.bsr_linear(x, *parts, 80, None)


def test_export_traces_and_matches_dense(tmp_path):
    bsr, dense = _weight()
    bias = torch.randn(64)
    model = PartsLinear(bsr, bias).eval()
    x = torch.randn(2, 5, 48)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.compress.bsr_linear.default in targets
    x3 = torch.randn(3, 5, 48)
    ref = torch.relu(x3.double() @ dense.T + bias.double())
    assert max_rel_err(ep.module()(x3), ref) <= TOL[torch.float32]
    # save / load round trip (the op must be registered in the loading process: register_ops())
    path = tmp_path / "m.pt2"
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path))
    assert torch.equal(loaded.module()(x3), ep.module()(x3))


def test_export_with_bsr_buffer():
    bsr, dense = _weight()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(SparseBufferLinear(bsr).eval(), (torch.randn(4, 48),))
    assert any(n.target == torch.ops.compress.bsr_linear.default for n in ep.graph.nodes)
    x = torch.randn(4, 48)
    assert max_rel_err(ep.module()(x), x.double() @ dense.T) <= TOL[torch.float32]


def test_export_reports_bad_shapes_as_compress_error():
    bsr, _ = _weight()
    model = PartsLinear(bsr, torch.randn(64)).eval()
    with pytest.raises(CompressError, match="in_features"):
        torch.export.export(model, (torch.randn(2, 40),))
