"""`compress plan`: a structured-pruning plan that meets a latency budget on a device profile.

    plan(PlanRun(ModelSpec("torchvision:resnet18"), "out", PlanConfig(latency_budget=0.6)))

returns {"text", "json", "code"?} as the CLI prints them (code 1: with `measure`, no timed candidate met
the budget; the fastest plan is still written) and writes DIR: plan.json and report.json.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from compress.errors import CompressError
from compress.models.source import ModelSpec
from compress.planner.solve import PlanConfig, PlanResult, Prepared
from compress.prune.importance import DATA_CRITERIA

if TYPE_CHECKING:
    from compress.hardware_profiles.predictor import DeviceProfile
    from compress.models import LoadedModel
    from compress.planner.measured import Refined
    from compress.progress import Progress
    from compress.prune.plan import PrunePlan

FORMATS = ("structured", "2:4", "block")
TARGET_PROFILE = {"cpu": "cpu-x86-2core-ort", "jetson": "jetson-orin-nano", "gpu": "h100-torch"}


@dataclass(frozen=True)
class PlanRun:
    """One `compress plan` run.

    - `model`: what to plan for (MODEL, --weights, --input-shape; the shape's batch is replaced by
      the profile's).
    - `out`: the directory written (--out).
    - `planner`: the budget and how channels are ranked (--latency-budget | --latency-ms, --criterion,
      --ignore, --min-keep, --seed).
    - `target`: the device, cpu, gpu or jetson (--target); it picks the shipped profile.
    - `profile`: a profile file or shipped name instead of the target's (--profile).
    - `batch`: the batch size to plan for; None: the profile's (--batch).
    - `calib`: calibration data for data-driven criteria, as for prune (--calib; default random:32
      for those criteria).
    - `formats`: the formats the report compares, a subset of FORMATS (--formats; the plan is structured).
    - `sparse_layers`: a regular expression (re.search on the module name); with sparse `formats`, only the
      layers it matches may run sparse (--sparse-layers; e.g. a transformer's MLP, where block sparsity costs
      less quality than in attention).
    - `measure`: time candidate plans in onnxruntime on this machine and re-plan until the measured
      latency meets the budget (--measure; needs target cpu and formats ("structured",)); with `dtype` int8
      the dense model and the candidates are timed as int8 artifacts.
    - `dtype`: the precision that ships, fp32 or int8 (--dtype): int8 plans against an int8 profile (the
      shipped NAME-int8[-TAG]-bN.json of the target, or `profile`), fp32 against any other; the wrong kind
      is bad input.
    """
    model: ModelSpec
    out: str
    planner: PlanConfig
    target: str = "cpu"
    profile: str | None = None
    batch: int | None = None
    calib: str | None = None
    formats: tuple[str, ...] = ("structured",)
    measure: bool = False
    sparse_layers: str | None = None
    dtype: str = "fp32"


@dataclass
class _Solved:
    """What the planner found: the plan (None: nothing to do), its prediction, the measured
    refinement (with `measure`) and the formats report (with sparse formats)."""
    plan: PrunePlan | None
    res: PlanResult
    measured: Refined | None = None
    fmt_report: dict | None = None
    candidates: dict[str, PrunePlan] | None = None   # with sparse formats: structured / unstructured / mixed


def plan(cfg: PlanRun) -> dict:
    """Validate, plan as `cfg` says and write `cfg.out`; {"text", "json", "code"?}."""
    _check_options(cfg)
    prof = _profile(cfg)
    if cfg.measure and prof.runtime != "ort":
        raise CompressError(f"--measure times with onnxruntime; profile {prof.name} is for {prof.runtime}")
    from compress.planner.formats import check_formats

    check_formats(prof, cfg.formats)       # a sparse format this profile cannot price: bad input, nothing written
    cfg.planner.validate()
    lm, inputs = _load(cfg, prof)
    solved = _solve(cfg, prof, lm, inputs)
    report = _report(cfg, prof, solved)
    res = solved.res
    if solved.plan is None:
        text = (f"nothing to do: the budget {res.target_ms:.3f} ms is at or above the dense model's predicted "
                f"{res.dense_ms:.3f} ms on {prof.name}" if not cfg.measure else
                "nothing to do: the dense model already meets the budget on this machine")
        return {"text": text, "json": {**report, "plan": None}, "code": 0}
    report["groups"] = [{"producers": g.producers[:2], "channels_before": g.channels_before,
                         "channels_after": g.channels_after} for g in solved.plan.groups]
    if solved.fmt_report is not None:
        report["formats_report"] = solved.fmt_report
    if solved.candidates:
        report["formats_report"]["candidates"] = {k: f"candidates/{k}.json" for k in solved.candidates}
    _write(cfg.out, solved.plan, report, solved.candidates or {})
    out = {"text": "\n".join(_summary(cfg, prof, solved, report["groups"])), "json": {**report, "out": cfg.out}}
    if solved.measured is not None and not solved.measured.meets:
        out["code"] = 1      # a requested check (the measured budget) failed; the fastest plan is still written
    return out


def _check_options(cfg: PlanRun) -> None:
    if cfg.sparse_layers is not None:
        import re
        if tuple(cfg.formats) == ("structured",):
            raise CompressError("--sparse-layers chooses which layers may run sparse: it needs a sparse format in "
                                "--formats (e.g. --formats structured,block)")
        try:
            re.compile(cfg.sparse_layers)
        except re.error as e:
            raise CompressError(f"--sparse-layers {cfg.sparse_layers!r} is not a regular expression ({e})") from None
    bad = [f for f in cfg.formats if f not in FORMATS]
    if bad:
        raise CompressError(f"--formats: unknown format {bad[0]!r}; use a comma list of structured,2:4,block")
    if cfg.measure and (cfg.target != "cpu" or tuple(cfg.formats) != ("structured",)):
        raise CompressError("--measure times plans with onnxruntime on this machine: it needs --target cpu and "
                            "--formats structured (a gpu or jetson plan can only be predicted here)")
    if cfg.dtype not in ("fp32", "int8"):
        raise CompressError(f"unknown --dtype {cfg.dtype!r}; choose fp32 or int8")
    if cfg.dtype == "int8" and tuple(cfg.formats) != ("structured",):
        raise CompressError("--dtype int8 plans structured pruning only (the sparse formats' kernels are fp32)")


def _profile(cfg: PlanRun) -> DeviceProfile:
    """The device profile: `cfg.profile`, or the shipped one of `cfg.target`, at `cfg.batch`."""
    from compress.hardware_profiles import load_profile

    if cfg.target not in TARGET_PROFILE:
        raise CompressError(f"unknown --target {cfg.target!r}; choose cpu, gpu or jetson")
    name = cfg.profile or TARGET_PROFILE[cfg.target]
    try:
        prof = load_profile(name, dtype="int8" if cfg.dtype == "int8" else None, batch=cfg.batch)
    except CompressError as e:
        if cfg.profile is None and cfg.target == "gpu":
            raise CompressError("no measured GPU profile ships yet; on the GPU machine run `python bench/gpu_suite.py` "
                                "(its gpu_profile step writes bench/results/gpu/gpu_profile.json) and pass --profile "
                                "FILE") from None
        raise e
    if cfg.dtype != "int8" and prof.dtype == "int8":
        raise CompressError(f"profile {prof.path} is an int8 profile (it prices the int8 artifact); plan with "
                            "--dtype int8, or give an fp32 profile")
    return prof


def _load(cfg: PlanRun, prof: DeviceProfile) -> tuple[LoadedModel, tuple]:
    """The (unpruned) model and its example inputs at the profile's batch."""
    from compress import models

    spec, shape = cfg.model, None
    if spec.input_shape:
        given = spec.input_shape if isinstance(spec.input_shape, str) else ",".join(map(str, spec.input_shape))
        shape = list(models.parse_shape(given))
        shape[0] = prof.batch
        spec = replace(spec, input_shape=",".join(map(str, shape)))
    lm, inputs = spec.load(calib=cfg.calib)     # no --input-shape: a --calib FILE.npy's samples set it
    if lm.plan is not None:
        raise CompressError(f"{spec.model} is already pruned; plan from its source model")
    if shape is None:
        inputs = models.example_inputs(lm, (prof.batch,) + tuple(inputs[0].shape[1:]))
    return lm, inputs


def _solve(cfg: PlanRun, prof: DeviceProfile, lm: LoadedModel, inputs: tuple) -> _Solved:
    """Score, solve for the budget, refine by measurement (`measure`) and compare formats (sparse `formats`)."""
    from compress import models
    from compress.calib import input_batches
    from compress.errors import CheckFailed
    from compress.planner.solve import BudgetUnreachable, finish, prepare
    from compress.progress import Progress
    from compress.prune.plan import weights_source

    config = cfg.planner
    calib = input_batches(cfg.calib or ("random:32" if config.criterion in DATA_CRITERIA else None), lm, inputs)
    source = {"model": lm.spec, "sha256": models.weights_sha256(lm.model), "input_shape": list(inputs[0].shape),
              "weights": weights_source(cfg.model.weights)}
    bar = Progress(["tracing", "scoring", "solving"] + (["measuring"] if cfg.measure else []))
    log = lambda m: bar(m) if not m.startswith(("iteration", "candidate", "a budget")) else None  # noqa: E731
    try:
        prep = prepare(lm.model, inputs, prof, config, calib=calib, target=cfg.target, log=log)
        structured, res, _graph = finish(prep, config, source, log=log)
        solved = _Solved(structured, res)
        if solved.plan is not None and cfg.measure:
            _refine(solved, cfg, prof, lm, inputs, prep, source, bar, log)
        sparse = tuple(f for f in cfg.formats if f != "structured")
        if solved.plan is not None and sparse:
            _compare_formats(solved, prep, config, source, sparse, cfg.sparse_layers)
    except BudgetUnreachable as e:
        bar.close()
        raise CheckFailed(f"{e}; raise the budget or lower --min-keep") from None
    bar.close()
    return solved


def _refine(solved: _Solved, cfg: PlanRun, prof: DeviceProfile, lm: LoadedModel, inputs: tuple, prep: Prepared,
            source: dict, bar: Progress, log: Callable[[str], None]) -> None:
    """Time candidate plans in onnxruntime and keep the one that meets the budget (None: dense already does)."""
    from compress.planner.measured import refine

    bar("measuring")
    solved.measured = refine(lm.model, inputs, prep, cfg.planner, source, prof.batch, log=log, dtype=cfg.dtype)
    if solved.measured is None:
        solved.plan = None
    else:
        solved.plan, solved.res = solved.measured.plan, solved.measured.result


def _compare_formats(solved: _Solved, prep: Prepared, config: PlanConfig, source: dict, sparse: tuple[str, ...],
                     only: str | None = None) -> None:
    """The formats report; a mixed plan replaces the structured one when it wins."""
    from compress.planner import formats as planner_formats

    solved.fmt_report, mixed = planner_formats.report(prep, config, source, solved.res, sparse, only=only)
    solved.candidates = planner_formats.candidate_plans(solved.plan, solved.fmt_report, mixed)
    if solved.fmt_report["winner"] == "mixed" and mixed is not None:
        solved.plan, solved.res = mixed
        solved.plan.formats = dict(solved.fmt_report["mixed"]["sparse_layers"])
        solved.plan.notes.append("mixed plan: the layers in `formats` run sparse; "
                                 "`compress prune MODEL --plan plan.json` applies them")


def _report(cfg: PlanRun, prof: DeviceProfile, solved: _Solved) -> dict:
    """report.json without its groups and formats report. `costs`: per format, where its costs come from
    (measured, with profile, runtime and date; published, not measured here; or analytic)."""
    from compress.planner.formats import cost_sources

    res, measured = solved.res, solved.measured
    report = {"profile": prof.name, "profile_source": prof.data["source"], "dtype": prof.dtype, "batch": prof.batch,
              "dense_ms": round(res.dense_ms, 4), "target_ms": round(res.target_ms, 4),
              "predicted_ms": round(res.predicted_ms, 4), "predicted_speedup": round(res.dense_ms / res.predicted_ms, 4),
              "smallest_ms": round(res.min_ms, 4), "iterations": res.iterations,
              "roofline_fallback_layers": res.fallback_layers, "formats": list(cfg.formats),
              "costs": cost_sources(prof, cfg.formats, res.fallback_layers)}
    if measured is not None:
        report["measured"] = {"runtime": "onnxruntime CPUExecutionProvider (this machine)", "dtype": prof.dtype,
                              "batch": prof.batch,
                              "target_ratio": measured.target_ratio, "measured_ratio": measured.measured_ratio,
                              "dense_ms": measured.dense_ms, "measured_ms": measured.measured_ms,
                              "meets_budget": measured.meets, "candidates": measured.candidates}
    return report


def _write(out: str, plan: PrunePlan, report: dict, candidates: dict[str, PrunePlan]) -> None:
    """plan.json, report.json and, with sparse formats, candidates/NAME.json: each candidate the formats
    report compares as a plan of its own, so that every one of them can be applied, exported and timed."""
    from compress.io import atomic_dir, write_json

    with atomic_dir(out) as d:
        with open(os.path.join(d, "plan.json"), "w") as f:
            f.write(plan.to_json())
        write_json(os.path.join(d, "report.json"), report)
        if candidates:
            os.makedirs(os.path.join(d, "candidates"))
        for name, cand in candidates.items():
            with open(os.path.join(d, "candidates", f"{name}.json"), "w") as f:
                f.write(cand.to_json())


def _summary(cfg: PlanRun, prof: DeviceProfile, solved: _Solved, groups: list[dict]) -> list[str]:
    """The lines the CLI prints for a written plan."""
    import numpy as np

    from compress.planner.formats import cost_sources

    res, measured, fr = solved.res, solved.measured, solved.fmt_report
    kept = np.mean([g["channels_after"] / max(g["channels_before"], 1) for g in groups]) if groups else 1.0
    plan_json = os.path.join(cfg.out, "plan.json")
    lines = [f"profile {prof.name} ({prof.data['source']}, {prof.dtype}, batch {prof.batch})",
             f"dense {res.dense_ms:.3f} ms -> predicted {res.predicted_ms:.3f} ms "
             f"(target {res.target_ms:.3f} ms, speedup {res.dense_ms / res.predicted_ms:.2f}x)",
             f"{len(groups)} groups, mean kept fraction {kept:.2f}",
             f"plan: {plan_json}  (apply: compress prune {cfg.model.model} --plan {plan_json} --out DIR)"]
    if measured is not None:
        lines.insert(2, f"measured here: {measured.measured_ratio:.3f} of dense ({measured.measured_ms:.3f} vs "
                        f"{measured.dense_ms:.3f} ms, target {measured.target_ratio:.3f}) after "
                        f"{len(measured.candidates)} timed candidate(s)"
                        + ("" if measured.meets else "; no candidate met the budget: the fastest is kept"))
    if fr is not None:
        lines.append(f"formats ({', '.join(fr['formats'])}): structured {fr['structured']['speedup']:.2f}x, "
                     f"unstructured-only {fr['unstructured']['speedup']:.2f}x"
                     f"{'' if fr['unstructured']['meets_budget'] else ' (misses the budget)'}"
                     + (f", mixed {fr['mixed']['speedup']:.2f}x" if "speedup" in fr.get("mixed", {}) else "")
                     + f"; per-layer winners {fr['summary']}; chosen: {fr['winner']}")
    costs = cost_sources(prof, cfg.formats, res.fallback_layers)
    lines += [f"costs, {f}: {src}" for f, src in costs.items()]
    if res.fallback_layers:
        lines.insert(1, f"warning: no measured table for {len(res.fallback_layers)} layer kinds, roofline used: "
                        + ", ".join(res.fallback_layers[:6]))
    return lines
