"""`compress plan`: a structured-pruning plan that meets a latency budget on a device profile."""

from __future__ import annotations

HELP = "plan channel counts per group that meet a latency budget on a device profile"


def add_arguments(p) -> None:
    from compress.prune.importance import CRITERIA

    p.add_argument("model", metavar="MODEL", help="torchvision:NAME | hf:DIR | compress:NAME | package.module:function")
    p.add_argument("--target", default="cpu", help="device: cpu, gpu or jetson (picks the shipped profile)")
    p.add_argument("--profile", help="a profile file or shipped name (default: the target's shipped profile)")
    p.add_argument("--batch", type=int, help="batch size to plan for (default: the profile's)")
    b = p.add_mutually_exclusive_group(required=True)
    b.add_argument("--latency-budget", type=float, metavar="F", help="target latency as a fraction of dense, e.g. 0.6")
    b.add_argument("--latency-ms", type=float, metavar="MS", help="target latency in milliseconds")
    p.add_argument("--criterion", default="l1", choices=CRITERIA)
    p.add_argument("--calib", help="calibration data for data-driven criteria (as for compress prune)")
    p.add_argument("--formats", default="structured",
                   help="comma list of structured,2:4,block: formats the report compares (the plan is structured)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME", help="modules whose output channels are kept")
    p.add_argument("--min-keep", type=float, default=0.1, help="never keep fewer than this fraction of a group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (its batch is replaced by --batch)")
    p.add_argument("--weights", help="weights for MODEL (.safetensors, or a state_dict loaded with weights_only)")
    p.add_argument("--measure", action="store_true",
                   help="--target cpu on the machine the plan is for: time each candidate plan next to the dense model "
                        "in onnxruntime and re-plan at a corrected budget until the measured latency meets it")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


_TARGET_PROFILE = {"cpu": "cpu-x86-2core-ort", "jetson": "jetson-orin-nano", "gpu": "h100-torch"}


def _profile(args):
    from compress.errors import CompressError
    from compress.hardware_profiles import load_profile

    if args.target not in _TARGET_PROFILE:
        raise CompressError(f"unknown --target {args.target!r}; choose cpu, gpu or jetson")
    name = args.profile or _TARGET_PROFILE[args.target]
    try:
        return load_profile(name, batch=args.batch)
    except CompressError as e:
        if args.profile is None and args.target == "gpu":
            raise CompressError("no measured GPU profile ships yet; run `compress profile --target gpu --out FILE` "
                                "on the GPU machine and pass --profile FILE") from None
        raise e


