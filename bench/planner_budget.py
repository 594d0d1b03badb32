"""Does a latency-budget plan run at its budget when measured?

For each model, batch size and budget: `compress.planner.solve.plan_model` against the shipped CPU
onnxruntime profile at that batch, the plan applied (physical removal), dense and planned ONNX timed
in onnxruntime: per model and batch, each file (dense and its plans) in its own timing process, the
processes timing one block each in turn (round-robin, one session running at a time), over two passes
of fresh processes (_common.alternate_workers).

    measured_ratio = median over rounds of (planned block / the dense block of the same round)
    rel_error      = measured_ratio / budget - 1          (the bar: |rel_error| <= 0.10)

Also records the planner's own predicted ratio and the time planning took.

    python bench/planner_budget.py                       # resnet50, mobilenet_v2, efficientnet_b0, fmnist-cnn
    python bench/planner_budget.py --measure --out bench/results/cpu/planner_budget_measured.json
    python bench/planner_budget.py --models fmnist-cnn --batches 1 --rounds 2 --passes 1 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import shutil
import time

import _common as c

MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "fmnist-cnn"]


def build_any(name: str):
    """(model, example input at batch 1): torchvision zoo with random weights, or the project's CNN."""
    import torch

    if name == "fmnist-cnn":
        from compress.models.zoo import construct

        torch.manual_seed(0)
        return construct("fmnist-cnn").eval(), (torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)),)
    return c.build(name), c.example(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5])
    ap.add_argument("--profile", default="cpu-x86-2core-ort", help="shipped profile name (per batch) or file")
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--rounds", type=int, default=8, help="blocks per file and pass, round-robin")
    ap.add_argument("--passes", type=int, default=2, help="fresh sets of timing workers (see _common.alternate_workers)")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--max-seconds", type=float, default=2.5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--measure", action="store_true",
                    help="plan as `compress plan --measure` does (candidates timed on this machine, budget corrected); "
                         "the plans are then timed again here, independently, for the bar")
    ap.add_argument("--out", default=str(c.RESULTS / "planner_budget.json"))
    a = ap.parse_args()

    import torch

    from compress.errors import first_line
    from compress.export.onnx import export_onnx
    from compress.hardware_profiles import load_profile
    from compress.planner.solve import PlanConfig, plan_model, prepare
    from compress.planner.measured import refine
    from compress.prune.apply import apply_plan

    t_start = time.time()
    proto = {"planning": "compress plan --measure (compress.planner.measured.refine)" if a.measure else
             "compress plan (predicted only)", "warmup": a.warmup, "runs": a.runs, "max_seconds": a.max_seconds, "rounds": a.rounds,
             "passes": a.passes, "timing": "_common.alternate_workers: one worker process per file, its session "
             "loaded once, blocks timed round-robin in lockstep (one session runs at a time), fresh workers per "
             "pass; a measurement = the median over a block's runs; measured_ratio: the median over rounds of plan block / dense block of that round; files are timed per model and batch"}
    outdir = c.TMP / "planner_budget"
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    entries, jobs = [], []
    for name in a.models:
        dense, x1 = build_any(name)
        dpath = outdir / f"{name}_dense.onnx"
        export_onnx(dense, x1, str(dpath))
        for batch in a.batches:
            prof = load_profile(a.profile, batch=batch)
            xb = (x1[0].repeat(batch, *[1] * (x1[0].dim() - 1)),)
            jobs.append(((name, batch, None), dpath, batch))
            for budget in a.budgets:
                e = {"model": name, "batch": batch, "budget": budget, "profile": prof.name,
                     "profile_source": prof.data["source"], "criterion": a.criterion}
                try:
                    t0 = time.perf_counter()
                    cfg = PlanConfig(latency_budget=budget, criterion=a.criterion)
                    if a.measure:   # compress plan --measure: candidates timed here, budget corrected
                        m = copy.deepcopy(dense)
                        prep = prepare(m, xb, prof, cfg)
                        got = refine(m, xb, prep, cfg, {"model": name}, batch)
                        plan, res = got.plan, got.result
                        e["refine"] = {"measured_ratio": got.measured_ratio, "meets": got.meets,
                                       "candidates": got.candidates}
                    else:
                        plan, res, _ = plan_model(copy.deepcopy(dense), xb, prof, cfg, {"model": name})
                    e["plan_seconds"] = round(time.perf_counter() - t0, 2)
                    e |= {"predicted_dense_ms": round(res.dense_ms, 4), "predicted_ms": round(res.predicted_ms, 4),
                          "predicted_ratio": round(res.predicted_ms / res.dense_ms, 4),
                          "roofline_fallback_layers": res.fallback_layers}
                    pm = apply_plan(copy.deepcopy(dense), x1, plan).model
                    e["channels"] = [[g.channels_before, g.channels_after] for g in plan.groups]
                    e["mac_reduction"] = round(c_macs(dense, x1) / c_macs(pm, x1), 4)
                    path = outdir / f"{name}_b{batch}_{budget}.onnx"
                    export_onnx(pm, x1, str(path))
                    jobs.append(((name, batch, budget), path, batch))
                    c.log(f"{name} b{batch} budget {budget}: predicted {e['predicted_ratio']:.3f} of dense "
                          f"({e['plan_seconds']}s to plan), MACs x{e['mac_reduction']} fewer")
                except Exception as ex:  # recorded, not fatal
                    e["error"] = f"{type(ex).__name__}: {first_line(ex, 300, empty='')}"
                    c.log(f"{name} b{batch} budget {budget}: FAILED {e['error']}")
                entries.append(e)
                gc.collect()
    c.log(f"timing {len(jobs)} files x {a.rounds} rounds x {a.passes} passes, per model and batch")
    samples = {}
    for grp in dict.fromkeys((k[0], k[1]) for k, _, _ in jobs):   # dense + its plans, side by side in time
        samples |= c.alternate_workers([j for j in jobs if (j[0][0], j[0][1]) == grp], proto, passes=a.passes)
    for e in entries:
        if "error" in e:
            continue
        ds, ps = samples[(e["model"], e["batch"], None)], samples[(e["model"], e["batch"], e["budget"])]
        d, p = c.summarize(ds), c.summarize(ps)
        # per round: the plan's block over the dense block next to it; the machine's speed drifts by tens
        # of percent over seconds, so ratios of neighbours are steadier than a ratio of medians
        per_round = [x["median_ms"] / y["median_ms"] for x, y in zip(ps, ds)]
        ratio = c.statistics.median(per_round)
        e |= {"dense": d, "planned": p, "measured_ratio": round(ratio, 4),
              "measured_ratio_of_medians": round(p["median_ms"] / d["median_ms"], 4),
              "ratio_per_round": [round(r, 4) for r in per_round],
              "measured_ratio_min": round(p["min_ms"] / d["min_ms"], 4),
              "rel_error": round(ratio / e["budget"] - 1, 4), "within_10pct": abs(ratio / e["budget"] - 1) <= 0.10}
    ok = [e for e in entries if "within_10pct" in e]
    out = c.result_header("planner_budget", "does a latency-budget plan run at its budget on this CPU "
                          "(onnxruntime), batch 1 and 8?", t_start)
    out |= {"protocol": proto, "entries": entries,
            "summary": {"within_10pct": sum(e["within_10pct"] for e in ok), "measured": len(ok),
                        "median_abs_error": round(sorted(abs(e["rel_error"]) for e in ok)[len(ok) // 2], 4) if ok else None}}
    c.write_json(c.Path(a.out), out)
    c.log(f"wrote {a.out}: {out['summary']}")
    shutil.rmtree(outdir, ignore_errors=True)


def c_macs(model, x) -> int:
    from compress.metrics import count_macs

    return count_macs(model, x)


if __name__ == "__main__":
    main()
