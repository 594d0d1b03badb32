"""Modules that replace nn.Linear and 1x1 nn.Conv2d after lowering, each holding its weight once,
in its sparse format (the state_dict holds only the sparse tensors and the bias).

Backends, picked per call from the input's device:
- CUDA: `Sparse24Linear` -> torch.sparse.to_sparse_semi_structured (cuSPARSELt/CUTLASS);
  `BlockSparseLinear` -> torch.ops.compress.bsr_linear (compress.kernels.bsr_linear_parts: our
  Triton kernel, imported lazily; a custom op, so torch.export traces through it).
- CPU: `BlockSparseLinear` runs torch's native BSR matmul (backend "sparse", through the same
  custom op's CPU implementation) or a dense matmul
  of the decoded weight (backend "dense"); `Sparse24Linear` always runs dense (torch has no
  CPU 2:4 kernel). `set_backends` chooses from a measured profile or a preference; without
  either, CPU runs dense. The dense copy is a non-persistent buffer (never saved).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError, first_line
from compress.lower import formats


class _SparseBase(nn.Module):
    """Shared: Linear or 1x1-conv input handling, bias, the dense cache and backend choice."""

    format: str = "dense"

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None,
                 conv_stride: tuple[int, int] | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.conv_stride = None if conv_stride is None else tuple(int(s) for s in conv_stride)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.backend = "auto"            # auto (CUDA: sparse, CPU: dense) | dense | sparse

    # subclasses: dense_weight() -> (N, K) decoded weight; _sparse_linear(x2) -> x2 @ W^T (no bias)
    def refresh(self) -> None:
        """Rebuild the dense cache from the sparse tensors (after loading a state_dict)."""
        self.register_buffer("weight_dense", self.dense_weight(), persistent=False)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh()                                   # the dense cache follows the loaded sparse tensors

    def forward(self, x):
        if self.conv_stride is not None:                  # 1x1 conv, padding 0: NCHW -> rows of C
            sh, sw = self.conv_stride
            if (sh, sw) != (1, 1):
                x = x[:, :, ::sh, ::sw]
            if self._use_sparse(x):
                y = self._linear(x.permute(0, 2, 3, 1))
                return y.permute(0, 3, 1, 2)
            w = self.weight_dense.to(x.dtype)
            return F.conv2d(x, w[:, :, None, None], self.bias)
        return self._linear(x)

    def _use_sparse(self, x) -> bool:
        if x.is_cuda:
            return self.backend != "dense"
        return self.backend == "sparse" and self.cpu_sparse

    cpu_sparse = False

    def _linear(self, x):
        if not self._use_sparse(x):
            return F.linear(x, self.weight_dense.to(x.dtype), self.bias)
        lead = x.shape[:-1]
        y = self._sparse_linear(x.reshape(-1, x.shape[-1]))
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        conv = f", conv1x1 stride={self.conv_stride}" if self.conv_stride is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, backend={self.backend}{conv}"


SEMI_DTYPES = (torch.float16, torch.bfloat16, torch.int8)  # torch's 2:4 kernels; fp32 semi-structured is 1:2


def _rows_bucket(rows: int) -> int:
    return 1 << max(0, (max(rows, 1) - 1).bit_length())


def _capturing_or_compiling() -> bool:
    """Inside torch.compile / torch.export tracing or CUDA-graph capture: no one-off timing there."""
    comp = torch.compiler
    if comp.is_compiling() or getattr(comp, "is_exporting", lambda: False)():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _cuda_ms(fn, reps: int = 20) -> float:
    import statistics

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def measure_24(mod: "Sparse24Linear", device, dtype, rows: int) -> tuple[float | None, float | None]:
    """One-off timing of the layer's matmul at `rows` tokens on `device`: (semi-structured ms or None when it
    cannot run, dense ms or None when dense cannot run in this dtype)."""
    x = torch.randn(rows, mod.in_features, device=device).to(dtype)
    w, semi = mod._weight(device, dtype), mod._semi_weight(device, dtype)
    out = []
    for fn in ((lambda: F.linear(x, semi)) if semi is not None else None, lambda: F.linear(x, w)):
        try:
            out.append(None if fn is None else _cuda_ms(fn))
        except (RuntimeError, ValueError, NotImplementedError, TypeError):
            out.append(None)
    return out[0], out[1]


class Sparse24Linear(_SparseBase):
    """2:4 weight along the input dimension: kept values (N, K/2) and positions 0..3 (uint8).

    On CUDA the semi-structured path (cuSPARSELt / CUTLASS) is taken per layer only where it is faster, since
    2:4 is often slower than dense (H100, small token counts): backend "sparse" (set from a measured profile
    by `set_backends`), or for "auto" a one-off timing per (device, dtype, token-count bucket). Each choice
    and why is recorded in `choices`. Only fp16/bf16/int8 inputs can take it (fp32 semi-structured is 1:2,
    not 2:4, and cuSPARSELt has no fp32): others run dense. The converted weights are a cache that
    state_dict, copy.deepcopy and pickle leave out."""

    format = "2:4"

    def __init__(self, in_features: int, out_features: int, values: torch.Tensor, indices: torch.Tensor,
                 bias: torch.Tensor | None = None, conv_stride: tuple[int, int] | None = None) -> None:
        super().__init__(in_features, out_features, bias, conv_stride)
        formats.check_24(f"Sparse24Linear({in_features}->{out_features})", in_features)
        self.register_buffer("values", values.detach().clone().contiguous())
        self.register_buffer("indices", indices.detach().to(torch.uint8).clone().contiguous())
        self.choices: dict[str, dict] = {}
        self.refresh()

    def dense_weight(self) -> torch.Tensor:
        return formats.decode_24(self.values.cpu(), self.indices.cpu(), (self.out_features, self.in_features)).to(self.values.device)

    def refresh(self) -> None:
        super().refresh()
        self._cast: dict = {}    # (device, dtype) -> the dense weight in that dtype
        self._semi: dict = {}    # (device, dtype) -> its semi-structured form, or None where torch refuses it

    def __getstate__(self):
        state = dict(super().__getstate__())  # a SparseSemiStructuredTensor breaks copy.deepcopy: drop the caches
        state["_cast"], state["_semi"] = {}, {}
        return state

    def _weight(self, device, dtype) -> torch.Tensor:
        key = (torch.device(device), dtype)
        if key not in self._cast:
            self._cast[key] = self.weight_dense.to(device=key[0], dtype=dtype)
        return self._cast[key]

    def _semi_weight(self, device, dtype):
        key = (torch.device(device), dtype)
        if key not in self._semi:
            from torch.sparse import to_sparse_semi_structured
            try:
                self._semi[key] = to_sparse_semi_structured(self._weight(*key))
            except (RuntimeError, ValueError, NotImplementedError, TypeError) as e:
                warnings.warn(f"Sparse24Linear({self.in_features}->{self.out_features}): semi-structured "
                              f"path unavailable ({first_line(e, 120, strip=False)}); running dense")
                self._semi[key] = None
        return self._semi[key]

    def choose(self, device, dtype, rows: int) -> str:
        """'sparse' or 'dense' for inputs on `device` in `dtype` with `rows` tokens; recorded in `choices`."""
        key = f"{self.backend} {device} {str(dtype).replace('torch.', '')} rows<={_rows_bucket(rows)}"
        if key in self.choices:
            return self.choices[key]["choice"]
        if dtype not in SEMI_DTYPES:
            rec = {"choice": "dense", "why": f"{dtype} input: 2:4 semi-structured takes float16, bfloat16 or int8 "
                                             "(fp32 semi-structured is 1:2, and cuSPARSELt has no fp32)"}
        elif self.backend == "sparse":
            rec = {"choice": "sparse", "why": "backend 'sparse' (a measured profile or a preference)"}
        elif _capturing_or_compiling():
            return "dense"  # no timing while tracing or capturing; decided on the next eager call
        else:
            sparse_ms, dense_ms = measure_24(self, device, dtype, _rows_bucket(rows))
            fast = sparse_ms is not None and (dense_ms is None or sparse_ms < dense_ms)
            rec = {"choice": "sparse" if fast else "dense", "sparse_ms": sparse_ms, "dense_ms": dense_ms,
                   "why": "timed once for this shape" if sparse_ms is not None else "semi-structured path unavailable"}
        self.choices[key] = rec
        return rec["choice"]

    def _use_sparse(self, x) -> bool:
        if not x.is_cuda or self.backend == "dense":
            return False
        return self.choose(x.device, x.dtype, x.numel() // self.in_features) == "sparse"

    def _linear(self, x):
        if x.is_cuda and not self._use_sparse(x):  # dense on CUDA: the weight cast once, not per call
            return F.linear(x, self._weight(x.device, x.dtype), self.bias)
        return super()._linear(x)

    def _sparse_linear(self, x2):
        """cuSPARSELt/CUTLASS via torch's semi-structured tensor. Shapes or dtypes it refuses
        (e.g. too small a layer for its tiles) run dense, once noted with a warning."""
        semi = self._semi_weight(x2.device, x2.dtype)
        if semi is not None:
            try:
                return F.linear(x2, semi)
            except (RuntimeError, ValueError, NotImplementedError) as e:
                warnings.warn(f"Sparse24Linear: semi-structured matmul failed ({first_line(e, 120, strip=False)}); "
                              "running dense")
                self._semi[(x2.device, x2.dtype)] = None
        return F.linear(x2, self._weight(x2.device, x2.dtype))


class BlockSparseLinear(_SparseBase):
    """Block-sparse weight (BSR of the zero-padded (N, K) matrix): crow/col indices and (nnzb, B, B) blocks."""

    cpu_sparse = True

    def __init__(self, in_features: int, out_features: int, block: int, crow_indices: torch.Tensor,
                 col_indices: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None = None,
                 conv_stride: tuple[int, int] | None = None) -> None:
        super().__init__(in_features, out_features, bias, conv_stride)
        self.block = formats.check_block(block)
        self.format = f"block:{block}"
        self.padded = formats.padded_shape((out_features, in_features), block)
        self.register_buffer("crow_indices", crow_indices.detach().to(torch.int64).clone())
        self.register_buffer("col_indices", col_indices.detach().to(torch.int64).clone())
        self.register_buffer("values", values.detach().clone().contiguous())
        self.refresh()

    def dense_weight(self) -> torch.Tensor:
        return formats.decode_bsr(self.crow_indices.cpu(), self.col_indices.cpu(), self.values.cpu(),
                                  (self.out_features, self.in_features), self.block).to(self.values.device)

    def weight_bsr(self, dtype=None) -> torch.Tensor:
        v = self.values if dtype is None else self.values.to(dtype)
        return formats.bsr_tensor(self.crow_indices, self.col_indices, v, self.padded)

    @property
    def density(self) -> float:
        return self.col_indices.numel() * self.block ** 2 / (self.padded[0] * self.padded[1])

    def _sparse_linear(self, x2):
        pk = self.padded[1] - self.in_features
        if pk:
            x2 = F.pad(x2, (0, pk))
        values = self.values.to(x2.dtype)
        from compress import kernels    # torch.ops.compress.bsr_linear: Triton on CUDA, torch BSR on CPU

        y = kernels.bsr_linear_parts(x2, self.crow_indices, self.col_indices, values, self.padded[0])
        return y[:, :self.out_features]


# ------------------------------------------------------------------ building and choosing backends

def _conv_stride(m: nn.Module):
    return tuple(m.stride) if isinstance(m, nn.Conv2d) else None


def replaceable(m: nn.Module) -> bool:
    """nn.Linear and 1x1 nn.Conv2d (groups 1, padding 0, dilation irrelevant)."""
    return isinstance(m, nn.Linear) or (formats.lowerable(m) and formats.is_1x1(m))


def sparse_module(m: nn.Module, fmt: str, tensors: dict[str, torch.Tensor], block: int | None = None) -> nn.Module:
    """The replacement for Linear / 1x1 Conv `m` holding `tensors` (formats.encode's output)."""
    n = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
    k = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
    bias = None if m.bias is None else m.bias.detach()
    if fmt == "2:4":
        return Sparse24Linear(k, n, tensors["values"], tensors["indices"], bias, _conv_stride(m))
    if fmt.startswith("block:"):
        return BlockSparseLinear(k, n, block, tensors["crow_indices"], tensors["col_indices"], tensors["values"],
                                 bias, _conv_stride(m))
    raise CompressError(f"no sparse module for format {fmt!r}")


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


Profile = dict | Callable[[str, nn.Module], dict]


def choose_backend(name: str, mod: nn.Module, profile: Profile | None = None, prefer=None) -> str:
    """'dense', 'sparse' or 'auto' for one module. `profile`: {layer: {format_or_'sparse': ms, 'dense': ms}}
    or a callable (name, module) -> such a dict; the faster measured wins. Else `prefer`:
    'dense' | 'sparse' | {layer: 'dense'|'sparse'}. Else 'auto': sparse on CUDA, dense on CPU."""
    times = None
    if callable(profile):
        times = profile(name, mod)
    elif isinstance(profile, dict):
        times = profile.get(name)
    if times:
        sparse_ms = times.get(mod.format, times.get("sparse"))
        dense_ms = times.get("dense")
        if sparse_ms is not None and dense_ms is not None:
            return "sparse" if sparse_ms < dense_ms else "dense"
    p = prefer.get(name) if isinstance(prefer, dict) else prefer
    if p not in (None, "auto", "dense", "sparse"):
        raise CompressError(f"backend preference {p!r} for {name}: use dense or sparse")
    return p or "auto"


def set_backends(model: nn.Module, profile: Profile | None = None, prefer=None) -> dict[str, str]:
    """Set every sparse module's backend; returns {name: backend}."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _SparseBase):
            m.backend = choose_backend(name, m, profile, prefer)
            out[name] = m.backend
    return out


def densify(model: nn.Module) -> nn.Module:
    """Replace every sparse module in place by nn.Linear / 1x1 nn.Conv2d with the zeros in place
    (what model.onnx holds)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, _SparseBase):
            w = m.dense_weight()
            if m.conv_stride is not None:
                new = nn.Conv2d(m.in_features, m.out_features, 1, stride=m.conv_stride, bias=m.bias is not None)
                w = w[:, :, None, None]
            else:
                new = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                new.weight.copy_(w)
                if m.bias is not None:
                    new.bias.copy_(m.bias)
            set_module(model, name, new.to(w.device))
    return model
