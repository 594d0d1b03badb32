"""Sparse formats a weight is lowered to, and the choices that produce them.

Every layer is handled as a 2-D matrix W2 (N outputs x K reductions) whose columns follow
the order of the layer's input as seen by the matmul:
- Linear: the weight itself (N, K = in_features);
- Conv2d (groups 1): columns ordered (kh, kw, c), so a group of 4 consecutive columns is 4
  consecutive input channels at one kernel position: the 2:4 layout TensorRT and cuSPARSELt
  expect for convolutions (sparsity along C).

Formats:
- `2:4`: in each group of 4 consecutive columns of each row, 2 weights are kept. The kept
  pair either has the largest scores, or minimises the group's output error on calibration
  data (cost w_P^T H_PP w_P of the dropped pair P, H = E[x x^T]); with `update="obs"` the kept
  weights are also updated by the SparseGPT/OBS least-squares rule (Frantar & Alistarh
  2023), the dropped pair chosen by its exact OBS cost w_P^T [(H^-1)_PP]^-1 w_P.
  Stored as the kept values (N, K/2) and their positions 0..3 in the group (uint8).
- `block:B` (B in 16, 32, 64, ...: a power of two >= 16): W2 is zero-padded to multiples
  of B, blocks are ranked by the L2 norm of the criterion's scores under its unstructured
  mask, the top fraction kept. Stored as BSR (crow_indices, col_indices, values (nnzb, B, B)).
- `unstructured`: a per-layer (or global) top-k of scores. Stored as CSR.
- `dense`: unchanged.

Output error is relative: ||X W^T - X Ws^T||^2 / ||X W^T||^2 over calibration inputs X,
computed exactly from H as tr(dW H dW^T) / tr(W H W^T).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError, first_line
from compress.sparse.layout import (  # noqa: F401  (re-exported: formats is lowering's one namespace)
    input_2d, is_1x1, lowerable, target_layers, tied_layers, topk_mask, weight_2d, weight_from_2d)

PATTERNS = ("2:4", "block:16", "block:32", "block:64", "unstructured", "dense")
PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))   # the 6 ways to drop 2 of 4


# ------------------------------------------------------------------ validation

def check_block(block) -> int:
    if not isinstance(block, int) or isinstance(block, bool) or block < 16 or block & (block - 1):
        raise CompressError(f"block size {block!r} is not a power of two >= 16 (use 16, 32 or 64)")
    return block


def check_sparsity(s) -> float:
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s) or not 0.0 <= s < 1.0:
        raise CompressError(f"--sparsity must be in [0, 1), got {s}")
    return float(s)


def parse_pattern(text: str) -> tuple[str, int | None]:
    """'2:4' | 'block:N' | 'unstructured' | 'dense' -> (format, block)."""
    if text in ("2:4", "unstructured", "dense"):
        return text, None
    if text.startswith("block:"):
        try:
            b = int(text.split(":", 1)[1])
        except ValueError:
            raise CompressError(f"--pattern {text!r}: use block:16, block:32 or block:64") from None
        check_block(b)
        return f"block:{b}", b
    raise CompressError(f"--pattern {text!r}: use 2:4, block:16, block:32, block:64 or unstructured")


# ------------------------------------------------------------------ layers as 2-D matrices
# lowerable, target_layers, tied_layers, is_1x1, weight_2d, weight_from_2d, input_2d: compress.sparse.layout

@torch.no_grad()
def collect_hessians(model: nn.Module, layers: dict[str, nn.Module], batches: list[tuple]) -> dict[str, torch.Tensor]:
    """H = E[x x^T] (float64, K x K) of each layer's input rows over the calibration batches."""
    sums = {n: None for n in layers}
    counts = dict.fromkeys(layers, 0)
    hooks = []
    for name, m in layers.items():
        def hook(mod, args, out, name=name):
            x = input_2d(mod, args[0].detach()).float()
            h = (x.T @ x).double()                       # fp32 per batch, fp64 across batches
            sums[name] = h if sums[name] is None else sums[name] + h
            counts[name] += x.shape[0]
        hooks.append(m.register_forward_hook(hook))
    try:
        for b in batches:
            model(*b)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n, s in sums.items() if s is None]
    if missing:
        raise CompressError(f"layer {missing[0]} never ran on the calibration data; it cannot be lowered with data")
    return {n: sums[n] / counts[n] for n in layers}


