"""`compress prune`: remove channels, heads and hidden units for real, check, export and write DIR.

    prune(PruneRun(ModelSpec("torchvision:resnet18"), "out", PruneConfig(ratio=0.3)))

returns {"text", "json", "code"} as the CLI prints them (code 1: a parity check failed) and writes
DIR: plan.json, model.safetensors (or the sparse files of a mixed plan), model.onnx, summary.json.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

from compress import calib as calib_spec
from compress.api.accuracy import FinetuneConfig, PruneAccuracy
from compress.errors import CompressError
from compress.prune.importance import DATA_CRITERIA
from compress.prune.plan import PruneConfig
from compress.prune.reconstruct import DEFAULT_SAMPLES as RECONSTRUCT_SAMPLES, ReconstructConfig
from compress.progress import Progress
from compress.accuracy.schedules import PruneSchedule
from compress.models.source import ModelSpec


@dataclass(frozen=True)
class PruneRun:
    """One `compress prune` run.

    - `model`: what to prune (MODEL, --weights, --input-shape).
    - `out`: the directory written (--out).
    - `channels`: how channels are chosen (--ratio, --criterion, --global, --round-to, --ignore,
      --seed). Its `ratio` is None with `plan`, which fixes the channel counts; its `criterion` None
      picks the default, l1 (taylor with an iterative schedule); a plan's own criterion and round_to
      take over. Its `seed` seeds the whole run (selection, calibration subsets, fine-tuning, lowering).
      `round_to` None: the channel step of `target`.
    - `plan`: a plan.json written by `compress plan` to apply instead of a ratio (--plan).
    - `target`: the device whose channel step is used (--target: cpu, gpu, jetson).
    - `strict`: fail on ops that block pruning instead of keeping their channels (--strict).
    - `calib`: calibration data, random[:N] | FILE.npy | data[:N] (--calib, see compress.calib).
    - `data`: fashion-mnist or a directory: measure accuracy (--data).
    - `finetune`: recovery fine-tuning on `data` (--finetune, --distill, --lr, --lr-rewind, --lr-schedule).
    - `schedule`: one shot, gradual or iterative pruning (--schedule, --steps).
    - `reconstruct`: after removal, refit the consumers of every pruned group by least squares and
      re-estimate BatchNorm statistics on the calibration data (--reconstruct; None: no refit; see
      compress.prune.reconstruct). Its calibration set is `calib`, or data:1024 of `data` without it.
    """
    model: ModelSpec
    out: str
    channels: PruneConfig
    plan: str | None = None
    target: str = "cpu"
    strict: bool = False
    calib: str | None = None
    data: str | None = None
    finetune: FinetuneConfig = FinetuneConfig()
    schedule: PruneSchedule = PruneSchedule("oneshot")
    reconstruct: ReconstructConfig | None = None


def prune(cfg: PruneRun) -> dict:
    """Validate, prune, fine-tune and measure as `cfg` says, write `cfg.out`; {"text", "json", "code"}."""
    from compress.accuracy import distributed
    from compress.hardware_profiles import channel_step

    sched = cfg.schedule
    criterion = cfg.channels.criterion or ("taylor" if sched.kind == "iterative" else "l1")
    plan = _read_plan(cfg)
    ratio, round_to = cfg.channels.ratio, cfg.channels.round_to
    if plan is not None:
        criterion = plan.config.get("criterion", criterion)
        ratio = _plan_ratio(plan)
        round_to = round_to or plan.round_to
    config = replace(cfg.channels, ratio=ratio, criterion=criterion, round_to=round_to,
                     ignore=tuple(cfg.channels.ignore))
    config.validate()
    data_criterion = config.criterion in DATA_CRITERIA
    _check_schedule(cfg)
    _check_reconstruct(cfg)
    round_to = round_to or channel_step(cfg.target)
    distributed.init()                    # under torchrun: join the process group (fine-tuning uses DDP)
    try:
        return _prune(cfg, config, plan, round_to, data_criterion)
    finally:
        distributed.finish()


def _check_schedule(cfg: PruneRun) -> None:
    """Validate the schedule and the LR shape against the other options."""
    sched, f = cfg.schedule, cfg.finetune
    sched.validate()
    if f.lr_schedule != "constant":
        if not f.epochs:
            raise CompressError(f"--lr-schedule {f.lr_schedule} needs --finetune EPOCHS (and --data)")
        if f.lr_rewind:
            raise CompressError("--lr-schedule and --lr-rewind exclude each other (rewinding replays the original schedule)")
    if sched.kind != "oneshot":
        if not cfg.data or not f.epochs:
            raise CompressError(f"--schedule {sched.kind} fine-tunes between its steps: give --data and --finetune EPOCHS")
        if cfg.channels.global_ranking:
            raise CompressError(f"--global is not supported with --schedule {sched.kind}; use a uniform --ratio")
    if f.weight_rewind is not None:
        _check_weight_rewind(cfg)
    if f.qat and (not f.epochs or not cfg.data):
        raise CompressError("--qat fine-tunes under int8 fake quantization: give --data and --finetune EPOCHS")
    if f.qat and sched.kind != "oneshot":
        raise CompressError(f"--qat applies to one-shot pruning's fine-tuning, not --schedule {sched.kind}")


def _check_weight_rewind(cfg: PruneRun) -> None:
    """--rewind weights:K: an iterative schedule, its own LR (the original schedule from epoch K), and a model
    whose training history compress owns (compress:* zoo models), K within it."""
    f, spec = cfg.finetune, cfg.model.model
    k = f.weight_rewind
    if cfg.schedule.kind != "iterative":
        raise CompressError(f"--rewind weights:{k} rewinds after each step of --schedule iterative, "
                            f"not {cfg.schedule.kind}")
    for flag, on in (("--lr-rewind", f.lr_rewind), ("--lr", f.lr is not None),
                     ("--lr-schedule", f.lr_schedule != "constant")):
        if on:
            raise CompressError(f"--rewind weights:{k} and {flag} exclude each other (weight rewinding replays the "
                                "original LR schedule from epoch K)")
    if not str(spec).startswith("compress:") or cfg.model.weights:
        what = "with --weights" if cfg.model.weights else spec
        raise CompressError(f"--rewind weights:{k} needs the model's training history (its epoch-{k} weights), "
                            f"which compress has only for the compress:* models it trains, not {what}; "
                            "use --lr-rewind or --lr")
    from compress.models import zoo

    epochs = zoo.rewind_epochs(spec.split(":", 1)[1])
    if k not in epochs:
        raise CompressError(f"--rewind weights:{k}: {spec} trains for {len(epochs)} epoch(s); "
                            f"rewind to an epoch in 0..{epochs[-1]}")


def _check_reconstruct(cfg: PruneRun) -> None:
    """--reconstruct needs a one-shot prune and calibration data that looks like what the model sees."""
    if cfg.reconstruct is None:
        return
    cfg.reconstruct.validate()
    if cfg.schedule.kind != "oneshot":
        raise CompressError(f"--reconstruct refits after a one-shot prune; drop --schedule {cfg.schedule.kind}")
    if not cfg.calib and not cfg.data:
        raise CompressError("--reconstruct needs calibration data like the model's inputs: --calib FILE.npy, "
                            f"or --data D (then data:{RECONSTRUCT_SAMPLES} of its training split)")


def _calib_spec(cfg: PruneRun) -> str | None:
    """The --calib spec in effect: --reconstruct with --data and no --calib takes data:1024."""
    if cfg.calib or cfg.reconstruct is None or not cfg.data:
        return cfg.calib
    return f"data:{RECONSTRUCT_SAMPLES}"


def _calib_text(cfg: PruneRun, spec: str | None, batches) -> str:
    n = sum(int(b[0].shape[0]) for b in batches)
    if spec and calib_spec.is_data(spec):
        return f"{n} samples of {cfg.data} (training split, stratified, seed {cfg.channels.seed}; --calib {spec})"
    return f"{n} samples of --calib {spec}"


def _with_reconstruct(cfg: PruneRun, run_prune, lm, batches, acc, spec: str | None, record: dict):
    """`run_prune` followed by compress.prune.reconstruct on `batches`; `record` gets the report's JSON,
    its text and (with --data) the test accuracy before and after reconstruction."""
    if cfg.reconstruct is None:
        return run_prune
    from compress.prune.reconstruct import reconstruct

    def run(model, inputs, config, round_to, source, calib=None, strict=False, log=None):
        res = run_prune(model, inputs, config, round_to, source, calib=calib, strict=strict, log=log)
        acc_json = {}
        if acc is not None:   # accuracy without reconstruction; with it: what `measured` records (_reconstruct_json)
            before = acc._evaluate(lm.model, res.model)[1]
            acc_json = {"accuracy_dense": before["accuracy_dense"], "accuracy_before": before["accuracy"],
                        "agreement_before": before["agreement"]}
        if log is not None:
            log("reconstructing")
        rep = reconstruct(lm.model, res.model, res.plan.param_keep(), batches,
                          replace(cfg.reconstruct, seed=cfg.channels.seed), graph=res.graph)
        record["json"] = {"calib": _calib_text(cfg, spec, batches)} | acc_json | rep.to_json()
        record["text"] = rep.text()
        res.plan.notes.extend(rep.notes)
        if rep.kept and rep.refit + sum(b["reestimated"] for b in rep.batchnorm):
            res.plan.notes.append("weights refit by --reconstruct: model.safetensors is not a slice of the "
                                  "source weights")
        return res
    return run


def _reconstruct_json(recon: dict, measured) -> dict:
    """summary.json's "reconstruct", with the test accuracy right after reconstruction (before any
    fine-tuning or lowering) from what `measured` recorded; the CLI text gains the comparison."""
    out = recon["json"]
    if measured and "accuracy_before" in out:
        j = measured["json"]
        after = j.get("accuracy_pruned_before_finetune", j.get("accuracy_before_lowering", j.get("accuracy")))
        agree = j.get("agreement_before_finetune", j.get("agreement"))
        out |= {"accuracy_after": after, "agreement_after": agree}
        recon["text"] += (f"\naccuracy without / with reconstruction: {out['accuracy_before']:.4f} / {after:.4f} "
                          f"(dense {out['accuracy_dense']:.4f})")
    return out


def _finetune_record(f: FinetuneConfig, train, distill: bool, rewind, history, seconds,
                     weight_rewind: dict | None = None) -> dict:
    from compress.accuracy.train import DISTILL_ALPHA, DISTILL_T, FINETUNE_LR

    return {"epochs": f.epochs, "train_samples": len(train), "distill": distill,
            "distill_temperature": DISTILL_T if distill else None, "distill_alpha": DISTILL_ALPHA if distill else None,
            "lr": None if rewind else (f.lr or FINETUNE_LR),
            "lr_schedule": None if rewind else f.lr_schedule,
            "lr_rewind": rewind.to_dict() if rewind and weight_rewind is None else None,
            "weight_rewind": weight_rewind, "quantization_aware": f.qat, "history": history,
            "seconds": round(seconds, 3)}


def _weight_rewind(cfg: PruneRun, lm, original) -> tuple[dict, dict]:
    """The epoch-K state_dict of a zoo model (--rewind weights:K) and summary.json's record of it."""
    from compress.models import zoo

    k, steps = cfg.finetune.weight_rewind, cfg.schedule.steps
    state, path = zoo.epoch_weights(lm.spec.split(":", 1)[1], k)
    share = cfg.finetune.epochs / steps
    record = {"epoch": k, "checkpoint": path.name, "schedule": original.to_dict(),
              "lr_from_epoch": k, "replayed_epochs": original.epochs - k, "epochs_per_step": share,
              "exact_replay": abs(share - (original.epochs - k)) < 1e-9}
    return state, record


