"""The sparse part of a mixed plan (`compress plan --formats structured,2:4,block`), applied by
`compress prune --plan` after the structured part.

The plan's `formats` name layers of the ORIGINAL model (module -> {"format": "2:4" | "block:B",
"density"}). Structured pruning keeps module names but shrinks shapes, so each layer is lowered at
its pruned shape: 2:4 along the reduction dimension (which must still be a multiple of 4: the planner
prices 2:4 on the dense shape only, and channel counts that are not multiples of 4 can survive
pruning, e.g. a group kept whole or widened to keep a layer alive; such a layer stays dense, with a
note naming it), block:B as BSR of the zero-padded weight at the plan's density.

Selection: 2:4 with calibration data given (--calib, or --data) drops the pair of least output error
and updates the kept weights by the OBS rule (compress.lower.formats.obs_24); without, by magnitude.
Blocks are ranked by magnitude. Per-layer output errors are measured on the calibration data (given,
or random:32 as `compress sparsify` does).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from compress.errors import CompressError
from compress.lower import formats as F
from compress.lower.pipeline import SparsifyConfig, SparsifyResult, lower_into, other_tensors, reduction_dim
from compress.lower.sparse_plan import SparsePlan


def planned(plan_formats: dict, model: nn.Module) -> dict[str, tuple[str, int | None, float]]:
    """Check a plan's `formats` against the (canonicalised, unpruned) model before any work:
    layer -> (format, block, density) for the layers to lower (dense entries dropped)."""
    mods = dict(model.named_modules())
    out = {}
    for name, e in sorted((plan_formats or {}).items()):
        if not isinstance(e, dict) or "format" not in e:
            raise CompressError(f"the plan's formats: layer {name!r} needs a 'format' (2:4, block:N or dense)")
        text = str(e["format"])
        if text == "dense":
            continue
        if text != "2:4" and not text.startswith("block:"):
            raise CompressError(f"the plan's formats: layer {name} has format {text!r}; use 2:4, block:N or dense")
        try:
            fmt, block = F.parse_pattern(text)
        except CompressError as err:
            raise CompressError(f"the plan's formats: layer {name}: {err}") from None
        density = e.get("density", 0.5 if fmt == "2:4" else None)
        if fmt == "2:4" and density != 0.5:
            raise CompressError(f"the plan's formats: layer {name} is 2:4, which keeps density 0.5, not {density}")
        if not isinstance(density, (int, float)) or isinstance(density, bool) or not 0.0 < density <= 1.0:
            raise CompressError(f"the plan's formats: layer {name} ({text}) needs a density in (0, 1], got {density!r}")
        m = mods.get(name)
        if m is None or not name:
            raise CompressError(f"the plan's formats name layer {name!r}, which this model does not have: "
                                "the plan was made for another model")
        if not F.lowerable(m):
            raise CompressError(f"the plan marks layer {name} {text}, but it is a {type(m).__name__}: only Linear "
                                "and Conv2d (groups 1) layers can be lowered")
        out[name] = (fmt, block, float(density))
    return out


def fit(specs: dict, pruned: nn.Module) -> tuple[dict, dict[str, str]]:
    """Layers that can be lowered at their pruned shape, and {layer: why it stays dense}."""
    ok, dense = {}, {}
    for name, (fmt, block, density) in specs.items():
        m = pruned.get_submodule(name)
        k = reduction_dim(m)                             # compress.lower.pipeline.unfit_reason's condition
        if fmt == "2:4" and k % 4:
            dense[name] = (f"2:4 needs a reduction dimension that is a multiple of 4, and after structured "
                           f"pruning it is {k}: kept dense")
            continue
        ok[name] = (fmt, block, density)
    return ok, dense


def lower_planned(model: nn.Module, specs: dict, source: dict, calib: list[tuple], data_select: bool,
                  calib_spec: str, seed: int = 0, notes: tuple[str, ...] = ()) -> SparsifyResult:
    """Lower each layer of `specs` (layer -> (format, block, density)) of the pruned `model` (not
    modified). `calib`: batches for the Hessians (errors; with `data_select` also 2:4 selection + OBS)."""
    from compress.sparse.masks import magnitude_scores

    torch.manual_seed(seed)
    layers = {n: model.get_submodule(n) for n in specs}
    hs = F.collect_hessians(model, layers, calib) if calib and layers else {}
    scores = magnitude_scores(model, {n: m for n, m in layers.items() if specs[n][0] != "2:4"})
    masked = copy.deepcopy(model).eval()
    lowered = copy.deepcopy(model).eval()
    plans, tensors = [], {}
    for name, m in layers.items():
        fmt, block, density = specs[name]
        cfg = SparsifyConfig(pattern=fmt, sparsity=1.0 - density, criterion="magnitude",
                             update="obs" if fmt == "2:4" and data_select else "none", calib=calib_spec,
                             data_select=data_select, seed=seed)
        cfg.validate()
        plans.append(lower_into(name, m, fmt, block, cfg, scores.get(name), hs.pop(name, None), None,
                                masked, lowered, tensors))
    other_tensors(masked, layers, tensors)
    obs = data_select and any(f == "2:4" for f, _, _ in specs.values())
    config = {"pattern": "mixed", "criterion": "magnitude", "update": "obs" if obs else "none",
              "calib": calib_spec, "data_select": data_select, "seed": seed, "applied_by": "compress prune --plan"}
    plan = SparsePlan(source=source, config=config, layers=tuple(plans), notes=tuple(notes))
    return SparsifyResult(lowered, masked, plan, tensors)


def lowered_vs_masked(res: SparsifyResult, inputs: tuple) -> float:
    """Max relative error of the lowered model against the masked dense one, on every CPU backend."""
    from compress.lower.modules import set_backends

    with torch.no_grad():
        ref = res.masked(*inputs)
        worst = 0.0
        for backend in ("dense", "sparse"):
            set_backends(res.model, prefer=backend)
            out = res.model(*inputs)
            worst = max(worst, float((out - ref).abs().max()) / max(float(ref.abs().max()), 1e-6))
        set_backends(res.model)
    return worst


def layer_table(res: SparsifyResult | None, dense: dict[str, str]) -> dict[str, dict]:
    """summary.json's `formats`: every layer the plan named, with its applied format."""
    out = {}
    for lp in (res.plan.layers if res is not None else ()):
        out[lp.name] = {"format": lp.format, "module": lp.module, "density": lp.density, "shape": list(lp.shape),
                        "error_before": lp.error_before, "error_after": lp.error_after,
                        "error_magnitude": lp.error_magnitude}
    for name, why in dense.items():
        out[name] = {"format": "dense", "module": "dense", "density": 1.0, "fallback": why}
    return dict(sorted(out.items()))


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def text_lines(res: SparsifyResult | None, dense: dict[str, str], calib_spec: str, data_select: bool) -> list[str]:
    layers = list(res.plan.layers) if res is not None else []
    lines = [f"lowered {len(layers)} layer(s) of the plan's formats ("
             + ("2:4 by output error with OBS update, " if data_select else "magnitude, ")
             + f"errors on {calib_spec})"]
    if layers:
        width = max(len(lp.name) for lp in layers)
        lines.append(f"{'layer':<{width}} {'format':<9} {'module':<18} {'density':>7} {'err before':>10} {'err after':>10}")
        for lp in layers:
            lines.append(f"{lp.name:<{width}} {lp.format:<9} {lp.module:<18} {lp.density:>7.3f} "
                         f"{_fmt(lp.error_before):>10} {_fmt(lp.error_after):>10}")
    lines += [f"warning: layer {n}: {why}" for n, why in dense.items()]
    return lines