def output_error(w: torch.Tensor, ws: torch.Tensor, h: torch.Tensor) -> float:
    """Relative output error tr(dW H dW^T) / tr(W H W^T) of replacing w by ws (both 2-D)."""
    w, ws = w.double(), ws.double()
    d = w - ws
    den = float(((w @ h) * w).sum())
    return float(((d @ h) * d).sum()) / den if den > 0 else 0.0


# ------------------------------------------------------------------ unstructured

# topk_mask: compress.sparse.layout


# ------------------------------------------------------------------ 2:4

def check_24(name: str, k: int) -> None:
    if k % 4:
        raise CompressError(f"layer {name}: 2:4 needs a reduction dimension that is a multiple of 4, "
                            f"it has {k}; pick another --pattern")


def _drop_to_mask(drop: torch.Tensor) -> torch.Tensor:
    """(N, G) index into PAIRS of the dropped pair -> (N, G*4) keep mask."""
    pairs = torch.tensor(PAIRS)
    keep = torch.ones(*drop.shape, 4, dtype=torch.bool)
    d = pairs[drop]                                      # (N, G, 2)
    keep.scatter_(-1, d, False)
    return keep.reshape(drop.shape[0], -1)


def _pair_costs(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """w (N, G, 4), a (G, 4, 4) symmetric: cost w_P^T a_PP w_P of each of the 6 pairs -> (N, G, 6)."""
    out = []
    for i, j in PAIRS:
        out.append(w[..., i] ** 2 * a[:, i, i] + 2 * w[..., i] * w[..., j] * a[:, i, j] + w[..., j] ** 2 * a[:, j, j])
    return torch.stack(out, -1)


def select_24(w2: torch.Tensor, scores: torch.Tensor | None = None, h: torch.Tensor | None = None) -> torch.Tensor:
    """Keep mask (N, K), exactly 2 of every 4 along K. `scores`: keep the 2 largest; else with `h`
    (E[x x^T]): drop the pair whose removal adds the least output error; else by |w|."""
    n, k = w2.shape
    g = k // 4
    if scores is None and h is not None:
        hg = torch.stack([h[4 * i:4 * i + 4, 4 * i:4 * i + 4] for i in range(g)]).double()
        cost = _pair_costs(w2.double().reshape(n, g, 4), hg)
        return _drop_to_mask(torch.argmin(cost, -1))     # argmin: first on ties
    s = (w2.abs() if scores is None else scores).reshape(n, g, 4).double()
    idx = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :2]
    return torch.zeros(n, g, 4, dtype=torch.bool).scatter_(-1, idx, True).reshape(n, k)


def _damped_inverse_chol(h: torch.Tensor, w: torch.Tensor, damp: float) -> torch.Tensor:
    h = h.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(hinv, upper=True)


def _mask_to_drop(keep: torch.Tensor) -> torch.Tensor:
    """(N, 4) keep mask with 2 kept per row -> index into PAIRS of the dropped pair (N,)."""
    code = (~keep).long() @ torch.tensor([1, 2, 4, 8])
    table = torch.full((16,), -1, dtype=torch.long)
    for i, (p, q) in enumerate(PAIRS):
        table[(1 << p) | (1 << q)] = i
    drop = table[code]
    if (drop < 0).any():
        raise CompressError("a 2:4 mask must keep exactly 2 of every 4 weights")
    return drop


