"""Trace a model with torch.export and propagate channel labels through its ATen graph."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import torch

from compress.errors import CompressError, first_line
from compress.graph.rules import RULES, Ctx, _where, op_name, r_unknown


def export_model(model: torch.nn.Module, example_inputs: tuple) -> torch.export.ExportedProgram:
    model.eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception as e:  # torch raises many types here; report one line
        raise CompressError(
            f"cannot trace the model with torch.export ({type(e).__name__}: {first_line(e, 300)}); "
            "check --input-shape, or make the forward traceable"
        ) from None


def propagate(ep: torch.export.ExportedProgram) -> tuple[Ctx, dict[str, list[np.ndarray]]]:
    """Walk the graph once; return the label context and the labels of every parameter and buffer."""
    from torch.export.graph_signature import InputKind

    ctx = Ctx()
    kinds = {s.arg.name: s for s in ep.graph_signature.input_specs}
    param_labels: dict[str, list[np.ndarray]] = {}
    live = _live_nodes(ep.graph)
    for node in ep.graph.nodes:
        v = node.meta.get("val")
        if node.op == "call_function" and node not in live:
            continue  # dead code (an unused pooler): its channels reach no output
        if node.op == "placeholder":
            spec = kinds.get(node.name)
            if not isinstance(v, torch.Tensor):
                continue
            if spec is not None and spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                labs = [ctx.ls.fresh(s) for s in v.shape]
                ctx.param_of[node] = spec.target
                param_labels[spec.target] = labs
                ctx.labels[node] = labs
            else:  # user inputs and lifted constants have no channel identity
                ctx.labels[node] = ctx.none_like(v.shape)
        elif node.op == "call_function":
            name = op_name(node)
            rule = RULES.get(name)
            if name == "getitem":
                ctx.labels[node] = rule(ctx, node)
                continue
            if v is None or not (isinstance(v, torch.Tensor) or (
                    isinstance(v, (tuple, list)) and any(isinstance(t, torch.Tensor) for t in v))):
                continue
            try:
                out = (rule or r_unknown)(ctx, node)
            except (IndexError, ValueError, TypeError, KeyError, AttributeError) as e:
                raise CompressError(
                    f"cannot analyse op {name} in {_where(node)}: {type(e).__name__}: {e}"
                ) from None
            ctx.labels[node] = out
        elif node.op == "output":
            for arg in torch.utils._pytree.tree_leaves(node.args):
                lab = ctx.L(arg)
                if lab is not None and isinstance(lab, list) and lab and isinstance(lab[0], np.ndarray):
                    ctx.block_all(lab, "model output")
    return ctx, param_labels


def resolve(ctx: Ctx, param_labels: dict[str, list[np.ndarray]]) -> dict[tuple[str, int], np.ndarray]:
    """Map every (parameter, dim) to the root class id of each index."""
    out = {}
    for name, labs in param_labels.items():
        for d, arr in enumerate(labs):
            out[(name, d)] = ctx.ls.roots(arr)
    return out



def _live_nodes(graph) -> set:
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    live, stack = set(), [out]
    while stack:
        n = stack.pop()
        if n in live:
            continue
        live.add(n)
        stack.extend(n.all_input_nodes)
    return live
