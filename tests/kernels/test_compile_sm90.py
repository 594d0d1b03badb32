"""The kernel compiles for an H100 (sm_90) without a GPU: Triton's own compiler and ptxas, every
autotune config, fp16 / bf16 / fp32. Catches what the interpreter accepts but a GPU build rejects
(tl.dot tiles < 16, unsupported dtypes in tl.dot, shared memory beyond the budget, pipelining lost)."""

from __future__ import annotations

import pytest

from compress.kernels import bsr_matmul as bm

triton = pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia", reason="Triton without its NVIDIA backend (ptxas) cannot compile for sm_90")

ELT = {"fp16": 2, "bf16": 2, "fp32": 4}


def _compile(block: int, cfg: dict, dtype: str, precision: str = "tf32"):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from triton.runtime.jit import JITFunction

    bm._import_triton()
    fn = JITFunction(bm._bsr_linear_kernel)  # not triton.jit: that returns the interpreter under TRITON_INTERPRET=1
    # what the launcher passes for a contiguous x and values: unit strides are specialised to the
    # constant 1 and pointers / sizes divisible by 16 carry that hint, as Triton's JIT does at launch
    sig = {name: "i32" for name in fn.arg_names}
    sig.update({p: f"*{dtype}" for p in ("x_ptr", "val_ptr", "bias_ptr", "y_ptr")})
    sig.update({"crow_ptr": "*i64", "col_ptr": "*i64"})
    consts = {"stride_xk": 1, "stride_vk": 1, "stride_yn": 1, "HAS_BIAS": True, "BLOCK": block,
              "DOT_PRECISION": precision, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_K": cfg["BLOCK_K"]}
    sig.update({k: "constexpr" for k in consts})
    div16 = ["x_ptr", "crow_ptr", "col_ptr", "val_ptr", "bias_ptr", "y_ptr", "N", "K", "stride_xm", "stride_vb",
             "stride_vn", "stride_ym"]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in div16}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})


def _cases():
    """Every config once (fp16, on the largest block <= 128 it fits), plus bf16 and fp32 (ieee) cases."""
    out = []
    for i, cfg in enumerate(bm.CONFIGS):
        block = max(b for b in (16, 32, 64, 128) if b % cfg["BLOCK_K"] == 0 and b >= cfg["BLOCK_K"]
                    and bm.smem_bytes(cfg, b, 2) <= bm.SMEM_BYTES)
        out.append(pytest.param(block, i, "fp16", "tf32", id=f"cfg{i}-b{block}-fp16"))
    def index(bm_, bk):
        return next(i for i, c in enumerate(bm.CONFIGS) if (c["BLOCK_M"], c["BLOCK_K"]) == (bm_, bk))

    out.append(pytest.param(64, index(128, 64), "bf16", "tf32", id="b64-bf16"))
    out.append(pytest.param(32, index(64, 32), "fp32", "ieee", id="b32-fp32-ieee"))
    out.append(pytest.param(128, index(64, 128), "fp32", "tf32", id="b128-fp32-tf32"))
    return out


@pytest.mark.parametrize("block,index,dtype,precision", _cases())
def test_compiles_for_sm90(block, index, dtype, precision):
    cfg = bm.CONFIGS[index]
    k = _compile(block, cfg, dtype, precision)
    assert k.asm["cubin"], "no cubin"
    assert k.metadata.shared <= 227 * 1024
    ttgir = k.asm["ttgir"]
    if cfg["num_stages"] > 1:  # the loop over nonzero blocks is software-pipelined (async copies)
        assert "async_copy_global_to_local" in ttgir
    if dtype != "fp32" or precision == "tf32":  # tensor cores: wgmma on sm_90 (mma.sync for 16-row tiles)
        assert "warp_group_dot" in ttgir or "#ttg.nvidia_mma" in ttgir
        if cfg["BLOCK_M"] >= 64:
            assert "warp_group_dot" in ttgir
    else:  # fp32 with ieee precision: exact fp32 FMA, like torch's default fp32 matmul
        assert "nvidia_mma" not in ttgir
