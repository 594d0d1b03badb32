"""Accuracy as a measured output: top-1 accuracy, agreement with the dense model, functional distance.

- accuracy             fraction of test samples whose argmax equals the label, in [0, 1]
- agreement            fraction of test samples on which the pruned and the dense model predict the
                       same class (argmax), in [0, 1]
- functional_distance  mean over test samples of the L2 norm of the difference of the two softmax
                       output vectors, ||softmax(pruned(x)) - softmax(dense(x))||_2, in [0, sqrt(2)];
                       the "functional distance" of Liebenwein et al. 2021, "Lost in Pruning: The
                       Effects of Pruning Neural Networks beyond Test Accuracy" (0: same function)
- kl_divergence        mean KL(softmax(dense(x)) || softmax(pruned(x))) in nats, reported beside it

`compress eval` computes them on a --data test split; `compress prune --data` records them in
summary.json (see `PruneAccuracy`). Text models (token ids in, e.g. hf:minilm) are evaluated by
`compress.text_eval` instead: embedding cosine similarity to the dense model and a linear probe.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError

EVAL_BATCH = 256
DEFAULT_CALIB = 128


def _logits(out) -> torch.Tensor:
    out = getattr(out, "logits", out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


@torch.no_grad()
def predict(model: nn.Module, ds, batch_size: int = EVAL_BATCH, desc: str = "eval") -> torch.Tensor:
    """Logits (N, K) of `model` (in eval mode) on every sample of `ds`, with a progress bar over batches."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    outs = []
    try:
        n_batches = (len(ds) + batch_size - 1) // batch_size
        for x, _ in tqdm(ds.batches(batch_size), total=n_batches, desc=desc, disable=None, leave=False):
            outs.append(_logits(model(x)).float())
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, 0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((logits.argmax(1) == labels).double().mean())


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    if len(a) == 0:
        return float("nan")
    return float((a.argmax(1) == b.argmax(1)).double().mean())


def functional_distance(pruned: torch.Tensor, dense: torch.Tensor) -> float:
    """Mean L2 distance between the softmax outputs (Liebenwein et al. 2021)."""
    d = F.softmax(pruned.double(), 1) - F.softmax(dense.double(), 1)
    return float(d.norm(dim=1).mean())


def kl_divergence(pruned: torch.Tensor, dense: torch.Tensor) -> float:
    """Mean KL(dense || pruned) of the softmax outputs, in nats."""
    lp, ld = F.log_softmax(pruned.double(), 1), F.log_softmax(dense.double(), 1)
    return float((ld.exp() * (ld - lp)).sum(1).mean())


def compare(pruned: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"accuracy": accuracy(pruned, labels), "accuracy_dense": accuracy(dense, labels),
            "agreement": agreement(pruned, dense), "functional_distance": functional_distance(pruned, dense),
            "kl_divergence": kl_divergence(pruned, dense)}


@torch.no_grad()
def check_fits(model: nn.Module, ds, what: str = "the model") -> int:
    """The model must map a batch of `ds` to (N, K) logits with K classes matching the dataset's."""
    x = ds.images[:2]
    try:
        out = _logits(model.eval()(x))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompressError(f"{what} does not run on {ds.name} samples of shape {ds.sample_shape} ({msg[:200]})") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CompressError(f"{what} is not a classifier: it returns {shape} for a batch of {x.shape[0]}, "
                            "not (batch, classes) logits")
    k = int(out.shape[1])
    if (ds.exact_classes and k != ds.num_classes) or k < ds.num_classes:
        raise CompressError(f"{what} outputs {k} classes but {ds.name} has {ds.num_classes}")
    return k


def sample_shape(lm, input_shape: str | None = None) -> tuple[int, ...]:
    from compress import models

    if lm.input_dtype != "float32":
        raise CompressError(f"{lm.spec} takes {lm.input_dtype} token ids; accuracy needs an image classifier "
                            "(text models: compress eval MODEL_OR_DIR --data tweets|FILE.csv)")
    shape = models.parse_shape(input_shape) if input_shape else tuple(lm.input_shape)
    return tuple(shape[1:])


