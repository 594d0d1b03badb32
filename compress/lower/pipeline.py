"""Sparsify a model: score, lower every Linear / Conv2d weight to one format, swap in the sparse
modules, and write / read the sparse directory (sparse_plan.json + sparse_model.safetensors),
rebuilt without unpickling anything."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from compress.errors import CompressError
from compress.lower import formats
from compress.lower.modules import BlockSparseLinear, Sparse24Linear, replaceable, set_module, sparse_module
from compress.lower.plan import PLAN_FILE, LayerPlan, SparsePlan

WEIGHTS_FILE = "sparse_model.safetensors"
UPDATES = ("none", "obs")


@dataclass(frozen=True)
class SparsifyConfig:
    pattern: str                       # 2:4 | block:B | unstructured | dense
    sparsity: float = 0.5              # 2:4: always 0.5
    criterion: str = "magnitude"
    update: str = "none"               # none | obs (2:4 only)
    scope: str = "layer"               # unstructured: layer | global
    calib: str | None = None           # the calibration spec, recorded
    data_select: bool = False          # 2:4 + magnitude: pick by output error on the calibration data
    seed: int = 0

    def validate(self) -> tuple[str, int | None]:
        from compress.sparse.masks import CRITERIA

        fmt, block = formats.parse_pattern(self.pattern)
        formats.check_sparsity(self.sparsity)
        if fmt == "2:4" and self.sparsity != 0.5:
            raise CompressError(f"--pattern 2:4 keeps 2 of every 4 weights (sparsity 0.5); got --sparsity {self.sparsity}")
        if self.criterion not in CRITERIA:
            raise CompressError(f"--criterion {self.criterion!r}: use one of {', '.join(CRITERIA)}")
        if self.update not in UPDATES:
            raise CompressError(f"--update {self.update!r}: use none or obs")
        if self.update == "obs" and fmt != "2:4":
            raise CompressError(f"--update obs applies to --pattern 2:4, not {self.pattern}")
        if self.scope not in ("layer", "global"):
            raise CompressError(f"scope {self.scope!r}: use layer or global")
        return fmt, block


@dataclass
class SparsifyResult:
    model: nn.Module                   # sparse modules swapped in
    masked: nn.Module                  # the same weights, dense nn modules with zeros in place
    plan: SparsePlan
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)   # what sparse_model.safetensors holds


def check_layers(model: nn.Module, fmt: str) -> dict[str, nn.Module]:
    layers = formats.target_layers(model)
    if not layers:
        raise CompressError("the model has no Linear or Conv2d (groups 1) layer to sparsify")
    if fmt == "2:4":
        for name, m in layers.items():
            formats.check_24(name, formats.weight_2d(m).shape[1] if isinstance(m, nn.Linear) else m.in_channels)
    return layers


def _lower_layer(name, m, fmt, block, cfg: SparsifyConfig, score, h, keep_hint):
    """-> (new 2-D weights, keep mask, block mask, error_before, error_after, error_magnitude)."""
    w2 = formats.weight_2d(m).detach().float()
    s2 = None if score is None else formats.weight_2d(m, score)
    density = 1.0 - cfg.sparsity
    bmask, err_mag = None, None
    if fmt == "2:4":
        scores_24 = None if cfg.criterion == "magnitude" else s2
        if cfg.update == "obs":
            if h is None:
                raise CompressError("--update obs needs calibration data (--calib)")
            hint = None if scores_24 is None else formats.select_24(w2, scores_24)
            new, keep = formats.obs_24(w2, h, mask=hint)
        else:
            keep = formats.select_24(w2, scores_24, h if cfg.data_select else None)
            new = w2 * keep
        if h is not None:
            err_mag = formats.output_error(w2, w2 * formats.select_24(w2), h)
    elif fmt.startswith("block:"):
        bmask = formats.select_blocks(s2, block, density)
        keep = formats.block_mask_full(bmask, block, tuple(w2.shape))
        new = w2 * keep
    elif fmt == "unstructured":
        keep = formats.topk_mask(s2, density, per_row=cfg.criterion == "wanda") if keep_hint is None else keep_hint
        new = w2 * keep
    else:
        keep, new = torch.ones_like(w2, dtype=torch.bool), w2
    if h is None:
        return new, keep, bmask, None, None, None
    return new, keep, bmask, formats.output_error(w2, w2 * keep, h), formats.output_error(w2, new, h), err_mag


def lower_into(name: str, m: nn.Module, fmt: str, block: int | None, cfg: SparsifyConfig, score, h, keep_hint,
               masked: nn.Module, lowered: nn.Module, tensors: dict[str, torch.Tensor]) -> LayerPlan:
    """Lower layer `name` (module `m` of the source model) to `fmt`: its zeros go into `masked` (dense),
    its sparse module (or masked weight) into `lowered`, its encoded tensors into `tensors`."""
    new, keep, bmask, e0, e1, emag = _lower_layer(name, m, fmt, block, cfg, score, h, keep_hint)
    enc = formats.encode(fmt, new, keep, block, bmask)
    w_masked = formats.weight_from_2d(m, formats.decode(fmt, enc, tuple(new.shape), block)).to(m.weight.dtype)
    with torch.no_grad():
        masked.get_submodule(name).weight.copy_(w_masked)
    module = "dense"
    if fmt in ("2:4",) or fmt.startswith("block:"):
        if replaceable(m):
            new_mod = sparse_module(masked.get_submodule(name), fmt, enc, block)
            set_module(lowered, name, new_mod)
            module = type(new_mod).__name__
    if module == "dense":
        with torch.no_grad():
            lowered.get_submodule(name).weight.copy_(w_masked)
    for k, t in enc.items():
        tensors[f"{name}.{k}"] = t
    return LayerPlan(name=name, kind="conv" if isinstance(m, nn.Conv2d) else "linear",
                     shape=tuple(m.weight.shape), format=fmt, density=float(keep.float().mean()),
                     criterion=cfg.criterion, block=block, module=module,
                     error_before=e0, error_after=e1, error_magnitude=emag)


def other_tensors(masked: nn.Module, layers, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor of `masked` but the lowered layers' weights (stored in their formats) into `tensors`."""
    weight_keys = {f"{n}.weight" for n in layers}
    for k, t in masked.state_dict().items():
        if k not in weight_keys:
            tensors[k] = t


