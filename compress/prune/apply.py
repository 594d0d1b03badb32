"""The structured-pruning verb as a library call: trace, score, select, remove, verify."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compress.errors import CompressError, first_line
from compress.graph.groups import ChannelGraph, build_graph
from compress.prune.importance import score
from compress.prune.plan import PruneConfig, PrunePlan, build_plan, removed_classes, select
from compress.prune.structured import apply_keep, zero_removed

TOLERANCE = 1e-4  # max |pruned - masked| relative to max |masked|


@dataclass
class PruneResult:
    model: nn.Module
    plan: PrunePlan
    graph: ChannelGraph
    max_rel_error: float


def ignored_groups(model: nn.Module, graph: ChannelGraph, ignore: tuple[str, ...]) -> set[int]:
    """Groups whose producer is an ignored module (its output channels are kept)."""
    names = dict(model.named_modules())
    out = set()
    for name in ignore:
        if name not in names:
            close = [n for n in names if n.endswith(name.split(".")[-1])][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise CompressError(f"--ignore {name}: the model has no module named {name!r}{hint}")
        for g in graph.groups:
            if any(p == name or p.startswith(name + ".") for p in (k[0].rsplit(".", 1)[0] for k in g.producers)):
                out.add(g.id)
    return out


def _flat(out) -> list[torch.Tensor]:
    """Every tensor the model returns (dicts, tuples, Hugging Face outputs: all of their tensors), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "keys") and hasattr(out, "__getitem__"):     # dicts and output objects (HF ModelOutput)
        return [t for k in out.keys() for t in _flat(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flat(v)]
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@torch.no_grad()
def compare(a: nn.Module, b: nn.Module, inputs: tuple) -> float:
    ya, yb = _flat(a(*inputs)), _flat(b(*inputs))
    if len(ya) != len(yb):
        return float("inf")
    worst = 0.0
    for x, y in zip(ya, yb):
        if x.shape != y.shape:
            return float("inf")
        scale = max(float(x.abs().max()), 1e-6)
        diff = float((x.float() - y.float()).abs().max())
        if diff != diff or diff == float("inf"):  # NaN or Inf never passes
            return float("inf")
        worst = max(worst, diff / scale)
    return worst


def verify(model: nn.Module, pruned: nn.Module, graph: ChannelGraph, plan: PrunePlan, inputs: tuple) -> float:
    """Pruned output must equal the original with the removed channels zeroed."""
    removed = removed_classes(graph, plan)
    ref = zero_removed(copy.deepcopy(model), graph.removed_indices(removed))
    try:
        err = compare(ref, pruned, inputs)
    except RuntimeError as e:
        raise CompressError(f"the pruned model does not run ({first_line(e, 200, strip=False)}); "
                            "a module hard-codes a channel count: --ignore it") from None
    if err > TOLERANCE:
        culprit = _find_culprit(model, graph, plan, inputs)
        raise CompressError(
            f"pruning changed the model's function beyond removing channels (relative error {err:.2e})"
            + (f"; the group produced by {culprit} cannot be pruned safely: --ignore it" if culprit else ""))
    return err


def _find_culprit(model, graph, plan, inputs) -> str | None:
    for g, gp in zip(graph.groups, plan.groups):
        if len(gp.keep) == g.size:
            continue
        mask = np.ones(g.size, dtype=bool)
        mask[gp.keep] = False
        rem = set(g.classes[mask].tolist())
        ref = zero_removed(copy.deepcopy(model), graph.removed_indices(rem))
        try:
            pr = apply_keep(copy.deepcopy(model), graph.keep_indices(rem))
            bad = compare(ref, pr, inputs) > TOLERANCE
        except RuntimeError:
            bad = True
        if bad:
            return ", ".join(sorted({k[0].rsplit(".", 1)[0] for k in g.producers}))
    return None


def trace_inputs(inputs: tuple) -> tuple:
    """Trace with batch 2 so that the batch dimension never looks like a broadcast."""
    out = []
    for t in inputs:
        if t.dim() >= 1 and t.shape[0] == 1:
            t = torch.cat([t, t.flip(0) if t.is_floating_point() else t], 0)
            if t.is_floating_point():
                t[1:] = torch.randn_like(t[1:])
        out.append(t)
    return tuple(out)


def traced_graph(model: nn.Module, example_inputs: tuple, strict: bool, log, graph: ChannelGraph | None = None):
    """Canonicalise `model` in place (function-preserving: nn.MultiheadAttention -> split q/k/v/o), trace it
    with batch-2 inputs and check --strict. Returns (trace inputs, graph); a given `graph` is reused."""
    from compress.graph.canonical import canonicalize

    canonicalize(model)
    inputs = trace_inputs(example_inputs)
    if graph is None:
        log("tracing")
        graph = build_graph(model, inputs)
    if graph.unsupported and strict:
        where, op = graph.unsupported[0]
        raise CompressError(f"op {op} in {where} cannot be pruned safely; --ignore that module or drop --strict")
    return inputs, graph


def prune(model: nn.Module, example_inputs: tuple, config: PruneConfig, round_to: int, source: dict,
          calib=None, strict: bool = False, graph: ChannelGraph | None = None, log=None) -> PruneResult:
    config.validate()
    log = log or (lambda msg: None)
    inputs, graph = traced_graph(model, example_inputs, strict, log, graph)
    ign = ignored_groups(model, graph, config.ignore)
    log("scoring")
    scores = score(model, graph, config.criterion, calib=calib, seed=config.seed)
    keep = select(graph, scores, config, round_to, ign)
    plan = build_plan(graph, keep, config, round_to, source)
    plan.notes.extend(f"kept channels through unsupported op {op} in {w}" for w, op in graph.unsupported)
    log("removing")
    pruned = apply_keep(copy.deepcopy(model), plan.param_keep()).eval()
    log("verifying")
    err = verify(model, pruned, graph, plan, inputs)
    return PruneResult(pruned, plan, graph, err)


def apply_plan(model: nn.Module, example_inputs: tuple, plan: PrunePlan, log=None) -> PruneResult:
    """Apply a saved plan (e.g. from `compress plan`): slice by its kept indices, then verify the
    result against the original with the plan's removed channels zeroed. No scoring, no selection."""
    from compress.graph.canonical import canonicalize

    canonicalize(model)
    log = log or (lambda msg: None)
    params = dict(model.named_parameters(remove_duplicate=False))
    params.update(dict(model.named_buffers(remove_duplicate=False)))
    keep = plan.param_keep()
    removed: dict[tuple[str, int], np.ndarray] = {}
    for name, dims in keep.items():
        t = params.get(name)
        if t is None:
            raise CompressError(f"the plan names parameter {name!r}, which this model does not have: "
                                f"it was made for {plan.source.get('model')}")
        for d, idx in dims.items():
            if d >= t.dim() or (idx and max(idx) >= t.shape[d]):
                raise CompressError(f"the plan does not fit parameter {name!r} (shape {tuple(t.shape)}): "
                                    f"it was made for {plan.source.get('model')}")
            mask = np.ones(t.shape[d], dtype=bool)
            mask[idx] = False
            removed[(name, d)] = np.nonzero(mask)[0]
    log("removing")
    pruned = apply_keep(copy.deepcopy(model), keep).eval()
    log("verifying")
    inputs = trace_inputs(example_inputs)
    with torch.no_grad():
        ref = zero_removed(copy.deepcopy(model), removed)
    try:
        err = compare(ref, pruned, inputs)
    except RuntimeError as e:
        raise CompressError(f"the planned model does not run ({first_line(e, 200, strip=False)})") from None
    if err > TOLERANCE:
        raise CompressError(f"the plan changes the model's function beyond removing channels (relative error "
                            f"{err:.2e}): it was made for a different model or weights")
    return PruneResult(pruned, plan, None, err)
