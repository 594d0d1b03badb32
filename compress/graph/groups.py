"""Channel groups: the coupled channels that must be removed together.

A *class* is a set of elementary channels tied by the traced graph (a conv's output channel,
the BN, the next conv's input channel, the residual partner ...). A *group* is the set of
classes that appear together in one producer dimension (a conv's or linear's output
dimension, an embedding's feature dimension): the unit a ratio applies to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from compress.graph.trace import export_model, propagate, resolve


@dataclass
class Group:
    id: int
    classes: np.ndarray          # root ids of prunable classes, in producer order
    width: np.ndarray            # elementary channels per class in the primary producer dim
    fixed: int                   # classes in this group that can never be removed
    producers: list[tuple[str, int]]
    modules: list[str]           # every module with a parameter in this group
    blocked_reason: str | None = None
    spread: bool = False         # a class's channels sit apart, one per conv group (2-3 group convs)

    @property
    def size(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.width.sum()) if len(self.width) else 0


def _spread(dims, keys, prunable) -> bool:
    """Whether a class's elementary channels are apart in some producer dim (the same local position
    in each group of a 2-3 group conv) rather than one contiguous run (a head, a single channel)."""
    for k in keys:
        roots = dims[k]
        for r in prunable[:4]:
            pos = np.flatnonzero(roots == r)
            if len(pos) > 1 and pos[-1] - pos[0] != len(pos) - 1:
                return True
    return False


@dataclass
class ChannelGraph:
    groups: list[Group]
    dims: dict[tuple[str, int], np.ndarray]   # (param, dim) -> class id per index
    roles: dict[tuple[str, int], str]        # "producer" | "reader"
    unsupported: list[tuple[str, str]]       # (module, op) that blocked channels
    blocked: list[tuple[str, str]] = field(default_factory=list)  # (producer modules, reason)

    def keep_indices(self, removed: set[int]) -> dict[str, dict[int, list[int]]]:
        """Indices kept along every dimension of every parameter, given removed class ids."""
        rem = np.array(sorted(removed), dtype=np.int64)
        keep: dict[str, dict[int, list[int]]] = {}
        for (name, dim), roots in sorted(self.dims.items()):
            mask = ~np.isin(roots, rem)
            if not mask.all():
                keep.setdefault(name, {})[dim] = np.nonzero(mask)[0].tolist()
        return keep

    def removed_indices(self, removed: set[int]) -> dict[tuple[str, int], np.ndarray]:
        rem = np.array(sorted(removed), dtype=np.int64)
        out = {}
        for key, roots in self.dims.items():
            idx = np.nonzero(np.isin(roots, rem))[0]
            if len(idx):
                out[key] = idx
        return out

    def members(self, cls: int) -> list[tuple[str, int, np.ndarray]]:
        return [(n, d, np.nonzero(r == cls)[0]) for (n, d), r in self.dims.items() if (r == cls).any()]


def _module_of(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else ""


def build_graph(model: torch.nn.Module, example_inputs: tuple) -> ChannelGraph:
    return build_graph_traced(model, example_inputs)[0]


def build_graph_traced(model: torch.nn.Module, example_inputs: tuple):
    """The ChannelGraph, the ExportedProgram it came from, and the label context (labels per node)."""
    ep = export_model(model, example_inputs)
    ctx, param_labels = propagate(ep)
    dims = resolve(ctx, param_labels)
    blocked = ctx.ls.blocked
    roles = dict(ctx.roles)

    # classes connected through a shared producer dimension form one group
    producers = [k for k in param_labels_order(param_labels) if roles.get(k) == "producer"]
    parent: dict[int, int] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for key in producers:
        roots = dims[key]
        first = None
        for r in np.unique(roots).tolist():
            if r < 0:
                continue
            if first is None:
                first = find(r)
            else:
                parent[find(r)] = first

    by_group: dict[int, list[tuple[str, int]]] = {}
    for key in producers:
        roots = dims[key]
        valid = roots[roots >= 0]
        if len(valid):
            by_group.setdefault(find(int(valid[0])), []).append(key)

    # members per class, to list modules
    class_modules: dict[int, set[str]] = {}
    for (name, _d), roots in dims.items():
        for r in np.unique(roots).tolist():
            if r >= 0:
                class_modules.setdefault(r, set()).add(_module_of(name))

    groups: list[Group] = []
    blocked_list: list[tuple[str, str]] = []
    for gid_root, keys in by_group.items():
        order: list[int] = []
        seen = set()
        for key in keys:
            for r in dims[key].tolist():
                if r >= 0 and r not in seen:
                    seen.add(r)
                    order.append(r)
        prunable = [r for r in order if r not in blocked]
        fixed = len(order) - len(prunable)
        mods = sorted(set().union(*(class_modules.get(r, set()) for r in order)))
        if not prunable:
            reason = blocked.get(order[0], "blocked") if order else "empty"
            blocked_list.append((", ".join(sorted({_module_of(k[0]) for k in keys})), reason))
            continue
        width = np.array([max(int((dims[k] == r).sum()) for k in keys) for r in prunable], dtype=np.int64)
        groups.append(Group(
            id=len(groups), classes=np.array(prunable, dtype=np.int64), width=width, fixed=fixed,
            producers=keys, modules=mods, spread=_spread(dims, keys, prunable),
        ))
    graph = ChannelGraph(groups=groups, dims=dims, roles=roles, unsupported=list(ctx.unsupported),
                         blocked=blocked_list)
    return graph, ep, ctx


def param_labels_order(param_labels):
    for name, labs in param_labels.items():
        for d in range(len(labs)):
            yield (name, d)
