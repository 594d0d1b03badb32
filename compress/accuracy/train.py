"""Training and recovery fine-tuning, optionally distilled from the dense model.

Learning rate. A `Schedule` describes a training run: optimizer, peak LR, shape (onecycle,
cosine, constant) and length in epochs; `lr_at(t)` gives the LR at fractional epoch t.
Fine-tuning a pruned model for E epochs uses either
- a small fixed LR (`--lr`, default 0.01 with SGD; the "fine-tuning" baseline of Renda et al. 2020), or
- learning-rate rewinding (Renda et al. 2020, "Comparing Rewinding and Fine-tuning in Neural
  Network Pruning"): the original schedule's LR from its epoch T-E to its end T, i.e. the
  last E epochs of the original run replayed on the pruned weights (the whole schedule,
  stretched over E epochs, when E > T). This needs the original schedule: models of the
  embedded zoo carry it, and a `package.module:function` model can declare it as
  `model.compress_train_schedule = {"optimizer": "sgd", "lr": 0.1, "schedule": "onecycle",
  "epochs": 3, ...}`.

Distillation (Hinton et al. 2015). With a teacher (the dense model) the loss is

    loss = ALPHA * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - ALPHA) * CE(student, y)

with T = DISTILL_T = 4 and ALPHA = DISTILL_ALPHA = 0.5 by default; the T^2 factor keeps the
soft-target gradients on the scale of the hard-label ones. The teacher runs in eval mode.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError

DISTILL_T = 4.0
DISTILL_ALPHA = 0.5
FINETUNE_LR = 0.01


@dataclass(frozen=True)
class Schedule:
    optimizer: str = "sgd"          # sgd (momentum 0.9, Nesterov) | adamw
    lr: float = 0.1                 # peak learning rate
    schedule: str = "onecycle"      # onecycle (linear warm-up, cosine decay) | cosine | constant
    epochs: float = 3.0
    warmup: float = 0.15            # onecycle: fraction of the run spent warming up
    weight_decay: float = 5e-4
    batch_size: int = 128
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise CompressError(f"training schedule: optimizer {self.optimizer!r} is not sgd or adamw")
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise CompressError(f"training schedule: {self.schedule!r} is not onecycle, cosine or constant")
        if not (self.lr > 0 and self.epochs > 0 and self.batch_size > 0):
            raise CompressError("training schedule: lr, epochs and batch_size must be positive")

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise CompressError(f"training schedule: unknown keys {sorted(unknown)} (known: {sorted(names)})")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, t: float) -> float:
        """LR at fractional epoch t in [0, epochs]."""
        p = min(max(t / self.epochs, 0.0), 1.0)
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * p))
        lo = self.lr / 25.0
        if p < self.warmup:
            return lo + (self.lr - lo) * p / self.warmup
        q = (p - self.warmup) / max(1.0 - self.warmup, 1e-12)
        final = lo * 1e-4
        return final + (self.lr - final) * 0.5 * (1.0 + math.cos(math.pi * q))

    def rewound(self, epochs: float):
        """LR function for `epochs` of fine-tuning under LR rewinding: the original schedule's last
        `epochs` epochs (all of it, stretched, when `epochs` exceeds the original length)."""
        start = max(self.epochs - epochs, 0.0)
        span = self.epochs - start
        return lambda t: self.lr_at(start + span * min(t / epochs, 1.0))


def make_optimizer(model: nn.Module, s: Schedule) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if s.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=s.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=s.lr)


def distill_loss(student_logits, teacher_logits, labels, T: float = DISTILL_T, alpha: float = DISTILL_ALPHA,
                 label_smoothing: float = 0.0):
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    kl = F.kl_div(F.log_softmax(student_logits / T, dim=1), F.log_softmax(teacher_logits / T, dim=1),
                  reduction="batchmean", log_target=True)
    return alpha * T * T * kl + (1.0 - alpha) * ce


@contextlib.contextmanager
def deterministic(seed: int, threads: int | None = None):
    """Seed torch, use deterministic algorithms and (optionally) a fixed thread count; restore after."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)
        torch.set_rng_state(rng)


