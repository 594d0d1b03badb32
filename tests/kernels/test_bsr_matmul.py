"""The Triton block-sparse kernel in Triton's interpreter (no GPU) against a dense float64 reference.

backend="triton" on CPU tensors runs the kernel through triton.runtime.interpreter whatever
TRITON_INTERPRET says when triton was imported (see docs/kernels.md); the last test also runs
with TRITON_INTERPRET=1 set before triton's import, in a subprocess. bf16 is GPU-only
(tests/gpu): the interpreter's tl.dot is numpy's, which has no bfloat16.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]

from compress.errors import CompressError
from compress.kernels import bsr_dense_mm, bsr_linear, check_block
from compress.kernels import bsr_matmul as bm
from tests.kernels._bsr_cases import TOL, bsr_from_mask, max_rel_err

SETTINGS = settings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _run(bsr, dense, x, bias, config=None):
    """The kernel (interpreter) on (x, bsr, bias); returns (y, float64 reference)."""
    y = bm.launch_linear(x, bsr.crow_indices(), bsr.col_indices(), bsr.values(), bsr.shape[0], bias,
                         interpret=True, config=config)
    ref = x.double() @ dense.T
    if bias is not None:
        ref = ref + bias.double()
    return y, ref


# ------------------------------------------------------------------ configs as data

def test_every_config_tile_is_at_least_16():
    assert bm.CONFIGS
    for cfg in bm.CONFIGS:
        assert cfg["BLOCK_M"] >= 16 and cfg["BLOCK_K"] >= 16, cfg
        bm.validate_config(cfg)
    for block in (16, 32, 64, 128):  # the N tile is the block itself
        check_block(block)
        assert block >= 16


def test_validate_config_rejects_small_tiles():
    with pytest.raises(ValueError, match="BLOCK_M=8"):
        bm.validate_config({"BLOCK_M": 8, "BLOCK_K": 16, "num_stages": 2, "num_warps": 4})
    with pytest.raises(ValueError, match="BLOCK_K=24"):
        bm.validate_config({"BLOCK_M": 16, "BLOCK_K": 24, "num_stages": 2, "num_warps": 4})


@pytest.mark.parametrize("block", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("elt", [2, 4])
@pytest.mark.parametrize("m", [1, 17, 4096])
def test_configs_for_every_block(block, elt, m):
    cfgs = bm.configs_for(block, m, elt)
    assert cfgs
    for c in cfgs:
        assert block % c["BLOCK_K"] == 0 and c["BLOCK_M"] >= 16 and c["BLOCK_K"] >= 16
    if block <= 128:
        assert all(bm.smem_bytes(c, block, elt) <= bm.SMEM_BYTES for c in cfgs)


def test_autotuner_builds_and_prunes_per_launch():
    """The CUDA path's autotuner (built without a GPU) and its prune hook on a launch's arguments."""
    kern = bm._kernel(False)
    assert len(kern.configs) == len(bm.CONFIGS)
    for block, m, dtype in [(16, 1, torch.float16), (64, 37, torch.float16), (128, 4096, torch.float32)]:
        named = {"val_ptr": torch.empty(3, block, block, dtype=dtype), "x_ptr": torch.empty(1, dtype=dtype), "M": m}
        kept = bm.prune_configs(kern.configs, named, HAS_BIAS=False, BLOCK=block, DOT_PRECISION="ieee")
        want = bm.configs_for(block, m, torch.finfo(dtype).bits // 8)
        assert kept and len(kept) == len(want)
        assert all(block % c.kwargs["BLOCK_K"] == 0 for c in kept)


# ------------------------------------------------------------------ correctness (property-based)

@st.composite
def problems(draw):
    block = draw(st.sampled_from([16, 32]))
    nbr = draw(st.integers(1, 4))
    nbc = draw(st.integers(1, 4))
    kinds = draw(st.lists(st.sampled_from(["empty", "dense", "random"]), min_size=nbr, max_size=nbr))
    rand = draw(st.lists(st.booleans(), min_size=nbr * nbc, max_size=nbr * nbc))
    mask = torch.tensor(rand, dtype=torch.bool).view(nbr, nbc)
    for r, kind in enumerate(kinds):
        if kind != "random":
            mask[r] = kind == "dense"
    m = draw(st.integers(1, 70))
    dtype = draw(st.sampled_from([torch.float32, torch.float16]))
    has_bias = draw(st.booleans())
    cfgs = bm.configs_for(block, m, torch.finfo(dtype).bits // 8)
    cfg = draw(st.sampled_from(cfgs))
    seed = draw(st.integers(0, 2**16))
    return block, mask, m, dtype, has_bias, cfg, seed


@SETTINGS
@given(problems())
def test_kernel_matches_float64_reference(problem):
    block, mask, m, dtype, has_bias, cfg, seed = problem
    note(f"block={block} mask={mask.int().tolist()} M={m} {dtype} bias={has_bias} cfg={cfg}")
    gen = torch.Generator().manual_seed(seed)
    bsr, dense = bsr_from_mask(mask, block, dtype, gen)
    x = torch.randn(m, mask.shape[1] * block, generator=gen).to(dtype)
    bias = torch.randn(mask.shape[0] * block, generator=gen).to(dtype) if has_bias else None
    y, ref = _run(bsr, dense, x, bias, cfg)
    assert y.dtype == dtype and y.shape == (m, mask.shape[0] * block)
    assert max_rel_err(y, ref) <= TOL[dtype]


@pytest.mark.parametrize("block", [64, 128])
def test_large_blocks_empty_and_dense_rows_odd_m(block):
    gen = torch.Generator().manual_seed(block)
    mask = torch.tensor([[False, False], [True, True], [False, True]])
    bsr, dense = bsr_from_mask(mask, block, torch.float32, gen)
    x = torch.randn(23, 2 * block, generator=gen)
    bias = torch.randn(3 * block, generator=gen)
    cfg = next(c for c in bm.configs_for(block, 23, 4) if c["BLOCK_K"] < block)  # several K slices
    y, ref = _run(bsr, dense, x, bias, cfg)
    assert max_rel_err(y, ref) <= TOL[torch.float32]
    assert torch.equal(y[:, :block], bias[:block].expand(23, block))  # empty block row -> bias only


def test_no_stored_blocks_gives_zeros_and_explicit_zero_blocks_are_fine():
    gen = torch.Generator().manual_seed(1)
    bsr, _ = bsr_from_mask(torch.zeros(2, 3, dtype=torch.bool), 16, torch.float32, gen)
    y = bsr_linear(torch.randn(5, 48), bsr)  # torch backend
    yt = bm.launch_linear(torch.randn(5, 48), bsr.crow_indices(), bsr.col_indices(), bsr.values(), 32, None,
                          interpret=True)
    assert torch.equal(y, torch.zeros(5, 32)) and torch.equal(yt, torch.zeros(5, 32))
    # a stored block of zeros (allowed in BSR) contributes nothing
    bsr, dense = bsr_from_mask(torch.ones(2, 2, dtype=torch.bool), 16, torch.float32, gen)
    bsr.values()[1].zero_()
    dense[0:16, 16:32] = 0
    y, ref = _run(bsr, dense, torch.randn(9, 32, generator=gen), None)
    assert max_rel_err(y, ref) <= TOL[torch.float32]


def test_every_tile_shape_in_configs():
    """Each distinct (BLOCK_M, BLOCK_K) of CONFIGS once, on a block it divides."""
    gen = torch.Generator().manual_seed(2)
    tiles = sorted({(c["BLOCK_M"], c["BLOCK_K"]) for c in bm.CONFIGS})
    for bm_, bk in tiles:
        block = max(bk, 32)
        mask = torch.tensor([[True, False], [True, True]])
        bsr, dense = bsr_from_mask(mask, block, torch.float16, gen)
        x = torch.randn(bm_ + 3, 2 * block, generator=gen).half()  # one full and one masked M tile
        cfg = {"BLOCK_M": bm_, "BLOCK_K": bk, "num_stages": 2, "num_warps": 4}
        y, ref = _run(bsr, dense, x, None, cfg)
        assert max_rel_err(y, ref) <= TOL[torch.float16], cfg


def test_strided_input_needs_no_copy():
    gen = torch.Generator().manual_seed(3)
    bsr, dense = bsr_from_mask(torch.tensor([[True, False, True]]), 16, torch.float32, gen)
    x = torch.randn(48, 40, generator=gen).t()  # (40, 48), column-major
    y, ref = _run(bsr, dense, x, None)
    assert max_rel_err(y, ref) <= TOL[torch.float32]


# ------------------------------------------------------------------ public functions

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bsr_dense_mm_triton_and_torch_agree_with_reference(dtype):
    gen = torch.Generator().manual_seed(4)
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True], [False, True, False]])
    a, dense = bsr_from_mask(mask, 16, dtype, gen)
    b = torch.randn(48, 37, generator=gen).to(dtype)
    ref = dense @ b.double()
    for backend in ("triton", "torch"):
        out = bsr_dense_mm(a, b, backend=backend)
        assert out.shape == (64, 37) and out.dtype == dtype and out.layout == torch.strided
        assert max_rel_err(out, ref) <= TOL[dtype], backend
    # b given as a transposed view
    bt = torch.randn(37, 48, generator=gen).to(dtype)
    out = bsr_dense_mm(a, bt.t(), backend="triton")
    assert max_rel_err(out, dense @ bt.t().double()) <= TOL[dtype]


def test_auto_backend_follows_triton_interpret(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    a, dense = bsr_from_mask(torch.tensor([[True, True]]), 16, torch.float32, gen)
    b = torch.randn(32, 5, generator=gen)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not bm.use_triton(torch.device("cpu"), "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert bm.use_triton(torch.device("cpu"), "auto")
    assert max_rel_err(bsr_dense_mm(a, b), dense @ b.double()) <= TOL[torch.float32]


def test_interpreter_with_triton_interpret_set_before_import():
    """TRITON_INTERPRET=1 before triton's import turns triton.language's own @jit helpers into
    interpreted functions; the kernel must work in that process too (what `TRITON_INTERPRET=1 pytest` does)."""
    code = textwrap.dedent("""
        import torch
        from compress.kernels import bsr_dense_mm
        torch.manual_seed(0)
        w = torch.randn(32, 48)
        w[:16] = 0
        b = torch.randn(48, 19)
        out = bsr_dense_mm(w.to_sparse_bsr(16), b)
        from compress.kernels import bsr_matmul
        assert True in bsr_matmul._KERNELS, "auto backend did not use the interpreter"
        err = (out.double() - w.double() @ b.double()).abs().max().item()
        assert err < 1e-4, err
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                       cwd=str(REPO))
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]


