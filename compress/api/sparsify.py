"""`compress sparsify`: unstructured masks lowered to 2:4, block-sparse (BSR) or CSR weights.

    sparsify(SparsifyRun(ModelSpec("hf:minilm"), "out", SparsifyConfig(pattern="2:4")))

returns {"text", "json", "code"} as the CLI prints them (code 1: the lowered model differs from the
masked dense one, or onnxruntime from torch) and writes DIR: sparse_plan.json +
sparse_model.safetensors (weights in their sparse formats), model.onnx (dense weights with the
zeros in place, onnxruntime parity checked) and summary.json.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from compress.errors import CompressError
from compress.lower.pipeline import SparsifyConfig
from compress.models.source import ModelSpec
from compress.sparse.movement import MovementConfig

if TYPE_CHECKING:
    from compress.lower.pipeline import SparsifyResult
    from compress.models import LoadedModel

DEFAULT_CALIB = "random:32"
MAX_LOWERED_ERROR = 1e-4        # lowered vs masked dense model, relative to the output's magnitude


@dataclass(frozen=True)
class SparsifyRun:
    """One `compress sparsify` run.

    - `model`: what to sparsify (MODEL, --weights, --input-shape); not a pruned or sparse directory.
    - `out`: the directory written (--out).
    - `lowering`: the format and how weights are chosen (--pattern, --sparsity, --criterion, --update,
      --calib, --seed, --strict). Its `sparsity` None: 0.5 with pattern 2:4, required otherwise. Its `calib`
      is the calibration data, random[:N] | FILE.npy; None: random:32. Given (or with update obs),
      2:4 magnitude picks the 2 of 4 that minimise output error on it (`data_select`). Its `seed`
      seeds the whole run. A layer that cannot take the pattern (2:4 on a reduction dimension that
      is not a multiple of 4, e.g. a stem conv on 1 or 3 input channels) stays dense, named with
      the reason in sparse_plan.json, summary.json and the text; its `strict` refuses the model instead.
    - `data`: fashion-mnist or a directory of labelled images (--data): the training split fine-tunes, the
      test split measures accuracy (dense and sparse).
    - `finetune`: movement pruning as published (--criterion movement --finetune EPOCHS, --lr): the
      weights are fine-tuned on `data` while the movement scores accumulate and the sparsity rises on the
      cubic schedule (compress.sparse.movement); the directory then holds the fine-tuned weights. None:
      the criterion scores the weights as they are (movement: one shot on the calibration batches).
    """
    model: ModelSpec
    out: str
    lowering: SparsifyConfig
    data: str | None = None
    finetune: MovementConfig | None = None


def sparsify(cfg: SparsifyRun) -> dict:
    """Validate, lower, check and export as `cfg` says, write `cfg.out`; {"text", "json", "code"}."""
    import torch

    from compress.calib import input_batches
    from compress.lower import pipeline

    config = _config(cfg.lowering)
    fmt, _ = config.validate()
    _check_finetune(cfg, config, fmt)
    t0 = time.perf_counter()
    lm, inputs = _load(cfg.model, fmt, config.strict)
    torch.manual_seed(config.seed)
    calib = input_batches(config.calib, lm, inputs)
    tuned = _movement_finetune(cfg, config, lm) if cfg.finetune is not None else None
    model = tuned["model"] if tuned else lm.model
    res = pipeline.sparsify(model, inputs, config, _source(lm, inputs), calib,
                            scores=tuned["scores"] if tuned else None)
    seconds = time.perf_counter() - t0
    lowered_err = _lowered_error(res, calib[0] if calib else inputs)
    extra = _finetune_json(tuned, res, lm) if tuned else None
    summary = _write(cfg.out, lm, inputs, res, config, lowered_err, seconds, extra)
    ok = summary["onnx_parity"]["ok"] and lowered_err <= MAX_LOWERED_ERROR
    text = _text(cfg.out, lm, res, config, summary, ok)
    if extra:
        f = extra["finetune"]
        text += (f"\nmovement pruning while fine-tuning: {f['epochs']:g} epoch(s), {f['steps']} steps, sparsity 0 -> "
                 f"{f['final_sparsity']:g} (cubic); accuracy on {f['data']}: dense {extra['accuracy_dense']:.4f}, "
                 f"sparse {extra['accuracy']:.4f}")
    return {"text": text, "json": summary | {"out": cfg.out}, "code": 0 if ok else 1}


def _check_finetune(cfg: SparsifyRun, config: SparsifyConfig, fmt: str) -> None:
    """--finetune: movement pruning while fine-tuning, on --data, to an unstructured or block pattern."""
    if cfg.finetune is None:
        if cfg.data:
            raise CompressError("--data is the fine-tuning data of --finetune EPOCHS (movement pruning); give both")
        return
    cfg.finetune.validate()
    if config.criterion != "movement":
        raise CompressError(f"--finetune trains with movement pruning (Sanh et al. 2020); use --criterion movement, "
                            f"not {config.criterion}")
    if fmt != "unstructured" and not fmt.startswith("block:"):
        raise CompressError(f"--finetune (movement pruning) takes --pattern unstructured or block:N, "
                            f"not {config.pattern}")
    if config.scope != "layer":
        raise CompressError("--finetune (movement pruning) ranks per layer; scope global is not supported")
    if not cfg.data:
        raise CompressError("--finetune needs --data (fashion-mnist or a directory of labelled images)")


def _movement_finetune(cfg: SparsifyRun, config: SparsifyConfig, lm: LoadedModel) -> dict:
    """A fine-tuned copy of the model with its movement scores, and the data it was measured on."""
    import copy

    from compress.accuracy import data as datasets
    from compress.accuracy.evaluate import check_fits
    from compress.lower import formats
    from compress.lower.pipeline import check_layers
    from compress.models.source import sample_shape
    from compress.sparse import movement

    fmt, block = formats.parse_pattern(config.pattern)
    kind = "block" if fmt.startswith("block:") else fmt
    shape = sample_shape(lm, cfg.model.input_shape)
    test = datasets.load(cfg.data, "test", shape)
    datasets.check_shape(test, shape)
    check_fits(lm.model, test, f"{lm.spec}")
    train = datasets.load(cfg.data, "train", shape, allow_flat=False)
    datasets.check_shape(train, shape)
    model = copy.deepcopy(lm.model)
    layers = check_layers(model, fmt, config.strict)[0]
    mcfg = cfg.finetune if cfg.finetune.seed == config.seed else replace(cfg.finetune, seed=config.seed)
    mres = movement.finetune(model, train, layers, kind, block, config.sparsity, mcfg)
    return {"model": model.eval(), "scores": mres.scores, "result": mres, "config": mcfg, "train": train,
            "test": test}


def _finetune_json(tuned: dict, res: SparsifyResult, lm: LoadedModel) -> dict:
    """summary.json's record of movement pruning while fine-tuning, with the test accuracy of the dense source
    and of the written (masked, fine-tuned) model."""
    from compress.accuracy.evaluate import EVAL_BATCH, compare, predict
    from compress.accuracy.train import FINETUNE_LR

    test, mres, c = tuned["test"], tuned["result"], tuned["config"]
    dense = predict(lm.model, test, EVAL_BATCH, desc="eval dense")
    after = compare(predict(res.masked, test, EVAL_BATCH, desc="eval sparse"), dense, test.labels)
    rec = mres.to_json() | {"epochs": c.epochs, "lr": c.lr or FINETUNE_LR, "optimizer": "sgd",
                            "batch_size": c.batch_size,
                            "warmup": c.warmup, "cooldown": c.cooldown, "train_samples": len(tuned["train"]),
                            "data": test.name, "eval_samples": len(test)}
    return {"finetune": rec, "accuracy_dense": after["accuracy_dense"], "accuracy": after["accuracy"],
            "agreement": after["agreement"],
            "notes": ["weights fine-tuned with movement pruning (--finetune): the sparse directory holds the "
                      "fine-tuned weights, not a masked copy of the source's"]}


def _config(c: SparsifyConfig) -> SparsifyConfig:
    """`c` with its defaults resolved: the sparsity of 2:4, the calibration data, data selection."""
    sparsity = c.sparsity
    if sparsity is None:
        if c.pattern != "2:4":
            raise CompressError(f"--sparsity is required with --pattern {c.pattern}")
        sparsity = 0.5
    return replace(c, sparsity=sparsity, calib=c.calib or DEFAULT_CALIB,
                   data_select=c.data_select or bool(c.calib) or c.update == "obs")


def _load(spec: ModelSpec, fmt: str, strict: bool = False) -> tuple[LoadedModel, tuple]:
    """The dense model and its example inputs; some of its layers must take `fmt`, with `strict` all of
    them (checked before any work)."""
    from compress.lower.pipeline import check_layers

    lm, inputs = spec.load()
    if lm.notes and any(n.startswith("sparse:") for n in lm.notes):
        raise CompressError(f"{spec.model} is already sparse; sparsify its source model")
    if lm.plan is not None:
        raise CompressError(f"{spec.model} is a pruned directory; sparsify of pruned models is not supported yet")
    check_layers(lm.model, fmt, strict)               # no layer fits, or one does not with strict: fail before any work
    return lm, inputs


def _source(lm: LoadedModel, inputs: tuple) -> dict:
    """What the sparse plan records of the model it was made from."""
    from compress import models

    return {"model": lm.spec, "sha256": models.weights_sha256(lm.model),
            "input_shape": list(inputs[0].shape), "input_dtype": lm.input_dtype}


def _lowered_error(res: SparsifyResult, check: tuple) -> float:
    """The largest relative output error of the lowered model vs the masked dense model, over every
    CPU backend: the lowered model must compute what the masked dense model computes."""
    import torch

    from compress.lower.modules import set_backends

    with torch.no_grad():
        ref = res.masked(*check)
        errs = {}
        for backend in ("dense", "sparse"):
            set_backends(res.model, prefer=backend)
            out = res.model(*check)
            errs[backend] = float((out - ref).abs().max()) / max(float(ref.abs().max()), 1e-6)
        set_backends(res.model)
    return max(errs.values())


def _write(out: str, lm: LoadedModel, inputs: tuple, res: SparsifyResult, config: SparsifyConfig,
           lowered_err: float, seconds: float, extra: dict | None = None) -> dict:
    """Write the sparse directory, model.onnx (parity checked) and summary.json to `out`; the summary."""
    from compress.export.onnx import export_onnx, ort_parity
    from compress.io import atomic_dir, write_json
    from compress.lower.pipeline import save_sparse_dir

    with atomic_dir(out) as tmp:
        save_sparse_dir(tmp, res, lm.hf_config)
        onnx_path = os.path.join(tmp, "model.onnx")
        export_onnx(res.masked, inputs, onnx_path)
        parity = ort_parity(onnx_path, res.masked, inputs)
        summary = _summary(lm, res, config, lowered_err, parity, seconds)
        if extra:
            summary |= {k: v for k, v in extra.items() if k != "notes"}
            summary["notes"] = summary["notes"] + extra["notes"]
        write_json(os.path.join(tmp, "summary.json"), summary)
    return summary


def _summary(lm: LoadedModel, res: SparsifyResult, config: SparsifyConfig, lowered_err: float, parity: dict,
             seconds: float) -> dict:
    """summary.json: the options, each layer's format, density and errors, and the checks."""
    import torch

    layers = {lp.name: {"format": lp.format, "module": lp.module, "density": lp.density,
                        "error_before": lp.error_before, "error_after": lp.error_after,
                        "error_magnitude": lp.error_magnitude} | ({"skipped": lp.skipped} if lp.skipped else {})
              for lp in res.plan.layers}
    total = sum(torch.Size(lp.shape).numel() for lp in res.plan.layers)
    kept = sum(torch.Size(lp.shape).numel() * lp.density for lp in res.plan.layers)
    return {"model": lm.spec, "pattern": config.pattern, "sparsity": config.sparsity, "criterion": config.criterion,
            "update": config.update, "calib": config.calib, "layers": layers, "density": kept / total,
            "weights_sparsified": total, "max_rel_error_lowered_vs_masked": lowered_err,
            "onnx_parity": parity, "sparsify_seconds": round(seconds, 3), "notes": list(res.plan.notes)} | (
               {"skipped": res.plan.skipped} if res.plan.skipped else {})


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _text(out: str, lm: LoadedModel, res: SparsifyResult, config: SparsifyConfig, summary: dict, ok: bool) -> str:
    """What the CLI prints: a line per layer, the mean output error, the checks and the notes."""
    parity, lowered_err = summary["onnx_parity"], summary["max_rel_error_lowered_vs_masked"]
    width = max(len(lp.name) for lp in res.plan.layers)
    errs_after = [lp.error_after for lp in res.plan.layers if lp.error_after is not None]
    skipped = res.plan.skipped
    lowered = len(summary["layers"]) - len(skipped)
    text = [f"sparsified {lm.spec}: {lowered} layers to {config.pattern} ({config.criterion}"
            f"{', obs update' if config.update == 'obs' else ''})"
            f"{f', {len(skipped)} kept dense' if skipped else ''}, density {summary['density']:.3f}",
            f"{'layer':<{width}} {'module':<18} {'density':>7} {'err before':>10} {'err after':>10}"]
    for lp in res.plan.layers:
        text.append(f"{lp.name:<{width}} {lp.module:<18} {lp.density:>7.3f} {_fmt(lp.error_before):>10} "
                    f"{_fmt(lp.error_after):>10}")
    if errs_after:
        text.append(f"mean relative output error {sum(errs_after) / len(errs_after):.4g} on {config.calib}")
    text.append(f"lowered vs masked dense: max rel error {lowered_err:.1e}; onnxruntime parity "
                f"{'ok' if parity['ok'] else 'FAILED'} (max rel error {parity['max_rel_error']:.1e}); wrote {out}")
    text += [f"skipped: layer {n} stays dense: {why}" for n, why in skipped.items()]
    text += [f"note: {n}" for n in res.plan.notes]
    if not ok:
        text.append("check failed: " + ("onnxruntime output differs from torch" if not parity["ok"]
                                         else "the lowered model differs from the masked dense model"))
    return "\n".join(text)
