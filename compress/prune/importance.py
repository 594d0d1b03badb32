"""Importance criteria: one score per channel class of every group (higher = more important).

- l1, l2      magnitude of every weight slice (conv/linear/embedding) the class owns
- bn          |gamma| of the normalisation layers in the class (network slimming, Liu et al. 2017)
- taylor      first-order Taylor (Molchanov et al. 2019): (sum w*dL/dw)^2 per slice, accumulated over
              calibration batches, each parameter's vector L2-normalised (per-layer normalisation)
- fisher      group Fisher (Liu et al. 2021): one mask per class shared by all its readers;
              sum over samples of (dL/dm)^2 / 2, with dL/dm = sum over reader slices of w*dL/dw
- activation  mean |activation| entering the readers of the class (calibration data)
- apoz        1 - average percentage of zeros entering the readers (Hu et al. 2016)
- thinet      greedy selection by the next layer's reconstruction error (Luo et al. 2017): the classes whose
              removal least increases the readers' output error go first (compress/prune/selection.py)
- id          interpolative decomposition of what the readers see (Chee et al. 2022): the classes a
              column-pivoted QR of the activations picks first are kept (compress/prune/selection.py)
- random      the sanity baseline of Su et al. 2020 (seeded)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.errors import CompressError
from compress.graph.groups import ChannelGraph

CRITERIA = ("l1", "l2", "bn", "taylor", "fisher", "activation", "apoz", "thinet", "id", "random")
DATA_CRITERIA = ("taylor", "fisher", "activation", "apoz", "thinet", "id")   # need calibration data; the one list (prune, plan, bench)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out = dict(model.named_parameters(remove_duplicate=False))
    out.update(dict(model.named_buffers(remove_duplicate=False)))
    return out


def _per_index(t: torch.Tensor, dim: int, fn) -> np.ndarray:
    """Reduce `fn(t)` over every dim but `dim`: one value per index (summed in float64)."""
    x = fn(t.detach().movedim(dim, 0).reshape(t.shape[dim], -1))
    return x.sum(1).double().cpu().numpy()


def _accumulate(graph: ChannelGraph, per_dim: dict[tuple[str, int], np.ndarray]) -> dict[int, float]:
    """Sum per-index values into their classes."""
    keys = [k for k in per_dim if k in graph.dims]
    if not keys:
        return {}
    roots = np.concatenate([graph.dims[k] for k in keys])
    vals = np.concatenate([np.asarray(per_dim[k], dtype=np.float64) for k in keys])
    ok = roots >= 0
    uniq, inv = np.unique(roots[ok], return_inverse=True)
    sums = np.bincount(inv, weights=vals[ok], minlength=len(uniq))
    return dict(zip(uniq.tolist(), sums.tolist()))


def _weight_dims(graph: ChannelGraph, tensors) -> list[tuple[str, int]]:
    return [k for k in graph.dims if k[0] in tensors and tensors[k[0]].dim() >= 2]


def magnitude(model, graph, p: int) -> dict[int, float]:
    tensors = _tensors(model)
    per = {}
    cache: dict[str, torch.Tensor] = {}
    for name, dim in _weight_dims(graph, tensors):
        if name not in cache:
            t = tensors[name].detach()
            cache = {name: t.abs() if p == 1 else t * t}
        x = cache[name]
        dims = [d for d in range(x.dim()) if d != dim]
        per[(name, dim)] = x.sum(dims).double().numpy()
    return _accumulate(graph, per)


def bn_scale(model, graph) -> dict[int, float]:
    names = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, _NORM_TYPES)}
    tensors = _tensors(model)
    per = {k: _per_index(tensors[k[0]], 0, lambda t: t.abs()) for k in graph.dims
           if k[0] in names and k[1] == 0 and tensors[k[0]] is not None}
    return _accumulate(graph, per)


def _loss(out, target):
    from compress.models.outputs import primary_tensor

    out = primary_tensor(out)   # dicts ('out'), tuples, Hugging Face outputs: the primary output
    if target is not None:
        return nn.functional.cross_entropy(out, target)
    return 0.5 * out.float().pow(2).mean()


def _pseudo_targets(model, batch):
    with torch.no_grad():
        out = model(*batch)
    from compress.models.outputs import primary_tensor

    out = primary_tensor(out)
    return out.argmax(-1) if out.dim() == 2 else None


def taylor(model, graph, calib) -> dict[int, float]:
    tensors = _tensors(model)
    keys = _weight_dims(graph, tensors)
    acc = {k: 0.0 for k in keys}
    model.eval()
    for batch in calib:
        target = _pseudo_targets(model, batch)
        model.zero_grad(set_to_none=True)
        _loss(model(*batch), target).backward()
        for k in keys:
            t = tensors[k[0]]
            if t.grad is not None:
                acc[k] = acc[k] + _per_index(t * t.grad, k[1], lambda x: x) ** 2
    model.zero_grad(set_to_none=True)
    per = {}
    for k, v in acc.items():
        if isinstance(v, np.ndarray):
            norm = np.linalg.norm(v)
            per[k] = v / norm if norm > 0 else v
    return _accumulate(graph, per)


def fisher(model, graph, calib) -> dict[int, float]:
    tensors = _tensors(model)
    readers = [k for k, role in graph.roles.items() if role == "reader" and k[0] in tensors]
    total: dict[int, float] = {}
    model.eval()
    for batch in calib:
        n = batch[0].shape[0]
        for i in range(n):
            sample = tuple(t[i:i + 1] for t in batch)
            target = _pseudo_targets(model, sample)
            model.zero_grad(set_to_none=True)
            _loss(model(*sample), target).backward()
            per = {k: _per_index(tensors[k[0]] * tensors[k[0]].grad, k[1], lambda x: x)
                   for k in readers if tensors[k[0]].grad is not None}
            for r, g in _accumulate(graph, per).items():
                total[r] = total.get(r, 0.0) + 0.5 * g * g
    model.zero_grad(set_to_none=True)
    return total


def activation(model, graph, calib, apoz: bool) -> dict[int, float]:
    mods = dict(model.named_modules())
    readers = {}
    for (name, dim), role in graph.roles.items():
        mname, pname = name.rsplit(".", 1) if "." in name else ("", name)
        m = mods.get(mname)
        if role == "reader" and pname == "weight" and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            readers[mname] = (name, dim)
    stats: dict[str, list] = {k: [0.0, 0] for k in readers}

    def hook(mname):
        def fn(mod, args):
            x = args[0].detach().double()
            cdim = x.dim() - 1 if isinstance(mod, nn.Linear) else 1
            dims = [d for d in range(x.dim()) if d != cdim]
            v = (x == 0).double().mean(dims) if apoz else x.abs().mean(dims)
            stats[mname][0] = stats[mname][0] + v.numpy()
            stats[mname][1] += 1
        return fn

    handles = [mods[m].register_forward_pre_hook(hook(m)) for m in readers]
    try:
        with torch.no_grad():
            for batch in calib:
                model(*batch)
    finally:
        for h in handles:
            h.remove()
    per = {}
    for mname, (pname, dim) in readers.items():
        s, n = stats[mname]
        if n:
            v = s / n
            roots = graph.dims[(pname, dim)]
            if len(v) == len(roots):  # depthwise readers see the channel as the weight's dim 0
                per[(pname, dim)] = (1.0 - v) if apoz else v
    score = _accumulate(graph, per)
    counts = _accumulate(graph, {k: np.ones(len(v)) for k, v in per.items()})
    return {r: score[r] / counts[r] for r in score}


def score(model: nn.Module, graph: ChannelGraph, criterion: str, calib=None, seed: int = 0) -> dict[int, np.ndarray]:
    """Return, for each group id, one importance value per prunable class (in group order)."""
    if criterion not in CRITERIA:
        raise CompressError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion in DATA_CRITERIA and not calib:
        raise CompressError(f"criterion {criterion!r} needs calibration data (--calib)")
    if criterion == "random":
        rng = np.random.default_rng(seed)
        return {g.id: rng.random(g.size) for g in graph.groups}
    if criterion in ("l1", "l2"):
        s = magnitude(model, graph, 1 if criterion == "l1" else 2)
    elif criterion == "bn":
        s = bn_scale(model, graph)
        fallback = magnitude(model, graph, 2)
    elif criterion == "taylor":
        s = taylor(model, graph, calib)
    elif criterion == "fisher":
        s = fisher(model, graph, calib)
    elif criterion in ("thinet", "id"):
        from compress.prune.selection import interpolative, thinet
        by_group = (thinet if criterion == "thinet" else interpolative)(model, graph, calib, seed)
        fallback = magnitude(model, graph, 2)
        return {g.id: by_group[g.id] if g.id in by_group else
                np.nan_to_num(np.array([fallback.get(int(c), 0.0) for c in g.classes], dtype=np.float64))
                for g in graph.groups}
    else:
        s = activation(model, graph, calib, apoz=criterion == "apoz")
    out = {}
    for g in graph.groups:
        vals = np.array([s.get(int(c), np.nan) for c in g.classes], dtype=np.float64)
        if criterion == "bn" and np.isnan(vals).all():   # no norm layer in this group
            vals = np.array([fallback.get(int(c), 0.0) for c in g.classes])
        out[g.id] = np.nan_to_num(vals, nan=0.0)
    return out
