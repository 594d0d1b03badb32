"""Unstructured importance scores and masks. Every score is "higher = keep", one tensor per layer
in the layer's weight shape, keyed by module name.

- magnitude: |W| (Han et al. 2015); masks per layer or global.
- movement (Sanh et al. 2020): S = -sum_t W_t * dL/dW_t accumulated during fine-tuning;
  weights moving away from zero score high. `Movement` is the training-loop API;
  `compress.sparse.movement.finetune` is the published method end to end (fine-tuning with masks on the
  cubic schedule), what `compress sparsify --criterion movement --finetune E` runs.
- wanda (Sun et al. 2023): |W_ij| * ||X_j||_2, X_j the layer's j-th input feature over the
  calibration data (for convs, the im2col column); compared per output row by default.
- snip (Lee et al. 2019): |W * dL/dW| on a calibration batch.
- grasp (Wang et al. 2020): the paper's S = -W * (H g) removes its largest entries; returned
  here as W * (H g), so that higher = keep like every other score. Logits divided by T = 200.
- synflow (Tanaka et al. 2020): |W * dR/dW| with R = sum of the output of the network whose
  parameters are replaced by their absolute values, fed all-ones input; data-free. Iterative
  pruning (`synflow_masks`) re-scores after each of n rounds on an exponential schedule.

Losses (snip, grasp, movement in the CLI) are cross-entropy against the batch's labels when a
batch is (inputs, int labels), else against the model's own argmax (the dense model's prediction).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError
from compress.sparse.layout import input_2d, target_layers, topk_mask, weight_2d, weight_from_2d

CRITERIA = ("magnitude", "wanda", "movement", "snip", "grasp", "synflow")


def _layers(model: nn.Module, layers: dict[str, nn.Module] | None) -> dict[str, nn.Module]:
    return target_layers(model) if layers is None else layers


# ------------------------------------------------------------------ masks from scores

def layer_masks(scores: dict[str, torch.Tensor], sparsity: float, per_row: bool = False) -> dict[str, torch.Tensor]:
    """The same fraction `sparsity` removed from every layer (per output row with `per_row`)."""
    return {n: topk_mask(s, 1.0 - sparsity, per_row) for n, s in scores.items()}


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold over all layers: the `sparsity` fraction of all weights with the lowest scores go."""
    names = sorted(scores)
    flat = torch.cat([scores[n].reshape(-1).double() for n in names])
    keep = topk_mask(flat, 1.0 - sparsity)
    out, i = {}, 0
    for n in names:
        k = scores[n].numel()
        out[n] = keep[i:i + k].reshape(scores[n].shape)
        i += k
    return out


def masks(scores: dict[str, torch.Tensor], sparsity: float, scope: str = "layer", per_row: bool = False):
    if scope == "global":
        return global_masks(scores, sparsity)
    if scope != "layer":
        raise CompressError(f"mask scope {scope!r}: use layer or global")
    return layer_masks(scores, sparsity, per_row)


@torch.no_grad()
def apply_masks(model: nn.Module, mask: dict[str, torch.Tensor]) -> None:
    for n, m in mask.items():
        w = model.get_submodule(n).weight
        w.mul_(m.to(w.dtype))


# ------------------------------------------------------------------ magnitude

def magnitude_scores(model: nn.Module, layers: dict[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().abs().clone() for n, m in _layers(model, layers).items()}


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "layer",
                    layers: dict[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    return masks(magnitude_scores(model, layers), sparsity, scope)


# ------------------------------------------------------------------ movement

class Movement:
    """Movement pruning scores, accumulated during fine-tuning:

        mv = Movement(model)            # all Linear / Conv2d weights (or layers={name: module})
        for batch in data:
            loss = ...; loss.backward()
            mv.update()                 # S -= W * grad  (before optimizer.step())
            opt.step(); opt.zero_grad()
            mv.apply(schedule.at(step)) # optional: gradual pruning, masks re-applied each step
        masks = mv.masks(0.9)
    """

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module] | None = None) -> None:
        self.layers = _layers(model, layers)
        self.scores_ = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in self.layers.items()}
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        for n, m in self.layers.items():
            if m.weight.grad is None:
                raise CompressError(f"movement: layer {n} has no gradient; call update() after loss.backward()")
            self.scores_[n] -= (m.weight.detach() * m.weight.grad).double().to(self.scores_[n].device)
        self.steps += 1

    def scores(self) -> dict[str, torch.Tensor]:
        if not self.steps:
            raise CompressError("movement scores need at least one update() after a backward pass")
        return {n: s.clone() for n, s in self.scores_.items()}

    def masks(self, sparsity: float, scope: str = "layer") -> dict[str, torch.Tensor]:
        return masks(self.scores(), sparsity, scope)

    @torch.no_grad()
    def apply(self, sparsity: float, scope: str = "layer") -> dict[str, torch.Tensor]:
        mk = self.masks(sparsity, scope)
        for n, m in self.layers.items():
            m.weight.mul_(mk[n].to(m.weight.device, m.weight.dtype))
        return mk