def _read_plan(cfg: PruneRun):
    """The plan of `cfg.plan` (None without it); a ratio is required otherwise."""
    from compress.prune.plan import PrunePlan

    path = cfg.plan
    if not path:
        if cfg.channels.ratio is None:
            raise CompressError("give --ratio R (the fraction of channels removed per group), "
                                "or --plan FILE written by `compress plan`")
        return None
    if cfg.channels.ratio is not None:
        raise CompressError("--plan and --ratio exclude each other: the plan fixes the channel counts")
    if cfg.schedule.kind != "oneshot":
        raise CompressError(f"--plan applies a fixed plan at once; drop --schedule {cfg.schedule.kind}")
    if not os.path.isfile(path):
        raise CompressError(f"--plan {path}: file does not exist (write one with `compress plan`)")
    with open(path) as f:
        return PrunePlan.from_json(f.read(), path)


def _plan_ratio(plan) -> float:
    """The fraction of prunable channels a plan removes (reported as the ratio)."""
    before = sum(g.channels_before for g in plan.groups)
    after = sum(g.channels_after for g in plan.groups)
    return min(max(1.0 - after / max(before, 1), 1e-6), 1 - 1e-6)


def _plan_runner(plan, default):
    """With a plan, pruning applies the plan (and verifies it); otherwise `default` (compress.prune.apply.prune)."""
    if plan is None:
        return default
    from compress.prune.apply import apply_plan

    def run(model, inputs, config, round_to, source, calib=None, strict=False, log=None):
        res = apply_plan(model, inputs, plan, log=log)
        if plan.source.get("sha256") not in (None, source.get("sha256")):
            res.plan.notes.append("the plan was made for other weights than these (source sha256 differs)")
        return res
    return run