def sparsify(model: nn.Module, inputs: tuple, cfg: SparsifyConfig, source: dict,
             calib: list[tuple] | None = None, log=None) -> SparsifyResult:
    """Lower every Linear / Conv2d of `model` (not modified) to cfg.pattern."""
    from compress.sparse import masks as M

    fmt, block = cfg.validate()
    layers = check_layers(model, fmt)
    calib = calib or []
    torch.manual_seed(cfg.seed)
    log and log("scoring")
    need_scores = fmt in ("unstructured",) or fmt.startswith("block:") or cfg.criterion != "magnitude"
    score = M.scores(cfg.criterion, model, layers, calib, inputs) if need_scores else {}
    keep_hint = {}
    if fmt == "unstructured" and cfg.scope == "global":
        keep_hint = {n: formats.weight_2d(layers[n], mk) for n, mk in M.global_masks(score, cfg.sparsity).items()}
    log and log("lowering")
    hs = formats.collect_hessians(model, layers, calib) if calib else {}
    masked = copy.deepcopy(model).eval()
    lowered = copy.deepcopy(model).eval()
    plans, tensors, notes = [], {}, []
    for name, m in layers.items():
        plans.append(lower_into(name, m, fmt, block, cfg, score.get(name), hs.pop(name, None), keep_hint.get(name),
                                masked, lowered, tensors))
    skipped = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n not in layers]
    if skipped:
        notes.append(f"{len(skipped)} grouped/depthwise or non-zero-padded convs stay dense: {', '.join(skipped[:5])}"
                     + (" ..." if len(skipped) > 5 else ""))
    other_tensors(masked, layers, tensors)
    config = {"pattern": cfg.pattern, "sparsity": cfg.sparsity, "criterion": cfg.criterion, "update": cfg.update,
              "scope": cfg.scope, "calib": cfg.calib, "data_select": cfg.data_select, "seed": cfg.seed}
    plan = SparsePlan(source=source, config=config, layers=tuple(plans), notes=tuple(notes))
    return SparsifyResult(lowered, masked, plan, tensors)


# ------------------------------------------------------------------ the directory

def save_sparse_dir(d: str, res: SparsifyResult, hf_config: dict | None = None) -> None:
    from safetensors.torch import save_file

    from compress.io import write_json

    Path(d, PLAN_FILE).write_text(res.plan.to_json())
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in sorted(res.tensors.items())},
              os.path.join(d, WEIGHTS_FILE))
    if hf_config is not None:
        write_json(os.path.join(d, "config.json"), hf_config)


