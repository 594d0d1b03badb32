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


class Sparse24Linear(_SparseBase):
    """2:4 weight along the input dimension: kept values (N, K/2) and positions 0..3 (uint8)."""

    format = "2:4"

    def __init__(self, in_features: int, out_features: int, values: torch.Tensor, indices: torch.Tensor,
                 bias: torch.Tensor | None = None, conv_stride: tuple[int, int] | None = None) -> None:
        super().__init__(in_features, out_features, bias, conv_stride)
        formats.check_24(f"Sparse24Linear({in_features}->{out_features})", in_features)
        self.register_buffer("values", values.detach().clone().contiguous())
        self.register_buffer("indices", indices.detach().to(torch.uint8).clone().contiguous())
        self._semi = None
        self.refresh()

    def dense_weight(self) -> torch.Tensor:
        return formats.decode_24(self.values.cpu(), self.indices.cpu(), (self.out_features, self.in_features)).to(self.values.device)

    def refresh(self) -> None:
        super().refresh()
        self._semi = None

    def _sparse_linear(self, x2):
        """cuSPARSELt/CUTLASS via torch's semi-structured tensor. Shapes or dtypes it refuses
        (e.g. too small a layer for its tiles) run dense, once noted with a warning."""
        from torch.sparse import to_sparse_semi_structured

        w = self.weight_dense.to(device=x2.device, dtype=x2.dtype)
        key = (x2.device, x2.dtype)
        if self._semi is None or self._semi[0] != key:
            try:
                self._semi = (key, to_sparse_semi_structured(w))
            except (RuntimeError, ValueError, NotImplementedError, TypeError) as e:
                warnings.warn(f"Sparse24Linear({self.in_features}->{self.out_features}): semi-structured "
                              f"path unavailable ({first_line(e, 120, strip=False)}); running dense")
                self._semi = (key, None)
        if self._semi[1] is None:
            return F.linear(x2, w)
        try:
            return F.linear(x2, self._semi[1])
        except (RuntimeError, ValueError, NotImplementedError) as e:
            warnings.warn(f"Sparse24Linear: semi-structured matmul failed ({first_line(e, 120, strip=False)}); running dense")
            self._semi = (key, None)
            return F.linear(x2, w)


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
