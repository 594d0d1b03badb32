"""Planning by measurement: correct the planner's budget with onnxruntime timings on this machine.

The latency model predicts a plan's latency; on the machine the plan is for, we can also time it.
`refine` plans, applies the plan, exports it, times it next to the dense model
(compress.measure.paired_ratio), and re-plans at a corrected budget

    budget_{i+1} = budget_i x target / measured_i

until a candidate's measured fraction of dense is within `tolerance` of the target (or the
iterations run out). It returns the candidate with the most latency (the least pruning) among those
measured at or under target x (1 + tolerance), else the fastest one measured, with every candidate
recorded. Only the target device can be timed: `compress plan --measure` is for --target cpu.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field, replace

from compress.measure import MeasureConfig, paired_ratio
from compress.planner.solve import BudgetUnreachable, PlanConfig, finish


@dataclass
class Refined:
    plan: object
    result: object                # the PlanResult of the chosen candidate
    target_ratio: float           # the measured fraction of dense asked for
    measured_ratio: float
    dense_ms: float               # measured, median over the chosen candidate's dense blocks
    measured_ms: float
    meets: bool                   # measured_ratio <= target_ratio x (1 + tolerance)
    candidates: list = field(default_factory=list)


def _export(model, example_inputs: tuple, path: str, dtype: str) -> None:
    """`model` as the artifact of precision `dtype` runs it: the ONNX export, and for int8 that export quantized
    as `compress export --dtype int8` does (QDQ, calibrated on `example_inputs`: the ranges do not change the
    kernels' time)."""
    from compress.export.onnx import export_onnx

    export_onnx(model, example_inputs, path)
    if dtype == "int8":
        from compress.hardware_profiles.ort_bench import quantize_file

        quantize_file(path, path, example_inputs)


def refine(model, example_inputs: tuple, prep, config: PlanConfig, source: dict, batch: int,
           mcfg: MeasureConfig = MeasureConfig(), log=None, measure=None, dtype: str = "fp32") -> Refined | None:
    """See the module docstring. `model` is the dense model `prep` was built from (not modified);
    None when the budget is at or above the dense model (predicted, or measured for --latency-ms).
    `measure(candidate_path, dense_path, batch, mcfg) -> Paired` times a candidate (default: paired_ratio).
    `dtype` "int8": the dense model and every candidate are timed as int8 artifacts (the budget is a fraction
    of the dense int8 model, as the int8 profile prices it)."""
    measure = measure or paired_ratio
    from compress.prune.apply import apply_plan

    log = log or (lambda msg: None)
    with tempfile.TemporaryDirectory(prefix="compress-measure-") as tmp:
        dense_path = os.path.join(tmp, "dense.onnx")
        _export(copy.deepcopy(model), example_inputs, dense_path, dtype)
        plan, res, _ = finish(prep, config, source)
        if plan is None:
            return None
        budget = res.target_ms / res.dense_ms            # the predicted fraction the solver aimed at
        target = config.latency_budget
        cands = []
        for i in range(mcfg.iterations):
            path = os.path.join(tmp, f"candidate{i}.onnx")
            pm = apply_plan(copy.deepcopy(model), example_inputs, plan).model
            _export(pm, example_inputs, path, dtype)
            m = measure(path, dense_path, batch, mcfg)
            if target is None:                               # --latency-ms: measured ms on this machine
                target = config.latency_ms / m.dense_ms
                if target >= 1.0:
                    return None
            cands.append({"planned_budget": round(budget, 4), "predicted_ratio": round(res.predicted_ms / res.dense_ms, 4),
                          "measured_ratio": round(m.ratio, 4), "dense_ms": round(m.dense_ms, 4),
                          "measured_ms": round(m.candidate_ms, 4), "ratio_per_round": [round(r, 4) for r in m.per_round],
                          "_plan": plan, "_res": res})
            log(f"candidate {i}: planned at {budget:.3f} of dense, measured {m.ratio:.3f} (target {target:.3f})")
            if abs(m.ratio / target - 1) <= mcfg.tolerance:
                break
            nxt = min(budget * target / m.ratio, 0.999)
            if abs(nxt - budget) < 1e-3:
                break
            try:
                plan, res, _ = finish(prep, replace(config, latency_budget=nxt, latency_ms=None), source)
            except BudgetUnreachable:
                log(f"a budget of {nxt:.3f} of dense is below the smallest allowed network")
                break
            if plan is None:
                break
            budget = nxt
    ok = [c for c in cands if c["measured_ratio"] <= target * (1 + mcfg.tolerance)]
    best = max(ok, key=lambda c: c["measured_ratio"]) if ok else min(cands, key=lambda c: c["measured_ratio"])
    plan, res = best["_plan"], best["_res"]
    plan.notes.append(f"measured on this machine (onnxruntime CPU, {dtype}, batch {batch}): {best['measured_ratio']:.3f} of dense "
                      f"({best['measured_ms']:.3f} vs {best['dense_ms']:.3f} ms), target {target:.3f}; "
                      f"{len(cands)} candidate(s) timed")
    public = [{k: v for k, v in c.items() if not k.startswith("_")} for c in cands]
    return Refined(plan, res, round(target, 4), best["measured_ratio"], best["dense_ms"], best["measured_ms"],
                   bool(ok), public)
