"""Movement pruning as published (Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptive Sparsity by
Fine-Tuning"), hard-mask variant, while the weights are fine-tuned:

- every pruned layer computes with W' = W * M (M the current mask); its scores accumulate

      S = -sum_t W_t * dL/dW'_t                      (one term per optimizer step t)

  where dL/dW'_t is the gradient at the masked weight, taken with the straight-through estimator,
  so a pruned weight keeps its (frozen) value and its score and can come back;
- the optimizer really updates W, with the gradient dL/dW = dL/dW' * M (pruned weights get none);
- after every step the masks are recomputed from the scores at the sparsity of the gradual cubic
  schedule (Zhu & Gupta 2017, `compress.sparse.schedule.cubic`): `warmup` of the steps at 0, a cubic ramp
  to the final sparsity, `cooldown` of the steps at the final sparsity (Sanh et al.'s warm-up / cool-down).

Masks have the pattern's shape while training: `unstructured` the top-k of S per layer, `block:B` whole
B x B blocks ranked as `compress.lower.formats.select_blocks` ranks them, so the final mask is exactly
what `compress.lower.pipeline.sparsify` lowers when given the final scores. The one-shot
`compress.sparse.masks.movement_scores` (no weight updates) is what `compress sparsify --criterion
movement` does without --finetune.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.errors import CompressError
from compress.lower import formats
from compress.sparse.schedule import SparsitySchedule, cubic

PATTERNS = ("unstructured", "block")


@dataclass(frozen=True)
class MovementConfig:
    """Fine-tuning with movement pruning: `epochs` on the training split, SGD (Nesterov, momentum 0.9) at a
    fixed `lr` (compress.accuracy.train.FINETUNE_LR by default), the cubic ramp between `warmup` and
    1 - `cooldown` of the steps, masks recomputed every `every` steps."""
    epochs: float
    lr: float | None = None
    batch_size: int = 128
    warmup: float = 0.1
    cooldown: float = 0.2
    every: int = 1
    seed: int = 0

    def validate(self) -> None:
        if not (isinstance(self.epochs, (int, float)) and math.isfinite(self.epochs) and self.epochs > 0):
            raise CompressError(f"--finetune must be a positive number of epochs, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise CompressError(f"--lr must be positive, got {self.lr}")
        if not (0 <= self.warmup and 0 <= self.cooldown and self.warmup + self.cooldown < 1):
            raise CompressError("movement: warmup and cooldown are fractions of the steps with warmup + cooldown < 1")
        if self.every < 1 or self.batch_size < 1:
            raise CompressError("movement: every and batch_size must be positive")


@dataclass
class MovementResult:
    scores: dict[str, torch.Tensor]          # S per layer, float64, in the weight's shape
    masks: dict[str, torch.Tensor]           # the final masks (bool), what the model trained with last
    schedule: SparsitySchedule
    steps: int
    history: list[dict] = field(default_factory=list)
    sparsity_trace: list[float] = field(default_factory=list)   # the sparsity in force at each step

    def to_json(self) -> dict:
        s = self.schedule
        return {"criterion": "movement", "steps": self.steps, "schedule": "cubic", "final_sparsity": s.final,
                "ramp_start_step": s.start, "ramp_steps": s.steps, "mask_update_every": s.every,
                "history": self.history}


class _Score:
    """S for one layer; `add` runs in the backward pass of the masked weight."""

    def __init__(self, like: torch.Tensor) -> None:
        self.s = torch.zeros_like(like, dtype=torch.float64)

    def add(self, w: torch.Tensor, g: torch.Tensor) -> None:
        self.s -= (w.detach() * g.detach()).double()


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, mask, score):
        ctx.save_for_backward(w, mask)
        ctx.score = score
        return w * mask

    @staticmethod
    def backward(ctx, g):
        w, mask = ctx.saved_tensors
        ctx.score.add(w, g)                   # S -= W_t * dL/dW'_t (straight-through)
        return g * mask, None, None


class _Masked(nn.Module):
    """Parametrization W -> W * M, accumulating movement scores in the backward pass."""

    def __init__(self, mask: torch.Tensor, score: _Score) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32), persistent=False)
        self.score = score

    def forward(self, w):
        m = self.mask.to(w.dtype)
        return _STE.apply(w, m, self.score) if torch.is_grad_enabled() and w.requires_grad else w * m


def layer_mask(m: nn.Module, score: torch.Tensor, fmt: str, block: int | None, density: float) -> torch.Tensor:
    """The keep mask (weight's shape, bool) of `score` at `density` in the pattern, as lowering computes it."""
    s2 = formats.weight_2d(m, score)
    if fmt == "unstructured":
        keep = formats.topk_mask(s2, density)
    elif fmt == "block":
        keep = formats.block_mask_full(formats.select_blocks(s2, block, density), block, tuple(s2.shape))
    else:
        raise CompressError(f"movement pruning while fine-tuning takes --pattern unstructured or block:N, not {fmt}")
    return formats.weight_from_2d(m, keep.to(torch.float32)).bool()


def schedule_for(total_steps: int, sparsity: float, cfg: MovementConfig) -> SparsitySchedule:
    start = int(round(cfg.warmup * total_steps))
    ramp = max(1, total_steps - start - int(round(cfg.cooldown * total_steps)))
    return cubic(sparsity, ramp, start=start, every=cfg.every)


def finetune(model: nn.Module, train, layers: dict[str, nn.Module], fmt: str, block: int | None, sparsity: float,
             cfg: MovementConfig, teacher: nn.Module | None = None) -> MovementResult:
    """Fine-tune `model` in place on `train` with movement pruning of `layers` ({name: Linear/Conv2d of
    `model`}) to `sparsity` in the pattern `fmt` ("unstructured" or "block" with `block`). The model is left
    with its dense weights W (pruned entries keep their last values); the lowered model is W * masks."""
    from compress.accuracy.train import deterministic, fit, frozen_teacher, recovery_schedule

    cfg.validate()
    formats.check_sparsity(sparsity)
    if fmt not in PATTERNS:
        raise CompressError(f"movement pruning while fine-tuning takes --pattern unstructured or block:N, not {fmt}")
    if not layers:
        raise CompressError("movement pruning: the model has no Linear / Conv2d layer to prune")
    sched, lr_fn = recovery_schedule(cfg.epochs, cfg.lr, None, cfg.batch_size)
    total = max(1, round(cfg.epochs * math.ceil(len(train) / cfg.batch_size)))
    ramp = schedule_for(total, sparsity, cfg)
    scores = {n: _Score(m.weight) for n, m in layers.items()}
    params = {n: _Masked(torch.ones_like(m.weight, dtype=torch.bool), scores[n]) for n, m in layers.items()}
    trace: list[float] = [ramp.at(0)]
    step = [0]

    @torch.no_grad()
    def set_masks(s: float) -> None:
        for n, m in layers.items():
            params[n].mask.copy_(layer_mask(m, scores[n].s, fmt, block, 1.0 - s))

    def after_step(_model) -> None:
        step[0] += 1
        s = ramp.at(step[0])
        if s > 0 and (step[0] % cfg.every == 0 or step[0] >= total):
            set_masks(s)
        trace.append(s)

    for n, m in layers.items():
        parametrize.register_parametrization(m, "weight", params[n], unsafe=True)
    try:
        with deterministic(cfg.seed):
            history = fit(model, train, sched, cfg.epochs, lr_fn, teacher=frozen_teacher(teacher), seed=cfg.seed,
                          after_step=after_step, desc=f"movement fine-tune ({fmt}, sparsity -> {sparsity:g})")
        set_masks(sparsity)                 # the final masks: from the final scores at the final sparsity
        final = {n: p.mask.bool().clone() for n, p in params.items()}
    finally:
        for m in layers.values():
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    return MovementResult({n: sc.s.clone() for n, sc in scores.items()}, final, ramp, step[0], history, trace[:-1])
