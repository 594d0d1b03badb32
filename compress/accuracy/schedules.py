"""Pruning schedules: one shot, gradual (Zhu & Gupta 2017) and iterative (Molchanov et al. 2017).

- `oneshot`: prune to the final ratio at once, then fine-tune (`compress.prune.apply.prune` followed by
  `compress.accuracy.train.finetune`).
- `gradual`: the cubic sparsity schedule of Zhu and Gupta 2017 ("To prune, or not to prune"),
  applied to channel ratios. With final ratio s_f reached in n steps, step j (1..n) prunes to

      s_j = s_f + (s_0 - s_f) * (1 - j / n)^3,   s_0 = 0,

  removing many channels early, while redundancy is high, and few near the end. Each step is
  followed by 1/n of the fine-tuning budget; the last step's share trains the physically
  smaller model.
- `iterative`: prune/fine-tune cycles with the Taylor criterion (Molchanov et al. 2017,
  "Pruning Convolutional Neural Networks for Resource Efficient Inference"): n equal steps
  (s_j = s_f * j / n), each re-scoring the surviving channels on calibration data with the
  first-order Taylor estimate of the loss change, then 1/n of the fine-tuning budget.

Until the last step the model keeps its shape and removed channels are held at zero (masks
re-applied after every optimizer step), so every step's selection is made on the original
channel graph and the result is one ordinary plan relative to the source model: `plan.json`,
`model.safetensors` and `model.onnx` are exactly those of a one-shot prune with the same kept
channels, and the final removal is verified against the masked model like any other prune.
Removed channels never come back: a step only removes more. Kept counts per group are rounded
to the channel step at every step, so the final counts (and MACs) equal one-shot's.

Weight rewinding (`iterative` with `rewind_state`; `compress prune --rewind weights:K`): iterative
magnitude pruning with rewinding as in Frankle & Carbin 2019 ("The Lottery Ticket Hypothesis", k = 0)
and Frankle et al. 2020 / Renda et al. 2020 (k > 0). After each step's selection every surviving
parameter and buffer is reset to its value at the start of epoch K of the original training run
(removed channels stay zero; at the last step the epoch-K weights sliced to the kept channels), and the
step retrains with the original schedule replayed from epoch K: step j's share of the fine-tuning
budget follows the original LR from epoch K to the end T, stretched or compressed onto the share (an
exact replay when --finetune = steps x (T - K)), with a fresh optimizer. LR rewinding (`rewind` alone)
keeps the trained weights and replays the schedule's last epochs once across all steps.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from compress.errors import CompressError
from compress.sparse.schedule import cubic_sparsity  # the cubic ramp of `gradual` (callers may import it from here)

SCHEDULES = ("oneshot", "gradual", "iterative")
DEFAULT_STEPS = 4


def parse_rewind(spec: str) -> int:
    """`weights:K` (K an epoch, >= 0) -> K; anything else is bad input."""
    kind, _, k = str(spec).partition(":")
    if kind != "weights" or not k.isdigit():
        raise CompressError(f"--rewind {spec!r}: expected weights:EPOCH, the epoch of the original training to "
                            "rewind the surviving weights to (e.g. weights:1; weights:0 is the initial weights)")
    return int(k)


def rewind_lr(original, epoch: float, share: float):
    """LR of one step of weight rewinding: the `original` schedule from `epoch` to its end over `share` epochs."""
    span = original.epochs - epoch
    return lambda t: original.lr_at(epoch + span * min(t / share, 1.0))


@dataclass(frozen=True)
class PruneSchedule:
    kind: str = "oneshot"
    steps: int = DEFAULT_STEPS

    def validate(self) -> None:
        if self.kind not in SCHEDULES:
            raise CompressError(f"--schedule {self.kind!r}: use one of {', '.join(SCHEDULES)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise CompressError(f"--steps must be a positive integer, got {self.steps}")

    def ratios(self, final: float) -> list[float]:
        """The ratio reached after each step (the last is `final`)."""
        if self.kind == "oneshot":
            return [final]
        if self.kind == "gradual":
            return [cubic_sparsity(final, j, self.steps) for j in range(1, self.steps + 1)]
        return [final * j / self.steps for j in range(1, self.steps + 1)]


@dataclass
class StepRecord:
    step: int
    ratio: float
    channels_after: int
    macs: int
    epochs: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ScheduledResult:
    result: object                       # compress.prune.apply.PruneResult (the fine-tuned pruned model)
    steps: list[StepRecord]

    def to_json(self) -> list[dict]:
        return [s.__dict__ for s in self.steps]


def _masker(graph, removed: set[int]):
    idx = graph.removed_indices(removed)

    def apply(model: nn.Module) -> None:
        from compress.prune.structured import zero_removed

        with torch.no_grad():
            zero_removed(model, idx)
    return apply


def run(model: nn.Module, example_inputs: tuple, config, round_to: int, source: dict, schedule: PruneSchedule,
        train, epochs: float, calib=None, teacher: nn.Module | None = None, lr: float | None = None,
        rewind=None, lr_schedule: str = "constant", batch_size: int = 128, strict: bool = False,
        log=None, distill_T: float | None = None, distill_alpha: float | None = None,
        rewind_state: dict | None = None, rewind_epoch: float | None = None) -> ScheduledResult:
    """Prune `model` (not modified) to `config.ratio` with `schedule`, fine-tuning on `train` for
    `epochs` in total (1/steps after each step) with the recipe of `compress.accuracy.train.finetune`
    (`teacher`: distillation; `lr`/`lr_schedule` or `rewind`), one LR curve across all steps.
    Weight rewinding: `rewind_state` (the model's state_dict at the start of epoch `rewind_epoch` of the
    training run `rewind`, the original schedule, describes) with an iterative schedule: after every
    step's selection the surviving weights are reset to it and the step replays `rewind` from that epoch.
    Returns the fine-tuned pruned model with its plan, and a record per step."""
    from compress.prune.importance import score
    from compress.metrics import count_macs
    from compress.prune.plan import build_plan, select
    from compress.prune.structured import apply_keep
    from compress.prune.apply import PruneResult, ignored_groups, traced_graph, verify
    from compress.accuracy.train import DISTILL_ALPHA, DISTILL_T, deterministic, fit, frozen_teacher, recovery_schedule

    schedule.validate()
    config.validate()
    if schedule.kind == "oneshot":
        raise CompressError("schedules.run is for gradual and iterative schedules; one shot is compress.prune.apply.prune")
    if config.global_ranking:
        raise CompressError(f"--global is not supported with --schedule {schedule.kind} (use a uniform ratio)")
    if not epochs or epochs <= 0:
        raise CompressError(f"--schedule {schedule.kind} fine-tunes between steps: it needs --data and --finetune EPOCHS")
    if rewind_state is not None:
        if schedule.kind != "iterative":
            raise CompressError(f"weight rewinding prunes iteratively; use --schedule iterative, not {schedule.kind}")
        if rewind is None or rewind_epoch is None or not 0 <= rewind_epoch < rewind.epochs:
            raise CompressError("weight rewinding needs the original schedule and an epoch before its end")
    log = log or (lambda msg: None)
    inputs, graph = traced_graph(model, example_inputs, strict, log)
    ign = ignored_groups(model, graph, config.ignore)
    sched, lr_fn = recovery_schedule(epochs, lr, rewind, batch_size, lr_schedule)
    teacher = frozen_teacher(teacher)
    work = copy.deepcopy(model).eval()
    ratios = schedule.ratios(config.ratio)
    share = epochs / len(ratios)
    removed: set[int] = set()
    records: list[StepRecord] = []
    keep = plan = None
    log("scoring")
    for j, ratio in enumerate(ratios):
        t0 = time.perf_counter()
        with deterministic(config.seed + j):
            scores = score(work, graph, config.criterion, calib=calib, seed=config.seed + j)
        dead = {g.id: np.isin(g.classes, list(removed)) for g in graph.groups} if removed else {}
        for gid, mask in dead.items():           # removed channels stay removed
            scores[gid] = np.where(mask, -np.inf, scores[gid])
        keep = select(graph, scores, replace(config, ratio=ratio), round_to, ign)
        plan = build_plan(graph, keep, replace(config, ratio=ratio), round_to, source)
        for g, gp in zip(graph.groups, plan.groups):
            mask = np.ones(g.size, dtype=bool)
            mask[gp.keep] = False
            removed.update(g.classes[mask].tolist())
        mask_fn = _masker(graph, removed)
        mask_fn(work)
        if rewind_state is not None:              # the survivors go back to their epoch-K values
            work.load_state_dict(rewind_state, strict=True)
            mask_fn(work)
        last = j == len(ratios) - 1
        if last:                                  # physically remove, verify, train the small model
            log("removing")
            final_plan = build_plan(graph, keep, config, round_to, source)
            final_plan.notes.extend(f"kept channels through unsupported op {op} in {w}" for w, op in graph.unsupported)
            pruned = apply_keep(copy.deepcopy(work), final_plan.param_keep()).eval()
            log("verifying")
            err = verify(work, pruned, graph, final_plan, inputs)
            work, mask_fn, plan = pruned, None, final_plan
        start = j * share
        step_lr = (rewind_lr(rewind, rewind_epoch, share) if rewind_state is not None
                   else (lambda t, s=start: lr_fn(s + t)))
        with deterministic(config.seed + j):
            history = fit(work, train, sched, share, step_lr, teacher=teacher,
                          seed=config.seed * 7919 + j, after_step=mask_fn,
                          distill_T=DISTILL_T if distill_T is None else distill_T,
                          distill_alpha=DISTILL_ALPHA if distill_alpha is None else distill_alpha,
                          desc=f"{schedule.kind} step {j + 1}/{len(ratios)} (ratio {ratio:.3f})")
        small = work if last else apply_keep(copy.deepcopy(work), plan.param_keep()).eval()
        records.append(StepRecord(step=j + 1, ratio=ratio,
                                  channels_after=sum(gp.channels_after for gp in plan.groups),
                                  macs=count_macs(small, example_inputs), epochs=share, history=history,
                                  seconds=round(time.perf_counter() - t0, 3)))
    return ScheduledResult(PruneResult(work, plan, graph, err), records)