# ------------------------------------------------------------------ losses

def default_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    """CE against the batch's labels if it carries int labels, else against the model's argmax."""
    if len(batch) == 2 and not batch[1].is_floating_point() and batch[1].dim() == 1 and batch[0].dim() > 1 \
            and batch[0].is_floating_point():
        out = model(batch[0])
        return F.cross_entropy(out, batch[1])
    out = model(*batch)
    flat = out.reshape(-1, out.shape[-1])
    return F.cross_entropy(flat, flat.detach().argmax(-1))


def movement_scores(model: nn.Module, batches: list[tuple], layers: dict[str, nn.Module] | None = None,
                    loss_fn: Callable = default_loss) -> dict[str, torch.Tensor]:
    """One-shot movement: -W * grad accumulated over the batches without weight updates."""
    mv = Movement(model, layers)
    with _weights_require_grad(mv.layers):
        for b in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model, b).backward()
            mv.update()
    model.zero_grad(set_to_none=True)
    return mv.scores()


# ------------------------------------------------------------------ data-driven

@torch.no_grad()
def input_norms(model: nn.Module, layers: dict[str, nn.Module], batches: list[tuple]) -> dict[str, torch.Tensor]:
    """||X_j||_2 of every layer's input columns (in weight_2d order) over the batches."""
    sq = {n: None for n in layers}
    hooks = []
    for name, m in layers.items():
        def hook(mod, args, out, name=name):
            s = input_2d(mod, args[0].detach()).double().pow(2).sum(0)
            sq[name] = s if sq[name] is None else sq[name] + s
        hooks.append(m.register_forward_hook(hook))
    try:
        for b in batches:
            model(*b)
    finally:
        for h in hooks:
            h.remove()
    for n, s in sq.items():
        if s is None:
            raise CompressError(f"layer {n} never ran on the calibration data")
    return {n: s.sqrt() for n, s in sq.items()}


