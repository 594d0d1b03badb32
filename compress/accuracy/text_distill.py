"""Recovery of a pruned sentence encoder by distillation from the dense one, on unlabelled text.

The student (the pruned model) is trained so that its mean-pooled sentence embedding matches the
teacher's (the dense model) on the same sentences; no labels are used:

    loss = (1 - cos(s, t)) + MSE_WEIGHT * mean((s - t)^2) [+ HIDDEN_WEIGHT * token-level MSE of the last hidden states]

with s, t the mean-pooled embeddings (compress.accuracy.text_eval.mean_pool). The cosine term is what the
bar measures; the MSE term keeps the scale. AdamW, linear warm-up then linear decay of the LR.
Sentences are grouped into batches of similar length (little padding) and the batch order is
shuffled with the seed. The student is trained with dropout off (eval mode: BERT has no batch
statistics, so this only removes the noise) and one fixed seed, so a run is reproducible.
Teacher embeddings are computed once up front (unless the hidden-state term is on).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError
from compress.accuracy.text_eval import embed, hidden_states, mean_pool


@dataclass(frozen=True)
class TextDistillConfig:
    epochs: float = 1.0
    lr: float = 1e-4
    batch_size: int = 32
    warmup: float = 0.1            # fraction of the steps
    weight_decay: float = 0.01
    mse_weight: float = 1.0
    hidden_weight: float = 0.0     # > 0: also match the token-level last hidden states
    seed: int = 0

    def __post_init__(self):
        if not (self.epochs > 0 and self.lr > 0 and self.batch_size > 0):
            raise CompressError("text distillation: epochs, lr and batch_size must be positive")
        if self.mse_weight < 0 or self.hidden_weight < 0 or not 0 <= self.warmup < 1:
            raise CompressError("text distillation: weights must be >= 0 and warmup in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(cfg: TextDistillConfig, step: int, total: int) -> float:
    w = max(1, round(cfg.warmup * total))
    if step < w:
        return cfg.lr * (step + 1) / w
    return cfg.lr * max(0.0, (total - step) / max(1, total - w))


def _batches(tokens, batch_size: int, seed: int, epoch: int):
    """Length-sorted batches in a seeded random order."""
    order = tokens.length_order()
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    g = torch.Generator().manual_seed(seed * 1009 + epoch)
    for k in torch.randperm(len(chunks), generator=g).tolist():
        j = chunks[k]
        mask = tokens.attention_mask[j]
        L = int(mask.sum(1).max())
        yield j, tokens.input_ids[j, :L], mask[:, :L]


def distill(student: nn.Module, teacher: nn.Module, tokens, cfg: TextDistillConfig = TextDistillConfig(),
            desc: str = "distill", after_step=None) -> list[dict]:
    """Train `student` in place to reproduce `teacher`'s mean-pooled embeddings on `tokens`
    (compress.accuracy.text.Tokens). `after_step()`, when given, runs after every optimiser step (e.g. to
    re-apply sparsity masks). Returns per-epoch {"epoch", "loss", "cosine", "seconds"}."""
    from tqdm import tqdm

    if len(tokens) == 0:
        raise CompressError("text distillation needs at least one sentence")
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t_emb = embed(teacher, tokens, desc="teacher embeddings") if cfg.hidden_weight == 0 else None

    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    n_full = math.ceil(cfg.epochs)
    per_epoch = math.ceil(len(tokens) / cfg.batch_size)
    total = max(1, round(cfg.epochs * per_epoch))
    history, step = [], 0
    was = student.training
    student.eval()   # dropout off
    g_state = torch.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        for ep in range(n_full):
            t0, tot, cos_sum, seen = time.perf_counter(), 0.0, 0.0, 0
            bar = tqdm(total=min(per_epoch, total - step), desc=f"{desc} epoch {ep + 1}/{n_full}",
                       disable=None, leave=False)
            for j, ids, mask in _batches(tokens, cfg.batch_size, cfg.seed, ep):
                if step >= total:
                    break
                for grp in opt.param_groups:
                    grp["lr"] = lr_at(cfg, step, total)
                h = hidden_states(student, ids, mask)
                s = mean_pool(h, mask)
                if t_emb is not None:
                    t = t_emb[j]
                    loss_h = 0.0
                else:
                    with torch.no_grad():
                        th = hidden_states(teacher, ids, mask)
                    t = mean_pool(th, mask)
                    m = mask.unsqueeze(-1).to(h.dtype)
                    loss_h = cfg.hidden_weight * (((h - th) ** 2) * m).sum() / (m.sum() * h.shape[-1])
                cos = F.cosine_similarity(s, t, dim=1)
                loss = (1 - cos).mean() + cfg.mse_weight * F.mse_loss(s, t) + loss_h
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step()
                step += 1
                tot += float(loss.detach()) * len(j)
                cos_sum += float(cos.detach().sum())
                seen += len(j)
                bar.update(1)
                bar.set_postfix(loss=f"{tot / seen:.4f}", cos=f"{cos_sum / seen:.4f}")
            bar.close()
            if not math.isfinite(tot):
                raise CompressError(f"{desc}: the loss diverged (NaN/Inf) in epoch {ep + 1}; use a smaller learning rate")
            history.append({"epoch": ep + 1, "loss": tot / max(seen, 1), "cosine": cos_sum / max(seen, 1),
                            "seconds": round(time.perf_counter() - t0, 3)})
    finally:
        torch.set_rng_state(g_state)
        student.train(was)
    return history