def _planned_formats(plan, lm) -> dict:
    """The layers a mixed plan lowers after its structured part, checked against the model ({} without)."""
    if plan is None or not plan.formats:
        return {}
    from compress.lower.mixed import planned

    return planned(plan.formats, lm.model)


def _sparse_calib(cfg: PruneRun, lm, inputs, acc, calib) -> tuple[list, str, bool]:
    """Calibration batches for lowering, what they are, and whether the user gave them (--calib or
    --data: 2:4 then selects by output error with the OBS update; otherwise magnitude, errors on random:32)."""
    if cfg.calib:
        return calib, cfg.calib, True
    if acc is not None:
        what = f"{cfg.data} (train split, {calib_spec.DATA_SAMPLES} samples)"
        if acc.calib is not None:
            return acc.calib, what, True
        from compress.accuracy import data
        src = acc.train if acc.train is not None else data.load(cfg.data, "train", acc.shape, allow_flat=True)
        data.check_shape(src, acc.shape)
        return data.subset_batches(src, calib_spec.DATA_SAMPLES, cfg.channels.seed), what, True
    return calib_spec.input_batches("random:32", lm, inputs), "random:32", False


def _lower_formats(cfg: PruneRun, lm, inputs, res, specs, calib, acc, measured, source, log) -> dict:
    """After the structured part of a mixed plan: lower the layers its `formats` mark 2:4 / block:B
    (compress.lower.mixed), check the lowered model against the masked dense one, and re-measure
    accuracy when --data was given. Returns {"result", "json", "text"}."""
    from compress.lower import mixed

    log("lowering")
    fit, dense = mixed.fit(specs, res.model)
    batches, spec, given = _sparse_calib(cfg, lm, inputs, acc, calib)
    notes = tuple(f"layer {n}: {why}" for n, why in dense.items())
    sres = mixed.lower_planned(res.model, fit, source, batches, given, spec, seed=cfg.channels.seed, notes=notes)
    check = batches[0] if batches else inputs
    err = mixed.lowered_vs_masked(sres, check)
    res.plan.notes = [n for n in res.plan.notes if not n.startswith("mixed plan:")] + [
        f"mixed plan: {len(fit)} layer(s) lowered to sparse formats after the structured part (sparse_plan.json)"]
    res.plan.notes += list(notes)
    layers = mixed.layer_table(sres, dense)
    errs = [e["error_after"] for e in layers.values() if e.get("error_after") is not None]
    obs = given and any(f == "2:4" for f, _, _ in fit.values())
    out = {"formats": layers, "sparse_calib": spec, "sparse_update": "obs" if obs else "none",
           "sparse_mean_error": (sum(errs) / len(errs)) if errs else None, "max_rel_error_lowered_vs_masked": err}
    text = mixed.text_lines(sres, dense, spec, given)
    text.append(f"lowered vs masked dense: max rel error {err:.1e}")
    if measured:                          # the accuracy of what is written: after lowering
        from compress.accuracy.evaluate import compare, predict
        after = compare(predict(sres.masked, acc.test), predict(lm.model, acc.test), acc.test.labels)
        j = measured["json"]
        j["accuracy_before_lowering"] = j.get("accuracy")
        j |= {k: after[k] for k in ("accuracy", "agreement", "functional_distance", "kl_divergence")}
        text.append(f"accuracy after lowering: {after['accuracy']:.4f} (before lowering "
                    f"{j['accuracy_before_lowering']:.4f}); agreement with dense {after['agreement']:.4f}")
    return {"result": sres, "json": out, "text": text}


