"""plan -> prune (and fine-tune) -> export -> verify -> measure, per target and candidate, each a cached step.

Steps and what keys them (besides the tool version, see cache.py):
- dense    `compress export` of the dense model (dense latency and size): model spec, weights sha256, input
           shape, target, device
- plan     (latency_budget plans) `compress plan` against the target's profile: model, profile sha256, budget,
           criterion, target
- prune    `compress prune` (pruning, then fine-tuning on the data's training split; fine-tuning is part of
           the verb, so they are one step): model, dataset files' sha256, ratio or plan sha256, the
           target's section (criterion, finetune, distill, lr, seed)
- export   `compress export` of the pruned directory: its files (plan, weights, ONNX), target, device
- verify   `compress eval` on the pruned directory: its files, dataset
- measure  (cpu) dense and pruned latency as `compress bench` times it, alternating processes, median over
           rounds: both artifacts' ONNX sha256, runs, rounds, batch, the machine (CPU, cores, onnxruntime
           version)
- predict  (gpu, jetson: not measurable here) `compress predict` of dense and pruned against the target's
           profile: both ONNX sha256, the profile's sha256
Budgets are not part of any key: changing a budget re-checks without re-running anything.

A target with dtype = "int8" ships the int8 artifact and every step is about it: the plan is made against
an int8 profile (`compress plan --dtype int8`), both exports are `compress export --dtype int8 --calib SPEC`
(dtype and calibration join the dense and export keys), the verify step also runs `compress eval` on the
artifact (model.int8.onnx in onnxruntime: the accuracy the budgets see), and the measure step times the dense
and pruned model.int8.onnx, with the dense fp32 model.onnx beside them for reference. So max_accuracy_drop is
the int8 pruned artifact against the dense fp32 model, min_speedup its latency against the dense int8 model's
(the planner's latency_budget is a fraction of that too), and max_size_mb the size of model.int8.onnx.
"""

from __future__ import annotations

import os
import statistics
import sys

from compress.errors import CompressError
from compress.release import tools
from compress.release.cache import StepCache, dir_sha256, file_sha256
from compress.release.config import ReleaseConfig, Target

PRUNED_FILES = ("plan.json", "model.safetensors", "model.onnx")


def log(msg: str) -> None:
    sys.stderr.write(f"release: {msg}\n")
    sys.stderr.flush()


def _data_id(spec: str) -> dict:
    from compress.accuracy.data import resolve

    _, d, _ = resolve(spec)
    return {"files_sha256": dir_sha256(d)}


def _model_args(cfg: ReleaseConfig) -> list[str]:
    return (["--weights", cfg.weights] if cfg.weights else []) + (
        ["--input-shape", cfg.input_shape] if cfg.input_shape else [])


def _files_id(d: str, names=PRUNED_FILES) -> dict:
    return {n: file_sha256(os.path.join(d, n)) for n in names if os.path.isfile(os.path.join(d, n))}


def _export_step(src: str, t: Target, tmp: str, model_args: list[str] | None = None) -> dict:
    a = tools.export_artifact(src, t.name, t.device, os.path.join(tmp, "artifact"), model_args, t.export_args())
    m = a["manifest"]
    extra = {}
    if t.int8:        # the shipped file is model.int8.onnx; model.onnx (fp32) stays beside it as the reference
        fp32 = os.path.join(tmp, "artifact", a["onnx"])
        a["onnx"] = m["int8"]["file"]
        q = m["int8"]["parity"]
        extra = {"fp32_onnx": os.path.relpath(fp32, os.path.join(tmp, "artifact")),
                 "fp32_onnx_sha256": file_sha256(fp32), "int8_parity": {k: q.get(k) for k in ("metric", "value", "threshold", "ok", "inputs")}}
    onnx = os.path.join(tmp, "artifact", a["onnx"])
    return extra | {"onnx": a["onnx"], "onnx_sha256": file_sha256(onnx), "size_bytes": os.path.getsize(onnx),
            "ok": bool(m.get("ok")), "parity": [{k: c.get(k) for k in ("runtime", "inputs", "ok", "max_abs_error")}
                                                 for c in m.get("parity", [])],
            "not_verified_here": list(m.get("not_verified_here", [])),
            "files": sorted(m.get("files", {})), "batch": m["source"]["input_shape"][0]}


