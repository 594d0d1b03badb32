"""Accuracy as a measured output: top-1 accuracy, agreement with the dense model, functional distance.

- accuracy             fraction of test samples whose argmax equals the label, in [0, 1]
- agreement            fraction of test samples on which the pruned and the dense model predict the
                       same class (argmax), in [0, 1]
- functional_distance  mean over test samples of the L2 norm of the difference of the two softmax
                       output vectors, ||softmax(pruned(x)) - softmax(dense(x))||_2, in [0, sqrt(2)];
                       the "functional distance" of Liebenwein et al. 2021, "Lost in Pruning: The
                       Effects of Pruning Neural Networks beyond Test Accuracy" (0: same function)
- kl_divergence        mean KL(softmax(dense(x)) || softmax(pruned(x))) in nats, reported beside it

`compress eval` computes them on a --data test split (`compress.api.eval`); `compress prune --data`
records them in summary.json (`compress.api.accuracy.PruneAccuracy`). Text models (token ids in,
e.g. hf:minilm) are evaluated by `compress.accuracy.text_eval` instead: embedding cosine similarity to the
dense model and a linear probe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError, first_line

EVAL_BATCH = 256


def _logits(out) -> torch.Tensor:
    """The primary output (compress.models.outputs: 'out' of a dict, logits, the first of a tuple)."""
    from compress.models.outputs import primary

    t, _ = primary(out)
    return out if t is None else t


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
def check_fits(model: nn.Module, ds, what: str = "the model", hint: str = "") -> int:
    """The model must map a batch of `ds` to (N, K) logits with K classes matching the dataset's.
    `hint` ends the message when the model does not run on the samples."""
    x = ds.images[:2]
    try:
        out = _logits(model.eval()(x))
    except Exception as e:
        raise CompressError(f"{what} does not run on {ds.name} samples of shape {ds.sample_shape} "
                            f"({first_line(e, 200)}){hint}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CompressError(f"{what} is not a classifier: it returns {shape} for a batch of {x.shape[0]}, "
                            "not (batch, classes) logits")
    k = int(out.shape[1])
    if (ds.exact_classes and k != ds.num_classes) or k < ds.num_classes:
        raise CompressError(f"{what} outputs {k} classes but {ds.name} has {ds.num_classes}")
    return k


def format_comparison(r: dict) -> str:
    """The agreement, functional distance and KL of `compare` as one line of text."""
    return (f"agreement with dense {r['agreement']:.4f}, functional distance {r['functional_distance']:.4f} "
            f"(mean L2 of softmax difference), KL {r['kl_divergence']:.4f}")
