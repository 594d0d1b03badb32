"""`compress eval`: accuracy on a labelled test split, and agreement with the dense source.

    evaluate(EvalRun(ModelSpec("DIR"), "fashion-mnist"))

returns {"text", "json"} as the CLI prints them. Image classifiers get the metrics of
`compress.accuracy.evaluate`; text models (token ids in, e.g. hf:minilm) those of `compress.accuracy.text_eval`.

The per-sample input shape comes from --input-shape when given; else from the model when it states one
(`compress_input_shape`, compress:, a pruned directory of such a model); else from the data (IDX files
have a fixed shape; image folders are resized to the model's default): `compress.models.source.data_sample_shape`.
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
    from compress import models
    from compress.accuracy.evaluate import accuracy, check_fits, compare, format_comparison, predict
    from compress.models.source import data_sample_shape, dense_source

    t0 = time.perf_counter()
    if cfg.batch_size < 1:
        raise CompressError(f"--batch-size must be a positive integer, got {cfg.batch_size}")
    name = cfg.model.model
    from compress.export.quantize import onnx_artifact
    onnx_file = onnx_artifact(name)
    if onnx_file is not None:   # an export directory (its model.int8.onnx) or an ONNX file: run in onnxruntime
        return _evaluate_onnx(cfg, onnx_file, t0)
    lm = models.load(name, cfg.model.weights)
    if lm.input_dtype == "int64":   # a text model: embedding cosine to dense + linear probe (compress.accuracy.text_eval)
        from compress.accuracy.text_eval import eval_text
        return eval_text(lm, name, cfg.data, cfg.source_weights, cfg.batch_size)
    shape, shape_from, ds = data_sample_shape(lm, cfg.data, cfg.model.input_shape)
    k = check_fits(lm.model, ds, hint="" if shape_from == "--input-shape" else "; pass --input-shape")
    logits = predict(lm.model, ds, cfg.batch_size, desc="eval")
    acc = accuracy(logits, ds.labels)
    res = {"model": name, "source": lm.spec, "pruned": lm.plan is not None, "data": ds.name,
           "samples": len(ds), "classes": k, "accuracy": acc, "input_shape": list(shape), "input_shape_from": shape_from}
    lines = [f"{name}: accuracy {acc:.4f} on {ds.name} ({len(ds):,} samples, {ds.num_classes} classes"
             + (f", input shape {tuple(shape)} taken from the data" if shape_from == "data" else "") + ")"]
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


def _evaluate_onnx(cfg: EvalRun, path: str, t0: float) -> dict:
    """`compress eval EXPORT_DIR|FILE.onnx`: top-1 accuracy of the ONNX model in onnxruntime (CPU) on the --data test
    split; for model.int8.onnx with model.onnx beside it, also the fp32 model's accuracy and the agreement."""
    import os

    from compress.accuracy import data as datasets
    from compress.accuracy.evaluate import accuracy, compare, format_comparison
    from compress.export.quantize import INT8_FILE, onnx_input, predict_onnx

    if cfg.source_weights or cfg.model.weights:
        raise CompressError("--weights/--source-weights do not apply to an ONNX artifact (its weights are in the file)")
    shape, dtype, _ = onnx_input(path)
    if dtype != "float32":
        raise CompressError(f"{os.path.basename(path)} takes {dtype} inputs (a text model): compress eval runs ONNX "
                            "image classifiers only; evaluate the torch model (hf:... or the pruned directory)")
    if cfg.model.input_shape:
        raise CompressError("--input-shape does not apply to an ONNX artifact: its input shape is fixed in the file")
    ds = datasets.load(cfg.data, "test", shape)
    datasets.check_shape(ds, shape)
    logits = predict_onnx(path, ds, cfg.batch_size, desc="eval onnx")
    if logits.shape[1] < ds.num_classes:
        raise CompressError(f"{os.path.basename(path)} outputs {logits.shape[1]} classes but {ds.name} has {ds.num_classes}")
    acc = accuracy(logits, ds.labels)
    res = {"model": cfg.model.model, "onnx": path, "runtime": "onnxruntime (CPU)", "data": ds.name, "samples": len(ds),
           "classes": int(logits.shape[1]), "accuracy": acc, "input_shape": list(shape)}
    lines = [f"{path} (onnxruntime): accuracy {acc:.4f} on {ds.name} ({len(ds):,} samples, {ds.num_classes} classes)"]
    fp32 = os.path.join(os.path.dirname(path), "model.onnx")
    if os.path.basename(path) == INT8_FILE and os.path.isfile(fp32):
        r = compare(logits, predict_onnx(fp32, ds, cfg.batch_size, desc="eval fp32"), ds.labels)
        res |= {"accuracy_fp32": r["accuracy_dense"], "agreement_fp32": r["agreement"],
                "functional_distance_fp32": r["functional_distance"], "kl_divergence_fp32": r["kl_divergence"]}
        lines.append(f"fp32 model.onnx: accuracy {r['accuracy_dense']:.4f}; int8 vs fp32: "
                     + format_comparison(r).replace("with dense", "with fp32"))
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return {"text": "\n".join(lines), "json": res}