def dense_source(plan, source_weights: str | None = None):
    """Rebuild the dense model a pruned directory came from. Returns (model, None) when its weights
    hash matches the plan's, else (None, why not)."""
    from compress import models

    spec = plan.source.get("model")
    try:
        lm = models.load(spec, source_weights)
    except CompressError as e:
        return None, f"the dense source {spec} cannot be rebuilt ({e})"
    if models.weights_sha256(lm.model) != plan.source.get("sha256"):
        how = ("--source-weights does not hold" if source_weights else
               f"{spec} rebuilt on its own does not have")
        return None, (f"the dense source's weights are not recoverable: {how} the weights that were pruned "
                      f"(sha256 {str(plan.source.get('sha256'))[:12]}...); pass --source-weights FILE")
    return lm.model.eval(), None


def _fmt(r: dict) -> str:
    return (f"agreement with dense {r['agreement']:.4f}, functional distance {r['functional_distance']:.4f} "
            f"(mean L2 of softmax difference), KL {r['kl_divergence']:.4f}")


def eval_verb(args) -> dict:
    """`compress eval MODEL_OR_DIR --data fashion-mnist|PATH [--source-weights FILE] [--json]`."""
    from compress import data, models

    t0 = time.perf_counter()
    if args.batch_size < 1:
        raise CompressError(f"--batch-size must be a positive integer, got {args.batch_size}")
    lm = models.load(args.model, args.weights)
    if lm.input_dtype == "int64":   # a text model: embedding cosine to dense + linear probe (compress.text_eval)
        from compress.text_eval import eval_verb as text_eval_verb
        return text_eval_verb(args, lm)
    shape = sample_shape(lm, args.input_shape)
    ds = data.load(args.data, "test", shape)
    data.check_shape(ds, shape)
    k = check_fits(lm.model, ds)
    logits = predict(lm.model, ds, args.batch_size, desc="eval")
    acc = accuracy(logits, ds.labels)
    res = {"model": args.model, "source": lm.spec, "pruned": lm.plan is not None, "data": ds.name,
           "samples": len(ds), "classes": k, "accuracy": acc}
    lines = [f"{args.model}: accuracy {acc:.4f} on {ds.name} ({len(ds):,} samples, {ds.num_classes} classes)"]
    if lm.plan is not None:
        dense, why = dense_source(lm.plan, getattr(args, "source_weights", None))
        if dense is None:
            res["dense_source"] = why
            lines.append(f"note: {why}")
        else:
            r = compare(logits, predict(dense, ds, args.batch_size, desc="eval dense"), ds.labels)
            res |= {k_: r[k_] for k_ in ("accuracy_dense", "agreement", "functional_distance", "kl_divergence")}
            res["dense_source"] = "recovered"
            lines.append(f"dense {lm.spec}: accuracy {r['accuracy_dense']:.4f}; " + _fmt(r))
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return {"text": "\n".join(lines), "json": res}