def _candidate(cfg: ReleaseConfig, t: Target, cache: StepCache, model_id: dict, data_id: dict,
               dense: dict, plan_arg: dict) -> dict:
    label = plan_arg["label"]

    def prune(tmp: str) -> dict:
        log(f"[{t.name}] {label}: pruning" + (f" and fine-tuning {t.finetune:g} epoch(s)" if t.finetune else ""))
        argv = ["prune", cfg.model, *plan_arg["argv"], "--criterion", t.criterion, "--target", t.name,
                "--data", cfg.data, "--seed", str(t.seed), "--out", os.path.join(tmp, "pruned"), *_model_args(cfg)]
        if t.finetune:
            argv += ["--finetune", f"{t.finetune:g}"] + (["--distill"] if t.distill else []) + (
                ["--lr", f"{t.lr:g}"] if t.lr else [])
        rc, j = tools.run_verb(argv, ok_codes=(0, 1))
        keys = ("accuracy", "accuracy_dense", "accuracy_pruned_before_finetune", "params_before", "params_after",
                "macs_before", "macs_after", "mac_reduction", "onnx_parity")
        return {k: j.get(k) for k in keys} | {"exit_code": rc}

    pdir, pr = cache.run("prune", {"model": model_id, "data": data_id, "plan": plan_arg["key"],
                                   "section": t.section()}, prune)
    pruned = os.path.join(pdir, "pruned")
    pruned_id = _files_id(pruned)

    def export(tmp: str) -> dict:
        log(f"[{t.name}] {label}: exporting (compress export --target {t.name}"
            + (f" --device {t.device}" if t.device else "") + (f" --dtype int8 --calib {t.calib})" if t.int8 else ")"))
        return _export_step(pruned, t, tmp)

    edir, ex = cache.run("export", {"pruned": pruned_id, "target": t.name, "device": t.device} | t.quant_key(), export)
    artifact = os.path.join(edir, "artifact")

    def verify(tmp: str) -> dict:
        log(f"[{t.name}] {label}: verifying accuracy (compress eval)")
        argv = ["eval", pruned, "--data", cfg.data] + (["--source-weights", cfg.weights] if cfg.weights else [])
        _, j = tools.run_verb(argv)
        out = {"accuracy": j["accuracy"], "accuracy_dense": j.get("accuracy_dense"), "samples": j.get("samples")}
        if t.int8:    # the int8 artifact in onnxruntime: the accuracy that ships
            log(f"[{t.name}] {label}: verifying the int8 artifact's accuracy (compress eval on {ex['onnx']})")
            _, j8 = tools.run_verb(["eval", artifact, "--data", cfg.data])
            out |= {"accuracy_fp32": j["accuracy"], "accuracy": j8["accuracy"], "samples": j8["samples"],
                    "agreement_int8_fp32": j8.get("agreement_fp32")}
        return out

    vkey = {"pruned": pruned_id, "data": data_id, "weights": model_id["weights"]}
    if t.int8:
        vkey["artifact"] = ex["onnx_sha256"]
    _, ver = cache.run("verify", vkey, verify)
    lat = _latency(cfg, t, cache, dense, pruned, artifact, ex, label)
    acc_dense = ver["accuracy_dense"] if ver["accuracy_dense"] is not None else pr["accuracy_dense"]
    parity_ok = bool((pr["onnx_parity"] or {}).get("ok")) and pr["exit_code"] == 0 and ex["ok"]
    int8 = {}
    if t.int8:
        int8 = {"accuracy_fp32": ver["accuracy_fp32"], "agreement_int8_fp32": ver["agreement_int8_fp32"],
                "int8_parity": ex["int8_parity"], "latency_ms_dense_fp32": lat.get("dense_fp32_ms"),
                "speedup_vs_fp32": (lat["dense_fp32_ms"] / lat["pruned_ms"]) if lat.get("dense_fp32_ms") else None}
    return int8 | {
        "label": label, "dtype": t.dtype, "ratio": plan_arg.get("ratio"),
        "latency_budget": plan_arg.get("latency_budget"),
        "plan_predicted": plan_arg.get("predicted"),
        "accuracy": ver["accuracy"], "accuracy_dense": acc_dense,
        "accuracy_at_prune_time": pr["accuracy"], "accuracy_before_finetune": pr["accuracy_pruned_before_finetune"],
        "eval_samples": ver["samples"],
        "accuracy_drop_points": (acc_dense - ver["accuracy"]) * 100 if acc_dense is not None else None,
        "latency_ms_dense": lat["dense_ms"], "latency_ms": lat["pruned_ms"], "latency_source": lat["source"],
        "latency_measured": lat["measured"], "latency_batch": lat.get("batch"),
        "speedup": lat["dense_ms"] / lat["pruned_ms"],
        "speedup_rounds": [d / p for d, p in zip(lat.get("dense_rounds_ms", []), lat.get("pruned_rounds_ms", []))],
        "size_mb_dense": dense["size_bytes"] / 1e6, "size_mb": ex["size_bytes"] / 1e6,
        "params": pr["params_after"], "params_dense": pr["params_before"], "macs": pr["macs_after"],
        "macs_dense": pr["macs_before"], "onnx_parity_ok": parity_ok, "export_parity": ex["parity"],
        "onnx_sha256": ex["onnx_sha256"], "artifact_files": ex["files"],
        "not_verified_here": ex["not_verified_here"],
        "_dirs": {"pruned": pruned, "artifact": artifact},
    }


