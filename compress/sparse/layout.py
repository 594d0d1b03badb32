"""Layers as 2-D weight matrices: which layers masks and lowering act on, their weight and input
as the (rows, K) matrices the matmul sees, and top-k masks over scores. Shared by sparse/ (masks)
and lower/ (formats), which re-exports them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lowerable(m: nn.Module) -> bool:
    """Linear, and Conv2d with groups 1 and numeric zero padding (depthwise/grouped convs stay dense)."""
    if isinstance(m, nn.Linear):
        return True
    return (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str))


def target_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n and lowerable(m)}


def tied_layers(model: nn.Module) -> dict[str, str]:
    """{target layer: another name of its weight} for the target layers whose weight is tied to another parameter
    (a language model's head and its token embedding): sparsifying one would sparsify the other."""
    names: dict[int, list[str]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, t in mod._parameters.items():
            if t is not None:
                names.setdefault(id(t), []).append(f"{mname}.{pname}" if mname else pname)
    out = {}
    for n, m in target_layers(model).items():
        others = [o for o in names.get(id(m.weight), []) if o != f"{n}.weight"]
        if others:
            out[n] = others[0]
    return out


def is_1x1(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and tuple(m.padding) == (0, 0)


def weight_2d(m: nn.Module, w: torch.Tensor | None = None) -> torch.Tensor:
    w = m.weight.detach() if w is None else w
    if isinstance(m, nn.Conv2d):
        return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)
    return w


def weight_from_2d(m: nn.Module, w2: torch.Tensor) -> torch.Tensor:
    if isinstance(m, nn.Conv2d):
        o, c, kh, kw = m.weight.shape
        return w2.reshape(o, kh, kw, c).permute(0, 3, 1, 2).contiguous()
    return w2.contiguous()


def input_2d(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer's matmul sees: (rows, K) in weight_2d's column order."""
    if isinstance(m, nn.Conv2d):
        cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)   # (B, C*kh*kw, L), c-major
        b, _, l = cols.shape
        k = m.kernel_size[0] * m.kernel_size[1]
        return cols.reshape(b, m.in_channels, k, l).permute(0, 3, 2, 1).reshape(b * l, k * m.in_channels)
    return x.reshape(-1, x.shape[-1])


def topk_mask(scores: torch.Tensor, density: float, per_row: bool = False) -> torch.Tensor:
    """Keep the `density` fraction with the largest scores (ties: lower index first, deterministic)."""
    if per_row:
        s2 = scores.reshape(scores.shape[0], -1)
        k = int(round(density * s2.shape[1]))
        idx = torch.sort(s2, dim=1, descending=True, stable=True).indices[:, :k]
        m = torch.zeros_like(s2, dtype=torch.bool).scatter_(1, idx, True)
        return m.reshape(scores.shape)
    flat = scores.reshape(-1)
    k = int(round(density * flat.numel()))
    idx = torch.sort(flat, descending=True, stable=True).indices[:k]
    m = torch.zeros_like(flat, dtype=torch.bool)
    m[idx] = True
    return m.reshape(scores.shape)