def _prune_and_finetune(cfg: PruneRun, acc: PruneAccuracy, lm, inputs, config, round_to, source, calib,
                        run_prune, log, t0) -> tuple:
    """Fine-tuning driven here: a scheduled prune (fine-tuning between its steps), or one shot with an
    LR shape `PruneAccuracy.finetune_and_measure` does not drive; the accuracy is measured without
    fine-tuning before (one shot) and after. Returns (result, measured, schedule json, prune seconds)."""
    from compress.accuracy.train import finetune, model_schedule

    sched, f, seed = cfg.schedule, cfg.finetune, cfg.channels.seed
    rewind = model_schedule(lm.model) if f.lr_rewind or f.weight_rewind is not None else None
    rewind_state, weight_rewind = _weight_rewind(cfg, lm, rewind) if f.weight_rewind is not None else (None, None)
    teacher = lm.model if f.distill else None
    with_distill = " with distillation" if teacher is not None else ""
    schedule_json = None
    t1 = time.perf_counter()
    if sched.kind == "oneshot":
        res = run_prune(lm.model, inputs, config, round_to, source, calib=calib, strict=cfg.strict, log=log)
        before = acc.measure(lm.model, res.model)["json"]
        t1 = time.perf_counter()
        history = finetune(res.model, acc.train, f.epochs, teacher=teacher, lr=f.lr, rewind=rewind,
                           seed=seed, lr_schedule=f.lr_schedule, qat=f.qat)
    else:
        from compress.accuracy.schedules import run as run_schedule
        before = None
        sr = run_schedule(lm.model, inputs, config, round_to, source, sched, acc.train, f.epochs,
                          calib=calib, teacher=teacher, lr=f.lr, rewind=rewind, lr_schedule=f.lr_schedule,
                          strict=cfg.strict, log=log, rewind_state=rewind_state, rewind_epoch=f.weight_rewind)
        res, history = sr.result, [h for s in sr.steps for h in s.history]
        schedule_json = {"kind": sched.kind, "steps": sched.steps, "records": sr.to_json()}
    t_prune = time.perf_counter() - t0
    ft_seconds = time.perf_counter() - t1
    if before is not None:
        how = f" after {f.epochs:g} epoch(s) of fine-tuning{with_distill} ({f.lr_schedule} LR)"
    else:
        how = (f" after {sched.kind} pruning in {sched.steps} steps over {f.epochs:g} "
               f"epoch(s) of fine-tuning{with_distill}"
               + (f", weights rewound to epoch {f.weight_rewind} after each step" if weight_rewind else ""))
    measured = acc.measure(lm.model, res.model, before=before, how=how)
    measured["json"]["finetune"] = _finetune_record(f, acc.train, teacher is not None, rewind, history, ft_seconds,
                                                    weight_rewind)
    if before is not None:
        measured["json"] |= {"accuracy_pruned_before_finetune": before["accuracy"],
                             "agreement_before_finetune": before["agreement"],
                             "functional_distance_before_finetune": before["functional_distance"]}
    return res, measured, schedule_json, t_prune


