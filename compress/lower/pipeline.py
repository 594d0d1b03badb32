"""Sparsify a model: score, lower every Linear / Conv2d weight to one format, swap in the sparse
modules, and write the sparse directory (sparse_plan.json + sparse_model.safetensors; read back,
without unpickling anything, by compress.models.load_sparse)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from compress.errors import CompressError
from compress.io import SPARSE_WEIGHTS_FILE as WEIGHTS_FILE
from compress.lower import formats
from compress.lower.modules import replaceable, set_module, sparse_module
from compress.lower.sparse_plan import PLAN_FILE, LayerPlan, SparsePlan

UPDATES = ("none", "obs")


@dataclass(frozen=True)
class SparsifyConfig:
    pattern: str                       # 2:4 | block:B | unstructured | dense
    sparsity: float | None = 0.5       # 2:4: always 0.5; None: compress.api.sparsify fills the default
    criterion: str = "magnitude"
    update: str = "none"               # none | obs (2:4 only)
    scope: str = "layer"               # unstructured: layer | global
    calib: str | None = None           # the calibration spec, recorded
    data_select: bool = False          # 2:4 + magnitude: pick by output error on the calibration data
    seed: int = 0
    strict: bool = False               # a layer that cannot take the pattern: refuse the model (else: kept dense)

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


def reduction_dim(m: nn.Module) -> int:
    """The dimension 2:4 groups run along: in_features, or a conv's input channels (its 2-D columns
    are ordered (kh, kw, c), so groups of 4 are 4 input channels at one kernel position)."""
    return m.in_channels if isinstance(m, nn.Conv2d) else m.in_features


def unfit_reason(m: nn.Module, fmt: str) -> str | None:
    """Why layer `m` cannot take `fmt`, or None. Only 2:4 has a shape condition: block:B pads the
    weight to multiples of B, unstructured and dense fit any shape."""
    if fmt == "2:4":
        k = reduction_dim(m)
        if k % 4:
            return f"2:4 needs a reduction dimension that is a multiple of 4, it has {k}"
    return None


def check_layers(model: nn.Module, fmt: str, strict: bool = False) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The layers to lower and {layer: why it stays dense} for those that cannot take `fmt` (a stem
    conv on 1 or 3 input channels under 2:4, as NVIDIA ASP / ModelOpt leave them). `strict`: refuse
    the model at the first such layer instead. A model none of whose layers fits is refused."""
    layers = formats.target_layers(model)
    if not layers:
        raise CompressError("the model has no Linear or Conv2d (groups 1) layer to sparsify")
    skipped = {}
    tied = formats.tied_layers(model)
    for name, m in layers.items():
        if name in tied:      # not a format's limit: no --pattern lowers a tied weight
            skipped[name] = f"its weight is tied to {tied[name]}, which sparsifying it would change too"
            continue
        why = unfit_reason(m, fmt)
        if why is None:
            continue
        if strict and fmt == "2:4":
            formats.check_24(name, reduction_dim(m))         # today's message, word for word
        if strict:
            raise CompressError(f"layer {name}: {why}; pick another --pattern")
        skipped[name] = why
    if len(skipped) == len(layers):
        name, why = next(iter(skipped.items()))
        if all("is tied to" in w for w in skipped.values()):
            raise CompressError(f"no layer of the model can be sparsified: its Linear and Conv2d layers' weights are "
                                f"tied to other parameters (e.g. layer {name}: {why})")
        raise CompressError(f"no layer of the model can take {fmt} (e.g. layer {name}: {why}); pick another --pattern")
    return layers, skipped


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
               masked: nn.Module, lowered: nn.Module, tensors: dict[str, torch.Tensor],
               skipped: str | None = None) -> LayerPlan:
    """Lower layer `name` (module `m` of the source model) to `fmt`: its zeros go into `masked` (dense),
    its sparse module (or masked weight) into `lowered`, its encoded tensors into `tensors`.
    `skipped`: why the layer cannot take `fmt`; it is then stored dense (format "dense") with that reason."""
    if skipped is not None:
        fmt, block = "dense", None
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
                     error_before=e0, error_after=e1, error_magnitude=emag, skipped=skipped)


def other_tensors(masked: nn.Module, layers, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor of `masked` but the lowered layers' weights (stored in their formats) into `tensors`."""
    weight_keys = {f"{n}.weight" for n in layers}
    for k, t in masked.state_dict().items():
        if k not in weight_keys:
            tensors[k] = t


def sparsify(model: nn.Module, inputs: tuple, cfg: SparsifyConfig, source: dict,
             calib: list[tuple] | None = None, log=None, scores: dict | None = None) -> SparsifyResult:
    """Lower every Linear / Conv2d of `model` (not modified) to cfg.pattern. `scores`: the criterion's
    scores computed elsewhere (movement accumulated while fine-tuning, compress.sparse.movement)."""
    from compress.sparse import masks as M

    fmt, block = cfg.validate()
    layers, unfit = check_layers(model, fmt, cfg.strict)
    calib = calib or []
    torch.manual_seed(cfg.seed)
    log and log("scoring")
    need_scores = fmt in ("unstructured",) or fmt.startswith("block:") or cfg.criterion != "magnitude"
    if scores is not None:
        score = {n: scores[n] for n in layers}
    else:
        score = M.scores(cfg.criterion, model, layers, calib, inputs) if need_scores else {}
    keep_hint = {}
    if fmt == "unstructured" and cfg.scope == "global":
        keep_hint = {n: formats.weight_2d(layers[n], mk) for n, mk in M.global_masks(score, cfg.sparsity).items()}
    log and log("lowering")
    hs = formats.collect_hessians(model, {n: m for n, m in layers.items() if n not in unfit}, calib) if calib else {}
    masked = copy.deepcopy(model).eval()
    lowered = copy.deepcopy(model).eval()
    plans, tensors, notes = [], {}, []
    for name, m in layers.items():
        plans.append(lower_into(name, m, fmt, block, cfg, score.get(name), hs.pop(name, None), keep_hint.get(name),
                                masked, lowered, tensors, skipped=unfit.get(name)))
    if unfit:
        notes.append(f"{len(unfit)} layer(s) cannot take {fmt} and stay dense, each with the reason in its 'skipped' "
                     f"(--strict refuses the model instead): {', '.join(list(unfit)[:5])}"
                     + (" ..." if len(unfit) > 5 else ""))
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
