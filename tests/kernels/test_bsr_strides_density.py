"""Issue #23, item 12, in Triton's interpreter: strided bias / crow / col views (the kernel reads them
with unit stride, so the launcher must make them contiguous), the density bucket in the autotune key,
and the refusal to autotune inside CUDA-graph capture."""

from __future__ import annotations

import pytest
import torch

from compress.errors import CompressError
from compress.kernels import bsr_matmul as bm
from tests.kernels._bsr_cases import TOL, bsr_from_mask, max_rel_err


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[True, False, True], [False, True, True], [True, True, False]])
    bsr, dense = bsr_from_mask(mask, 16, torch.float32, gen)
    x = torch.randn(21, 48, generator=gen)
    return bsr, dense, x, gen


def test_strided_bias_view_gives_the_right_result():
    bsr, dense, x, gen = _problem(1)
    wide = torch.randn(48, 2, generator=gen)
    bias = wide[:, 1]  # stride 2: the kernel's unit-stride load would read wide[:, 0] and wide[:, 1] mixed
    assert bias.stride() == (2,)
    y = bm.launch_linear(x, bsr.crow_indices(), bsr.col_indices(), bsr.values(), 48, bias, interpret=True)
    ref = x.double() @ dense.T + bias.double()
    assert max_rel_err(y, ref) <= TOL[torch.float32]


def test_strided_crow_and_col_views_give_the_right_result():
    bsr, dense, x, _ = _problem(2)
    crow = torch.stack([bsr.crow_indices(), torch.full_like(bsr.crow_indices(), 99)], 1)[:, 0]
    col = torch.stack([bsr.col_indices(), torch.full_like(bsr.col_indices(), 7)], 1)[:, 0]
    assert crow.stride() == (2,) and col.stride() == (2,)
    y = bm.launch_linear(x, crow, col, bsr.values(), 48, None, interpret=True)
    assert max_rel_err(y, x.double() @ dense.T) <= TOL[torch.float32]


def test_density_is_part_of_the_autotune_key():
    assert "NNZ_BUCKET" in bm.AUTOTUNE_KEY
    kern = bm._kernel(False)  # the CUDA autotuner, built without a GPU
    assert list(kern.keys) == list(bm.AUTOTUNE_KEY)
    # 128 block columns per block row: 50% density and 95% sparsity land in different buckets
    rows = 32
    half, sparse = bm.density_bucket(rows * 64, rows), bm.density_bucket(int(rows * 128 * 0.05), rows)
    assert half == 64 and sparse == 8 and half != sparse
    assert bm.density_bucket(0, rows) == 0 and bm.density_bucket(3, rows) == 1


def test_autotuning_inside_cuda_graph_capture_is_refused(monkeypatch):
    key = (16, 2, 48, 48, 16, "tf32", "torch.float16")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(bm, "_TUNED", set())
    with pytest.raises(CompressError, match="CUDA-graph capture.*warmup") as e:
        bm.check_capture(key)
    assert "\n" not in str(e.value)
    bm._TUNED.add(key)  # after a warm-up run of that key, capture is fine
    bm.check_capture(key)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    bm.check_capture((1,) + key[1:])  # not capturing: the first call autotunes as usual
