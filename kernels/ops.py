"""The custom op `compress::bsr_linear` (registered with torch), so models calling the kernel trace with torch.export.

    compress::bsr_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values,
                         SymInt out_features, Tensor? bias) -> Tensor

Y = x @ W^T + bias, x (..., K), W (out_features, K) in BSR form (the parts of a torch.sparse_bsr
tensor with square blocks). Implementations:
- fake (meta): shape (..., out_features), x's dtype; the same shape checks as the real ones;
- CUDA: our Triton kernel (kernels/bsr_matmul.py);
- CPU: torch's own BSR matmul (MKL; 16-bit inputs computed in fp32), or the Triton kernel in the
  interpreter when TRITON_INTERPRET=1.
Inference only: no autograd formula is registered (backward raises).
Importing this module registers the op once per process.
"""

from __future__ import annotations

from typing import Optional

import torch

from .bsr_matmul import check_parts, linear_parts

OP = "compress::bsr_linear"


def _registered() -> bool:
    try:
        torch.ops.compress.bsr_linear.default  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False


def _cpu(x, crow_indices, col_indices, values, out_features, bias):
    return linear_parts(x, crow_indices, col_indices, values, out_features, bias)


def _cuda(x, crow_indices, col_indices, values, out_features, bias):
    return linear_parts(x, crow_indices, col_indices, values, out_features, bias, backend="triton")


def _fake(x, crow_indices, col_indices, values, out_features, bias):
    check_parts(x, crow_indices, col_indices, values, out_features, bias)
    return x.new_empty((*x.shape[:-1], out_features))


if not _registered():
    @torch.library.custom_op(OP, mutates_args=(), device_types="cpu")
    def bsr_linear(x: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor,
                   values: torch.Tensor, out_features: int, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return _cpu(x, crow_indices, col_indices, values, out_features, bias)

    bsr_linear.register_kernel("cuda")(_cuda)
    bsr_linear.register_fake(_fake)