def _prune(cfg: PruneRun, config: PruneConfig, plan, round_to: int, data_criterion: bool) -> dict:
    from compress import models
    from compress.accuracy import distributed
    from compress.prune.apply import prune as run_prune
    from compress.prune.plan import weights_source

    run_prune = _plan_runner(plan, run_prune)
    sched, f = cfg.schedule, cfg.finetune
    t0 = time.perf_counter()
    lm, inputs = cfg.model.load(data=cfg.data, calib=cfg.calib)   # no --input-shape: the data's samples set it
    if lm.plan is not None:
        raise CompressError(f"{cfg.model.model} is already pruned; prune its source model with a larger --ratio")
    sparse_specs = _planned_formats(plan, lm)   # {} unless the plan has formats
    spec = _calib_spec(cfg)
    acc = PruneAccuracy.setup(lm, cfg.data, f, spec, cfg.channels.seed, cfg.model.input_shape,
                              data_criterion)  # None without data
    calib = acc.calib if acc and acc.calib is not None else calib_spec.input_batches(
        spec or ("random:32" if data_criterion else None), lm, inputs)
    recon: dict = {}
    run_prune = _with_reconstruct(cfg, run_prune, lm, calib, acc, spec, recon)
    source = {"model": lm.spec, "sha256": models.weights_sha256(lm.model),
              "input_shape": list(inputs[0].shape), "input_dtype": lm.input_dtype}
    if cfg.model.weights:
        source["weights"] = weights_source(cfg.model.weights)
    own_finetune = acc is not None and bool(f.epochs) and (sched.kind != "oneshot" or f.lr_schedule != "constant")
    steps = ["tracing", "scoring", "removing", "verifying"] + (["reconstructing"] if cfg.reconstruct else []) + (
        ["lowering"] if sparse_specs else []) + ["exporting ONNX"]
    progress = Progress(steps) if distributed.is_main() else (lambda msg: None)
    schedule_json = None
    try:
        if own_finetune:
            res, measured, schedule_json, t_prune = _prune_and_finetune(
                cfg, acc, lm, inputs, config, round_to, source, calib, run_prune, progress, t0)
        else:
            res = run_prune(lm.model, inputs, config, round_to, source, calib=calib, strict=cfg.strict, log=progress)
            t_prune = time.perf_counter() - t0
            measured = acc.finetune_and_measure(lm.model, res.model) if acc else None  # fine-tunes res.model
        sparse = _lower_formats(cfg, lm, inputs, res, sparse_specs, calib, acc, measured, source,
                                progress) if sparse_specs else None
        summary, before, after = _summary(lm, inputs, res, config, round_to, sched.kind, t_prune, schedule_json,
                                          measured, sparse)
        if recon:
            summary["reconstruct"] = _reconstruct_json(recon, measured)
        if not distributed.is_main():         # under torchrun only rank 0 writes
            distributed.barrier()
            return {"text": "", "json": {"rank": distributed.active().rank, "out": cfg.out}, "code": 0}
        parity = _write(cfg, lm, inputs, res, sparse, summary, progress)
        distributed.barrier()
    finally:
        if hasattr(progress, "close"):
            progress.close()
    return _result(cfg, lm, res, before, after, summary, parity, measured, sparse, recon.get("text"))