# ------------------------------------------------------------------ bad input

def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("block", [0, 8, 24, 48, 100, -16, 16.0, True, "32"])
def test_check_block_rejects(block):
    with pytest.raises(CompressError) as e:
        check_block(block)
    assert "power of two" in _one_line(e)


def test_bad_inputs_raise_one_line_compress_errors():
    w = torch.randn(48, 48)
    with pytest.raises(CompressError) as e:  # non-power-of-two block
        bsr_dense_mm(w.to_sparse_bsr(24), torch.randn(48, 4))
    assert "24" in _one_line(e)
    a = torch.randn(32, 64).to_sparse_bsr(16)
    with pytest.raises(CompressError) as e:  # shape mismatch
        bsr_dense_mm(a, torch.randn(32, 4))
    assert "shape" in _one_line(e)
    with pytest.raises(CompressError) as e:  # unsupported dtype
        bsr_dense_mm(a.double(), torch.randn(64, 4, dtype=torch.float64), backend="triton")
    assert "float64" in _one_line(e)
    with pytest.raises(CompressError) as e:  # dtypes differ
        bsr_dense_mm(a, torch.randn(64, 4).half())
    _one_line(e)
    with pytest.raises(CompressError) as e:  # not BSR
        bsr_dense_mm(torch.randn(32, 64), torch.randn(64, 4))
    assert "sparse_bsr" in _one_line(e)
    with pytest.raises(CompressError) as e:  # non-square blocks
        bsr_dense_mm(torch.randn(32, 64).to_sparse_bsr((16, 32)), torch.randn(64, 4))
    assert "square" in _one_line(e)
    with pytest.raises(CompressError) as e:  # Linear layout: in_features mismatch
        bsr_linear(torch.randn(3, 32), a)
    assert "in_features" in _one_line(e)
    with pytest.raises(CompressError) as e:  # bias shape
        bsr_linear(torch.randn(3, 64), a, torch.randn(31))
    assert "bias" in _one_line(e)
    with pytest.raises(CompressError) as e:
        bsr_dense_mm(a, torch.randn(64, 4), backend="cuda")
    _one_line(e)
    with pytest.raises(CompressError) as e:  # compiled kernel asked for CPU tensors
        bm.launch_linear(torch.randn(2, 64), a.crow_indices(), a.col_indices(), a.values(), 32, None,
                         interpret=False)
    assert "CUDA" in _one_line(e)