def run(args) -> dict:
    import os

    import numpy as np

    from compress import models
    from compress.errors import CompressError
    from compress.io import atomic_dir, write_json
    from compress.prune.plan import weights_source
    from compress.planner.solve import BudgetUnreachable, PlanConfig
    from compress.calib import input_batches
    from compress.progress import Progress
    from compress.models.source import ModelSpec

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    bad = [f for f in formats if f not in ("structured", "2:4", "block")]
    if bad:
        raise CompressError(f"--formats: unknown format {bad[0]!r}; use a comma list of structured,2:4,block")
    if args.measure and (args.target != "cpu" or formats != ("structured",)):
        raise CompressError("--measure times plans with onnxruntime on this machine: it needs --target cpu and "
                            "--formats structured (a gpu or jetson plan can only be predicted here)")
    prof = _profile(args)
    if args.measure and prof.runtime != "ort":
        raise CompressError(f"--measure times with onnxruntime; profile {prof.name} is for {prof.runtime}")
    config = PlanConfig(latency_budget=args.latency_budget, latency_ms=args.latency_ms, criterion=args.criterion,
                        ignore=tuple(args.ignore), min_keep=args.min_keep, seed=args.seed)
    config.validate()
    shape = None
    if args.input_shape:
        shape = list(models.parse_shape(args.input_shape))
        shape[0] = prof.batch
        args.input_shape = ",".join(map(str, shape))
    lm, inputs = ModelSpec(args.model, args.weights, args.input_shape).load()
    if lm.plan is not None:
        raise CompressError(f"{args.model} is already pruned; plan from its source model")
    if shape is None:
        inputs = models.example_inputs(lm, (prof.batch,) + tuple(inputs[0].shape[1:]))
    calib = input_batches(args.calib or ("random:32" if args.criterion in ("taylor", "fisher", "activation", "apoz")
                                         else None), lm, inputs)
    source = {"model": lm.spec, "sha256": models.weights_sha256(lm.model), "input_shape": list(inputs[0].shape),
              "weights": weights_source(args.weights)}
    from compress.planner import formats as planner_formats
    from compress.planner.solve import finish, prepare

    bar = Progress(["tracing", "scoring", "solving"] + (["measuring"] if args.measure else []))
    log = lambda m: bar(m) if not m.startswith(("iteration", "candidate", "a budget")) else None  # noqa: E731
    fmt_report = None
    try:
        prep = prepare(lm.model, inputs, prof, config, calib=calib, target=args.target, log=log)
        plan, res, graph = finish(prep, config, source, log=log)
        measured = None
        if plan is not None and args.measure:
            from compress.planner.measured import refine

            bar("measuring")
            measured = refine(lm.model, inputs, prep, config, source, prof.batch, log=log)
            if measured is None:
                plan = None
            else:
                plan, res = measured.plan, measured.result
        sparse = tuple(f for f in formats if f != "structured")
        if plan is not None and sparse:
            fmt_report, mixed = planner_formats.report(prep, config, source, res, sparse)
            if fmt_report["winner"] == "mixed" and mixed is not None:
                plan, res = mixed
                plan.formats = dict(fmt_report["mixed"]["sparse_layers"])
                plan.notes.append("mixed plan: the layers in `formats` run sparse; `compress prune MODEL --plan plan.json` applies them")
    except BudgetUnreachable as e:
        bar.close()
        from compress.errors import CheckFailed
        raise CheckFailed(f"{e}; raise the budget or lower --min-keep") from None
    bar.close()
    report = {"profile": prof.name, "profile_source": prof.data["source"], "batch": prof.batch,
              "dense_ms": round(res.dense_ms, 4), "target_ms": round(res.target_ms, 4),
              "predicted_ms": round(res.predicted_ms, 4), "predicted_speedup": round(res.dense_ms / res.predicted_ms, 4),
              "smallest_ms": round(res.min_ms, 4), "iterations": res.iterations,
              "roofline_fallback_layers": res.fallback_layers, "formats": list(formats)}
    if measured is not None:
        report["measured"] = {"runtime": "onnxruntime CPUExecutionProvider (this machine)", "batch": prof.batch,
                              "target_ratio": measured.target_ratio, "measured_ratio": measured.measured_ratio,
                              "dense_ms": measured.dense_ms, "measured_ms": measured.measured_ms,
                              "meets_budget": measured.meets, "candidates": measured.candidates}
    if plan is None:
        text = (f"nothing to do: the budget {res.target_ms:.3f} ms is at or above the dense model's predicted "
                f"{res.dense_ms:.3f} ms on {prof.name}" if not args.measure else
                "nothing to do: the dense model already meets the budget on this machine")
        return {"text": text, "json": {**report, "plan": None}, "code": 0}
    groups = [{"producers": g.producers[:2], "channels_before": g.channels_before, "channels_after": g.channels_after}
              for g in plan.groups]
    report["groups"] = groups
    if fmt_report is not None:
        report["formats_report"] = fmt_report
    with atomic_dir(args.out) as d:
        with open(os.path.join(d, "plan.json"), "w") as f:
            f.write(plan.to_json())
        write_json(os.path.join(d, "report.json"), report)
    kept = np.mean([g["channels_after"] / max(g["channels_before"], 1) for g in groups]) if groups else 1.0
    lines = [f"profile {prof.name} ({prof.data['source']}, batch {prof.batch})",
             f"dense {res.dense_ms:.3f} ms -> predicted {res.predicted_ms:.3f} ms "
             f"(target {res.target_ms:.3f} ms, speedup {res.dense_ms / res.predicted_ms:.2f}x)",
             f"{len(groups)} groups, mean kept fraction {kept:.2f}",
             f"plan: {os.path.join(args.out, 'plan.json')}  (apply: compress prune {args.model} "
             f"--plan {os.path.join(args.out, 'plan.json')} --out DIR)"]
    if measured is not None:
        lines.insert(2, f"measured here: {measured.measured_ratio:.3f} of dense ({measured.measured_ms:.3f} vs "
                        f"{measured.dense_ms:.3f} ms, target {measured.target_ratio:.3f}) after "
                        f"{len(measured.candidates)} timed candidate(s)"
                        + ("" if measured.meets else "; no candidate met the budget: the fastest is kept"))
    if fmt_report is not None:
        fr = fmt_report
        lines.append(f"formats ({', '.join(fr['formats'])}): structured {fr['structured']['speedup']:.2f}x, "
                     f"unstructured-only {fr['unstructured']['speedup']:.2f}x"
                     f"{'' if fr['unstructured']['meets_budget'] else ' (misses the budget)'}"
                     + (f", mixed {fr['mixed']['speedup']:.2f}x" if "speedup" in fr.get("mixed", {}) else "")
                     + f"; per-layer winners {fr['summary']}; chosen: {fr['winner']}")
    if res.fallback_layers:
        lines.insert(1, f"warning: no measured table for {len(res.fallback_layers)} layer kinds, roofline used: "
                        + ", ".join(res.fallback_layers[:6]))
    out = {"text": "\n".join(lines), "json": {**report, "out": args.out}}
    if measured is not None and not measured.meets:
        out["code"] = 1      # a requested check (the measured budget) failed; the fastest plan is still written
    return out
