"""Sparse kernels: Triton block-sparse (BSR) matmul and its CPU paths.

Importing this package is cheap: torch, Triton and the custom-op registration load on first use.

- `bsr_dense_mm(a, b)`: a (M, K) torch.sparse_bsr tensor @ dense b (K, N) -> dense (M, N).
- `bsr_linear(x, weight_bsr, bias=None)`: Y = x @ W^T + bias (the nn.Linear layout), through the
  custom op `torch.ops.compress.bsr_linear`, so models using it trace with torch.export.
- `check_block(block)`: CompressError unless block is a power of two >= 16.

Backends: our Triton kernel on CUDA; on CPU torch's own BSR matmul, or the Triton kernel in
Triton's interpreter when TRITON_INTERPRET=1 (tests). See docs/kernels.md.
"""

from __future__ import annotations

from compress._layout import package_path

# a package whose modules live in the top-level kernels/ folder (compress/kernels/ once installed): see compress/_layout.py
__path__ = package_path(__file__)

__all__ = ["bsr_dense_mm", "bsr_linear", "bsr_linear_parts", "check_block", "register_ops"]


def check_block(block) -> int:
    """Return `block` if it is a power of two >= 16, else raise compress.errors.CompressError."""
    from compress.kernels.bsr_matmul import check_block as _check

    return _check(block)


def bsr_dense_mm(a, b, *, backend: str = "auto"):
    """`a @ b` for a 2-D torch.sparse_bsr `a` (M, K) with square blocks and a dense `b` (K, N).

    backend: "auto" (Triton on CUDA; on CPU torch's BSR matmul, or the Triton interpreter when
    TRITON_INTERPRET=1), "triton" or "torch"."""
    from compress.kernels.bsr_matmul import bsr_dense_mm as _mm

    return _mm(a, b, backend=backend)


def bsr_linear(x, weight_bsr, bias=None):
    """Y = x @ weight_bsr^T + bias for x (..., K) and a torch.sparse_bsr weight (N, K), through
    `torch.ops.compress.bsr_linear` (traceable by torch.export)."""
    from compress.kernels.bsr_matmul import check_bsr

    check_bsr(weight_bsr, "weight")
    if getattr(x, "dim", lambda: 0)() < 1 or x.shape[-1] != weight_bsr.shape[1]:
        from compress.errors import CompressError

        raise CompressError(f"input has shape {tuple(getattr(x, 'shape', ()))} but the weight expects "
                            f"in_features {weight_bsr.shape[1]} in its last dimension")
    return bsr_linear_parts(x, weight_bsr.crow_indices(), weight_bsr.col_indices(), weight_bsr.values(),
                            int(weight_bsr.shape[0]), bias)


def bsr_linear_parts(x, crow_indices, col_indices, values, out_features: int, bias=None):
    """bsr_linear with the weight given as its BSR parts (dense tensors: what a module keeps as
    buffers so that torch.export can trace it)."""
    register_ops()
    import torch

    return torch.ops.compress.bsr_linear(x, crow_indices, col_indices, values, out_features, bias)


def register_ops() -> None:
    """Register `torch.ops.compress.bsr_linear` (needed before torch.export.load of a program using it)."""
    from compress.kernels import ops  # noqa: F401  (registration happens at import)
