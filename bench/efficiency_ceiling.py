"""How much pruning efficiency does a CNN's mix of op kinds allow in onnxruntime on CPU?

Uniform channel pruning keeping a fraction k = 1 - r of every layer's channels cuts an ordinary
convolution's work (both sides pruned) to k^2, but the work of ops that touch each channel once
(depthwise/grouped convs, element-wise ops, pooling, concat, layout reorders, LayerNorm,
squeeze-excitation, the stem conv on the fixed 3-channel image, the classifier with its fixed
1000 outputs) only to k. Profile the dense model's nodes, split kernel time into "quadratic"
(Conv/FusedConv/NchwcConv with group 1 whose input and output channels are both prunable;
MatMul/Gemm except the classifier) and "linear" (everything else), m = linear share. If every op
kept its dense throughput (time proportional to work):

    latency ratio  = m k + (1 - m) k^2
    MAC ratio      = k^2                           (MACs dominated by the quadratic convs)
    efficiency     = MAC ratio / latency ratio = k / (m + (1 - m) k) = (1 - r) / (m + (1 - m)(1 - r))

(`ceiling_formula`). `ceiling_macs` puts the exact MAC ratio of compress's own uniform pruning
(compress.prune.apply.prune, l1, round_to = channel_step('cpu'); compress.metrics.count_macs) over
m k + (1 - m) k^2, with k the kept fraction of conv/linear output channels in that pruned model.
Not a hard bound (pruned convs can run at higher GMAC/s than dense ones), but the efficiency
expected when the op-kind mix is the only loss. Measured efficiencies are read from
bench/results/cpu/prune_latency.json when present.

    python bench/efficiency_ceiling.py                              # all zoo CNNs (~5 min)
    python bench/efficiency_ceiling.py --models mobilenet_v3_small --runs 3
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import shutil
import statistics
import sys
import time

import numpy as np

import _common as c

QUADRATIC = ("conv", "matmul/gemm")
RATIOS = (0.3, 0.5)


def shapes(args: dict) -> tuple[list, list]:
    """Input and output shapes of one profiled node (from the profiler event's args)."""
    return ([list(d.values())[0] for d in args.get("input_type_shape", [])],
            [list(d.values())[0] for d in args.get("output_type_shape", [])])


def category(op: str, args: dict, group: int, n_classes: int) -> str:
    """The cost class of one profiled node from its op, group attribute and input/output shapes."""
    ins, outs = shapes(args)
    if op in ("Conv", "FusedConv") and ins and outs:
        x, y = ins[0], outs[0]
        if group > 1:
            return "conv depthwise" if len(ins) > 1 and ins[1][1] == 1 else "conv grouped"
        if x[1] <= 4:
            return "conv stem (3-ch input)"
        if y[1] == n_classes:
            return "conv fixed output"
        if len(y) == 4 and y[2] * y[3] == 1:
            return "squeeze-excitation conv"
        return "conv"
    if op in ("Gemm", "MatMul", "FusedMatMul"):
        return "classifier" if outs and outs[0][-1] == n_classes else "matmul/gemm"
    if op.startswith("Reorder") or "Pool" in op:
        return "layout reorder" if op.startswith("Reorder") else "pooling"
    if op in ("Concat", "LayerNormalization", "Transpose", "BatchNormalization"):
        return op.lower()
    return "element-wise/other"


def work(op: str, args: dict) -> int:
    """A node's work: MACs for convs and matmuls, else the largest input/output element count."""
    ins, outs = shapes(args)
    numel = lambda xs: int(np.prod(xs, dtype=np.int64)) if xs else 0  # noqa: E731
    if op in ("Conv", "FusedConv") and len(ins) > 1 and outs:
        return numel(outs[0]) * numel(ins[1][1:])
    if op in ("Gemm", "MatMul", "FusedMatMul") and ins and outs:
        return numel(outs[0]) * ins[0][-1]
    return max((numel(x) for x in ins + outs), default=0)


def profile(path, batch: int, warmup: int, runs: int, threads: int, tmp) -> tuple[dict, dict]:
    """Per-category kernel ms (sum over its nodes of each node's fastest timed run), run ms and m;
    and per node (category, ms, work)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / f"prof_b{batch}")
    so.optimized_model_filepath = str(tmp / "opt.onnx")
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1)
              for n in onnx.load(str(tmp / "opt.onnx")).graph.node}
    n_classes = int(sess.get_outputs()[0].shape[-1])
    x = np.random.default_rng(0).standard_normal([batch, 3, 224, 224], dtype=np.float32)
    feeds = {sess.get_inputs()[0].name: x}
    for _ in range(warmup + runs):
        sess.run(None, feeds)
    events = json.load(open(sess.end_profiling()))
    del sess
    model_runs = sorted((e["ts"], e["dur"]) for e in events if e.get("name") == "model_run")
    starts = [r[0] for r in model_runs]
    per: dict = {}      # node -> (category, kernel ms per run)
    unknown = set()
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        r = bisect.bisect_right(starts, e["ts"]) - 1
        if r < warmup:
            continue
        node = e["name"][: -len("_kernel_time")]
        if node not in groups and e["args"].get("op_name") in ("Conv", "FusedConv"):
            unknown.add(node)       # group attribute unknown (taken as 1)
        if node not in per:   # NCHWc turns a standalone BatchNormalization into a 1x1 depthwise conv
            cat = "batchnormalization" if node.endswith("_bn_nchwc") else \
                category(e["args"].get("op_name", "?"), e["args"], groups.get(node, 1), n_classes)
            per[node] = (cat, [0.0] * len(model_runs), work(e["args"].get("op_name", "?"), e["args"]))
        per[node][1][r] += e["dur"] / 1e3
    # per node, the fastest timed run: contention on the shared machine only ever adds time
    cats: dict = collections.defaultdict(float)
    for cat, ms, _ in per.values():
        cats[cat] += min(ms[warmup:])
    kernel = sum(cats.values())
    lin = sum(v for k, v in cats.items() if k not in QUADRATIC)
    run_ms = [d / 1e3 for _, d in model_runs[warmup:]]
    return {"m": round(lin / kernel, 4), "runs": len(run_ms), "run_ms_median": round(statistics.median(run_ms), 3),
            "run_ms_min": round(min(run_ms), 3), "kernel_ms": round(kernel, 3),
            "overhead_ms": round(max(min(run_ms) - kernel, 0.0), 3),
            "categories": {k: {"ms": round(v, 3), "pct": round(100 * v / kernel, 1),
                               "class": "quadratic" if k in QUADRATIC else "linear"}
                           for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "convs_without_group_attr": sorted(unknown)}, \
        {n: (cat, min(ms[warmup:]), w) for n, (cat, ms, w) in per.items()}


def node_ratio(dense: dict, pruned: dict, k: float) -> tuple[float, float]:
    """Pruned / dense latency if every dense node kept its throughput (ms times its work ratio, nodes
    matched by name; unmatched ones by k^2 if quadratic, else k), and the matched share of time."""
    num = den = matched = 0.0
    for node, (cat, ms, w) in dense.items():
        # layout reorders get optimiser-generated names that differ between the two graphs
        p = None if cat == "layout reorder" else pruned.get(node)
        if p and w and p[0] == cat:
            s, matched = p[2] / w, matched + ms
        else:
            s = k * k if cat in QUADRATIC else k
        num, den = num + ms * s, den + ms
    return num / den, matched / den


def kept_fraction(dense, pruned) -> float:
    """k: kept fraction of the output channels of every conv/linear layer except the classifier."""
    from torch import nn

    skip, pm = c.classifier(dense), dict(pruned.named_modules())
    pairs = [(mod.weight.shape[0], pm[n].weight.shape[0]) for n, mod in dense.named_modules()
             if mod is not skip and isinstance(mod, (nn.Conv2d, nn.Linear)) and n in pm]
    return sum(p for _, p in pairs) / sum(d for d, _ in pairs)


def measured(path) -> dict:
    """(model, batch, ratio, variant) -> {efficiency, efficiency_best, mac_reduction} and
    (model, batch) -> dense best_ms, from prune_latency.json."""
    out: dict = {}
    if not path.is_file():
        return out
    for e in json.loads(path.read_text()).get("entries", []):
        if "efficiency" in e:
            out[(e["model"], e["batch"], e["ratio"], e["variant"])] = {
                k: e[k] for k in ("efficiency", "efficiency_best", "mac_reduction")}
            out[(e["model"], e["batch"])] = e["dense_latency"]["best_ms"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=c.ZOO, metavar="NAME")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--runs", type=int, default=8, help="profiled runs per batch after --warmup")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    ap.add_argument("--out", default=str(c.RESULTS / "efficiency_ceiling.json"))
    a = ap.parse_args()
    bad = [m for m in a.models if m not in c.ZOO]
    if bad or a.runs < 1 or a.warmup < 0 or any(b < 1 for b in a.batches):
        print("error: " + (f"unknown model(s) {bad}; choose from {c.ZOO}" if bad
                            else "--runs >= 1, --warmup >= 0 and batches >= 1 required"), file=sys.stderr)
        sys.exit(2)

    from compress.hardware_profiles import channel_step

    step = channel_step("cpu")
    t_start = time.time()
    meas = measured(c.RESULTS / "prune_latency.json")
    tmp = c.TMP / f"efficiency_ceiling_{int(t_start)}"
    tmp.mkdir(parents=True)
    rows = []
    try:
        for name in a.models:
            dense = c.build(name)
            dense_macs = c.macs(dense)
            c.export(dense, tmp / "dense.onnx")
            prune_side, graph = {}, None
            for r in RATIOS:
                res, _ = c.prune_ours(dense, r, step, graph)
                graph = res.graph
                prune_side[r] = {"mac_ratio": c.macs(res.model) / dense_macs, "k": kept_fraction(dense, res.model),
                                 "path": tmp / f"ours_r{r}.onnx"}
                c.export(res.model, prune_side[r]["path"])
            for b in a.batches:
                p, nodes = profile(tmp / "dense.onnx", b, a.warmup, a.runs, a.threads, tmp)
                m = p["m"]
                row = {"model": name, "batch": b, **p, "prune_latency_dense_best_ms": meas.get((name, b)),
                       "ceilings": {}}
                for r in RATIOS:
                    ps, k = prune_side[r], prune_side[r]["k"]
                    ceil = {"formula": round((1 - r) / (m + (1 - m) * (1 - r)), 4),
                            "macs": round(ps["mac_ratio"] / (m * k + (1 - m) * k * k), 4),
                            "ours_mac_reduction": round(1 / ps["mac_ratio"], 4), "ours_k": round(k, 4)}
                    lat, matched = node_ratio(nodes, profile(ps["path"], b, 0, 1, a.threads, tmp)[1], k)
                    ceil |= {"nodes": round(ps["mac_ratio"] / lat, 4), "nodes_matched_pct": round(100 * matched, 1)}
                    ceil |= {f"measured_{v}": meas[(name, b, r, v)] for v in ("ours", "tp16") if (name, b, r, v) in meas}
                    row["ceilings"][str(r)] = ceil
                rows.append(row)
                c.log(f"{name} b={b}: m={m:.3f}; ceiling formula/macs/nodes " + ", ".join(
                    f"r={r}: {v['formula']:.3f}/{v['macs']:.3f}/{v['nodes']:.3f}" for r, v in row["ceilings"].items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        **c.result_header("efficiency_ceiling", "how much of the efficiency (speedup / MAC reduction) of uniform "
                          "channel pruning does the share of channel-linear ops in onnxruntime CPU latency allow?",
                          t_start),
        "protocol": {
            "runtime": "onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL, node profiler, intra-op threads "
                       + (str(a.threads) if a.threads else "default (= cores)"),
            "onnx": "dense model exported like bench/prune_latency.py (compress.export.onnx.export_onnx, random weights)",
            "runs": a.runs, "warmup": a.warmup, "batches": a.batches, "load1_end": c.loadavg()[:1],
            "split": "kernel time per node of the optimised graph (group attribute read from the saved optimised "
                     "model, shapes from the profiler events). quadratic: Conv/FusedConv/NchwcConv with group 1, "
                     "input not the 3-channel image, output not the class count, output spatial size > 1x1 "
                     "(1x1-spatial convs are squeeze-excitation); MatMul/Gemm except the classifier (output = class "
                     "count). linear: everything else (NCHWc runs a standalone BatchNormalization as a 1x1 depthwise "
                     "conv: category batchnormalization). Each node's kernel time is its fastest timed run "
                     "(contention on the shared machine only adds time); category ms = sum over its nodes; m = "
                     "linear / total kernel time. overhead_ms = fastest run - kernel time (not in m). "
                     "prune_latency_dense_best_ms (the same file timed without the profiler, in prune_latency.json) "
                     "against kernel_ms shows how much outside load inflated this profile",
            "ceiling_formula": "(1 - r) / (m + (1 - m)(1 - r)): time proportional to work, linear part scales with "
                               "k = 1 - r, quadratic part and all MACs with k^2",
            "ceiling_macs": "exact MAC ratio of compress.prune.apply.prune (l1, uniform r, round_to = channel_step('cpu') = "
                            f"{step}) by compress.metrics.count_macs, over m k + (1 - m) k^2 with k = kept fraction "
                            "of conv/linear output channels (classifier excluded) of that pruned model",
            "ceiling_nodes": "the same exact MAC ratio over the latency ratio predicted node by node: dense kernel "
                             "ms times the node's work ratio pruned/dense (MACs for convs/matmuls, else the largest "
                             "input/output element count; pruned shapes from one profiled run at the same batch, "
                             "nodes matched by name; unmatched ones and layout reorders scaled by k^2 / k by class; "
                             "nodes_matched_pct = matched share of dense kernel time)",
            "measured": "efficiency / efficiency_best / mac_reduction of ours and tp16 from "
                        f"{'bench/results/cpu/prune_latency.json (same machine)' if meas else 'none: prune_latency.json absent'}",
        },
        "entries": rows,
    }
    c.write_json(c.Path(a.out), result)
    c.log(f"wrote {a.out} in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
