"""Where does a pruned model lose efficiency in onnxruntime? Per-op-kind time, dense vs pruned.

Profiles the dense model and a pruned variant with onnxruntime's node profiler in one process,
alternating fresh sessions of the two (close in time, so machine load hits both alike), and groups
kernel time by kind of op: dense / 1x1 / kxk convolutions, depthwise convolutions, Gemm, layout
reorders, element-wise and pooling ops. For each kind: dense vs pruned ms, MAC reduction and
efficiency = time reduction / MAC reduction. An investigation tool; writes JSON if --out is given.

    python bench/op_breakdown.py resnet50 --ratio 0.5 --batch 8
    python bench/op_breakdown.py mobilenet_v2 --ratio 0.5 --variant tp
    python bench/op_breakdown.py mobilenet_v2 --ratio 0.3 --round-to 16 --dtype int8 --layers 15
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import time

import _common as c


def conv_kind(args: dict, op: str, weight: list | None = None) -> tuple[str, int]:
    """(kind, MACs) of one profiled node from its input/output shapes (fp32 Conv/FusedConv; int8 QLinearConv in
    NCHW or onnxruntime's NHWC rewrite, whose prepacked weight the profiler does not show: `weight`, its OIHW
    shape from the optimised graph)."""
    ins = [list(d.values())[0] for d in args.get("input_type_shape", [])]
    outs = [list(d.values())[0] for d in args.get("output_type_shape", [])]
    conv = None
    if op in ("Conv", "FusedConv") and len(ins) >= 2 and outs:
        conv = ins[0], ins[1], outs[0]
    elif op == "QLinearConv" and weight and outs:
        x, w, y = ins[0], weight, outs[0]
        if len(y) == 4 and y[1] != w[0] and y[3] == w[0]:       # NHWC
            x, y = [x[0], x[3], x[1], x[2]], [y[0], y[3], y[1], y[2]]
        conv = x, w, y
    if conv is not None:
        x, w, y = conv
        cin_g, kh, kw = w[1], w[2], w[3] if len(w) > 3 else 1
        groups = max(1, x[1] // max(cin_g, 1))
        macs = y[0] * y[1] * y[2] * (y[3] if len(y) > 3 else 1) * cin_g * kh * (kw or 1)
        if groups > 1 and cin_g == 1:
            kind = "conv depthwise"
        elif groups > 1:
            kind = "conv grouped"
        elif x[1] <= 4:
            kind = "conv stem"
        else:
            kind = "conv 1x1" if kh * (kw or 1) == 1 else f"conv {kh}x{kw}"
        return kind, macs
    if op in ("Gemm", "MatMul", "FusedMatMul") and len(ins) >= 2 and outs:
        return "gemm/matmul", _prod(outs[0]) * ins[0][-1]
    if op.startswith("Reorder"):
        return "layout reorder", 0
    if "Pool" in op:
        return "pooling", 0
    return op, 0


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def weights_of(path, threads: int, out) -> dict:
    """{node name: weight shape} of the QLinearConv nodes in onnxruntime's optimised graph of `path` (saved to `out`)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.optimized_model_filepath = str(out)
    if threads:
        so.intra_op_num_threads = threads
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    g = onnx.load(str(out)).graph
    init = {t.name: list(t.dims) for t in g.initializer}
    return {n.name: init[n.input[3]] for n in g.node if n.op_type == "QLinearConv" and n.input[3] in init}


def profile(path, batch: int, threads: int, prefix: str):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = prefix
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal([batch, 3, 224, 224], dtype=np.float32)
    return sess, {sess.get_inputs()[0].name: x}