class PruneAccuracy:
    """`compress prune --data D [--finetune E [--distill] [--lr LR | --lr-rewind]]`: validates the
    data against the model before pruning, supplies calibration batches from the training split,
    and after pruning fine-tunes and measures (what summary.json records)."""

    def __init__(self, args, lm, shape, test, train, calib):
        self.args, self.lm, self.shape, self.test, self.train, self.calib = args, lm, shape, test, train, calib

    @classmethod
    def setup(cls, args, lm, data_criterion: bool) -> "PruneAccuracy | None":
        from compress import data

        spec = getattr(args, "data", None)
        epochs = getattr(args, "finetune", None) or 0
        if not spec:
            for flag, on in (("--finetune", epochs), ("--distill", getattr(args, "distill", False)),
                             ("--lr-rewind", getattr(args, "lr_rewind", False)),
                             ("--lr", getattr(args, "lr", None) is not None)):
                if on:
                    raise CompressError(f"{flag} needs --data (fashion-mnist or a directory)")
            if (getattr(args, "calib", None) or "").startswith("data"):
                raise CompressError("--calib data[:N] needs --data")
            return None
        if epochs < 0:
            raise CompressError(f"--finetune must be a positive number of epochs, got {epochs}")
        if not epochs:
            for flag, on in (("--distill", getattr(args, "distill", False)),
                             ("--lr-rewind", getattr(args, "lr_rewind", False)),
                             ("--lr", getattr(args, "lr", None) is not None)):
                if on:
                    raise CompressError(f"{flag} needs --finetune EPOCHS")
        if getattr(args, "lr_rewind", False) and getattr(args, "lr", None) is not None:
            raise CompressError("--lr and --lr-rewind exclude each other (rewinding replays the original schedule)")
        if getattr(args, "lr", None) is not None and not args.lr > 0:
            raise CompressError(f"--lr must be positive, got {args.lr}")
        if getattr(args, "lr_rewind", False):
            from compress.train import model_schedule
            if model_schedule(lm.model) is None:
                raise CompressError(f"--lr-rewind needs the original training schedule, which {lm.spec} does not "
                                    "declare (compress:* models do; set model.compress_train_schedule); use --lr")
        shape = sample_shape(lm, args.input_shape)
        test = data.load(spec, "test", shape)
        data.check_shape(test, shape)
        check_fits(lm.model, test, f"{lm.spec}")
        train = data.load(spec, "train", shape, allow_flat=False) if epochs else None
        calib = None
        cspec = getattr(args, "calib", None)
        if (data_criterion and not cspec) or (cspec or "").startswith("data"):
            n = DEFAULT_CALIB
            if cspec and ":" in cspec:
                try:
                    n = int(cspec.split(":", 1)[1])
                except ValueError:
                    raise CompressError(f"--calib {cspec!r}: use data:N with an integer N") from None
            src = train if train is not None else data.load(spec, "train", shape, allow_flat=True)
            data.check_shape(src, shape)
            calib = [(x,) for x, _ in data.calibration_subset(src, n, args.seed).batches(8)]
        return cls(args, lm, shape, test, train, calib)

    def measure(self, dense: nn.Module, pruned: nn.Module) -> dict:
        """Evaluate dense and pruned; fine-tune `pruned` in place when asked. Returns {"json", "text"}."""
        from compress.train import DISTILL_ALPHA, DISTILL_T, FINETUNE_LR, finetune, model_schedule

        a = self.args
        bs = EVAL_BATCH
        d_logits = predict(dense, self.test, bs, desc="eval dense")
        before = compare(predict(pruned, self.test, bs, desc="eval pruned"), d_logits, self.test.labels)
        out = {"data": self.test.name, "eval_samples": len(self.test), "accuracy_dense": before["accuracy_dense"]}
        epochs = getattr(a, "finetune", None) or 0
        if epochs:
            t0 = time.perf_counter()
            rewind = model_schedule(dense) if getattr(a, "lr_rewind", False) else None
            teacher = dense if getattr(a, "distill", False) else None
            history = finetune(pruned, self.train, epochs, teacher=teacher, lr=getattr(a, "lr", None),
                               rewind=rewind, seed=a.seed)
            after = compare(predict(pruned, self.test, bs, desc="eval fine-tuned"), d_logits, self.test.labels)
            out["finetune"] = {
                "epochs": epochs, "train_samples": len(self.train), "distill": teacher is not None,
                "distill_temperature": DISTILL_T if teacher is not None else None,
                "distill_alpha": DISTILL_ALPHA if teacher is not None else None,
                "lr": None if rewind else (getattr(a, "lr", None) or FINETUNE_LR),
                "lr_rewind": rewind.to_dict() if rewind else None,
                "history": history, "seconds": round(time.perf_counter() - t0, 3)}
            out["accuracy_pruned_before_finetune"] = before["accuracy"]
            out["agreement_before_finetune"] = before["agreement"]
            out["functional_distance_before_finetune"] = before["functional_distance"]
        else:
            after = before
        out |= {k: after[k] for k in ("accuracy", "agreement", "functional_distance", "kl_divergence")}
        text = f"accuracy on {self.test.name}: dense {out['accuracy_dense']:.4f}, pruned "
        if epochs:
            text += (f"{before['accuracy']:.4f} before and {after['accuracy']:.4f} after {epochs:g} epoch(s) "
                     f"of fine-tuning{' with distillation' if out['finetune']['distill'] else ''}")
        else:
            text += f"{after['accuracy']:.4f}"
        text += "; " + _fmt(after)
        return {"json": out, "text": text}