def _source_model(d: str, plan: SparsePlan):
    from compress import models

    src = plan.source["model"]
    if src.startswith("hf:"):
        cfg = json.loads(Path(d, "config.json").read_text())
        return models.LoadedModel(models._hf_from_config(cfg), src, "hf", tuple(plan.source["input_shape"]),
                                  "int64", cfg.get("vocab_size"), cfg)
    return models._build_source(src, pretrained=False)


def load_sparse(d: str):
    """A sparsify directory -> compress.models.LoadedModel holding the lowered model. With a plan.json
    beside sparse_plan.json (`compress prune --plan` of a mixed plan) the source model is pruned by that
    plan first and `lm.plan` holds it."""
    from safetensors import safe_open

    from compress.graph.canonical import canonicalize

    plan_path, w_path = os.path.join(d, PLAN_FILE), os.path.join(d, WEIGHTS_FILE)
    if not os.path.isfile(plan_path) or not os.path.isfile(w_path):
        raise CompressError(f"{d} is not a sparsify directory (needs {PLAN_FILE} and {WEIGHTS_FILE})")
    plan = SparsePlan.from_json(Path(plan_path).read_text(), plan_path)
    lm = _source_model(d, plan)
    model = lm.model
    canonicalize(model)
    pruned = _prune_plan(d)
    if pruned is not None:                            # `compress prune --plan` of a mixed plan: structured first
        from compress.prune.structured import apply_keep
        try:
            apply_keep(model, pruned.param_keep())
        except (KeyError, RuntimeError, IndexError) as e:
            raise CompressError(f"{d}: the prune plan does not fit {plan.source['model']} "
                                f"({type(e).__name__}: {str(e)[:200]})") from None
    try:
        with safe_open(w_path, framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CompressError(f"cannot read {w_path} ({type(e).__name__}: {str(e)[:200]})") from None
    try:
        for lp in plan.layers:
            m = model.get_submodule(lp.name)
            if tuple(m.weight.shape) != lp.shape:
                raise CompressError(f"layer {lp.name}: the plan says weight {lp.shape}, the model has {tuple(m.weight.shape)}")
            keys = [k for k in state if k.rsplit(".", 1)[0] == lp.name and k != f"{lp.name}.bias"]
            enc = {k.rsplit(".", 1)[1]: state.pop(k) for k in keys}
            if lp.module in ("Sparse24Linear", "BlockSparseLinear"):
                if f"{lp.name}.bias" in state:
                    with torch.no_grad():
                        m.bias.copy_(state.pop(f"{lp.name}.bias"))
                set_module(model, lp.name, sparse_module(m, lp.format, enc, lp.block))
            else:
                w2 = formats.decode(lp.format, enc, lp.shape_2d, lp.block)
                state[f"{lp.name}.weight"] = formats.weight_from_2d(m, w2)
        missing, unexpected = model.load_state_dict(state, strict=False)
        sparse_keys = {k for k in model.state_dict() if isinstance(
            model.get_submodule(k.rsplit(".", 1)[0]) if "." in k else model, (Sparse24Linear, BlockSparseLinear))}
        missing = [k for k in missing if k not in sparse_keys]
        if missing or unexpected:
            raise CompressError(f"{w_path} does not fit {plan.source['model']}: "
                                f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except (KeyError, RuntimeError, AttributeError) as e:
        raise CompressError(f"{d}: plan and weights do not fit {plan.source['model']} "
                            f"({type(e).__name__}: {str(e)[:200]})") from None
    lm.model = model.eval()
    lm.input_shape = tuple(plan.source["input_shape"])
    lm.input_dtype = plan.source.get("input_dtype", lm.input_dtype)
    lm.notes = [f"sparse: {plan.config['pattern']} ({len(plan.layers)} layers) from {d}"]
    lm.plan = pruned
    return lm


def _prune_plan(d: str):
    """The PrunePlan beside the sparse plan (a directory written by `compress prune --plan` from a
    mixed plan: channels removed, then layers lowered), or None (a `compress sparsify` directory)."""
    from compress.models import PLAN_FILE as PRUNE_PLAN_FILE
    from compress.plan import PrunePlan

    p = os.path.join(d, PRUNE_PLAN_FILE)
    return PrunePlan.from_json(Path(p).read_text(), p) if os.path.isfile(p) else None


def load_sparse_dir(d: str) -> nn.Module:
    return load_sparse(d).model