def _summary(lm, inputs, res, config: PruneConfig, round_to: int, schedule: str, t_prune: float, schedule_json,
             measured, sparse) -> tuple[dict, dict, dict]:
    """summary.json's content, and the dense and pruned sizes."""
    from compress.metrics import size_summary

    before, after = size_summary(lm.model, inputs), size_summary(res.model, inputs)
    summary = {
        "model": lm.spec, "ratio": config.ratio, "criterion": config.criterion,
        "global": config.global_ranking, "round_to": round_to, "schedule": schedule,
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "mac_reduction": before["macs"] / max(after["macs"], 1),
        "groups": len(res.plan.groups), "groups_pruned": sum(
            g.channels_after < g.channels_before for g in res.plan.groups),
        "max_rel_error_vs_masked": res.max_rel_error,
        "prune_seconds": round(t_prune, 3), "notes": res.plan.notes,
    } | ({"schedule_steps": schedule_json} if schedule_json else {}) | (measured["json"] if measured else {}) | (
        sparse["json"] if sparse else {})
    return summary, before, after


def _write(cfg: PruneRun, lm, inputs, res, sparse, summary: dict, progress) -> dict:
    """The output directory, atomically: plan + weights (or the sparse directory), model.onnx checked
    against torch in onnxruntime, summary.json. Returns the parity record."""
    from compress import models
    from compress.export.onnx import export_onnx, ort_parity
    from compress.io import atomic_dir, save_pruned, write_json

    with atomic_dir(cfg.out) as tmp:
        onnx_model = res.model
        if sparse is None:
            save_pruned(tmp, res.model, res.plan, lm.hf_config)
        else:                             # plan.json + the sparse directory (compress.models.load reads both)
            from compress.lower.pipeline import save_sparse_dir
            with open(os.path.join(tmp, models.PLAN_FILE), "w") as fh:
                fh.write(res.plan.to_json())
            save_sparse_dir(tmp, sparse["result"], lm.hf_config)
            onnx_model = sparse["result"].masked      # dense weights with the zeros in place
        progress("exporting ONNX")
        onnx_path = os.path.join(tmp, "model.onnx")
        export_onnx(onnx_model, inputs, onnx_path)
        parity = ort_parity(onnx_path, onnx_model, inputs)
        summary["onnx_parity"] = parity
        write_json(os.path.join(tmp, "summary.json"), summary)
    return parity


