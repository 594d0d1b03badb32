"""Block-sparse (BSR) x dense matmul in Triton, in the Linear layout: Y = X @ W^T + b.

W (N, K) is stored as BSR with square blocks of BLOCK x BLOCK (torch.sparse_bsr layout:
`crow_indices` (N/BLOCK + 1), `col_indices` (nnz), `values` (nnz, BLOCK, BLOCK)). One program
computes a BLOCK_M x BLOCK tile of Y: BLOCK_M rows of X (tokens, masked at the end when M is not a
multiple of BLOCK_M) times one block row of W. It loops only over that block row's nonzero blocks
(an empty block row writes the bias, or zeros), each block split into BLOCK/BLOCK_K slices along
the reduction dimension, accumulating in fp32. Strides are arguments, so transposed views need no
copy (bsr_dense_mm uses Y^T = (A @ B)^T with X = B^T).

Triton is imported lazily by the launcher: importing this module never needs it. `CONFIGS` (data)
are the autotune candidates; every tile dimension is >= 16 because tl.dot needs that on a GPU
(the interpreter accepts smaller tiles, so `validate_config` enforces it for both).

Autotuning happens on the first call of each key (`AUTOTUNE_KEY`: token-count bucket, stored blocks per
block row, N, K, block, precision, dtypes). It benchmarks every candidate, which cannot run inside CUDA-graph
capture: `warmup(...)` (or one eager run per token-count bucket) before capturing; a capture that would
autotune raises a one-line CompressError instead.
"""

from __future__ import annotations

import operator
import os
import warnings

import torch

from compress.errors import CompressError

# Every autotune candidate. BLOCK_M: rows of X per program; BLOCK_K: the slice of a block along the
# reduction dimension per tl.dot (must divide the BSR block). A config is used for a BSR block size
# only when BLOCK_K <= block and its shared memory (stages x both tiles) fits, see `configs_for`.
CONFIGS: list[dict] = [
    {"BLOCK_M": 16, "BLOCK_K": 16, "num_stages": 3, "num_warps": 4},
    {"BLOCK_M": 32, "BLOCK_K": 32, "num_stages": 4, "num_warps": 4},
    {"BLOCK_M": 64, "BLOCK_K": 16, "num_stages": 4, "num_warps": 4},
    {"BLOCK_M": 128, "BLOCK_K": 16, "num_stages": 4, "num_warps": 4},
    {"BLOCK_M": 64, "BLOCK_K": 32, "num_stages": 4, "num_warps": 4},
    {"BLOCK_M": 128, "BLOCK_K": 32, "num_stages": 4, "num_warps": 4},
    {"BLOCK_M": 128, "BLOCK_K": 32, "num_stages": 3, "num_warps": 8},
    {"BLOCK_M": 64, "BLOCK_K": 64, "num_stages": 3, "num_warps": 4},
    {"BLOCK_M": 128, "BLOCK_K": 64, "num_stages": 3, "num_warps": 4},
    {"BLOCK_M": 128, "BLOCK_K": 64, "num_stages": 4, "num_warps": 8},
    {"BLOCK_M": 256, "BLOCK_K": 32, "num_stages": 3, "num_warps": 8},
    {"BLOCK_M": 256, "BLOCK_K": 64, "num_stages": 3, "num_warps": 8},
    {"BLOCK_M": 64, "BLOCK_K": 128, "num_stages": 3, "num_warps": 4},
    {"BLOCK_M": 128, "BLOCK_K": 128, "num_stages": 2, "num_warps": 8},
]

MIN_TILE = 16  # tl.dot needs M, N, K >= 16 on NVIDIA GPUs
# What the autotuner retunes on: the token-count bucket, the density bucket (stored blocks per block row,
# next power of two: a config tuned at 50% density is not reused at 5%), the problem and the precision.
AUTOTUNE_KEY = ("M_BUCKET", "NNZ_BUCKET", "N", "K", "BLOCK", "DOT_PRECISION")
SMEM_BYTES = 200 * 1024  # conservative budget (H100: 227 KiB per block) used to prune configs
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------- checks

