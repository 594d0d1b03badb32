"""Reconstruction-aware channel selection, data-driven: `--criterion thinet` and `--criterion id`.

Both look at what the layers reading a group see on calibration data (the readers: every Conv2d with
groups 1 or Linear whose input dimension the channel graph ties to the group).

thinet (Luo et al. 2017). Sampled rows of each reader's input, each with one output channel j drawn
at random (seeded), as ThiNet does: x̂[i, c] = the contribution of input channel c to output j at that
row (Σ over the kernel of W[j, c] * patch_c). A class's contribution is the sum over its channels (a
head: head_dim of them). Rows of every reader of a group are scaled to unit mean square per reader
and stacked. Then, greedily, the class whose removal least increases Σ_i (Σ_{c removed} x̂[i, c])² is
removed next — to the end, so the removal order is a ranking (prefix-consistent: the k classes kept
at any ratio are the ones ThiNet's greedy keeps). Scores are the rank (removed last = highest).

id (interpolative decomposition, Chee et al. 2022). The readers' input activations Z (sampled rows x
channels, each reader's rows scaled to unit mean square) are factored by column-pivoted QR, by class:
the next class chosen is the one whose columns keep the largest residual norm after projecting out
the classes already chosen; the k classes chosen first span the activations best, and the removed
ones are (approximately) linear combinations of them, which `--reconstruct` then folds into the
readers by least squares. Scores: the reverse of the pivot order.

A group no reader can score falls back to l2 magnitude (compress.prune.importance.score).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROWS_PER_READER = 2048


def _readers(model: nn.Module, graph) -> dict[str, tuple[str, np.ndarray]]:
    """module name -> (weight name, class id per input channel) of every plain Conv2d / Linear reader."""
    mods = dict(model.named_modules())
    out = {}
    for (name, dim), role in graph.roles.items():
        if role != "reader" or dim != 1 or not name.endswith(".weight"):
            continue
        mname = name[: -len(".weight")]
        m = mods.get(mname)
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1 and not isinstance(m.padding, str)
                                        and m.padding_mode == "zeros"):
            roots = graph.dims.get((name, 1))
            if roots is not None and (roots >= 0).any():
                out[mname] = (name, roots)
    return out


def contributions(m: nn.Module, x: torch.Tensor, gen: torch.Generator, rows: int) -> torch.Tensor:
    """(rows, C_in): each sampled row's per-input-channel contribution to one random output channel."""
    if isinstance(m, nn.Linear):
        xr = x.detach().reshape(-1, x.shape[-1]).float()
        idx = torch.randint(0, xr.shape[0], (rows,), generator=gen)
        j = torch.randint(0, m.out_features, (rows,), generator=gen)
        return xr[idx] * m.weight.detach().float()[j]
    cols = F.unfold(x.detach().float(), m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    n, ck, L = cols.shape
    C = m.in_channels
    b = torch.randint(0, n, (rows,), generator=gen)
    p = torch.randint(0, L, (rows,), generator=gen)
    j = torch.randint(0, m.out_channels, (rows,), generator=gen)
    patch = cols[b, :, p].view(rows, C, -1)                              # (rows, C, kh*kw)
    w = m.weight.detach().float()[j].view(rows, C, -1)
    return (patch * w).sum(2)


def greedy_order(xh: np.ndarray) -> np.ndarray:
    """ThiNet's greedy: classes in the order they are removed, each time the one whose removal least
    increases Σ_i (Σ_{removed} x̂[i, c])²; ties to the lower index."""
    xh = np.asarray(xh, dtype=np.float64)
    n, C = xh.shape
    s = np.zeros(n)
    sq = (xh * xh).sum(0)
    left = np.ones(C, dtype=bool)
    order = []
    for _ in range(C):
        cost = 2.0 * (s @ xh) + sq
        cost[~left] = np.inf
        c = int(np.argmin(cost))
        order.append(c)
        left[c] = False
        s += xh[:, c]
    return np.array(order, dtype=np.int64)


def _collect(model: nn.Module, readers: dict, calib, rows_of, seed: int) -> dict[str, list[torch.Tensor]]:
    """Per reader, the rows `rows_of(module, input, generator, per_batch)` gives on each calibration batch."""
    mods = dict(model.named_modules())
    per_batch = max(1, ROWS_PER_READER // max(len(calib), 1))
    rows: dict[str, list[torch.Tensor]] = {r: [] for r in readers}
    gen = torch.Generator().manual_seed(seed)

    def hook(name):
        def fn(mod, args):
            rows[name].append(rows_of(mod, args[0], gen, per_batch))
        return fn

    handles = [mods[r].register_forward_pre_hook(hook(r)) for r in sorted(readers)]
    model.eval()
    try:
        for batch in calib:
            model(*batch)
    finally:
        for h in handles:
            h.remove()
    return rows


@torch.no_grad()
def thinet(model: nn.Module, graph, calib, seed: int = 0) -> dict[int, np.ndarray]:
    """Scores per group id (higher = kept longer); groups without a scorable reader are absent."""
    readers = _readers(model, graph)
    rows = _collect(model, readers, calib, contributions, seed)
    where = {int(c): (g.id, i) for g in graph.groups for i, c in enumerate(g.classes)}
    stacks: dict[int, list[np.ndarray]] = {}
    for r, (_w, roots) in readers.items():
        if not rows[r]:
            continue
        x = torch.cat(rows[r]).double().numpy()                         # (rows, C_in)
        gids = {where[int(c)][0] for c in np.unique(roots) if int(c) in where}
        for gid in gids:
            g = graph.groups[gid]
            cls = np.zeros((x.shape[0], g.size))
            for ch, root in enumerate(roots.tolist()):
                hit = where.get(int(root))
                if hit is not None and hit[0] == gid:
                    cls[:, hit[1]] += x[:, ch]
            ms = float((cls.sum(1) ** 2).mean()) or float((cls ** 2).mean()) or 1.0
            stacks.setdefault(gid, []).append(cls / np.sqrt(ms))
    out = {}
    for gid, parts in stacks.items():
        order = greedy_order(np.concatenate(parts, 0))
        score = np.empty(len(order))
        score[order] = np.arange(len(order), dtype=np.float64)        # removed first: lowest
        out[gid] = score
    return out


def activations(m: nn.Module, x: torch.Tensor, gen: torch.Generator, rows: int) -> torch.Tensor:
    """(rows, C_in): the reader's input channel vectors at sampled rows (a conv: sampled pixels)."""
    x = x.detach().float()
    flat = x.reshape(-1, x.shape[-1]) if isinstance(m, nn.Linear) else x.transpose(1, -1).reshape(-1, x.shape[1])
    return flat[torch.randint(0, flat.shape[0], (rows,), generator=gen)]


def pivot_order(z: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Classes in column-pivoted QR order by blocks: `z` (rows, channels), `cls[ch]` the class of each
    channel (0..K-1). Each step takes the class with the largest residual Frobenius norm, adds an
    orthonormal basis of its residual columns and projects it out of every column."""
    r = np.asarray(z, dtype=np.float64).copy()
    K = int(cls.max()) + 1
    members = [np.flatnonzero(cls == k) for k in range(K)]
    left = np.ones(K, dtype=bool)
    order = []
    for _ in range(K):
        norms = np.array([(r[:, members[k]] ** 2).sum() if left[k] else -1.0 for k in range(K)])
        k = int(np.argmax(norms))
        order.append(k)
        left[k] = False
        q, rr = np.linalg.qr(r[:, members[k]])
        keep = np.abs(np.diag(rr)) > 1e-10 * max(np.abs(rr).max(), 1e-300) if rr.size else np.zeros(0, bool)
        q = q[:, keep]
        if q.size:
            r -= q @ (q.T @ r)
    return np.array(order, dtype=np.int64)


@torch.no_grad()
def interpolative(model: nn.Module, graph, calib, seed: int = 0) -> dict[int, np.ndarray]:
    """Scores per group id (chosen first = highest); groups without a scorable reader are absent."""
    readers = _readers(model, graph)
    rows = _collect(model, readers, calib, activations, seed)
    where = {int(c): (g.id, i) for g in graph.groups for i, c in enumerate(g.classes)}
    stacks: dict[int, list[np.ndarray]] = {}
    owners: dict[int, np.ndarray] = {}
    for r, (_w, roots) in sorted(readers.items()):
        if not rows[r]:
            continue
        x = torch.cat(rows[r]).double().numpy()
        gids = {where[int(c)][0] for c in np.unique(roots) if int(c) in where}
        for gid in gids:
            chans = [ch for ch, root in enumerate(roots.tolist()) if where.get(int(root), (None,))[0] == gid]
            cls = np.array([where[int(roots[ch])][1] for ch in chans], dtype=np.int64)
            if gid in owners and (len(owners[gid]) != len(cls) or (owners[gid] != cls).any()):
                continue                     # another reader sees the group's channels in another layout
            owners[gid] = cls
            z = x[:, chans]
            ms = float((z ** 2).mean()) or 1.0
            stacks.setdefault(gid, []).append(z / np.sqrt(ms))
    out = {}
    for gid, parts in stacks.items():
        g = graph.groups[gid]
        cls = owners[gid]
        if len(np.unique(cls)) != g.size:
            continue
        order = pivot_order(np.concatenate(parts, 0), cls)
        score = np.empty(len(order))
        score[order] = np.arange(len(order), 0, -1, dtype=np.float64)    # chosen first: highest
        out[gid] = score
    return out