def _latency(cfg, t: Target, cache: StepCache, dense: dict, pruned: str, artifact: str, ex: dict,
             label: str) -> dict:
    if not t.measured_here:
        prof = os.path.basename(t.profile)

        def predict(tmp: str) -> dict:
            log(f"[{t.name}] {label}: predicting latency from {prof} (compress predict; {t.name} cannot run here)")
            return {"dense_ms": tools.predict_ms(cfg.model, t.profile, _model_args(cfg)),
                    "pruned_ms": tools.predict_ms(pruned, t.profile), "measured": False,
                    "source": f"predicted from profile {prof}, not measured on this machine"}
        return cache.run("predict", {"dense": dense["onnx_sha256"], "pruned": ex["onnx_sha256"],
                                     "profile": file_sha256(t.profile), "model": cfg.model}, predict)[1]

    batch = cfg.batch or dense.get("batch", 1)   # (a dense step cached before "batch" was recorded: 1)

    def measure(tmp: str) -> dict:
        log(f"[{t.name}] {label}: measuring latency in onnxruntime, dense and pruned workers in lockstep "
            f"({cfg.rounds} rounds x {cfg.runs} runs, batch {batch}" + (", int8 artifacts" if t.int8 else "") + ")")
        files = [os.path.join(dense["_dir"], dense["onnx"]), os.path.join(artifact, ex["onnx"])]
        if t.int8:    # the dense fp32 model beside them, for reference
            files.append(os.path.join(dense["_dir"], dense["fp32_onnx"]))
        got = tools.measure_ms(files, cfg.runs, cfg.rounds, cfg.batch)
        d_ms, p_ms = got[0], got[1]
        out = {"dense_ms": statistics.median(d_ms), "pruned_ms": statistics.median(p_ms),
               "dense_rounds_ms": d_ms, "pruned_rounds_ms": p_ms, "measured": True, "batch": batch,
               "source": (f"measured on this machine (onnxruntime CPU, compress.measure lockstep workers, batch "
                          f"{batch}, median over {cfg.rounds} rounds of {cfg.runs} runs, dense and pruned in turn"
                          + ("; int8 artifacts (model.int8.onnx), dense fp32 model.onnx timed beside them)"
                             if t.int8 else ")"))}
        if t.int8:
            out |= {"dense_fp32_ms": statistics.median(got[2]), "dense_fp32_rounds_ms": got[2]}
        return out

    key = {"dense": dense["onnx_sha256"], "pruned": ex["onnx_sha256"], "runs": cfg.runs, "rounds": cfg.rounds,
           "machine": tools.machine(), "measured_by": tools.MEASURED_BY}
    if t.int8:
        key["dense_fp32"] = dense["fp32_onnx_sha256"]
    if cfg.batch is not None:     # (kept out of the key when unset, so existing caches stay valid)
        key["batch"] = cfg.batch
    return cache.run("measure", key, measure)[1]


