"""Issue #23 on a real GPU (skipped without CUDA; the CPU tests check the same decisions in the interpreter
and with stand-ins): the compiled kernel with strided operands, one autotune entry per density bucket,
warm-up then CUDA-graph capture, and Sparse24Linear's measured 2:4 choice, fp32 guard and deepcopy."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from compress.errors import CompressError
from compress.kernels import bsr_matmul as bm
from tests.kernels._bsr_cases import TOL, bsr_from_mask, max_rel_err

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the issue #23 GPU checks need one (CPU coverage: tests/kernels, tests/lower)",
                allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("TRITON_INTERPRET is set: these tests exercise the compiled kernel", allow_module_level=True)


def _bsr(nbr, nbc, density, seed, block=32, dtype=torch.float16):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(nbr, nbc, generator=gen) < density
    return bsr_from_mask(mask, block, dtype, gen, device="cuda"), gen


def test_compiled_kernel_with_strided_bias_crow_col():
    (bsr, dense), gen = _bsr(4, 6, 0.5, 1)
    x = torch.randn(40, 6 * 32, generator=gen).half().cuda()
    bias = torch.randn(128, 2, generator=gen).half().cuda()[:, 1]
    crow = torch.stack([bsr.crow_indices(), bsr.crow_indices()], 1)[:, 0]
    col = torch.stack([bsr.col_indices(), bsr.col_indices()], 1)[:, 0]
    y = bm.launch_linear(x, crow, col, bsr.values(), 128, bias)
    ref = x.double().cpu() @ dense.T + bias.double().cpu()
    assert max_rel_err(y, ref) <= TOL[torch.float16]


def test_one_autotune_entry_per_density_bucket():
    (half, _), gen = _bsr(8, 64, 0.5, 2)
    (sparse, _), _ = _bsr(8, 64, 0.05, 3)
    x = torch.randn(256, 64 * 32, generator=gen).half().cuda()
    for w in (half, sparse):
        bm.launch_linear(x, w.crow_indices(), w.col_indices(), w.values(), 256, None)
    torch.cuda.synchronize()
    buckets = {k[1] for k in bm._kernel(False).cache if k[2:5] == (256, 64 * 32, 32)}
    assert len(buckets) >= 2, buckets
    assert bm.best_config(32, 256, 256, 64 * 32, torch.float16, nnz=int(half.values().shape[0]))


def test_warmup_then_cuda_graph_capture():
    (bsr, dense), gen = _bsr(4, 4, 0.5, 4, block=64)
    crow, col, vals = bsr.crow_indices(), bsr.col_indices(), bsr.values()
    bm.warmup(crow, col, vals, 256, 256, tokens=(16,))
    x = torch.randn(16, 256, generator=gen).half().cuda()
    out = torch.empty(16, 256, dtype=torch.float16, device="cuda")
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.cuda.graph(g, stream=s):
        bm.launch_linear(x, crow, col, vals, 256, None, out=out)
    g.replay()
    torch.cuda.synchronize()
    assert max_rel_err(out, x.double().cpu() @ dense.T) <= TOL[torch.float16]
    g2 = torch.cuda.CUDAGraph()  # a token count never tuned: refused, not a broken capture
    x2 = torch.randn(1000, 256, generator=gen).half().cuda()
    with pytest.raises(CompressError, match="CUDA-graph capture"):
        with torch.cuda.stream(s), torch.cuda.graph(g2, stream=s):
            bm.launch_linear(x2, crow, col, vals, 256, None)


def test_sparse24_measured_choice_fp32_guard_and_deepcopy():
    from compress.lower import formats
    from compress.lower.modules import Sparse24Linear

    gen = torch.Generator().manual_seed(5)
    w = torch.randn(512, 512, generator=gen)
    enc = formats.encode_24(w, formats.select_24(w))
    m = Sparse24Linear(512, 512, enc["values"], enc["indices"]).cuda()
    x = torch.randn(2048, 512, generator=gen).half().cuda()
    y = m(x)
    ref = torch.nn.functional.linear(x, m.dense_weight().half().cuda())
    assert torch.allclose(y, ref, rtol=1e-2, atol=1e-2)
    rec = next(iter(m.choices.values()))
    assert rec["choice"] in ("sparse", "dense") and rec["dense_ms"] is not None
    m(x.float())
    assert any(r["choice"] == "dense" and "1:2" in r["why"] for r in m.choices.values())
    twin = copy.deepcopy(m)
    assert torch.allclose(twin(x), y, rtol=1e-2, atol=1e-2)
