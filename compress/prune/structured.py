"""Physical removal: slice every parameter along its kept indices and fix module attributes."""

from __future__ import annotations

import torch
from torch import nn

_QKV = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"))


def _aliases(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """fqn -> every (module, attribute) holding the same tensor (tied weights included)."""
    by_id: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, t in list(mod._parameters.items()) + list(mod._buffers.items()):
            if t is not None:
                fqn = f"{mname}.{pname}" if mname else pname
                by_id.setdefault(id(t), []).append((fqn, mod, pname))
    out = {}
    for entries in by_id.values():
        holders = [(m, p) for _, m, p in entries]
        for fqn, _, _ in entries:
            out[fqn] = holders
    return out


def _snapshot(model: nn.Module) -> dict[int, dict]:
    snap = {}
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            snap[id(m)] = {"groups": m.groups, "in": m.in_channels, "out": m.out_channels}
        elif isinstance(m, nn.GroupNorm):
            snap[id(m)] = {"per_group": m.num_channels // m.num_groups}
    return snap


def apply_keep(model: nn.Module, keep: dict[str, dict[int, list[int]]]) -> nn.Module:
    """Slice parameters and buffers in place (`keep[fqn][dim]` = kept indices) and fix attributes."""
    snap = _snapshot(model)
    aliases = _aliases(model)
    done: set[int] = set()
    for fqn in sorted(keep):
        if fqn not in aliases:
            raise KeyError(f"plan names parameter {fqn!r}, which the model does not have")
        holders = aliases[fqn]
        mod, attr = holders[0]
        t = getattr(mod, attr)
        if id(t) in done:
            continue
        done.add(id(t))
        new = t.detach()
        for dim, idx in sorted(keep[fqn].items(), key=lambda kv: int(kv[0])):
            new = new.index_select(int(dim), torch.as_tensor(idx, dtype=torch.long, device=new.device))
        new = new.contiguous()
        for m, a in holders:
            if a in m._parameters:
                m._parameters[a] = nn.Parameter(new, requires_grad=t.requires_grad)
            else:
                m._buffers[a] = new
        # re-tie: every holder gets the same Parameter object
        first = holders[0][0]._parameters.get(holders[0][1]) if holders[0][1] in holders[0][0]._parameters else None
        if first is not None:
            for m, a in holders[1:]:
                if a in m._parameters:
                    m._parameters[a] = first
    fix_modules(model, snap)
    return model


def fix_modules(model: nn.Module, snap: dict[int, dict]) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            old = snap[id(m)]
            w = m.weight
            if m.transposed:
                m.in_channels = w.shape[0]
                m.out_channels = w.shape[1] * m.groups
            else:
                if old["groups"] > 1 and (old["groups"] == old["in"] or old["groups"] >= 4):
                    # depthwise, or grouped with whole groups removed (rules.py: _conv)
                    m.groups = w.shape[0] // (old["out"] // old["groups"])
                m.out_channels = w.shape[0]
                m.in_channels = w.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ref = m.weight if m.weight is not None else m.running_mean
            if ref is not None:   # a norm with neither affine parameters nor running statistics has no channel count
                m.num_features = ref.shape[0]
        elif isinstance(m, nn.GroupNorm):
            if m.weight is not None:
                m.num_channels = m.weight.shape[0]
                m.num_groups = m.num_channels // snap[id(m)]["per_group"]
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.normalized_shape = tuple(m.weight.shape)
        elif isinstance(m, nn.Embedding):
            m.embedding_dim = m.weight.shape[1]
        elif _is_hf_conv1d(m):
            # Hugging Face's Conv1D (GPT-2's c_fc, c_proj, c_attn): a Linear with an (in, out) weight whose forward
            # reshapes its output to `nf` features
            m.nf = m.weight.shape[1]
            if isinstance(getattr(m, "nx", None), int):
                m.nx = m.weight.shape[0]
        _fix_attention(m)


def _is_hf_conv1d(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return (type(m).__name__ == "Conv1D" and isinstance(getattr(m, "nf", None), int)
            and isinstance(w, torch.Tensor) and w.dim() == 2)


def _fix_attention(m: nn.Module) -> None:
    """Hugging Face style attention keeps head counts as attributes; recompute them from q/k."""
    head = getattr(m, "attention_head_size", None) or getattr(m, "head_dim", None)
    if not isinstance(head, int) or head <= 0:
        return
    for qn, kn, _vn in _QKV:
        q, k = getattr(m, qn, None), getattr(m, kn, None)
        if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
            # from the weights: fix_modules visits this module before its q/k Linears, whose out_features are
            # still the unpruned counts then
            hq, hk = q.weight.shape[0] // head, k.weight.shape[0] // head
            for attr in ("num_attention_heads", "num_heads"):
                if isinstance(getattr(m, attr, None), int) and not isinstance(getattr(type(m), attr, None), property):
                    setattr(m, attr, hq)
            if isinstance(getattr(m, "all_head_size", None), int):
                m.all_head_size = q.weight.shape[0]
            for attr in ("num_key_value_heads", "num_kv_heads"):
                if isinstance(getattr(m, attr, None), int):
                    setattr(m, attr, hk)
            return


@torch.no_grad()
def zero_removed(model: nn.Module, removed: dict[tuple[str, int], "object"]) -> nn.Module:
    """The reference for removal: the same model with every removed channel's parameters zeroed."""
    aliases = _aliases(model)
    for (fqn, dim), idx in removed.items():
        mod, attr = aliases[fqn][0]
        t = getattr(mod, attr)
        t.index_fill_(dim, torch.as_tensor(idx, dtype=torch.long, device=t.device), 0)
    return model