def _logits(out):
    out = getattr(out, "logits", out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def fit(model: nn.Module, train, schedule: Schedule, epochs: float | None = None, lr_fn=None,
        teacher: nn.Module | None = None, seed: int = 0, augment=None, desc: str = "train",
        distill_T: float = DISTILL_T, distill_alpha: float = DISTILL_ALPHA, after_step=None,
        after_epoch=None) -> list[dict]:
    """Train `model` in place on `train` (a compress.accuracy.data.Dataset) for `epochs` (default: the
    schedule's), LR from `lr_fn(t)` (default: the schedule's own). `after_step(model)` runs after
    every optimizer step (gradual pruning re-applies its masks there); `after_epoch(model, epoch)` after
    every epoch (the zoo keeps its epoch checkpoints there; it must not touch the weights). Returns per-epoch
    {"epoch", "loss", "train_accuracy", "seconds"}. The model is left in eval mode.

    Under torchrun (`compress.accuracy.distributed.active()`), the model is wrapped in DistributedDataParallel,
    each rank trains on its DistributedSampler shard with batch_size / world_size samples per step
    (the same global batch and number of steps as one process), and the ranks' BatchNorm statistics
    are averaged at the end, so every rank ends with identical weights. The logged loss and accuracy
    are rank 0's shard's."""
    from tqdm import tqdm

    from compress.accuracy import distributed

    epochs = schedule.epochs if epochs is None else epochs
    if epochs <= 0:
        raise CompressError(f"fine-tuning epochs must be positive, got {epochs}")
    lr_fn = lr_fn or schedule.lr_at
    ctx = distributed.active()
    world = ctx.world_size if ctx else 1
    batch = max(1, schedule.batch_size // world)
    n_full = math.ceil(epochs)
    steps_per_epoch = math.ceil(len(train) / (batch * world))
    total_steps = max(1, round(epochs * steps_per_epoch))
    net = distributed.wrap(model, ctx) if ctx else model
    opt = make_optimizer(model, schedule)
    if teacher is not None:
        teacher.eval()
        if ctx:
            teacher.to(ctx.device)
    history, step = [], 0
    for ep in range(n_full):
        model.train()
        t0, tot_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(total=min(steps_per_epoch, total_steps - step), disable=True if ctx and ctx.rank else None,
                   leave=False, desc=f"{desc} epoch {ep + 1}/{n_full}")
        batches = (distributed.shard_batches(train, batch, seed * 1009 + ep, ctx) if ctx
                   else train.batches(batch, shuffle=True, seed=seed * 1009 + ep))
        for x, y in batches:
            if step >= total_steps:
                break
            lr = lr_fn(epochs * step / total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            if augment is not None:
                x = augment(x, step)
            if ctx:
                x, y = x.to(ctx.device), y.to(ctx.device)
            out = _logits(net(x))
            if teacher is not None:
                with torch.no_grad():
                    t_out = _logits(teacher(x))
                loss = distill_loss(out, t_out, y, distill_T, distill_alpha, schedule.label_smoothing)
            else:
                loss = F.cross_entropy(out, y, label_smoothing=schedule.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
            step += 1
            tot_loss += loss.item() * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.2g}")
        bar.close()
        if not math.isfinite(tot_loss):
            raise CompressError(f"{desc}: the loss diverged (NaN/Inf) in epoch {ep + 1}; use a smaller --lr")
        history.append({"epoch": ep + 1, "loss": tot_loss / max(seen, 1),
                        "train_accuracy": correct / max(seen, 1), "seconds": round(time.perf_counter() - t0, 3)})
        if after_epoch is not None:
            after_epoch(model, ep + 1)
    if ctx:
        distributed.sync_buffers(model, ctx)
        model.to("cpu")                            # the rest of the pipeline (eval, export) runs on the CPU
        if teacher is not None:
            teacher.to("cpu")
    model.eval()
    return history


def recovery_schedule(epochs: float, lr: float | None = None, rewind: Schedule | None = None,
                      batch_size: int = 128, lr_schedule: str = "constant") -> tuple[Schedule, "object"]:
    """The fine-tuning recipe: (Schedule, lr_fn(t) for t in [0, epochs]). `rewind`: the original
    schedule's last `epochs` epochs; otherwise SGD from `lr` (default FINETUNE_LR) held constant,
    or decayed to zero over the run (`cosine`), or warmed up and decayed (`onecycle`)."""
    if rewind is not None:
        sched = Schedule(**{**rewind.to_dict(), "batch_size": batch_size})
        return sched, sched.rewound(epochs)
    sched = Schedule(optimizer="sgd", lr=lr or FINETUNE_LR, schedule=lr_schedule, epochs=epochs,
                     batch_size=batch_size)
    return sched, sched.lr_at


def frozen_teacher(teacher: nn.Module | None) -> nn.Module | None:
    """A private eval-mode copy of the dense model with gradients off (the model itself is untouched)."""
    if teacher is None:
        return None
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


QAT_CALIB_SAMPLES = 256     # training images whose activation ranges start quantization-aware fine-tuning


def finetune(model: nn.Module, train, epochs: float, teacher: nn.Module | None = None, lr: float | None = None,
             rewind: Schedule | None = None, batch_size: int = 128, seed: int = 0,
             lr_schedule: str = "constant", distill_T: float = DISTILL_T,
             distill_alpha: float = DISTILL_ALPHA, qat: bool = False) -> list[dict]:
    """Recovery fine-tuning of a pruned model (in place). `rewind`: the original schedule, replayed
    from epoch T-epochs (LR rewinding); otherwise SGD from `lr` (default FINETUNE_LR) shaped by
    `lr_schedule` (constant, cosine or onecycle). `qat`: under int8 fake quantization (compress.accuracy.qat;
    activation ranges calibrated on QAT_CALIB_SAMPLES training images first), for an int8 deployment."""
    from contextlib import nullcontext

    sched, lr_fn = recovery_schedule(epochs, lr, rewind, batch_size, lr_schedule)
    teacher = frozen_teacher(teacher)
    with deterministic(seed):
        ctx = nullcontext()
        if qat:
            from compress.accuracy.qat import fake_quantized

            from compress.accuracy.data import subset_batches

            calib = subset_batches(train, min(QAT_CALIB_SAMPLES, len(train)), seed, batch=64)
            ctx = fake_quantized(model, calib)
        with ctx:
            return fit(model, train, sched, epochs, lr_fn, teacher=teacher, seed=seed, distill_T=distill_T,
                       distill_alpha=distill_alpha, desc="fine-tune" + (" (distill)" if teacher is not None else "")
                       + (" (int8 fake-quant)" if qat else ""))


def model_schedule(model: nn.Module) -> Schedule | None:
    """The original training schedule a model declares (`compress_train_schedule`), if any."""
    d = getattr(model, "compress_train_schedule", None)
    return Schedule.from_dict(dict(d)) if d else None