def obs_24(w2: torch.Tensor, h: torch.Tensor, mask: torch.Tensor | None = None, damp: float = 0.01,
           blocksize: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT-style 2:4 with least-squares (OBS) updates of the kept weights (Frantar & Alistarh
    2023), one group of 4 columns at a time, left to right. With A = (H_rem^-1) restricted to the
    group (H_rem: the Hessian of the columns not yet fixed), dropping pair P costs
    w_P^T (A_PP)^-1 w_P and moves every remaining weight by -H_rem^-1[:, P] (A_PP)^-1 w_P, the
    group's other two included (exact OBS for the pair; SparseGPT's column-wise pass cannot
    update kept weights left of a dropped one). Without `mask` each row drops its cheapest pair.
    H_rem^-1 comes from the upper Cholesky factor U of H^-1: H_rem^-1 = U[i:, i:]^T U[i:, i:].
    Returns (new weights in w2's dtype, keep mask)."""
    n, k = w2.shape
    w = w2.detach().double().clone()
    u = _damped_inverse_chol(h, w, damp)                 # H^-1 = U^T U, U upper
    keep = torch.ones(n, k, dtype=torch.bool) if mask is None else mask.clone()
    blocksize = max(4, blocksize - blocksize % 4)
    rows = torch.arange(n)
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(0, i2 - i1, 4):
            ul = u1[i:i + 4, i:i + 4]
            a = ul.T @ ul                                # H_rem^-1 on the group
            inv = []                                     # (A_PP)^-1 = [[x, y], [y, z]] per pair
            for p, q in PAIRS:
                det = a[p, p] * a[q, q] - a[p, q] ** 2
                inv.append(torch.stack([a[q, q] / det, -a[p, q] / det, a[p, p] / det]))
            inv = torch.stack(inv)                       # (6, 3)
            wg = w1[:, i:i + 4]
            if mask is None:
                cost = torch.stack([wg[:, p] ** 2 * inv[j, 0] + 2 * wg[:, p] * wg[:, q] * inv[j, 1]
                                    + wg[:, q] ** 2 * inv[j, 2] for j, (p, q) in enumerate(PAIRS)], -1)
                drop = torch.argmin(cost, -1)
                keep[:, i1 + i:i1 + i + 4] = _drop_to_mask(drop[:, None])
            else:
                drop = _mask_to_drop(keep[:, i1 + i:i1 + i + 4])
            pq = torch.tensor(PAIRS)[drop]               # (N, 2) dropped positions
            wp, wq = wg[rows, pq[:, 0]], wg[rows, pq[:, 1]]
            x, y, z = inv[drop, 0], inv[drop, 1], inv[drop, 2]
            e = torch.zeros(n, 4, dtype=w.dtype)
            e[rows, pq[:, 0]] = x * wp + y * wq
            e[rows, pq[:, 1]] = y * wp + z * wq
            errg = e @ ul.T                              # so that the move is -errg @ U[i:i+4, i:]
            w1[:, i:] -= errg @ u1[i:i + 4, i:]
            w1[:, i:i + 4] *= keep[:, i1 + i:i1 + i + 4]
            err1[:, i:i + 4] = errg
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    w = torch.where(keep, w, torch.zeros_like(w))
    return w.to(w2.dtype), keep


def encode_24(w2: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    n, k = w2.shape
    pos = torch.arange(4).repeat(n, k // 4)[keep].reshape(n, k // 2).to(torch.uint8)
    return {"values": w2[keep].reshape(n, k // 2).contiguous(), "indices": pos.contiguous()}


def decode_24(values: torch.Tensor, indices: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    n, k = shape
    if tuple(values.shape) != (n, k // 2) or tuple(indices.shape) != (n, k // 2) or (indices.numel() and int(indices.max()) > 3):
        raise CompressError(f"2:4 values {tuple(values.shape)} / indices do not fit a {n}x{k} weight")
    g = torch.arange(k // 2) // 2 * 4
    cols = g[None, :] + indices.long()
    return torch.zeros(n, k, dtype=values.dtype).scatter_(1, cols, values)


# ------------------------------------------------------------------ block-sparse (BSR)

def padded_shape(shape: tuple[int, int], block: int) -> tuple[int, int]:
    return tuple(-(-s // block) * block for s in shape)


def pad_2d(w2: torch.Tensor, block: int) -> torch.Tensor:
    n, k = w2.shape
    pn, pk = padded_shape((n, k), block)
    return F.pad(w2, (0, pk - k, 0, pn - n))


def select_blocks(scores: torch.Tensor, block: int, density: float) -> torch.Tensor:
    """Block keep mask (N/B, K/B) on the padded grid: blocks ranked by the L2 norm of the scores
    that the unstructured mask at the same density keeps; at least one block kept."""
    s = scores.double()
    s = s - s.min() if s.numel() and s.min() < 0 else s   # signed scores (GraSP): shift to >= 0
    s = s * topk_mask(s, density)
    sp = pad_2d(s, block)
    pn, pk = sp.shape
    norms = sp.reshape(pn // block, block, pk // block, block).pow(2).sum((1, 3)).sqrt()
    nb = norms.numel()
    k = min(nb, max(1, int(round(density * nb))))
    return topk_mask(norms, k / nb)


def block_mask_full(bmask: torch.Tensor, block: int, shape: tuple[int, int]) -> torch.Tensor:
    full = bmask.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return full[:shape[0], :shape[1]]


def encode_bsr(w2: torch.Tensor, bmask: torch.Tensor, block: int) -> dict[str, torch.Tensor]:
    """Exactly the kept blocks of the zero-padded matrix (a kept block may hold zeros)."""
    wp = pad_2d(w2, block)
    pn, pk = wp.shape
    blocks = wp.reshape(pn // block, block, pk // block, block).permute(0, 2, 1, 3)
    rows, cols = torch.nonzero(bmask, as_tuple=True)     # row-major order
    crow = torch.zeros(pn // block + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(bmask.sum(1), 0)
    return {"crow_indices": crow, "col_indices": cols.to(torch.int64).contiguous(),
            "values": blocks[rows, cols].contiguous()}


def bsr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, padded: tuple[int, int]) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # "BSR support is in beta"
        return torch.sparse_bsr_tensor(crow, col, values, size=padded, check_invariants=True)


def decode_bsr(crow, col, values, shape: tuple[int, int], block: int) -> torch.Tensor:
    padded = padded_shape(shape, block)
    if values.dim() != 3 or tuple(values.shape[1:]) != (block, block) or crow.numel() != padded[0] // block + 1:
        raise CompressError(f"BSR tensors do not fit a {shape[0]}x{shape[1]} weight with block {block}")
    try:
        dense = bsr_tensor(crow, col, values, padded).to_dense()
    except RuntimeError as e:
        raise CompressError(f"invalid BSR tensors ({first_line(e, 200, strip=False)})") from None
    return dense[:shape[0], :shape[1]].contiguous()


# ------------------------------------------------------------------ unstructured storage (CSR)

def encode_csr(w2: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    n, _ = w2.shape
    rows, cols = torch.nonzero(keep, as_tuple=True)
    crow = torch.zeros(n + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(keep.sum(1), 0)
    return {"crow_indices": crow, "col_indices": cols.to(torch.int64).contiguous(), "values": w2[rows, cols].contiguous()}


def decode_csr(crow, col, values, shape: tuple[int, int]) -> torch.Tensor:
    n, k = shape
    if crow.numel() != n + 1 or col.numel() != values.numel() or (col.numel() and int(col.max()) >= k):
        raise CompressError(f"CSR tensors do not fit a {n}x{k} weight")
    rows = torch.repeat_interleave(torch.arange(n), crow.diff())
    out = torch.zeros(n, k, dtype=values.dtype)
    out[rows, col] = values
    return out


def encode(fmt: str, w2: torch.Tensor, keep: torch.Tensor, block: int | None = None,
           bmask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    if fmt == "2:4":
        return encode_24(w2, keep)
    if fmt.startswith("block:"):
        return encode_bsr(w2, bmask, block)
    if fmt == "unstructured":
        return encode_csr(w2, keep)
    return {"weight": w2.contiguous()}


def decode(fmt: str, t: dict[str, torch.Tensor], shape: tuple[int, int], block: int | None = None) -> torch.Tensor:
    try:
        if fmt == "2:4":
            return decode_24(t["values"], t["indices"], shape)
        if fmt.startswith("block:"):
            return decode_bsr(t["crow_indices"], t["col_indices"], t["values"], shape, block)
        if fmt == "unstructured":
            return decode_csr(t["crow_indices"], t["col_indices"], t["values"], shape)
        return t["weight"]
    except KeyError as e:
        raise CompressError(f"sparse weights lack the tensor {e.args[0]!r} of format {fmt}") from None
