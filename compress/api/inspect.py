"""`compress inspect`: channel groups, parameters and MACs of a model (or a pruned directory's plan).

    inspect(InspectRun(ModelSpec("torchvision:resnet18")))

returns {"text", "json"} as the CLI prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

from compress.models.source import ModelSpec


@dataclass(frozen=True)
class InspectRun:
    """One `compress inspect` run: `model` (MODEL_OR_DIR, --weights, --input-shape)."""
    model: ModelSpec


def inspect(cfg: InspectRun) -> dict:
    from compress.graph import build_graph
    from compress.metrics import size_summary
    from compress.prune.apply import trace_inputs

    lm, inputs = cfg.model.load()
    sizes = size_summary(lm.model, inputs)
    info = {"model": lm.spec, "params": sizes["params"], "macs": sizes["macs"],
            "input_shape": list(inputs[0].shape), "pruned": lm.plan is not None}
    lines = [f"{lm.spec}{' (pruned: ' + cfg.model.model + ')' if lm.plan else ''}",
             f"params {sizes['params']:,}  MACs {sizes['macs']:,}  input {tuple(inputs[0].shape)}"]
    if lm.plan is not None:
        gp = lm.plan.groups
        info["plan"] = {"groups": len(gp), "channels_before": sum(g.channels_before for g in gp),
                        "channels_after": sum(g.channels_after for g in gp), "config": lm.plan.config}
        lines.append(f"plan: {len(gp)} groups, channels {info['plan']['channels_before']} -> "
                     f"{info['plan']['channels_after']}, criterion {lm.plan.config['criterion']}, "
                     f"ratio {lm.plan.config['ratio']}")
    else:
        graph = build_graph(lm.model, trace_inputs(inputs))
        groups = []
        lines.append(f"{'group':>5} {'channels':>8} {'width':>5}  producers")
        for g in graph.groups:
            prods = sorted({k[0].rsplit('.', 1)[0] for k in g.producers})
            groups.append({"id": g.id, "classes": g.size, "channels": g.channels, "fixed": g.fixed,
                           "width": int(g.width[0]) if len(set(g.width.tolist())) == 1 else None,
                           "producers": prods, "modules": g.modules})
            shown = ", ".join(prods[:3]) + (f" (+{len(prods) - 3})" if len(prods) > 3 else "")
            lines.append(f"{g.id:>5} {g.channels:>8} {int(g.width[0]):>5}  {shown}")
        info["groups"] = groups
        info["blocked"] = [{"producers": p, "reason": r} for p, r in graph.blocked]
        info["unsupported"] = [{"module": w, "op": op} for w, op in graph.unsupported]
        for p, r in graph.blocked:
            mods = p.split(", ")
            shown = ", ".join(mods[:3]) + (f" (+{len(mods) - 3})" if len(mods) > 3 else "")
            lines.append(f"  kept  {shown}: {r}")
        for w, op in graph.unsupported:
            lines.append(f"  note: unsupported op {op} in {w} keeps its channels")
    return {"text": "\n".join(lines), "json": info}
