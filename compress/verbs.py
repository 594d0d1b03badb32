"""Verb implementations: each returns {"text", "json", "code"} for the CLI to print."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from compress import models
from compress.errors import CompressError


class Progress:
    """A step-level progress bar on stderr (hidden when stderr is not a terminal)."""

    def __init__(self, steps: list[str]) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=len(steps), disable=None, leave=False, bar_format="{desc} {bar} {n_fmt}/{total_fmt}")

    def __call__(self, msg: str) -> None:
        self.bar.set_description(msg)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _load(args) -> tuple[models.LoadedModel, tuple]:
    lm = models.load(args.model, args.weights)
    shape = models.parse_shape(args.input_shape) if args.input_shape else None
    inputs = models.example_inputs(lm, shape)
    try:
        with torch.no_grad():
            lm.model(*inputs)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompressError(f"the model does not run on an input of shape {tuple(inputs[0].shape)} "
                            f"({msg[:200]}); pass the right --input-shape") from None
    return lm, inputs


def calib_batches(spec: str | None, lm: models.LoadedModel, inputs: tuple, batch: int = 8) -> list[tuple]:
    if not spec:
        return []
    if spec.startswith("random"):
        n = 32
        if ":" in spec:
            try:
                n = int(spec.split(":", 1)[1])
            except ValueError:
                raise CompressError(f"--calib {spec!r}: use random:N with an integer N") from None
        shape = (n,) + tuple(inputs[0].shape[1:])
        full = models.example_inputs(lm, shape, seed=1)[0]
    elif spec.endswith(".npy"):
        if not os.path.isfile(spec):
            raise CompressError(f"--calib {spec}: file does not exist")
        try:
            full = torch.from_numpy(np.load(spec, allow_pickle=False))
        except ValueError as e:
            raise CompressError(f"--calib {spec}: not a numeric .npy array ({e})") from None
        if tuple(full.shape[1:]) != tuple(inputs[0].shape[1:]):
            raise CompressError(f"--calib {spec}: samples have shape {tuple(full.shape[1:])}, "
                                f"the model takes {tuple(inputs[0].shape[1:])}")
        full = full.to(inputs[0].dtype)
    else:
        raise CompressError(f"--calib {spec!r}: use random[:N] or a .npy file of inputs")
    return [(full[i:i + batch],) for i in range(0, len(full), batch)]


def _schedule_args(args, data_criterion: bool):
    """Validate --schedule/--steps/--lr-schedule against the other flags; the PruneSchedule."""
    from compress.schedules import PruneSchedule

    sched = PruneSchedule(getattr(args, "schedule", "oneshot") or "oneshot", getattr(args, "steps", 4))
    sched.validate()
    lr_schedule = getattr(args, "lr_schedule", "constant") or "constant"
    if lr_schedule != "constant":
        if not getattr(args, "finetune", 0):
            raise CompressError(f"--lr-schedule {lr_schedule} needs --finetune EPOCHS (and --data)")
        if getattr(args, "lr_rewind", False):
            raise CompressError("--lr-schedule and --lr-rewind exclude each other (rewinding replays the original schedule)")
    if sched.kind != "oneshot":
        if not getattr(args, "data", None) or not getattr(args, "finetune", 0):
            raise CompressError(f"--schedule {sched.kind} fine-tunes between its steps: give --data and --finetune EPOCHS")
        if args.global_ranking:
            raise CompressError(f"--global is not supported with --schedule {sched.kind}; use a uniform --ratio")
    return sched, lr_schedule


def _finetune_record(args, epochs, train, distill, lr_schedule, rewind, history, seconds) -> dict:
    from compress.train import DISTILL_ALPHA, DISTILL_T, FINETUNE_LR

    return {"epochs": epochs, "train_samples": len(train), "distill": distill,
            "distill_temperature": DISTILL_T if distill else None, "distill_alpha": DISTILL_ALPHA if distill else None,
            "lr": None if rewind else (getattr(args, "lr", None) or FINETUNE_LR),
            "lr_schedule": None if rewind else lr_schedule,
            "lr_rewind": rewind.to_dict() if rewind else None, "history": history, "seconds": round(seconds, 3)}


def prune(args) -> dict:
    from compress import distributed
    from compress.hardware_profiles import channel_step
    from compress.plan import PruneConfig

    schedule_kind = getattr(args, "schedule", "oneshot") or "oneshot"
    criterion = args.criterion or ("taylor" if schedule_kind == "iterative" else "l1")
    plan = _plan_arg(args, schedule_kind)
    if plan is not None:
        criterion = plan.config.get("criterion", criterion)
        args.ratio = _plan_ratio(plan)
        args.round_to = args.round_to or plan.round_to
    config = PruneConfig(ratio=args.ratio, criterion=criterion, global_ranking=args.global_ranking,
                         round_to=args.round_to, ignore=tuple(args.ignore), seed=args.seed)
    config.validate()
    data_criterion = config.criterion in ("taylor", "fisher", "activation", "apoz")
    sched, lr_schedule = _schedule_args(args, data_criterion)
    round_to = args.round_to or channel_step(args.target)
    distributed.init()                    # under torchrun: join the process group (fine-tuning uses DDP)
    try:
        return _prune(args, config, sched, lr_schedule, round_to, data_criterion)
    finally:
        distributed.finish()


def _plan_arg(args, schedule_kind: str):
    """The plan of `--plan FILE` (None without it); --ratio is required otherwise."""
    from compress.plan import PrunePlan

    path = getattr(args, "plan", None)
    if not path:
        if args.ratio is None:
            raise CompressError("give --ratio R (the fraction of channels removed per group), "
                                "or --plan FILE written by `compress plan`")
        return None
    if args.ratio is not None:
        raise CompressError("--plan and --ratio exclude each other: the plan fixes the channel counts")
    if schedule_kind != "oneshot":
        raise CompressError(f"--plan applies a fixed plan at once; drop --schedule {schedule_kind}")
    if not os.path.isfile(path):
        raise CompressError(f"--plan {path}: file does not exist (write one with `compress plan`)")
    with open(path) as f:
        plan = PrunePlan.from_json(f.read(), path)
    args.plan_obj = plan
    return plan


def _plan_ratio(plan) -> float:
    """The fraction of prunable channels a plan removes (reported as the ratio)."""
    before = sum(g.channels_before for g in plan.groups)
    after = sum(g.channels_after for g in plan.groups)
    return min(max(1.0 - after / max(before, 1), 1e-6), 1 - 1e-6)


def _plan_runner(plan, default):
    """With --plan, pruning applies the plan (and verifies it); otherwise `default` (compress.pruner.prune)."""
    if plan is None:
        return default
    from compress.pruner import apply_plan

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


def _sparse_calib(args, lm, inputs, acc, calib) -> tuple[list, str, bool]:
    """Calibration batches for lowering, what they are, and whether the user gave them (--calib or
    --data: 2:4 then selects by output error with the OBS update; otherwise magnitude, errors on random:32)."""
    if getattr(args, "calib", None):
        return calib, args.calib, True
    if acc is not None:
        from compress.evaluate import DEFAULT_CALIB
        if acc.calib is not None:
            return acc.calib, f"{args.data} (train split, {DEFAULT_CALIB} samples)", True
        from compress import data
        src = acc.train if acc.train is not None else data.load(args.data, "train", acc.shape, allow_flat=True)
        data.check_shape(src, acc.shape)
        batches = [(x,) for x, _ in data.calibration_subset(src, DEFAULT_CALIB, args.seed).batches(8)]
        return batches, f"{args.data} (train split, {DEFAULT_CALIB} samples)", True
    return calib_batches("random:32", lm, inputs), "random:32", False


def _lower_formats(args, lm, inputs, res, specs, calib, acc, measured, source, log) -> dict:
    """After the structured part of a mixed plan: lower the layers its `formats` mark 2:4 / block:B
    (compress.lower.mixed), check the lowered model against the masked dense one, and re-measure
    accuracy when --data was given. Returns {"result", "json", "text"}."""
    from compress.lower import mixed

    log("lowering")
    fit, dense = mixed.fit(specs, res.model)
    batches, spec, given = _sparse_calib(args, lm, inputs, acc, calib)
    notes = tuple(f"layer {n}: {why}" for n, why in dense.items())
    sres = mixed.lower_planned(res.model, fit, source, batches, given, spec, seed=args.seed, notes=notes)
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
        from compress.evaluate import compare, predict
        after = compare(predict(sres.masked, acc.test), predict(lm.model, acc.test), acc.test.labels)
        j = measured["json"]
        j["accuracy_before_lowering"] = j.get("accuracy")
        j |= {k: after[k] for k in ("accuracy", "agreement", "functional_distance", "kl_divergence")}
        text.append(f"accuracy after lowering: {after['accuracy']:.4f} (before lowering "
                    f"{j['accuracy_before_lowering']:.4f}); agreement with dense {after['agreement']:.4f}")
    return {"result": sres, "json": out, "text": text}


def _prune(args, config, sched, lr_schedule, round_to, data_criterion) -> dict:
    import argparse

    from compress import distributed
    from compress.evaluate import PruneAccuracy
    from compress.export.onnx import export_onnx, ort_parity
    from compress.io import atomic_dir, save_pruned, write_json
    from compress.metrics import size_summary
    from compress.plan import weights_source
    from compress.pruner import prune as run_prune

    run_prune = _plan_runner(getattr(args, "plan_obj", None), run_prune)
    t0 = time.perf_counter()
    lm, inputs = _load(args)
    if lm.plan is not None:
        raise CompressError(f"{args.model} is already pruned; prune its source model with a larger --ratio")
    sparse_specs = _planned_formats(getattr(args, "plan_obj", None), lm)   # {} unless the plan has formats
    acc = PruneAccuracy.setup(args, lm, data_criterion)  # None without --data
    calib = acc.calib if acc and acc.calib is not None else calib_batches(
        args.calib or ("random:32" if data_criterion else None), lm, inputs)
    source = {"model": lm.spec, "sha256": models.weights_sha256(lm.model),
              "input_shape": list(inputs[0].shape), "input_dtype": lm.input_dtype}
    if args.weights:
        source["weights"] = weights_source(args.weights)
    own_finetune = acc is not None and bool(args.finetune) and (sched.kind != "oneshot" or lr_schedule != "constant")
    steps = ["tracing", "scoring", "removing", "verifying"] + (["lowering"] if sparse_specs else []) + ["exporting ONNX"]
    progress = Progress(steps) if distributed.is_main() else (lambda msg: None)
    schedule_json = None
    try:
        if own_finetune:
            # fine-tuning driven here (scheduled pruning, or an LR shape PruneAccuracy does not know);
            # PruneAccuracy only measures
            from compress.train import finetune, model_schedule
            rewind = model_schedule(lm.model) if args.lr_rewind else None
            teacher = lm.model if args.distill else None
            measure_only = argparse.Namespace(**{**vars(args), "finetune": 0, "distill": False, "lr": None,
                                                 "lr_rewind": False})
            acc.args = measure_only
            t1 = time.perf_counter()
            if sched.kind == "oneshot":
                res = run_prune(lm.model, inputs, config, round_to, source, calib=calib, strict=args.strict,
                                log=progress)
                before = acc.measure(lm.model, res.model)["json"]
                t1 = time.perf_counter()
                history = finetune(res.model, acc.train, args.finetune, teacher=teacher, lr=args.lr, rewind=rewind,
                                   seed=args.seed, lr_schedule=lr_schedule)
            else:
                from compress.schedules import run as run_schedule
                before = None
                sr = run_schedule(lm.model, inputs, config, round_to, source, sched, acc.train, args.finetune,
                                  calib=calib, teacher=teacher, lr=args.lr, rewind=rewind, lr_schedule=lr_schedule,
                                  strict=args.strict, log=progress)
                res, history = sr.result, [h for s in sr.steps for h in s.history]
                schedule_json = {"kind": sched.kind, "steps": sched.steps, "records": sr.to_json()}
            t_prune = time.perf_counter() - t0
            ft_seconds = time.perf_counter() - t1
            measured = acc.measure(lm.model, res.model)
            measured["json"]["finetune"] = _finetune_record(args, args.finetune, acc.train, teacher is not None,
                                                            lr_schedule, rewind, history, ft_seconds)
            if before is not None:
                measured["json"] |= {"accuracy_pruned_before_finetune": before["accuracy"],
                                     "agreement_before_finetune": before["agreement"],
                                     "functional_distance_before_finetune": before["functional_distance"]}
                measured["text"] = measured["text"].replace(
                    "pruned ", f"pruned {before['accuracy']:.4f} before and ", 1).replace(
                    "; agreement", f" after {args.finetune:g} epoch(s) of fine-tuning"
                    f"{' with distillation' if teacher is not None else ''} ({lr_schedule} LR); agreement", 1)
            else:
                measured["text"] = measured["text"].replace(
                    "; agreement", f" after {sched.kind} pruning in {sched.steps} steps over {args.finetune:g} "
                    f"epoch(s) of fine-tuning{' with distillation' if teacher is not None else ''}; agreement", 1)
        else:
            res = run_prune(lm.model, inputs, config, round_to, source, calib=calib, strict=args.strict, log=progress)
            t_prune = time.perf_counter() - t0
            measured = acc.measure(lm.model, res.model) if acc else None  # fine-tunes res.model
        sparse = _lower_formats(args, lm, inputs, res, sparse_specs, calib, acc, measured, source,
                                progress) if sparse_specs else None
        before, after = size_summary(lm.model, inputs), size_summary(res.model, inputs)
        summary = {
            "model": lm.spec, "ratio": config.ratio, "criterion": config.criterion,
            "global": config.global_ranking, "round_to": round_to, "schedule": sched.kind,
            "params_before": before["params"], "params_after": after["params"],
            "macs_before": before["macs"], "macs_after": after["macs"],
            "mac_reduction": before["macs"] / max(after["macs"], 1),
            "groups": len(res.plan.groups), "groups_pruned": sum(
                g.channels_after < g.channels_before for g in res.plan.groups),
            "max_rel_error_vs_masked": res.max_rel_error,
            "prune_seconds": round(t_prune, 3), "notes": res.plan.notes,
        } | ({"schedule_steps": schedule_json} if schedule_json else {}) | (measured["json"] if measured else {}) | (
            sparse["json"] if sparse else {})
        if not distributed.is_main():         # under torchrun only rank 0 writes
            distributed.barrier()
            return {"text": "", "json": {"rank": distributed.active().rank, "out": args.out}, "code": 0}
        with atomic_dir(args.out) as tmp:
            onnx_model = res.model
            if sparse is None:
                save_pruned(tmp, res.model, res.plan, lm.hf_config)
            else:                             # plan.json + the sparse directory (compress.models.load reads both)
                from compress.lower.pipeline import save_sparse_dir
                with open(os.path.join(tmp, models.PLAN_FILE), "w") as f:
                    f.write(res.plan.to_json())
                save_sparse_dir(tmp, sparse["result"], lm.hf_config)
                onnx_model = sparse["result"].masked      # dense weights with the zeros in place
            progress("exporting ONNX")
            onnx_path = os.path.join(tmp, "model.onnx")
            export_onnx(onnx_model, inputs, onnx_path)
            parity = ort_parity(onnx_path, onnx_model, inputs)
            summary["onnx_parity"] = parity
            write_json(os.path.join(tmp, "summary.json"), summary)
        distributed.barrier()
    finally:
        if hasattr(progress, "close"):
            progress.close()
    text = (f"pruned {lm.spec}: params {before['params']:,} -> {after['params']:,} "
            f"({after['params'] / before['params']:.1%}), MACs {before['macs']:,} -> {after['macs']:,} "
            f"({summary['mac_reduction']:.2f}x fewer); {summary['groups_pruned']}/{summary['groups']} groups pruned; "
            f"onnxruntime parity {'ok' if parity['ok'] else 'FAILED'} (max rel error {parity['max_rel_error']:.1e}); "
            f"wrote {args.out}")
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
    return {"text": text, "json": summary | {"out": args.out}, "code": code}


def inspect(args) -> dict:
    from compress.graph import build_graph
    from compress.metrics import size_summary
    from compress.pruner import trace_inputs

    lm, inputs = _load(args)
    sizes = size_summary(lm.model, inputs)
    info = {"model": lm.spec, "params": sizes["params"], "macs": sizes["macs"],
            "input_shape": list(inputs[0].shape), "pruned": lm.plan is not None}
    lines = [f"{lm.spec}{' (pruned: ' + args.model + ')' if lm.plan else ''}",
             f"params {sizes['params']:,}  MACs {sizes['macs']:,}  input {tuple(inputs[0].shape)}"]
    if lm.plan is not None:
        gp = lm.plan.groups
        info["plan"] = {"groups": len(gp), "channels_before": sum(g.channels_before for g in gp),
                        "channels_after": sum(g.channels_after for g in gp), "config": lm.plan.config}
        lines.append(f"plan: {len(gp)} groups, channels {info['plan']['channels_before']} -> "
                     f"{info['plan']['channels_after']}, criterion {lm.plan.config['criterion']}, "
                     f"ratio {lm.plan.config['ratio']}")
    else:
        graph = build_graph(lm.model, trace_inputs(inputs))
        groups = []
        lines.append(f"{'group':>5} {'channels':>8} {'width':>5}  producers")
        for g in graph.groups:
            prods = sorted({k[0].rsplit('.', 1)[0] for k in g.producers})
            groups.append({"id": g.id, "classes": g.size, "channels": g.channels, "fixed": g.fixed,
                           "width": int(g.width[0]) if len(set(g.width.tolist())) == 1 else None,
                           "producers": prods, "modules": g.modules})
            shown = ", ".join(prods[:3]) + (f" (+{len(prods) - 3})" if len(prods) > 3 else "")
            lines.append(f"{g.id:>5} {g.channels:>8} {int(g.width[0]):>5}  {shown}")
        info["groups"] = groups
        info["blocked"] = [{"producers": p, "reason": r} for p, r in graph.blocked]
        info["unsupported"] = [{"module": w, "op": op} for w, op in graph.unsupported]
        for p, r in graph.blocked:
            mods = p.split(", ")
            shown = ", ".join(mods[:3]) + (f" (+{len(mods) - 3})" if len(mods) > 3 else "")
            lines.append(f"  kept  {shown}: {r}")
        for w, op in graph.unsupported:
            lines.append(f"  note: unsupported op {op} in {w} keeps its channels")
    return {"text": "\n".join(lines), "json": info}


def eval(args) -> dict:  # noqa: A001 (the verb's name)
    from compress.evaluate import eval_verb

    return eval_verb(args)