def _result(cfg: PruneRun, lm, res, before: dict, after: dict, summary: dict, parity: dict, measured, sparse,
            recon_text: str | None = None) -> dict:
    """What the CLI prints, and the exit code (1 when onnxruntime or the lowered model disagrees)."""
    text = (f"pruned {lm.spec}: params {before['params']:,} -> {after['params']:,} "
            f"({after['params'] / before['params']:.1%}), MACs {before['macs']:,} -> {after['macs']:,} "
            f"({summary['mac_reduction']:.2f}x fewer); {summary['groups_pruned']}/{summary['groups']} groups pruned; "
            f"onnxruntime parity {'ok' if parity['ok'] else 'FAILED'} (max rel error {parity['max_rel_error']:.1e}); "
            f"wrote {cfg.out}")
    if recon_text:
        text += "\n" + recon_text
    if measured:
        text += "\n" + measured["text"]
    if sparse:
        text += "\n" + "\n".join(sparse["text"])
    for note in res.plan.notes:
        text += f"\nnote: {note}"
    lowered_ok = sparse is None or sparse["json"]["max_rel_error_lowered_vs_masked"] <= 1e-4
    code = 0 if parity["ok"] and lowered_ok else 1
    if not parity["ok"]:
        text += "\ncheck failed: onnxruntime output differs from torch"
    if not lowered_ok:
        text += "\ncheck failed: the lowered model differs from the masked dense model"
    return {"text": text, "json": summary | {"out": cfg.out}, "code": code}
