"""Measured quality of a (pruned) sentence encoder: embedding similarity to the dense model, linear probe.

- sentence embedding  mean of the last hidden states over the real tokens (attention mask), the
                      pooling of all-MiniLM-L6-v2 (its final L2 normalisation does not change cosines)
- cosine              mean over held-out sentences of cos(pruned embedding, dense embedding), in [-1, 1]
- probe accuracy      a multinomial logistic regression (L2-regularised, full-batch L-BFGS, features
                      standardised on the training rows) trained on the embeddings of labelled training
                      sentences, top-1 accuracy on held-out ones; dense and pruned each get their own probe

`compress eval hf:...|DIR --data tweets|FILE.csv` reports them (see `eval_text`); for a directory
written by `compress prune` it rebuilds the dense source and adds the cosine and the dense probe.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError, first_line

EVAL_SENTENCES = 1000      # held-out (test split) sentences, stratified, for cosine and probe accuracy
PROBE_TRAIN = 2000         # training-split sentences the probe is fitted on, stratified
PROBE_L2 = 1e-3
TEXT_BATCH = 64


def backbone(model: nn.Module) -> nn.Module:
    """The Hugging Face encoder inside `compress.models.HFTensorOutput` (or the model itself)."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "config") else model


def hidden_states(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = backbone(model)(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    if getattr(out, "last_hidden_state", None) is not None:
        return out.last_hidden_state
    if getattr(out, "hidden_states", None):       # a model with a task head (logits): its last hidden layer
        return out.hidden_states[-1]
    return out[0]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def embed_batch(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return mean_pool(hidden_states(model, ids, mask), mask)


@torch.no_grad()
def embed(model: nn.Module, tokens, batch_size: int = TEXT_BATCH, desc: str = "embed") -> torch.Tensor:
    """Mean-pooled embeddings (N, H) of every sentence, in the order of `tokens` (batched by length)."""
    from tqdm import tqdm

    was = model.training
    model.eval()
    order = tokens.length_order()
    out = torch.empty(0)
    try:
        parts = []
        n_batches = (len(tokens) + batch_size - 1) // batch_size
        for ids, mask in tqdm(tokens.batches(batch_size, order), total=n_batches, desc=desc, disable=None, leave=False):
            parts.append(embed_batch(model, ids, mask).float())
        if parts:
            emb = torch.cat(parts)
            out = torch.empty_like(emb)
            out[order] = emb
    finally:
        model.train(was)
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity (N,) of two (N, H) arrays (0 where a row is all zeros)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(cosine(a, b).mean()) if len(a) else float("nan")


class LinearProbe:
    """Multinomial logistic regression on standardised features (fit with full-batch L-BFGS)."""

    def __init__(self, num_classes: int, l2: float = PROBE_L2, max_iter: int = 200) -> None:
        self.num_classes, self.l2, self.max_iter = num_classes, l2, max_iter

    def fit(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> "LinearProbe":
        x = x.double()
        y = torch.as_tensor(y, dtype=torch.long)
        if len(x) != len(y) or len(x) == 0:
            raise CompressError(f"probe: {len(x)} feature rows for {len(y)} labels")
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise CompressError(f"probe: labels must be in [0, {self.num_classes}), found {int(y.min())}..{int(y.max())}")
        self.mean, self.std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-8)
        z = (x - self.mean) / self.std
        g = torch.Generator().manual_seed(seed)
        self.w = (torch.randn(z.shape[1], self.num_classes, generator=g, dtype=torch.float64) * 0.01).requires_grad_()
        self.b = torch.zeros(self.num_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([self.w, self.b], lr=1.0, max_iter=self.max_iter, tolerance_grad=1e-9,
                                tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(z @ self.w + self.b, y) + 0.5 * self.l2 * (self.w ** 2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.w, self.b = self.w.detach(), self.b.detach()
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.std) @ self.w + self.b

    def accuracy(self, x: torch.Tensor, y) -> float:
        y = torch.as_tensor(y, dtype=torch.long)
        return float((self.logits(x).argmax(1) == y).double().mean())


def probe_accuracy(x_train, y_train, x_test, y_test, num_classes: int, seed: int = 0) -> float:
    return LinearProbe(num_classes).fit(x_train, y_train, seed).accuracy(x_test, y_test)


# ---------------------------------------------------------------- compress eval for text models

def eval_sets(spec: str, n_train: int = PROBE_TRAIN, n_test: int = EVAL_SENTENCES, seed: int = 0):
    """(probe-training sentences, held-out sentences): stratified subsets of the train / test splits."""
    from compress.accuracy import text

    return text.stratified(text.load(spec, "train"), n_train, seed), text.stratified(text.load(spec, "test"), n_test, seed)


def eval_text(lm, name: str, data: str, source_weights: str | None = None, batch_size: int = 256) -> dict:
    """`compress eval hf:...|DIR --data tweets|FILE.csv` of the loaded text model `lm` (`name`: its
    MODEL_OR_DIR as given): probe accuracy, and for a pruned directory the mean cosine similarity to
    the dense source's embeddings (rebuilt with `source_weights`) and the dense probe accuracy.
    Returns {"text", "json"}."""
    from compress.accuracy import text
    from compress.models.source import dense_source

    t0 = time.perf_counter()
    if lm.kind != "hf":
        raise CompressError(f"{lm.spec} takes token ids but is not a Hugging Face model (hf:DIR); "
                            "text evaluation needs its tokenizer")
    tr, te = eval_sets(data)
    tok = text.tokenizer(lm.spec)
    tok_tr, tok_te = text.tokenize(tok, tr.texts), text.tokenize(tok, te.texts)
    bs = min(batch_size, 256)
    try:
        e_tr = embed(lm.model, tok_tr, bs, "embed train")
    except (RuntimeError, TypeError, ValueError) as e:
        raise CompressError(f"{lm.spec} does not embed token ids with an attention mask ({first_line(e, 200, strip=False)})") from None
    e_te = embed(lm.model, tok_te, bs, "embed test")
    acc = probe_accuracy(e_tr, tr.labels, e_te, te.labels, tr.num_classes)
    res = {"model": name, "source": lm.spec, "pruned": lm.plan is not None, "data": data,
           "task": "text", "classes": list(tr.classes), "probe_train_sentences": len(tr),
           "eval_sentences": len(te), "probe_accuracy": acc}
    lines = [f"{name}: linear-probe accuracy {acc:.4f} on {len(te):,} held-out sentences of {data} "
             f"({tr.num_classes} classes; probe fitted on {len(tr):,} training sentences)"]
    if lm.plan is not None:
        dense, why = dense_source(lm.plan, source_weights)
        if dense is None:
            res["dense_source"] = why
            lines.append(f"note: {why}")
        else:
            d_tr, d_te = embed(dense, tok_tr, bs, "embed dense train"), embed(dense, tok_te, bs, "embed dense test")
            res["probe_accuracy_dense"] = probe_accuracy(d_tr, tr.labels, d_te, te.labels, tr.num_classes)
            res["cosine_to_dense"] = mean_cosine(e_te, d_te)
            res["cosine_to_dense_min"] = float(cosine(e_te, d_te).min())
            res["dense_source"] = "recovered"
            lines.append(f"mean cosine similarity to the dense {lm.spec} embeddings {res['cosine_to_dense']:.4f} "
                         f"(min {res['cosine_to_dense_min']:.4f}); dense probe accuracy {res['probe_accuracy_dense']:.4f}")
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return {"text": "\n".join(lines), "json": res}
