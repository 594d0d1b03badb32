"""Which channel step (round_to) makes pruned models run most efficiently in onnxruntime on this CPU?

For resnet50, mobilenet_v2 and efficientnet_b0 at ratio 0.3, batch 8: prune with
compress.prune.apply.prune (l1, uniform ratio) at round_to in {1, 8, 16, 32}, export ONNX, and time
dense and every step alternated round-robin in fresh subprocesses (same protocol as
prune_latency.py). efficiency = (dense latency / pruned latency) / (dense MACs / pruned MACs).
It also records how many convolutions onnxruntime runs in MLAS's blocked NCHWc layout at each step
(block 8 on AVX2, 16 on AVX-512: channel counts off the block fall back to plain convs + reorders).

Choice of the `cpu` channel_step in hardware_profiles/defaults.json (printed, not written): the
steps whose geometric-mean efficiency (fastest round) is within --tie of the best are tied (the machine is shared
and noisy); of those, the smallest multiple of --portable-block (16, the AVX-512 NCHWc block, so
the default also runs at full speed on AVX-512 CPUs) is chosen, else the best.

    python bench/channel_step.py                        # full run (~6 min on a quiet 2-core VM)
    python bench/channel_step.py --models resnet50 --rounds 1 --runs 3 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import math
import shutil
import time

import _common as c

MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0"]


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


SELECT_STAT = "efficiency_min"


def choose(entries: list[dict], steps: list[int], tie: float, block: int):
    """Summaries per step, the best step, the steps tied with it and the chosen default.
    Selection uses the fastest-round efficiency (SELECT_STAT): the shared machine switches between
    quiet and loaded phases that slow a whole measurement 2-3x, which the median over a few
    rounds does not remove."""
    for r in entries:  # results written before efficiency_min existed
        r.setdefault("efficiency_min", round(r["dense_latency"]["min_ms"] / r["latency"]["min_ms"]
                                             / r["mac_reduction"], 4))
    summary = {}
    for step in steps:
        rows = [r for r in entries if r["round_to"] == step]
        summary[str(step)] = {
            "geomean_efficiency": round(geomean([r["efficiency"] for r in rows]), 4),
            "geomean_efficiency_min": round(geomean([r["efficiency_min"] for r in rows]), 4),
            "geomean_efficiency_best": round(geomean([r["efficiency_best"] for r in rows]), 4),
            "geomean_speedup": round(geomean([r["speedup"] for r in rows]), 4),
            "geomean_mac_reduction": round(geomean([r["mac_reduction"] for r in rows]), 4),
            "min_efficiency": round(min(r["efficiency"] for r in rows), 4),
            "min_efficiency_min": round(min(r["efficiency_min"] for r in rows), 4),
        }
    key = "geomean_" + SELECT_STAT
    best = max(steps, key=lambda s: summary[str(s)][key])
    top = summary[str(best)][key]
    tied = [s for s in steps if summary[str(s)][key] >= top - tie]
    portable = [s for s in tied if s % block == 0]
    chosen = min(portable) if portable else best
    return summary, best, tied, chosen


def resummarize(path: str, tie: float, block: int) -> None:
    d = c.json.loads(c.Path(path).read_text())
    steps = sorted({r["round_to"] for r in d["entries"]})
    d["summary"], d["best_step"], d["tied_steps"], d["chosen_step"] = choose(d["entries"], steps, tie, block)
    d["protocol"]["selection"] = selection_text(tie, block)
    d["resummarized"] = f"summary and choice recomputed from the stored entries by `{c.command_line()}` on {c.now()}"
    c.write_json(c.Path(path), d)
    c.log(f"{path}: best {d['best_step']}, tied {d['tied_steps']}, chosen {d['chosen_step']}")


def selection_text(tie: float, block: int) -> str:
    return (f"by geometric-mean {SELECT_STAT} (fastest round of dense and variant) over models x batches: "
            f"best_step = highest; tied_steps = within {tie} of it; chosen_step = smallest tied step that is a "
            f"multiple of {block} (MLAS NCHWc block on AVX-512; 8 on AVX2), else best_step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS, metavar="NAME")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--steps", nargs="+", type=int, default=[1, 8, 16, 32])
    ap.add_argument("--batches", nargs="+", type=int, default=[8])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(c.RESULTS / "channel_step.json"))
    ap.add_argument("--keep-onnx", action="store_true")
    ap.add_argument("--tie", type=float, default=0.03, help="geomean efficiency gap that counts as a tie")
    ap.add_argument("--portable-block", type=int, default=16)
    ap.add_argument("--resummarize", action="store_true", help="recompute summary and choice in --out, no timing")
    a = ap.parse_args()
    if a.resummarize:
        return resummarize(a.out, a.tie, a.portable_block)

    proto = {"warmup": a.warmup, "runs": a.runs, "max_seconds": a.max_seconds, "min_runs": 3,
             "rounds": a.rounds, "threads": a.threads}
    t_start = time.time()
    load_start = c.loadavg()
    tmpdir = c.TMP / f"channel_step_{int(t_start)}"
    tmpdir.mkdir(parents=True)
    entries = []
    try:
        for name in a.models:
            c.log(f"{name}: building dense + round_to {a.steps}")
            dense = c.build(name)
            dense_macs = c.macs(dense)
            files = {"dense": tmpdir / f"{name}_dense.onnx"}
            c.export(dense, files["dense"])
            info, graph = {}, None
            for step in a.steps:
                res, secs = c.prune_ours(dense, a.ratio, step, graph)
                graph = res.graph
                files[step] = tmpdir / f"{name}_step{step}.onnx"
                c.export(res.model, files[step])
                layout = c.nchwc_stats(files[step])
                gp = [g for g in res.plan.groups if g.channels_after < g.channels_before]
                info[step] = {"macs": c.macs(res.model), "prune_seconds": round(secs, 3), "onnxruntime_layout": layout,
                              "groups_pruned": len(gp),
                              "channels_after": sorted({g.channels_after for g in res.plan.groups})}
            jobs = [((k, b), p, b) for k, p in files.items() for b in a.batches]
            c.log(f"{name}: timing {len(jobs)} jobs x {a.rounds} rounds")
            samples = c.alternate(jobs, proto)
            for b in a.batches:
                d = c.summarize(samples[("dense", b)])
                for step in a.steps:
                    lat = c.summarize(samples[(step, b)])
                    row = {"model": name, "ratio": a.ratio, "batch": b, "round_to": step, "dense_macs": dense_macs,
                           **info[step], "dense_latency": d, "latency": lat}
                    row |= c.derived(d, lat, dense_macs, info[step]["macs"])
                    entries.append(row)
                c.log(f"{name} b={b}: dense {d['median_ms']:.1f} ms; " + ", ".join(
                    f"step {r['round_to']} eff {r['efficiency']:.2f} (MACs x{r['mac_reduction']:.2f})"
                    for r in entries if r["model"] == name and r["batch"] == b))
            for p in files.values():
                if not a.keep_onnx:
                    p.unlink(missing_ok=True)
    finally:
        if not a.keep_onnx:
            shutil.rmtree(tmpdir, ignore_errors=True)

    summary, best, tied, chosen = choose(entries, a.steps, a.tie, a.portable_block)
    result = {
        **c.result_header("channel_step", "which round_to makes compress-pruned models run closest to their MAC reduction in onnxruntime CPU?", t_start),
        "protocol": {
            "runtime": "onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL, intra-op threads "
                       + (str(a.threads) if a.threads else "default (= cores)"),
            **{k: v for k, v in proto.items() if k != "threads"}, "batches": a.batches,
            "measurement": "same as prune_latency.py: fresh subprocess per measurement, dense and all steps of a "
                           "model alternated round-robin (start rotated per round), median over rounds",
            "noise": "shared 2-core VM; other processes may run concurrently. Load average at start/end: "
                     f"{load_start} / {c.loadavg()}",
            "pruner": f"compress.prune.apply.prune, criterion l1, uniform ratio {a.ratio}, random weights",
            "selection": selection_text(a.tie, a.portable_block),
        },
        "summary": summary,
        "best_step": best,
        "tied_steps": tied,
        "chosen_step": chosen,
        "entries": entries,
    }
    c.write_json(c.Path(a.out), result)
    c.log(f"best step by geomean {SELECT_STAT}: {best}; tied: {tied}; chosen: {chosen}; " + ", ".join(
        f"{s}: {summary[str(s)]['geomean_' + SELECT_STAT]:.3f}" for s in a.steps))
    c.log(f"wrote {a.out} in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
