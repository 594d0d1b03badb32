"""Shared helpers for the block-sparse kernel tests (CPU interpreter and GPU)."""

from __future__ import annotations

import warnings

import torch


def bsr_from_mask(mask: torch.Tensor, block: int, dtype, gen: torch.Generator, device="cpu"):
    """A torch.sparse_bsr tensor whose stored blocks are where `mask` (block rows x block cols) is True,
    with random values; returns (bsr, dense float64 copy)."""
    nbr, nbc = mask.shape
    counts = mask.sum(1)
    crow = torch.zeros(nbr + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(counts, 0)
    col = torch.nonzero(mask)[:, 1].to(torch.int64)
    values = torch.randn(int(mask.sum()), block, block, generator=gen).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bsr = torch.sparse_bsr_tensor(crow, col, values, size=(nbr * block, nbc * block)).to(device)
    dense = torch.zeros(nbr * block, nbc * block, dtype=torch.float64)
    for i, (r, c) in enumerate(torch.nonzero(mask).tolist()):
        dense[r * block:(r + 1) * block, c * block:(c + 1) * block] = values[i].double()
    return bsr, dense


def max_rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max |y - ref| relative to (max |ref| + 1)."""
    return float((y.detach().double().cpu() - ref).abs().max()) / (float(ref.abs().max()) + 1.0) if ref.numel() else 0.0


TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
