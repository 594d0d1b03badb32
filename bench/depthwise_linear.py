"""Depthwise tables read as linear in channels (the predictor) vs as measured: which plans meet their budget?

A standalone timing of a depthwise conv whose tensor fits in cache runs several times faster than one
whose tensor does not, and the shipped tables show it as a cliff; inside a network the cliff is not there.
The predictor reads each depthwise table as its least-squares line in the channel count
(compress.hardware_profiles.predictor._line). This bench plans each model for each budget twice against
the shipped CPU profile: as the predictor does, and with the tables as measured (`_line` replaced by the
identity and the profile's calibration refitted to that, as `compress profile --refit` computes it). Both
plans are timed side by side with the dense model in one lockstep group per model and batch
(_common.alternate_workers), and each plan's measured ratio to dense is compared with its budget.

    python bench/depthwise_linear.py
    python bench/depthwise_linear.py --models mobilenet_v2 --batches 8 --rounds 4 --passes 1 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time

import _common as c

MODELS = ["mobilenet_v2", "efficientnet_b0", "mobilenet_v3_small"]


def as_measured(batch: int):
    """The shipped profile at `batch` with its depthwise tables read as measured, calibration refitted."""
    import compress.hardware_profiles.predictor as pr
    from compress.commands.profile import _layers_of
    from compress.hardware_profiles import DeviceProfile, load_profile
    from compress.hardware_profiles.profiler import refit

    shipped = load_profile("cpu-x86-2core-ort", batch=batch)
    line = pr._line
    pr._line = lambda cs, ms: tuple(ms)
    try:
        with tempfile.TemporaryDirectory() as d:
            path = f"{d}/profile.json"
            shutil.copy(shipped.path, path)
            return shipped, DeviceProfile(refit(path, _layers_of), path=shipped.path)
    finally:
        pr._line = line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[8, 1])
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--out", default=str(c.RESULTS / "depthwise_linear.json"))
    a = ap.parse_args()

    from compress.metrics import count_macs
    from compress.planner.solve import PlanConfig, plan_model
    from compress.prune.apply import apply_plan

    t_start = time.time()
    proto = {"warmup": 3, "runs": 15, "max_seconds": 2.5, "rounds": a.rounds, "passes": a.passes,
             "timing": "_common.alternate_workers, dense and both plans of a model and batch in one lockstep group; "
                       "measured_ratio = median over rounds of plan block / dense block of that round"}
    tmp = c.TMP / "depthwise_linear"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    entries = []
    try:
        for name in a.models:
            dense, x1 = c.build(name), c.example(1)
            dpath = tmp / f"{name}_dense.onnx"
            c.export(dense, dpath)
            dense_macs = count_macs(dense, x1)
            for batch in a.batches:
                linear, measured = as_measured(batch)
                xb = (x1[0].repeat(batch, 1, 1, 1),)
                jobs, group = [((name, batch, None, None), dpath, batch)], []
                for budget in a.budgets:
                    for tables, prof in (("linear", linear), ("as measured", measured)):
                        plan, res, _ = plan_model(copy.deepcopy(dense), xb, prof, PlanConfig(latency_budget=budget),
                                                  {"model": name})
                        pm = apply_plan(copy.deepcopy(dense), x1, plan).model
                        path = tmp / f"{name}_b{batch}_{budget}_{tables.replace(' ', '_')}.onnx"
                        c.export(pm, path)
                        jobs.append(((name, batch, budget, tables), path, batch))
                        group.append({"model": name, "batch": batch, "budget": budget, "depthwise_tables": tables,
                                      "profile": linear.name,
                                      "predicted_ratio": round(res.predicted_ms / res.dense_ms, 4),
                                      "mac_reduction": round(dense_macs / count_macs(pm, x1), 4)})
                c.log(f"{name} b{batch}: timing {len(jobs)} files x {a.rounds} rounds x {a.passes} passes")
                s = c.alternate_workers(jobs, proto, passes=a.passes)
                ds = s[(name, batch, None, None)]
                for e in group:
                    ps = s[(name, batch, e["budget"], e["depthwise_tables"])]
                    per_round = [p["median_ms"] / d["median_ms"] for p, d in zip(ps, ds)]
                    r = statistics.median(per_round)
                    e |= {"measured_ratio": round(r, 4), "rel_error": round(r / e["budget"] - 1, 4),
                          "ratio_per_round": [round(x, 4) for x in per_round]}
                    c.log(f"  budget {e['budget']} {e['depthwise_tables']:11}: MACs x{e['mac_reduction']} fewer, "
                          f"measured {r:.3f} ({e['rel_error']:+.1%})")
                entries += group
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pairs = [(x, y) for x, y in zip(entries[::2], entries[1::2])]
    out = c.result_header("depthwise_linear", "do latency-budget plans meet their budget better with the "
                          "predictor's depthwise tables read as linear in channels than as measured?", t_start)
    out |= {"protocol": proto, "entries": entries, "summary": {
        "cases": len(pairs),
        "linear_closer_to_budget": sum(abs(x["rel_error"]) <= abs(y["rel_error"]) for x, y in pairs),
        "linear_removes_at_least_as_many_macs": sum(x["mac_reduction"] >= y["mac_reduction"] for x, y in pairs),
        "median_abs_error": {"linear": round(statistics.median(abs(x["rel_error"]) for x, _ in pairs), 4),
                             "as measured": round(statistics.median(abs(y["rel_error"]) for _, y in pairs), 4)}}}
    c.write_json(c.Path(a.out), out)
    c.log(f"wrote {a.out}: {out['summary']}")


if __name__ == "__main__":
    main()