def _plan(cfg: ReleaseConfig, t: Target, cache: StepCache, model_id: dict) -> dict:
    """The latency-budget plan from `compress plan` against the target's profile, as a candidate's plan."""
    def plan(tmp: str) -> dict:
        log(f"[{t.name}] planning for {t.latency_budget:g} of the dense latency on {os.path.basename(t.profile)} "
            + ("(compress plan --measure: candidates timed on this machine)" if t.measure_plan else "(compress plan)"))
        _, j = tools.run_verb(["plan", cfg.model, "--target", t.name, "--profile", t.profile, "--latency-budget",
                               f"{t.latency_budget:g}", "--criterion", t.criterion, "--seed", str(t.seed),
                               "--out", os.path.join(tmp, "plan"), *_model_args(cfg)]
                              + (["--measure"] if t.measure_plan else []) + (["--dtype", "int8"] if t.int8 else []),
                              ok_codes=(0, 1) if t.measure_plan else (0,))
        if j.get("plan", True) is None:
            raise CompressError(f"targets.{t.name}.latency_budget = {t.latency_budget:g}: nothing to prune, the "
                                f"dense model's predicted {j['dense_ms']:.3f} ms is within the budget "
                                f"{j['target_ms']:.3f} ms on {j['profile']}; lower latency_budget")
        out = {"plan_sha256": file_sha256(os.path.join(tmp, "plan", "plan.json")),
               "predicted": {k: j[k] for k in ("profile", "dense_ms", "target_ms", "predicted_ms",
                                               "predicted_speedup")}}
        if "measured" in j:   # the planner's own timing; the release still measures the result itself
            out["planned_by_measurement"] = {k: j["measured"][k] for k in ("target_ratio", "measured_ratio",
                                                                            "meets_budget")}
        return out

    key = {"model": model_id, "target": t.name, "profile": file_sha256(t.profile),
           "latency_budget": t.latency_budget, "criterion": t.criterion, "seed": t.seed}
    if t.measure_plan:        # a measured plan depends on the machine it was timed on
        key |= {"measure_plan": True, "machine": tools.machine()}
    if t.int8:
        key["dtype"] = t.dtype
    pdir, pl = cache.run("plan", key, plan)
    return {"label": f"latency budget {t.latency_budget:g}", "latency_budget": t.latency_budget,
            "predicted": pl["predicted"], "key": {"plan": pl["plan_sha256"]},
            "argv": ["--plan", os.path.join(pdir, "plan", "plan.json")]}


def run_target(cfg: ReleaseConfig, t: Target, cache: StepCache, model_id: dict, data_id: dict) -> list[dict]:
    def dense_step(tmp: str) -> dict:
        log(f"[{t.name}] dense model: exporting (compress export --target {t.name}"
            + (f" --dtype int8 --calib {t.calib})" if t.int8 else ")"))
        return _export_step(cfg.model, t, tmp, _model_args(cfg))

    ddir, dense = cache.run("dense", {"model": model_id, "target": t.name, "device": t.device} | t.quant_key(),
                            dense_step)
    dense = dense | {"_dir": os.path.join(ddir, "artifact")}
    if t.latency_budget is not None:
        plans = [_plan(cfg, t, cache, model_id)]
    else:
        plans = [{"label": f"ratio {r:g}", "ratio": r, "key": {"ratio": r}, "argv": ["--ratio", f"{r:g}"]}
                 for r in t.ratios]
    return [_candidate(cfg, t, cache, model_id, data_id, dense, p) for p in plans]


def run(cfg: ReleaseConfig, cache_dir: str) -> tuple[dict, StepCache]:
    """All targets' candidates: {target name: [candidate dict, ...]}, and the cache (for hit counts)."""
    data_id = _data_id(cfg.data)
    model_id = {"spec": cfg.model, "weights": file_sha256(cfg.weights) if cfg.weights else None,
                "input_shape": cfg.input_shape}
    cache = StepCache(cache_dir)
    try:
        return {t.name: run_target(cfg, t, cache, model_id, data_id) for t in cfg.targets}, cache
    finally:
        cache.close()
