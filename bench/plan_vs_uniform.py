"""At the latency a uniform channel ratio reaches, how many MACs does the latency planner keep?

The uniform ratio removes the same fraction from every group (compress.prune.apply.prune, l1, the cpu
channel step): on networks whose time sits in ops that shrink only linearly with channels (depthwise
convs, activations, squeeze-excite, concat), latency falls more slowly than MACs. The latency planner
(`compress plan`, compress.planner.solve) removes channels where the device profile says they cost time.
For each model and ratio:

    uniform  = prune(ratio)                                   (the issue's "ours")
    budget   = the profile's prediction for uniform / its prediction for dense
    planned  = plan_model(budget) on the same profile, applied (physical removal)

then dense, uniform and planned ONNX are timed side by side (_common.alternate_workers, one worker
process per file, blocks in lockstep), and each variant gets

    speedup        = median over rounds of dense block / variant block of the same round
    mac_reduction  = dense MACs / variant MACs
    efficiency     = speedup / mac_reduction

    python bench/plan_vs_uniform.py                                        # 4 models, ratios 0.3 0.5, batch 8
    python bench/plan_vs_uniform.py --models mobilenet_v3_small --ratios 0.5 --rounds 2 --passes 1 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import shutil
import statistics
import time

import _common as c

MODELS = ["mobilenet_v3_small", "efficientnet_b0", "densenet121", "regnet_x_400mf"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--profile", default="cpu-x86-2core-ort", help="shipped profile name (per batch) or file")
    ap.add_argument("--rounds", type=int, default=6, help="blocks per file and pass, round-robin")
    ap.add_argument("--passes", type=int, default=2, help="fresh sets of timing workers")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=2.0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=str(c.RESULTS / "plan_vs_uniform.json"))
    a = ap.parse_args()

    from compress.hardware_profiles import channel_step, load_profile, predict_ms
    from compress.planner.solve import PlanConfig, plan_model
    from compress.prune.apply import apply_plan

    t_start = time.time()
    proto = {"warmup": a.warmup, "runs": a.runs, "max_seconds": a.max_seconds, "rounds": a.rounds,
             "passes": a.passes, "timing": "_common.alternate_workers (dense, uniform and planned of one "
             "model and ratio side by side); speedup: median over rounds of dense block / variant block"}
    prof = load_profile(a.profile, batch=a.batch)
    step = channel_step("cpu")
    outdir = c.TMP / "plan_vs_uniform"
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    entries = []
    for name in a.models:
        dense = c.build(name)
        x1 = c.example(1)
        dense_macs = c.macs(dense)
        dpath = outdir / f"{name}_dense.onnx"
        c.export(dense, dpath)
        pred_dense = predict_ms(dense, x1, prof)
        for ratio in a.ratios:
            e = {"model": name, "ratio": ratio, "batch": a.batch, "profile": prof.name}
            uni = c.prune_ours(copy.deepcopy(dense), ratio, step)[0].model
            budget = predict_ms(uni, x1, prof) / pred_dense
            plan, res, _ = plan_model(copy.deepcopy(dense), (x1[0].repeat(a.batch, 1, 1, 1),), prof,
                                      PlanConfig(latency_budget=budget), {"model": name})
            planned = apply_plan(copy.deepcopy(dense), x1, plan).model
            paths = {"uniform": outdir / f"{name}_{ratio}_uniform.onnx", "planned": outdir / f"{name}_{ratio}_planned.onnx"}
            c.export(uni, paths["uniform"])
            c.export(planned, paths["planned"])
            e |= {"budget": round(budget, 4), "planned_predicted_ratio": round(res.predicted_ms / res.dense_ms, 4),
                  "roofline_fallback_layers": len(res.fallback_layers),
                  "macs": {"dense": dense_macs, "uniform": c.macs(uni), "planned": c.macs(planned)}}
            c.log(f"{name} ratio {ratio}: budget {budget:.3f} of dense, MACs x{dense_macs / e['macs']['uniform']:.2f} "
                  f"(uniform) x{dense_macs / e['macs']['planned']:.2f} (planned); timing")
            s = c.alternate_workers([("dense", dpath, a.batch), ("uniform", paths["uniform"], a.batch),
                                     ("planned", paths["planned"], a.batch)], proto, passes=a.passes)
            d = c.summarize(s["dense"])
            e["dense"] = d
            for v in ("uniform", "planned"):
                sv = c.summarize(s[v])
                e[v] = sv | c.derived(d, sv, dense_macs, e["macs"][v], list(zip(s["dense"], s[v])))
            e["planned_over_uniform_ms"] = round(statistics.median(
                p["median_ms"] / u["median_ms"] for p, u in zip(s["planned"], s["uniform"])), 4)
            c.log(f"  efficiency uniform {e['uniform']['efficiency']:.2f} planned {e['planned']['efficiency']:.2f}; "
                  f"planned/uniform latency {e['planned_over_uniform_ms']:.3f}")
            entries.append(e)
            gc.collect()
    out = c.result_header("plan_vs_uniform", "at the latency the uniform ratio reaches, what MAC reduction "
                          "and efficiency does the latency planner reach (onnxruntime CPU)?", t_start)
    out |= {"protocol": proto, "entries": entries}
    c.write_json(c.Path(a.out), out)
    c.log(f"wrote {a.out}")
    shutil.rmtree(outdir, ignore_errors=True)


if __name__ == "__main__":
    main()
