"""`compress eval`: accuracy on a labelled test split, and agreement with the dense source.

    evaluate(EvalRun(ModelSpec("DIR"), "fashion-mnist"))

returns {"text", "json"} as the CLI prints them. Image classifiers get the metrics of
`compress.accuracy.evaluate`; text models (token ids in, e.g. hf:minilm) those of `compress.accuracy.text_eval`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from compress.errors import CompressError
from compress.accuracy.evaluate import EVAL_BATCH
from compress.models.source import ModelSpec


@dataclass(frozen=True)
class EvalRun:
    """One `compress eval` run: `model` (MODEL_OR_DIR, --weights, --input-shape) on the test split of
    `data` (--data: fashion-mnist or a directory; text models: tweets or FILE.csv). For a pruned
    directory the dense source is rebuilt, with `source_weights` (--source-weights) when given.
    `batch_size`: evaluation batch (--batch-size)."""
    model: ModelSpec
    data: str
    source_weights: str | None = None
    batch_size: int = EVAL_BATCH


def evaluate(cfg: EvalRun) -> dict:
    """`compress eval MODEL_OR_DIR --data fashion-mnist|PATH [--source-weights FILE] [--json]`."""
    from compress.accuracy import data
    from compress import models
    from compress.accuracy.evaluate import accuracy, check_fits, compare, format_comparison, predict
    from compress.models.source import dense_source, sample_shape

    t0 = time.perf_counter()
    if cfg.batch_size < 1:
        raise CompressError(f"--batch-size must be a positive integer, got {cfg.batch_size}")
    name = cfg.model.model
    lm = models.load(name, cfg.model.weights)
    if lm.input_dtype == "int64":   # a text model: embedding cosine to dense + linear probe (compress.accuracy.text_eval)
        from compress.accuracy.text_eval import eval_text
        return eval_text(lm, name, cfg.data, cfg.source_weights, cfg.batch_size)
    shape = sample_shape(lm, cfg.model.input_shape)
    ds = data.load(cfg.data, "test", shape)
    data.check_shape(ds, shape)
    k = check_fits(lm.model, ds)
    logits = predict(lm.model, ds, cfg.batch_size, desc="eval")
    acc = accuracy(logits, ds.labels)
    res = {"model": name, "source": lm.spec, "pruned": lm.plan is not None, "data": ds.name,
           "samples": len(ds), "classes": k, "accuracy": acc}
    lines = [f"{name}: accuracy {acc:.4f} on {ds.name} ({len(ds):,} samples, {ds.num_classes} classes)"]
    if lm.plan is not None:
        dense, why = dense_source(lm.plan, cfg.source_weights)
        if dense is None:
            res["dense_source"] = why
            lines.append(f"note: {why}")
        else:
            r = compare(logits, predict(dense, ds, cfg.batch_size, desc="eval dense"), ds.labels)
            res |= {k_: r[k_] for k_ in ("accuracy_dense", "agreement", "functional_distance", "kl_divergence")}
            res["dense_source"] = "recovered"
            lines.append(f"dense {lm.spec}: accuracy {r['accuracy_dense']:.4f}; " + format_comparison(r))
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return {"text": "\n".join(lines), "json": res}
