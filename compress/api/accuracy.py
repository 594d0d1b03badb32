"""Accuracy and fine-tuning of `compress prune --data D [--finetune E [--distill] [--lr LR | --lr-rewind]]`.

`PruneAccuracy.setup` validates the fine-tuning options and the data against the model before
pruning and supplies calibration batches from the training split; after pruning, `measure`
evaluates the dense and the pruned model as they are, and `finetune_and_measure` evaluates,
fine-tunes the pruned model in place and evaluates it again (what summary.json records).
The metrics are those of `compress.accuracy.evaluate`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch import nn

from compress import calib as calib_spec
from compress.errors import CompressError
from compress.accuracy.evaluate import EVAL_BATCH, check_fits, compare, format_comparison, predict
from compress.models.source import sample_shape

METRICS = ("accuracy", "agreement", "functional_distance", "kl_divergence")


@dataclass(frozen=True)
class FinetuneConfig:
    """Recovery fine-tuning on --data's training split (`compress.accuracy.train.finetune`).
    `epochs` 0: none. `lr`: a fixed SGD learning rate (default compress.accuracy.train.FINETUNE_LR), shaped
    by `lr_schedule` (constant, cosine or onecycle); `lr_rewind`: replay the last `epochs` of the
    model's original schedule instead; `distill`: knowledge distillation from the dense model.
    `weight_rewind`: an epoch K of the model's own training (compress:* models; --rewind weights:K):
    with --schedule iterative, the surviving weights go back to their epoch-K values after every step
    and the original schedule replays from epoch K (compress.accuracy.schedules).
    `qat`: fine-tune under int8 fake quantization (compress.accuracy.qat), for an int8 export (--qat)."""
    epochs: float = 0
    distill: bool = False
    lr: float | None = None
    lr_rewind: bool = False
    lr_schedule: str = "constant"
    weight_rewind: int | None = None
    qat: bool = False


class PruneAccuracy:
    """The test split (and the training split when fine-tuning) of --data for a loaded model."""

    def __init__(self, lm, shape: tuple[int, ...], test, train, calib: list | None,
                 finetune: FinetuneConfig = FinetuneConfig(), seed: int = 0) -> None:
        self.lm, self.shape, self.test, self.train, self.calib = lm, shape, test, train, calib
        self.finetune, self.seed = finetune, seed

    @classmethod
    def setup(cls, lm, data: str | None, finetune: FinetuneConfig = FinetuneConfig(), calib: str | None = None,
              seed: int = 0, input_shape: str | tuple[int, ...] | None = None,
              data_criterion: bool = False) -> "PruneAccuracy | None":
        """None without `data` (fine-tuning and data[:N] calibration need it). `calib`: the --calib
        spec; a data[:N] spec, or none with a data-driven criterion, draws the calibration batches
        from the training split (`self.calib`, else None)."""
        from compress.accuracy import data as datasets

        f = finetune
        epochs = f.epochs or 0
        if not data:
            for flag, on in (("--finetune", epochs), ("--distill", f.distill), ("--lr-rewind", f.lr_rewind),
                             ("--lr", f.lr is not None)):
                if on:
                    raise CompressError(f"{flag} needs --data (fashion-mnist or a directory)")
            if calib_spec.is_data(calib):
                raise CompressError("--calib data[:N] needs --data")
            return None
        if epochs < 0:
            raise CompressError(f"--finetune must be a positive number of epochs, got {epochs}")
        if not epochs:
            for flag, on in (("--distill", f.distill), ("--lr-rewind", f.lr_rewind), ("--lr", f.lr is not None)):
                if on:
                    raise CompressError(f"{flag} needs --finetune EPOCHS")
        if f.lr_rewind and f.lr is not None:
            raise CompressError("--lr and --lr-rewind exclude each other (rewinding replays the original schedule)")
        if f.lr is not None and not f.lr > 0:
            raise CompressError(f"--lr must be positive, got {f.lr}")
        if f.lr_rewind:
            from compress.accuracy.train import model_schedule
            if model_schedule(lm.model) is None:
                raise CompressError(f"--lr-rewind needs the original training schedule, which {lm.spec} does not "
                                    "declare (compress:* models do; set model.compress_train_schedule); use --lr")
        shape = sample_shape(lm, input_shape)
        test = datasets.load(data, "test", shape)
        datasets.check_shape(test, shape)
        check_fits(lm.model, test, f"{lm.spec}")
        train = datasets.load(data, "train", shape, allow_flat=False) if epochs else None
        batches = None
        if (data_criterion and not calib) or calib_spec.is_data(calib):
            n = calib_spec.parse(calib, data=True).samples if calib else calib_spec.DATA_SAMPLES
            src = train if train is not None else datasets.load(data, "train", shape, allow_flat=True)
            datasets.check_shape(src, shape)
            batches = datasets.subset_batches(src, n, seed)
        return cls(lm, shape, test, train, batches, finetune, seed)

    def _evaluate(self, dense: nn.Module, pruned: nn.Module):
        """The dense model's test logits and the comparison of the pruned model with them (the dense
        logits are computed once per dense model: the dense model is never changed)."""
        cached = getattr(self, "_dense_logits", None)
        if cached is None or cached[0] is not dense:
            cached = self._dense_logits = (dense, predict(dense, self.test, EVAL_BATCH, desc="eval dense"))
        d_logits = cached[1]
        return d_logits, compare(predict(pruned, self.test, EVAL_BATCH, desc="eval pruned"), d_logits,
                                 self.test.labels)

    def text(self, accuracy_dense: float, after: dict, before: dict | None = None, how: str = "") -> str:
        """`accuracy on D: dense X, pruned [B before and ]A[how]; agreement ...`: `after` the pruned
        model's metrics, `before` those before fine-tuning, `how` how it got to `after`."""
        return (f"accuracy on {self.test.name}: dense {accuracy_dense:.4f}, pruned "
                + (f"{before['accuracy']:.4f} before and " if before is not None else "")
                + f"{after['accuracy']:.4f}{how}; " + format_comparison(after))

    def measure(self, dense: nn.Module, pruned: nn.Module, before: dict | None = None, how: str = "") -> dict:
        """Evaluate dense and pruned as they are (no fine-tuning). Returns {"json", "text"}; `before`
        and `how` only go into the text (see `text`)."""
        _, r = self._evaluate(dense, pruned)
        out = {"data": self.test.name, "eval_samples": len(self.test), "accuracy_dense": r["accuracy_dense"]}
        out |= {k: r[k] for k in METRICS}
        return {"json": out, "text": self.text(out["accuracy_dense"], r, before, how)}

    def finetune_and_measure(self, dense: nn.Module, pruned: nn.Module) -> dict:
        """Evaluate dense and pruned, fine-tune `pruned` in place as `self.finetune` says (constant LR
        shape unless it says otherwise) and evaluate it again; without epochs, `measure`."""
        from compress.accuracy.train import DISTILL_ALPHA, DISTILL_T, FINETUNE_LR, finetune, model_schedule

        f = self.finetune
        epochs = f.epochs or 0
        if not epochs:
            return self.measure(dense, pruned)
        d_logits, before = self._evaluate(dense, pruned)
        out = {"data": self.test.name, "eval_samples": len(self.test), "accuracy_dense": before["accuracy_dense"]}
        t0 = time.perf_counter()
        rewind = model_schedule(dense) if f.lr_rewind else None
        teacher = dense if f.distill else None
        history = finetune(pruned, self.train, epochs, teacher=teacher, lr=f.lr, rewind=rewind, seed=self.seed,
                           lr_schedule=f.lr_schedule, qat=f.qat)
        after = compare(predict(pruned, self.test, EVAL_BATCH, desc="eval fine-tuned"), d_logits, self.test.labels)
        out["finetune"] = {
            "epochs": epochs, "train_samples": len(self.train), "distill": teacher is not None,
            "distill_temperature": DISTILL_T if teacher is not None else None,
            "distill_alpha": DISTILL_ALPHA if teacher is not None else None,
            "lr": None if rewind else (f.lr or FINETUNE_LR),
            "lr_rewind": rewind.to_dict() if rewind else None, "quantization_aware": f.qat,
            "history": history, "seconds": round(time.perf_counter() - t0, 3)}
        out["accuracy_pruned_before_finetune"] = before["accuracy"]
        out["agreement_before_finetune"] = before["agreement"]
        out["functional_distance_before_finetune"] = before["functional_distance"]
        out |= {k: after[k] for k in METRICS}
        how = (f" after {epochs:g} epoch(s) of fine-tuning{' with distillation' if teacher is not None else ''}"
               + (" under int8 fake quantization" if f.qat else ""))
        return {"json": out, "text": self.text(out["accuracy_dense"], after, before, how)}