def check_block(block) -> int:
    """The BSR block size, or CompressError unless it is a power of two >= 16."""
    try:
        value = None if isinstance(block, bool) else operator.index(block)  # ints, numpy ints; not floats
    except TypeError:
        value = None
    if value is None or value < MIN_TILE or value & (value - 1):
        raise CompressError(f"block size {block!r} is not supported: use a power of two >= {MIN_TILE} "
                            f"(16, 32, 64 or 128)")
    return value


def check_dtype(dtype, what: str = "input") -> None:
    if dtype not in DTYPES:
        raise CompressError(f"{what} dtype {dtype} is not supported by the block-sparse kernel: "
                            f"use float16, bfloat16 or float32")


def validate_config(cfg: dict) -> None:
    """Every tile dimension >= 16 and a power of two; stages and warps positive."""
    for key in ("BLOCK_M", "BLOCK_K"):
        v = cfg[key]
        if v < MIN_TILE or v & (v - 1):
            raise ValueError(f"config {cfg}: {key}={v} must be a power of two >= {MIN_TILE}")
    if cfg["num_stages"] < 1 or cfg["num_warps"] not in (1, 2, 4, 8, 16):
        raise ValueError(f"config {cfg}: bad num_stages/num_warps")


def smem_bytes(cfg: dict, block: int, elt: int) -> int:
    """Shared memory of the pipelined X and W tiles."""
    return cfg["num_stages"] * (cfg["BLOCK_M"] * cfg["BLOCK_K"] + cfg["BLOCK_K"] * block) * elt


def configs_for(block: int, m: int, elt: int) -> list[dict]:
    """The candidates usable for this block size, token count and element size (bytes)."""
    cap = max(MIN_TILE, 1 << max(0, (m - 1).bit_length()))  # no BLOCK_M beyond next_pow2(M)
    out = [c for c in CONFIGS if block % c["BLOCK_K"] == 0 and c["BLOCK_K"] <= block
           and c["BLOCK_M"] <= cap and smem_bytes(c, block, elt) <= SMEM_BYTES]
    if not out:  # tiny M with big blocks: the smallest tiles always fit
        out = [min((c for c in CONFIGS if block % c["BLOCK_K"] == 0),
                   key=lambda c: (smem_bytes(c, block, elt), -c["BLOCK_M"]))]
    return out


def check_parts(x, crow, col, values, out_features: int, bias) -> int:
    """Shape/dtype/device checks of the Linear-layout operands (shape-only: works on fake tensors).
    Returns the block size."""
    if values.dim() != 3 or values.shape[1] != values.shape[2]:
        raise CompressError(f"BSR values must have shape (nnz, block, block) with square blocks, "
                            f"got {tuple(values.shape)}")
    block = check_block(int(values.shape[1]))
    check_dtype(x.dtype, "input")
    if values.dtype != x.dtype:
        raise CompressError(f"weight dtype {values.dtype} differs from input dtype {x.dtype}: cast one of them")
    if x.dim() < 1:
        raise CompressError("input must have at least one dimension (..., in_features)")
    k = x.shape[-1]
    if k % block or out_features % block:
        raise CompressError(f"in_features {k} and out_features {out_features} must be multiples of "
                            f"the block size {block}")
    if crow.dim() != 1 or crow.shape[0] != out_features // block + 1:
        raise CompressError(f"crow_indices has shape {tuple(crow.shape)}, expected "
                            f"({out_features // block + 1},) for out_features {out_features} and block {block}")
    if col.dim() != 1 or col.shape[0] != values.shape[0]:
        raise CompressError(f"col_indices has shape {tuple(col.shape)}, expected ({values.shape[0]},)")
    if crow.dtype != col.dtype or crow.dtype not in (torch.int32, torch.int64):
        raise CompressError(f"crow_indices ({crow.dtype}) and col_indices ({col.dtype}) must both be int32 or int64")
    if bias is not None:
        if bias.shape != (out_features,):
            raise CompressError(f"bias has shape {tuple(bias.shape)}, expected ({out_features},)")
        if bias.dtype != x.dtype:
            raise CompressError(f"bias dtype {bias.dtype} differs from input dtype {x.dtype}")
    devs = {t.device for t in (x, crow, col, values) + ((bias,) if bias is not None else ())}
    if len(devs) > 1:
        raise CompressError(f"operands are on different devices {sorted(map(str, devs))}: move them to one")
    return block