def aggregate(files: list[str], weights: dict | None = None) -> tuple[dict, float, dict]:
    """Over profile files (one session each, first run a warm-up that is dropped): kind -> {ms, macs}
    per run (mean), the median run ms, and per-node {name: {kind, ms, macs, shape}} (mean ms)."""
    import bisect

    kinds: dict = collections.defaultdict(lambda: [0.0, 0])
    nodes: dict = {}
    run_ms: list[float] = []
    for f in files:
        events = json.load(open(f))
        runs = sorted((e["ts"], e["dur"]) for e in events if e.get("name") == "model_run")
        starts = [r[0] for r in runs]
        run_ms += [r[1] / 1e3 for r in runs[1:]]
        for e in events:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
                continue
            if bisect.bisect_right(starts, e["ts"]) - 1 < 1:   # warm-up run (or before any run)
                continue
            name = e["name"][: -len("_kernel_time")]
            kind, macs = conv_kind(e.get("args", {}), e["args"].get("op_name", "?"), (weights or {}).get(name))
            kinds[kind][0] += e["dur"] / 1e3
            kinds[kind][1] += macs
            nd = nodes.setdefault(name, {"kind": kind, "ms": 0.0, "macs": macs, "shape": _shape(e["args"])})
            nd["ms"] += e["dur"] / 1e3
    n = max(len(run_ms), 1)
    out = {k: {"ms": v[0] / n, "macs": v[1] // n} for k, v in kinds.items()}
    for nd in nodes.values():
        nd["ms"] /= n
    return out, statistics.median(run_ms), nodes


def _shape(args: dict) -> str:
    ins = [list(d.values())[0] for d in args.get("input_type_shape", [])]
    outs = [list(d.values())[0] for d in args.get("output_type_shape", [])]
    if len(ins) >= 4 and len(ins[3]) == 4 and outs:           # QLinearConv: weight OIHW, output NCHW or NHWC
        return f"w{ins[3][0]}x{ins[3][1]}x{ins[3][2]}x{ins[3][3]} out{'x'.join(map(str, outs[0]))}"
    if len(ins) >= 2 and len(ins[1]) == 4 and outs and len(outs[0]) == 4:
        return f"{ins[0][1]}->{outs[0][1]} k{ins[1][2]} {outs[0][2]}x{outs[0][3]}"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--variant", choices=["ours", "tp", "tp16"], default="ours")
    ap.add_argument("--round-to", type=int, help="ours: round_to (default: the cpu channel step)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="runs per session per round")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtype", choices=["fp32", "int8"], default="fp32",
                    help="int8: both files quantized as `compress export --dtype int8 --calib random:64` does")
    ap.add_argument("--layers", type=int, default=0, help="also list the N nodes that lose the most time")
    ap.add_argument("--out")
    a = ap.parse_args()

    from compress.hardware_profiles import channel_step

    tmp = c.TMP / f"op_breakdown_{int(time.time())}"
    tmp.mkdir(parents=True)
    try:
        dense = c.build(a.model)
        if a.variant == "ours":
            res, _ = c.prune_ours(dense, a.ratio, a.round_to or channel_step("cpu"))
            pm = res.model
        else:
            pm, _ = c.prune_tp(c.build(a.model), a.ratio, None if a.variant == "tp" else 16)
        files = {"dense": tmp / "dense.onnx", a.variant: tmp / "pruned.onnx"}
        c.export(dense, files["dense"])
        c.export(pm, files[a.variant])
        if a.dtype == "int8":
            from int8_pruned import Int8Exporter

            quantize = Int8Exporter(a.model, c.example(1))
            for k, p in list(files.items()):
                files[k] = p.with_suffix(".int8.onnx")
                quantize(p, files[k])
        total_macs = {"dense": c.macs(dense), a.variant: c.macs(pm)}
        # one session at a time (two live sessions means two spinning thread pools on the same cores),
        # alternating dense / pruned each round; each session's first run is a warm-up
        profiles: dict = {k: [] for k in files}
        for r in range(a.rounds):
            for k, p in files.items():
                sess, feeds = profile(p, a.batch, a.threads, str(tmp / f"{k}_{r}"))
                for _ in range(1 + a.runs):
                    sess.run(None, feeds)
                profiles[k].append(sess.end_profiling())
                del sess
        agg = {k: aggregate(fs, weights_of(files[k], a.threads, tmp / f"{k}_optimized.onnx"))
               for k, fs in profiles.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    (d_ops, d_ms, d_nodes), (p_ops, p_ms, p_nodes) = agg["dense"], agg[a.variant]
    red = total_macs["dense"] / total_macs[a.variant]
    rows = []
    for kind in sorted(set(d_ops) | set(p_ops), key=lambda k: -d_ops.get(k, {"ms": 0})["ms"]):
        d, p = d_ops.get(kind, {"ms": 0, "macs": 0}), p_ops.get(kind, {"ms": 0, "macs": 0})
        row = {"kind": kind, "dense_ms": round(d["ms"], 3), "pruned_ms": round(p["ms"], 3),
               "dense_macs": d["macs"], "pruned_macs": p["macs"]}
        if d["macs"] and p["macs"] and p["ms"]:
            row["mac_reduction"] = round(d["macs"] / p["macs"], 3)
            row["time_reduction"] = round(d["ms"] / p["ms"], 3)
            row["efficiency"] = round(row["time_reduction"] / row["mac_reduction"], 3)
            row["dense_gmacs_per_s"] = round(d["macs"] / d["ms"] / 1e6, 1)
            row["pruned_gmacs_per_s"] = round(p["macs"] / p["ms"] / 1e6, 1)
        rows.append(row)
    print(f"{a.model} {a.variant} {a.dtype} ratio {a.ratio} batch {a.batch}: run {d_ms:.1f} -> {p_ms:.1f} ms "
          f"(x{d_ms / p_ms:.2f}), MACs x{red:.2f} fewer, efficiency {d_ms / p_ms / red:.2f}")
    print(f"{'kind':28} {'dense ms':>9} {'pruned ms':>9} {'share d/p':>11} {'MACs x':>7} {'time x':>7} "
          f"{'eff':>5} {'GMAC/s d->p':>13}")
    dsum, psum = sum(r["dense_ms"] for r in rows), sum(r["pruned_ms"] for r in rows)
    for r in rows:
        print(f"{r['kind'][:28]:28} {r['dense_ms']:9.2f} {r['pruned_ms']:9.2f} "
              f"{r['dense_ms'] / dsum:5.0%}/{r['pruned_ms'] / psum:4.0%} "
              f"{r.get('mac_reduction', float('nan')):7.2f} {r.get('time_reduction', float('nan')):7.2f} "
              f"{r.get('efficiency', float('nan')):5.2f} "
              + (f"{r['dense_gmacs_per_s']:6.1f}->{r['pruned_gmacs_per_s']:5.1f}" if "efficiency" in r else ""))
    layers = []
    for name, dn in d_nodes.items():
        pn = p_nodes.get(name)
        if not pn or not dn["macs"] or not pn["macs"] or not pn["ms"]:
            continue
        ideal = dn["ms"] * pn["macs"] / dn["macs"]   # pruned time at the dense node's throughput
        layers.append({"node": name, "kind": dn["kind"], "dense": dn["shape"], "pruned": pn["shape"],
                       "dense_ms": round(dn["ms"], 3), "pruned_ms": round(pn["ms"], 3),
                       "excess_ms": round(pn["ms"] - ideal, 3),
                       "dense_gmacs_per_s": round(dn["macs"] / dn["ms"] / 1e6, 1),
                       "pruned_gmacs_per_s": round(pn["macs"] / pn["ms"] / 1e6, 1)})
    layers.sort(key=lambda r: -r["excess_ms"])
    if a.layers:
        print(f"\nnodes losing the most time vs the dense node's throughput (excess = pruned ms - ideal ms):")
        print(f"{'node':48} {'dense shape':>24} {'pruned shape':>24} {'ms d->p':>13} {'excess':>7} {'GMAC/s d->p':>13}")
        for r in layers[:a.layers]:
            print(f"{r['node'][-48:]:48} {r['dense']:>24} {r['pruned']:>24} {r['dense_ms']:6.2f}->{r['pruned_ms']:5.2f} "
                  f"{r['excess_ms']:7.2f} {r['dense_gmacs_per_s']:6.1f}->{r['pruned_gmacs_per_s']:5.1f}")
        print(f"total excess over all matched nodes: {sum(r['excess_ms'] for r in layers):.2f} ms "
              f"(pruned run {p_ms:.1f} ms)")
        others = sorted(((n, dn, p_nodes[n]) for n, dn in d_nodes.items() if not dn["macs"] and n in p_nodes),
                        key=lambda t: -t[2]["ms"])
        print(f"\nnodes without MACs (element-wise, layout, pooling), slowest pruned first:")
        print(f"{'node':48} {'kind':>18} {'ms dense':>9} {'ms pruned':>9} {'pruned/dense':>12}")
        for n, dn, pn in others[:a.layers]:
            print(f"{n[-48:]:48} {dn['kind'][:18]:>18} {dn['ms']:9.3f} {pn['ms']:9.3f} {pn['ms'] / max(dn['ms'], 1e-9):12.2f}")
    if a.out:
        c.write_json(c.Path(a.out), {"model": a.model, "variant": a.variant, "dtype": a.dtype, "ratio": a.ratio, "batch": a.batch,
                                     "threads": a.threads, "run_ms": {"dense": d_ms, "pruned": p_ms},
                                     "macs": total_macs, "kinds": rows, "layers": layers, "date": c.now(),
                                     "machine": c.machine_info(), "versions": c.versions()})


if __name__ == "__main__":
    main()
