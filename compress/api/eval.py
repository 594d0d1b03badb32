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
    from compress.export.quantize import INT8_FILE, onnx_input, onnx_inputs, predict_onnx

    if cfg.source_weights or cfg.model.weights:
        raise CompressError("--weights/--source-weights do not apply to an ONNX artifact (its weights are in the file)")
    if cfg.model.input_shape:
        raise CompressError("--input-shape does not apply to an ONNX artifact: its input shape is fixed in the file")
    ins = onnx_inputs(path)
    if any(dt == "int64" for _, _, dt in ins):
        return _evaluate_onnx_text(cfg, path, t0)
    if len(ins) > 1 or ins[0][2] != "float32":
        raise CompressError(f"{os.path.basename(path)} takes {', '.join(f'{n} {dt} {list(d)}' for n, d, dt in ins)}: "
                            "compress eval runs ONNX image classifiers (one float32 image tensor) and text models "
                            "(int64 token ids, with attention_mask / token_type_ids); evaluate the torch model instead")
    shape, _, _ = onnx_input(path)
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


def _source_spec(path: str) -> str:
    """The hf: model an ONNX file was exported from (its tokenizer's): source.model of the manifest.json (compress
    export) or plan.json (compress prune) beside it."""
    import json
    import os

    for name in ("manifest.json", "plan.json"):
        try:
            with open(os.path.join(os.path.dirname(path), name)) as f:
                spec = json.load(f)["source"]["model"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(spec, str) and spec.startswith("hf:"):
            return spec
    raise CompressError(f"{os.path.basename(path)} takes token ids, and no manifest.json (compress export) or "
                        "plan.json (compress prune) beside it names the hf: model whose tokenizer makes them: evaluate "
                        "its export directory, or the torch model (hf:DIR or the pruned directory)")


def _evaluate_onnx_text(cfg: EvalRun, path: str, t0: float) -> dict:
    """`compress eval EXPORT_DIR|FILE.onnx --data tweets|FILE.csv` of a text model: what `compress eval hf:...` reports
    (compress.accuracy.text_eval: linear-probe accuracy on held-out sentences, embeddings mean-pooled over the
    real tokens) with the ONNX file's every input fed from the tokenizer (token ids, attention masks with their
    real padding, token type ids zeros); for model.int8.onnx with model.onnx beside it, also the fp32 probe
    accuracy and int8 vs fp32 as `--dtype int8` judges it (export/quantize.py judge: cosine for encoders)."""
    import os

    import torch

    from compress.accuracy import text
    from compress.accuracy.text_eval import eval_sets, probe_accuracy
    from compress.export.quantize import INT8_FILE, embedding, judge, onnx_inputs, run_tokens

    spec = _source_spec(path)
    tr, te = eval_sets(cfg.data)
    tok = text.tokenizer(spec)
    ins = onnx_inputs(path)
    seq = (ins[0][1][1] if len(ins[0][1]) == 2 else None) or text.MAX_TOKENS   # the file's token length, if fixed

    def run(p):
        (o_tr, m_tr), (o_te, m_te) = (run_tokens(p, tok, s.texts, cfg.batch_size, seq) for s in (tr, te))
        e_tr, e_te = (torch.from_numpy(embedding(o, m)) for o, m in ((o_tr, m_tr), (o_te, m_te)))
        return probe_accuracy(e_tr, tr.labels, e_te, te.labels, tr.num_classes), o_te, m_te

    acc, out, mask = run(path)
    res = {"model": cfg.model.model, "onnx": path, "runtime": "onnxruntime (CPU)", "source": spec, "data": cfg.data,
           "task": "text", "classes": list(tr.classes), "probe_train_sentences": len(tr), "eval_sentences": len(te),
           "probe_accuracy": acc, "inputs": [n for n, _, _ in ins], "tokens": seq}
    padding = ""
    if mask is not None:
        res["padded_sentences"] = int((mask == 0).any(1).sum())
        padding = f", attention masks from the tokenizer ({res['padded_sentences']:,} of {len(te):,} padded)"
    lines = [f"{path} (onnxruntime): linear-probe accuracy {acc:.4f} on {len(te):,} held-out sentences of {cfg.data} "
             f"({tr.num_classes} classes; probe fitted on {len(tr):,} training sentences; {spec}'s tokenizer, "
             f"{seq} tokens{padding})"]
    fp32 = os.path.join(os.path.dirname(path), "model.onnx")
    if os.path.basename(path) == INT8_FILE and os.path.isfile(fp32):
        acc32, out32, mask32 = run(fp32)
        j = judge(out, out32, mask=mask if mask is not None else mask32)
        res |= {"probe_accuracy_fp32": acc32, "int8_vs_fp32": j}
        lines.append(f"fp32 model.onnx: linear-probe accuracy {acc32:.4f}; int8 vs fp32: {j['metric']} "
                     f"{j['value']:.4f}" + (f" (min {j['min']:.4f})" if "min" in j else "")
                     + f", bar {j['threshold']}: {'ok' if j['ok'] else 'BELOW'}")
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return {"text": "\n".join(lines), "json": res}