def wanda_scores(model: nn.Module, batches: list[tuple], layers: dict[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    if not batches:
        raise CompressError("wanda needs calibration data (--calib)")
    layers = _layers(model, layers)
    norms = input_norms(model, layers, batches)
    return {n: weight_from_2d(m, weight_2d(m).abs().double() * norms[n][None, :]) for n, m in layers.items()}


@contextlib.contextmanager
def _weights_require_grad(layers: dict[str, nn.Module]):
    """Scores need dL/dW even for a model whose weights were frozen; restore the flags after."""
    saved = [(m.weight, m.weight.requires_grad) for m in layers.values()]
    for w, _ in saved:
        w.requires_grad_(True)
    try:
        yield
    finally:
        for w, flag in saved:
            w.requires_grad_(flag)


def _grads(model, layers, batch, loss_fn, create_graph=False):
    params = [m.weight for m in layers.values()]
    with _weights_require_grad(layers):
        loss = loss_fn(model, batch)
        return torch.autograd.grad(loss, params, create_graph=create_graph)


def snip_scores(model: nn.Module, batches: list[tuple], layers: dict[str, nn.Module] | None = None,
                loss_fn: Callable = default_loss) -> dict[str, torch.Tensor]:
    if not batches:
        raise CompressError("snip needs calibration data (--calib)")
    layers = _layers(model, layers)
    acc = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in layers.items()}
    for b in batches:
        for n, g in zip(layers, _grads(model, layers, b, loss_fn)):
            acc[n] += g.double()
    return {n: (m.weight.detach().double() * acc[n]).abs() for n, m in layers.items()}


def grasp_scores(model: nn.Module, batches: list[tuple], layers: dict[str, nn.Module] | None = None,
                 loss_fn: Callable | None = None, temperature: float = 200.0) -> dict[str, torch.Tensor]:
    """W * (H g): g the gradient over all batches, H g by a second backward pass per batch."""
    if not batches:
        raise CompressError("grasp needs calibration data (--calib)")
    layers = _layers(model, layers)
    if loss_fn is None:
        def loss_fn(mdl, b):
            return default_loss(_Tempered(mdl, temperature), b)
    params = [m.weight for m in layers.values()]
    g = [torch.zeros_like(p) for p in params]
    for b in batches:
        for acc, gi in zip(g, _grads(model, layers, b, loss_fn)):
            acc += gi.detach()
    hg = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    with _weights_require_grad(layers):
        for b in batches:
            gi = _grads(model, layers, b, loss_fn, create_graph=True)
            z = sum((a * c).sum() for a, c in zip(gi, g))
            for acc, h in zip(hg, torch.autograd.grad(z, params)):
                acc += h.double()
    return {n: p.detach().double() * h for n, p, h in zip(layers, params, hg)}


class _Tempered(nn.Module):
    def __init__(self, model, t):
        super().__init__()
        self.model, self.t = model, t

    def forward(self, *x):
        return self.model(*x) / self.t


def _linearized(model: nn.Module) -> nn.Module:
    lin = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in list(lin.parameters()) + [b for b in lin.buffers() if b.is_floating_point()]:
            t.abs_()
    return lin


def _ones_like_inputs(inputs: tuple) -> tuple:
    return tuple(torch.ones_like(x, dtype=torch.float64) if x.is_floating_point() else x for x in inputs)


def synflow_scores(model: nn.Module, inputs: tuple, layers: dict[str, nn.Module] | None = None,
                   masks_: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Data-free: `inputs` fix only the shape (floats become ones; token ids are kept)."""
    layers = _layers(model, layers)
    lin = _linearized(model)
    lin_layers = {n: lin.get_submodule(n) for n in layers}
    if masks_:
        with torch.no_grad():
            for n, mk in masks_.items():
                lin_layers[n].weight.mul_(mk.to(torch.float64))
    for m in lin_layers.values():
        m.weight.requires_grad_(True)
    out = lin(*_ones_like_inputs(inputs))
    r = out.sum()
    grads = torch.autograd.grad(r, [m.weight for m in lin_layers.values()])
    return {n: (m.weight.detach() * g).abs() for (n, m), g in zip(lin_layers.items(), grads)}


def synflow_masks(model: nn.Module, inputs: tuple, sparsity: float, layers: dict[str, nn.Module] | None = None,
                  iterations: int = 100, scope: str = "global") -> dict[str, torch.Tensor]:
    """Iterative SynFlow: round k keeps 1 - sparsity^... = (1 - sparsity)^(k/n) of the weights."""
    layers = _layers(model, layers)
    mk = None
    for k in range(1, iterations + 1):
        s = synflow_scores(model, inputs, layers, mk)
        if mk:
            s = {n: torch.where(mk[n], v, torch.full_like(v, -1.0)) for n, v in s.items()}  # pruned stay pruned
        mk = masks(s, 1.0 - (1.0 - sparsity) ** (k / iterations), scope)
    return mk


# ------------------------------------------------------------------ one entry point

def scores(criterion: str, model: nn.Module, layers: dict[str, nn.Module] | None = None,
           batches: list[tuple] | None = None, inputs: tuple | None = None) -> dict[str, torch.Tensor]:
    batches = batches or []
    if criterion == "magnitude":
        return magnitude_scores(model, layers)
    if criterion == "wanda":
        return wanda_scores(model, batches, layers)
    if criterion == "movement":
        if not batches:
            raise CompressError("movement needs calibration data (--calib) or a training loop (compress.sparse.masks.Movement)")
        return movement_scores(model, batches, layers)
    if criterion == "snip":
        return snip_scores(model, batches, layers)
    if criterion == "grasp":
        return grasp_scores(model, batches, layers)
    if criterion == "synflow":
        if inputs is None:
            raise CompressError("synflow needs example inputs (their shape)")
        return synflow_scores(model, inputs, layers)
    raise CompressError(f"unknown criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
