"""The compiled Triton block-sparse kernel on a CUDA GPU: fp16 / bf16 / fp32 against a float64
reference, every block size and autotune config, odd token counts, empty and dense block rows,
the torch.sparse_bsr entry point and the custom op under torch.export. Skipped (reason shown by `pytest -ra`) without CUDA.

Run on a GPU machine: `python -m pytest -q -ra tests/gpu` (a subset; COMPRESS_GPU_FULL=1 for every case), or
everything: `python bench/gpu_suite.py` (`--full`).
"""

from __future__ import annotations

import os

import pytest
import torch

from compress.kernels import bsr_dense_mm, bsr_linear, bsr_linear_parts
from compress.kernels import bsr_matmul as bm
from tests.kernels._bsr_cases import TOL, bsr_from_mask, max_rel_err

# one skip line for the whole module (pytest -ra prints the reason)
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU kernel tests need one (CPU coverage: tests/kernels, Triton's interpreter)",
                allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("TRITON_INTERPRET is set: these tests exercise the compiled kernel", allow_module_level=True)

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# bench/gpu_suite.py's default run (8 minutes in all) takes a subset; --full sets COMPRESS_GPU_FULL=1 for every case
FULL = os.environ.get("COMPRESS_GPU_FULL", "0") == "1"
AUTOTUNED = ([(b, m, d) for d in DTYPES for b in (16, 32, 64, 128) for m in (1, 37, 512)] if FULL else
             [(b, 37, torch.float16) for b in (16, 32, 64, 128)] + [(64, 512, torch.bfloat16), (32, 1, torch.float32)])
EVERY_CONFIG = [(i, d) for d in (torch.float16, torch.float32) for i in range(len(bm.CONFIGS))
                if FULL or d == torch.float16]


def _mask(nbr: int, nbc: int, density: float, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(nbr, nbc, generator=gen) < density
    mask[0] = False  # an empty block row
    if nbr > 1:
        mask[1] = True  # a fully dense one
    return mask


def _problem(block, nbr, nbc, m, dtype, density=0.4, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    bsr, dense = bsr_from_mask(_mask(nbr, nbc, density, gen), block, dtype, gen, device="cuda")
    x = torch.randn(m, nbc * block, generator=gen).to(dtype)
    b = torch.randn(nbr * block, generator=gen).to(dtype) if bias else None
    ref = x.double() @ dense.T + (b.double() if b is not None else 0)
    return bsr, x.cuda(), (b.cuda() if b is not None else None), ref


@pytest.mark.parametrize("block,m,dtype", AUTOTUNED, ids=str)
def test_autotuned_kernel_matches_reference(block, m, dtype):
    bsr, x, b, ref = _problem(block, 6, 5, m, dtype, seed=block + m)
    y = bm.launch_linear(x, bsr.crow_indices(), bsr.col_indices(), bsr.values(), bsr.shape[0], b)
    torch.cuda.synchronize()
    assert y.dtype == dtype and y.device.type == "cuda"
    assert max_rel_err(y, ref) <= TOL[dtype]
    assert torch.equal(y[:, :block].cpu(), b[:block].expand(m, block).cpu())  # empty block row -> bias


@pytest.mark.parametrize("index,dtype", EVERY_CONFIG, ids=str)
def test_every_config_compiles_and_is_correct(index, dtype):
    cfg = bm.CONFIGS[index]
    fits = [b for b in (16, 32, 64, 128)
            if b % cfg["BLOCK_K"] == 0 and bm.smem_bytes(cfg, b, torch.finfo(dtype).bits // 8) <= bm.SMEM_BYTES]
    for block in fits if FULL else fits[-1:]:  # default run: the largest block each config fits
        bsr, x, b, ref = _problem(block, 3, 4, 2 * cfg["BLOCK_M"] + 5, dtype, seed=index)
        y = bm.launch_linear(x, bsr.crow_indices(), bsr.col_indices(), bsr.values(), bsr.shape[0], b, config=cfg)
        assert max_rel_err(y, ref) <= TOL[dtype], (cfg, block)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bsr_dense_mm_matches_reference(dtype):
    gen = torch.Generator().manual_seed(7)
    a, dense = bsr_from_mask(_mask(8, 6, 0.5, gen), 32, dtype, gen, device="cuda")
    b = torch.randn(192, 77, generator=gen).to(dtype)
    out = bsr_dense_mm(a, b.cuda())
    ref = dense @ b.double()
    assert out.shape == (256, 77) and out.dtype == dtype
    assert max_rel_err(out, ref) <= TOL[dtype]


def test_linear_layout_3d_input_and_int32_indices():
    gen = torch.Generator().manual_seed(8)
    bsr, dense = bsr_from_mask(_mask(4, 4, 0.5, gen), 64, torch.float16, gen, device="cuda")
    x = torch.randn(2, 9, 256, generator=gen).half().cuda()
    y = bsr_linear(x, bsr)
    assert y.shape == (2, 9, 256)
    assert max_rel_err(y, x.double().cpu() @ dense.T) <= TOL[torch.float16]
    y32 = bsr_linear_parts(x, bsr.crow_indices().int(), bsr.col_indices().int(), bsr.values(), 256)
    assert max_rel_err(y32, x.double().cpu() @ dense.T) <= TOL[torch.float16]  # may autotune to another config


def test_large_llm_shape_fp16():
    """4096 x 11008 at 90% block sparsity, 2048 tokens: a shape the benchmark times."""
    gen = torch.Generator().manual_seed(9)
    bsr, dense = bsr_from_mask(torch.rand(4096 // 64, 11008 // 64, generator=gen) < 0.1, 64, torch.float16,
                               gen, device="cuda")
    x = torch.randn(2048, 11008, generator=gen).half().cuda()
    y = bsr_linear(x, bsr)
    ref = (x.float() @ dense.float().cuda().T)  # fp32 on the GPU (float64 would take long)
    err = float((y.float() - ref).abs().max()) / (float(ref.abs().max()) + 1)
    assert err <= TOL[torch.float16]


def test_export_on_cuda():
    gen = torch.Generator().manual_seed(10)
    bsr, dense = bsr_from_mask(_mask(4, 3, 0.5, gen), 16, torch.float16, gen, device="cuda")

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("crow", bsr.crow_indices().clone())
            self.register_buffer("col", bsr.col_indices().clone())
            self.register_buffer("values", bsr.values().clone())

        def forward(self, x):
            return bsr_linear_parts(x, self.crow, self.col, self.values, 64)

    x = torch.randn(5, 48, generator=gen).half().cuda()
    ep = torch.export.export(M(), (x,))
    assert any(n.target == torch.ops.compress.bsr_linear.default for n in ep.graph.nodes)
    assert max_rel_err(ep.module()(x), x.double().cpu() @ dense.T) <= TOL[torch.float16]