def check_bsr(a, what: str = "weight"):
    """A 2-D torch.sparse_bsr tensor with square power-of-two blocks. Returns the block size."""
    if not isinstance(a, torch.Tensor) or a.layout != torch.sparse_bsr:
        layout = a.layout if isinstance(a, torch.Tensor) else type(a).__name__
        raise CompressError(f"{what} must be a torch.sparse_bsr tensor (tensor.to_sparse_bsr(block)), got {layout}")
    if a.dim() != 2 or a.values().dim() != 3:
        raise CompressError(f"{what} must be a 2-D BSR tensor without batch or dense dimensions, "
                            f"got shape {tuple(a.shape)}")
    values = a.values()
    if values.shape[1] != values.shape[2]:
        raise CompressError(f"BSR blocks must be square, got {tuple(values.shape[1:])}")
    return check_block(int(values.shape[1]))


# --------------------------------------------------------------------------- the kernel

def _bsr_linear_kernel(
    x_ptr, crow_ptr, col_ptr, val_ptr, bias_ptr, y_ptr,
    M, M_BUCKET, NNZ_BUCKET, N, K,
    stride_xm, stride_xk, stride_vb, stride_vn, stride_vk, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Decorated lazily (triton.jit / the interpreter) by `_kernel`; `tl` is bound by `_import_triton`.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)  # block row of W = BLOCK output features
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    offs_m64 = offs_m.to(tl.int64)
    offs_n = tl.arange(0, BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    start = tl.load(crow_ptr + pid_n).to(tl.int32)
    end = tl.load(crow_ptr + pid_n + 1).to(tl.int32)
    SPLIT = BLOCK // BLOCK_K  # slices per block (a compile-time constant)
    x_rows = x_ptr + offs_m64[:, None] * stride_xm
    acc = tl.full((BLOCK_M, BLOCK), 0.0, tl.float32)  # tl.full: a builtin (tl.zeros is @jit, see docs)
    # One flat loop over (nonzero block, slice of it along K), so Triton pipelines it.
    for t in range(start * SPLIT, end * SPLIT):
        idx = t // SPLIT
        kk = (t % SPLIT) * BLOCK_K
        kb = tl.load(col_ptr + idx).to(tl.int64)
        k_cols = kb * BLOCK + kk + offs_k
        x = tl.load(x_rows + k_cols[None, :] * stride_xk, mask=m_mask[:, None], other=0.0)
        # W block slice, transposed: (BLOCK_K, BLOCK) with w[k, n] = W[n, k]
        w = tl.load(val_ptr + idx.to(tl.int64) * stride_vb + offs_n[None, :] * stride_vn
                    + (kk + offs_k)[:, None] * stride_vk)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        b = tl.load(bias_ptr + pid_n * BLOCK + offs_n).to(tl.float32)
        acc = acc + b[None, :]
    y = acc.to(y_ptr.dtype.element_ty)
    cols = (pid_n * BLOCK + offs_n).to(tl.int64)
    tl.store(y_ptr + offs_m64[:, None] * stride_ym + cols[None, :] * stride_yn, y, mask=m_mask[:, None])


_KERNELS: dict = {}


def _import_triton():
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:  # pragma: no cover - triton ships with torch on Linux x86-64
        raise CompressError(f"the Triton block-sparse kernel needs the `triton` package ({exc}); "
                            f"on CPU use backend='torch'") from exc
    globals()["tl"] = tl
    return triton


def _kernel(interpret: bool):
    """The kernel: the interpreter's InterpretedFunction (no GPU, any TRITON_INTERPRET setting), or
    triton.jit wrapped in triton.autotune over CONFIGS (pruned per block size and M by `configs_for`)."""
    if interpret in _KERNELS:
        return _KERNELS[interpret]
    triton = _import_triton()
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        k = InterpretedFunction(_bsr_linear_kernel)
    else:
        cands = _triton_configs(triton)
        k = triton.autotune(configs=cands, key=list(AUTOTUNE_KEY),
                            prune_configs_by={"early_config_prune": prune_configs})(_kernel_plain())
    _KERNELS[interpret] = k
    return k


def _triton_configs(triton) -> list:
    return [triton.Config({"BLOCK_M": c["BLOCK_M"], "BLOCK_K": c["BLOCK_K"]}, num_stages=c["num_stages"],
                          num_warps=c["num_warps"]) for c in CONFIGS]


def prune_configs(configs, named_args, **kwargs) -> list:
    """Autotuner hook: the triton.Configs `configs_for` allows for this launch. The block size and
    element size come from the tensors (older Triton passes no kwargs)."""
    block = named_args["val_ptr"].shape[-1]
    keep = configs_for(block, named_args["M"], named_args["x_ptr"].element_size())
    sig = {(d["BLOCK_M"], d["BLOCK_K"], d["num_stages"], d["num_warps"]) for d in keep}
    return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_K"], c.num_stages, c.num_warps) in sig]


def interpret_requested() -> bool:
    """TRITON_INTERPRET=1 in the environment: CPU tensors then run the Triton kernel in the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _dot_precision(dtype) -> str:
    if dtype == torch.float32:  # follow torch: tf32 only where torch's own fp32 matmul would use it
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return "tf32"  # ignored for 16-bit inputs


def launch_linear(x2, crow, col, values, out_features: int, bias, *, interpret: bool | None = None,
                  config: dict | None = None, out=None):
    """Y (M, N) = x2 (M, K) @ W^T + bias with W given by its BSR parts, in the Triton kernel.

    x2 may be any 2-D strided view; `out` (M, N) may be a strided view too (bsr_dense_mm passes a
    transposed one). interpret=None: the interpreter for CPU tensors (and for any tensor under
    TRITON_INTERPRET=1), compiled for CUDA. `config` (one entry shaped like CONFIGS) bypasses
    autotuning; the interpreter uses the first usable config unless given one."""
    block = check_parts(x2, crow, col, values, out_features, bias)
    if x2.dim() != 2:
        raise CompressError(f"expected a 2-D input, got shape {tuple(x2.shape)}")
    m, k = x2.shape
    if out is None:
        out = torch.empty((m, out_features), dtype=x2.dtype, device=x2.device)
    if m == 0 or out_features == 0:
        return out
    if interpret is None:  # like Triton itself: TRITON_INTERPRET=1 interprets CUDA tensors too
        interpret = x2.device.type != "cuda" or interpret_requested()
    if not interpret and x2.device.type != "cuda":
        raise CompressError(f"the compiled Triton kernel runs on CUDA tensors, got {x2.device}")
    if out_features // block == 0:
        return out
    if values.shape[0] == 0 or values.stride(-1) != 1:
        values = values.contiguous()
    # the kernel indexes bias, crow and col with unit stride: a strided view would be read wrongly
    crow, col = crow.contiguous(), col.contiguous()
    bias = bias.contiguous() if bias is not None else None
    precision = _dot_precision(x2.dtype)
    nnz_bucket = density_bucket(values.shape[0], out_features // block)
    bias_arg = bias if bias is not None else values  # never read when HAS_BIAS is False
    args = (x2, crow, col, values, bias_arg, out, m, _bucket(m), nnz_bucket, out_features, k,
            x2.stride(0), x2.stride(1), values.stride(0), values.stride(1), values.stride(2),
            out.stride(0), out.stride(1))
    meta = {"HAS_BIAS": bias is not None, "BLOCK": block, "DOT_PRECISION": precision}
    if interpret:
        cfg = config or configs_for(block, m, x2.element_size())[0]
        _check_config(cfg, block)
        grid = (triton_cdiv(m, cfg["BLOCK_M"]), out_features // block)
        _kernel(True)[grid](*args, **meta, BLOCK_M=cfg["BLOCK_M"], BLOCK_K=cfg["BLOCK_K"])
        return out
    with torch.cuda.device(x2.device):
        if config is not None:
            _check_config(config, block)
            grid = (triton_cdiv(m, config["BLOCK_M"]), out_features // block)
            _kernel_plain()[grid](*args, **meta, BLOCK_M=config["BLOCK_M"], BLOCK_K=config["BLOCK_K"],
                                  num_stages=config["num_stages"], num_warps=config["num_warps"])
        else:
            key = (_bucket(m), nnz_bucket, out_features, k, block, precision, str(x2.dtype))
            check_capture(key)
            _kernel(False)[lambda meta_: (triton_cdiv(m, meta_["BLOCK_M"]), out_features // block)](*args, **meta)
            _TUNED.add(key)
    return out


_TUNED: set = set()  # autotune keys (+ dtype) this process has already tuned


def check_capture(key) -> None:
    """Triton's autotuner times every candidate on the first call of a key, which cannot happen inside
    CUDA-graph capture (it synchronises and allocates): refuse with a one-line error instead of a broken
    capture. Warm up first (`warmup`, or one eager run per token-count bucket)."""
    if key not in _TUNED and torch.cuda.is_current_stream_capturing():
        raise CompressError(f"the block-sparse kernel would autotune during CUDA-graph capture (M bucket {key[0]}, "
                            f"{key[1]} blocks/row, N {key[2]}, K {key[3]}, block {key[4]}, {key[6]}): call "
                            "compress.kernels.bsr_matmul.warmup(...) or run the model once eagerly per token count "
                            "before capturing")


def warmup(crow, col, values, out_features: int, in_features: int, tokens=(1, 16, 128, 1024), bias=None) -> list:
    """Autotune the compiled kernel for these token counts (one launch each on the weight's CUDA device),
    so later calls, including those inside CUDA-graph capture, reuse the configs chosen. Returns them."""
    chosen = []
    for m in tokens:
        x = torch.zeros((m, in_features), dtype=values.dtype, device=values.device)
        launch_linear(x, crow, col, values, out_features, bias)
        chosen.append(best_config(int(values.shape[-1]), m, out_features, in_features, values.dtype,
                                  nnz=int(values.shape[0])))
    if values.is_cuda:
        torch.cuda.synchronize(values.device)
    return chosen


def _check_config(cfg: dict, block: int) -> None:
    validate_config(cfg)
    if block % cfg["BLOCK_K"]:
        raise CompressError(f"config BLOCK_K={cfg['BLOCK_K']} does not divide the block size {block}")


def _kernel_plain():
    """triton.jit without autotuning (an explicit config on the GPU: tests, benchmarks); the autotuner
    wraps this same function, so both share its compiled variants. The token count is not
    specialised on (M == 1, M % 16), so a new M reuses the compiled kernels."""
    if "plain" not in _KERNELS:
        triton = _import_triton()
        _KERNELS["plain"] = triton.jit(_bsr_linear_kernel, do_not_specialize=["M", "M_BUCKET", "NNZ_BUCKET"])
    return _KERNELS["plain"]


def best_config(block: int, m: int, n: int, k: int, dtype, nnz: int | None = None) -> dict | None:
    """The config the autotuner picked for this problem (after a run on CUDA), as a CONFIGS entry.
    `nnz` (stored blocks) selects the density bucket; None: any."""
    kern = _KERNELS.get(False)
    if kern is None:
        return None
    for key, cfg in getattr(kern, "cache", {}).items():
        if (tuple(key[:1] + key[2:5]) == (_bucket(m), n, k, block)
                and (nnz is None or key[1] == density_bucket(nnz, n // block))):
            return {"BLOCK_M": cfg.kwargs["BLOCK_M"], "BLOCK_K": cfg.kwargs["BLOCK_K"],
                    "num_stages": cfg.num_stages, "num_warps": cfg.num_warps}
    return None


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _bucket(m: int) -> int:
    """Autotune key for the token count: the next power of two (retune per bucket, not per M)."""
    return 1 << max(0, (m - 1).bit_length())


def density_bucket(nnz: int, block_rows: int) -> int:
    """Autotune key for the density: stored blocks per block row, rounded up to a power of two (0 when
    there are none). Read from shapes only (no device sync)."""
    if nnz <= 0 or block_rows <= 0:
        return 0
    return _bucket(-(-nnz // block_rows))


# --------------------------------------------------------------------------- public functions

def _torch_mm(crow, col, values, size, dense, cast: bool = True):
    """W @ dense with torch's own BSR matmul (MKL on CPU; fp32/fp64 only there, so 16-bit operands
    are computed in fp32 and, when `cast`, the result cast back)."""
    upcast = values.device.type == "cpu" and values.dtype not in (torch.float32, torch.float64)
    work = values.float() if upcast else values
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
        w = torch.sparse_bsr_tensor(crow, col, work, size=size, check_invariants=False)
        y = w @ dense.to(work.dtype)
    return y.to(dense.dtype) if cast else y


def _torch_linear(x2, crow, col, values, out_features: int, bias):
    """x2 @ W^T + bias via `_torch_mm` (W @ x2^T: much faster on CPU than F.linear(x, w_bsr));
    the bias is added before the one rounding to a 16-bit dtype, as in the kernel."""
    y = _torch_mm(crow, col, values, (out_features, x2.shape[1]), x2.t(), cast=False).t()
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x2.dtype).contiguous()  # row-major like the Triton path and the fake implementation


def use_triton(device: torch.device, backend: str) -> bool:
    if backend not in ("auto", "triton", "torch"):
        raise CompressError(f"backend {backend!r} is not one of auto, triton, torch")
    if backend == "auto":
        return device.type == "cuda" or interpret_requested()
    return backend == "triton"


def linear_parts(x, crow, col, values, out_features: int, bias=None, *, backend: str = "auto"):
    """Y = x @ W^T + bias for x (..., K), W (out_features, K) given by its BSR parts."""
    check_parts(x, crow, col, values, out_features, bias)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if use_triton(x.device, backend):
        y = launch_linear(x2, crow, col, values, out_features, bias)
    else:
        y = _torch_linear(x2, crow, col, values, out_features, bias)
    return y.reshape(*lead, out_features)


def bsr_dense_mm(a, b, *, backend: str = "auto"):
    """a @ b for `a` a (M, K) torch.sparse_bsr tensor with square blocks and `b` a dense (K, N) tensor.

    backend "auto": our Triton kernel on CUDA; on CPU the kernel in Triton's interpreter when
    TRITON_INTERPRET=1, else torch's own BSR matmul. "triton" / "torch" force one."""
    check_bsr(a, "a")
    if not isinstance(b, torch.Tensor) or b.layout != torch.strided or b.dim() != 2:
        raise CompressError("b must be a dense 2-D tensor")
    if a.shape[1] != b.shape[0]:
        raise CompressError(f"shape mismatch: a is {tuple(a.shape)}, b is {tuple(b.shape)} "
                            f"(a.shape[1] must equal b.shape[0])")
    check_dtype(a.dtype, "a")
    if a.dtype != b.dtype:
        raise CompressError(f"a has dtype {a.dtype} and b {b.dtype}: cast one of them")
    if a.device != b.device:
        raise CompressError(f"a is on {a.device} and b on {b.device}: move them to one device")
    m, n = a.shape[0], b.shape[1]
    crow, col, values = a.crow_indices(), a.col_indices(), a.values()
    if use_triton(b.device, backend):
        out = torch.empty((m, n), dtype=b.dtype, device=b.device)
        # (A @ B)^T = B^T @ A^T: the Linear layout with X = B^T (N, K), Y = out^T (N, M)
        launch_linear(b.t(), crow, col, values, m, None, out=out.t())
        return out
    return _torch_mm(crow, col, values, tuple(a.shape), b)
