"""Rewrite the README's benchmark section from bench/results/cpu/*.json.

Only the text between the lines `<!-- bench:start -->` and `<!-- bench:end -->` in README.md is
replaced (a `## Benchmarks` section with those markers is appended if absent), so the rest of
the README may be edited freely.

    python bench/make_tables.py            # rewrite README.md
    python bench/make_tables.py --print    # print the section instead
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "cpu"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
NAMES = {"ours": "ours", "tp": "TP", "tp16": "TP+r16"}


def _ms(lat: dict | None) -> str:
    if not lat:
        return "-"
    m = lat["median_ms"]
    fmt = "{:.1f}" if m >= 10 else "{:.2f}"
    return f"{fmt.format(m)} ({fmt.format(lat['min_ms'])}–{fmt.format(lat['max_ms'])})"


def _f(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _machine(d: dict) -> str:
    m, v = d["machine"], d["versions"]
    return (f"{m['cpu']}, {m['cores']} cores ({', '.join(m.get('isa', [])) or 'no AVX2'}), "
            f"onnxruntime {v.get('onnxruntime')}, torch {v.get('torch')}, torch-pruning {v.get('torch-pruning')}, "
            f"{d['date'][:10]}")


def prune_latency_section(d: dict) -> list[str]:
    p = d["protocol"]
    rows: dict = {}
    for e in d["entries"]:
        key = (e["model"], e["ratio"], e["batch"])
        rows.setdefault(key, {"dense": e.get("dense_latency")})[e["variant"]] = e
    order = {m: i for i, m in enumerate(dict.fromkeys(e["model"] for e in d["entries"]))}
    out = [
        "### Pruned-model latency vs MACs (onnxruntime CPU)",
        "",
        "Efficiency = (dense latency / pruned latency) / (dense MACs / pruned MACs): 1.0 means latency falls "
        "exactly as MACs do. *ours*: `compress.prune.apply.prune` (l1, uniform ratio, round_to = cpu channel step "
        f"{_round_to(d)}); *TP*: Torch-Pruning {d['versions'].get('torch-pruning')} uniform magnitude pruner "
        "(L1, classifier ignored), no rounding; *TP+r16*: the same with round_to=16. Random weights, "
        "input 3×224×224, fp32. Latency: median over rounds (min–max over rounds) in ms.",
        "",
        "| model | ratio | batch | MAC red. ours | TP | TP+r16 | eff. ours | TP | TP+r16 | dense ms | ours ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, ratio, batch) in sorted(rows, key=lambda k: (order[k[0]], k[1], k[2])):
        r = rows[(model, ratio, batch)]
        red = [_f(r.get(v, {}).get("mac_reduction")) for v in NAMES]
        eff = [_f(r.get(v, {}).get("efficiency")) for v in NAMES]
        eff = [f"**{x}**" if i == 0 and x != "-" and float(x) < 0.9 else x for i, x in enumerate(eff)]
        out.append(f"| {model} | {ratio} | {batch} | " + " | ".join(red + eff)
                   + f" | {_ms(r['dense'])} | {_ms(r.get('ours', {}).get('latency'))} |")
    out.append("")
    if d.get("failures"):
        out.append("Failed variants: " + "; ".join(d["failures"]) + ".")
        out.append("")
    pt = d.get("prune_time")
    if pt:
        out.append(f"Pruning time (ResNet-50, ratio {pt['ratio']}, `compress.prune.apply.prune`: trace + score + "
                   f"removal + verification): {pt['cold_s']:.1f} s in a fresh process, "
                   f"{pt['warm_median_s']:.1f} s warm (target < {pt['target_s']:.0f} s)." if pt.get("warm_median_s")
                   else f"Pruning time (ResNet-50): {pt['cold_s']:.1f} s in a fresh process.")
        out.append("")
    how = (f"per model and batch, each file in its own worker process, the workers timing one block each in turn, "
           f"{p['rounds']} rounds x {p['passes']} passes of fresh workers; speedup = median over rounds of neighbouring "
           f"dense / variant blocks; a block: up to {p['runs']} timed runs, more for small models until 0.3 s is timed"
           if p.get("passes") else
           f"{p['rounds']} alternating rounds, {p['warmup']} warm-up + up to {p['runs']} timed runs per measurement, more "
           f"for small models until 0.3 s is timed, each in a fresh process")
    out.append(f"Produced by `{d['command']}` ({how}; {d['wall_seconds'] / 60:.0f} min) "
               f"on {_machine(d)}. The machine is shared, so other load adds noise.")
    for r in d.get("remeasured", []):
        out[-1] += (f" {', '.join(r['models'])} re-measured by `{r['command']}` on {r['date'][:16].replace('T', ' ')} "
                    "UTC (its first measurement overlapped other jobs).")
    return out


def ceiling_rows(c: dict, pl: dict) -> list[str]:
    """What each model's op mix allows (bench/efficiency_ceiling.py, `nodes` estimate) beside the
    efficiencies prune_latency.json (`pl`) measured."""
    ours = {(e["model"], e["ratio"], e["batch"]): e.get("efficiency") for e in pl["entries"] if e["variant"] == "ours"}
    out = ["What the op mix allows: the efficiency if every dense node kept its throughput at its pruned "
           "work (`bench/efficiency_ceiling.py`, node-profiled dense model; m = share of kernel time in ops "
           "whose cost falls linearly with channels: depthwise and grouped convs, element-wise, pooling, "
           "concat, reorders). Read to about ±0.05.",
           "",
           "| model | batch | m | allows at 0.3 | ours 0.3 | allows at 0.5 | ours 0.5 |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for e in c["entries"]:
        cells = []
        for r in ("0.3", "0.5"):
            cells += [_f(e["ceilings"][r]["nodes"]), _f(ours.get((e["model"], float(r), e["batch"])))]
        out.append(f"| {e['model']} | {e['batch']} | {e['m']:.2f} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(f"Produced by `{c['command']}` on {_machine(c)}.")
    return out


def plan_vs_uniform_rows(d: dict) -> list[str]:
    """The latency planner at the latency the uniform ratio reaches (bench/plan_vs_uniform.py)."""
    out = ["At the latency the uniform ratio reaches, the latency planner (`compress plan`, budget = the profile's "
           "prediction for the uniform model over dense) on the models whose op mix holds the uniform ratio "
           "back: MAC reduction, speedup and efficiency of each, both timed beside dense in the same run "
           "(batch " + str(d["entries"][0]["batch"]) + ").",
           "",
           "| model | ratio | budget | MAC red. uniform | planned | speedup uniform | planned | eff. uniform | planned | planned / uniform ms |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in d["entries"]:
        u, p = e["uniform"], e["planned"]
        out.append(f"| {e['model']} | {e['ratio']} | {e['budget']:.3f} | {u['mac_reduction']:.2f} | {p['mac_reduction']:.2f} | "
                   f"{u['speedup']:.2f} | {p['speedup']:.2f} | {u['efficiency']:.2f} | {p['efficiency']:.2f} | "
                   f"{e['planned_over_uniform_ms']:.3f} |")
    out += ["", f"Produced by `{d['command']}` (profile {d['entries'][0]['profile']}) on {_machine(d)}."]
    return out


def _round_to(d: dict) -> str:
    for e in d["entries"]:
        if e.get("variant") == "ours" and e.get("round_to"):
            return str(e["round_to"])
    return "?"


def _layout(d: dict, step: str) -> str:
    rows = [e["onnxruntime_layout"] for e in d["entries"] if str(e["round_to"]) == step and "onnxruntime_layout" in e]
    if not rows:
        return "-"
    return f"{sum(r['nchwc_convs'] for r in rows)}/{sum(r['convs'] for r in rows)}"


def channel_step_section(d: dict) -> list[str]:
    p = d["protocol"]
    out = [
        "### Channel step (round_to) on CPU",
        "",
        f"`compress.prune.apply.prune` at ratio {d['entries'][0]['ratio']} on "
        f"{', '.join(dict.fromkeys(e['model'] for e in d['entries']))}, batch "
        f"{', '.join(str(b) for b in p['batches'])}; geometric means over the models.",
        "",
        "| round_to | efficiency (median) | efficiency (fastest round) | worst model (fastest round) | speedup (median) "
        "| MAC reduction | convs in NCHWc layout |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for step, s in d["summary"].items():
        mark = " (default)" if int(step) == d.get("chosen_step", d["best_step"]) else ""
        out.append(f"| {step}{mark} | {_f(s['geomean_efficiency'])} | {_f(s.get('geomean_efficiency_min'))} | "
                   f"{_f(s.get('min_efficiency_min'))} | "
                   f"{_f(s['geomean_speedup'])} | {_f(s['geomean_mac_reduction'])} | {_layout(d, step)} |")
    out.append("")
    if "tied_steps" in d:
        out.append(f"Steps {', '.join(map(str, d['tied_steps']))} tie within noise. Selection {p['selection']}.")
        out.append("")
    out.append(f"Produced by `{d['command']}` ({p['rounds']} alternating rounds) on {_machine(d)}.")
    return out


def planner_budget_section(d: dict, dm: dict | None = None) -> list[str]:
    """`d`: plans predicted only (planner_budget.json); `dm`: the same budgets planned with
    `compress plan --measure` (planner_budget_measured.json), when present."""
    out = ["### Latency-budget plans: measured vs budget (onnxruntime CPU)", "",
           "Measured: the plan's latency over the dense model's, timed side by side (per round, neighbouring blocks "
           "of the two in their own processes; the median over rounds). *predicted only*: `compress plan` on the "
           "profile; *--measure*: `compress plan --measure` (candidates timed and the budget corrected on this "
           "machine), then timed again by the benchmark, independently.", "",
           "| model | batch | budget | predicted | measured | error | within 10% |"
           + (" --measure: candidates | measured | error | within 10% |" if dm else ""),
           "|---|---:|---:|---:|---:|---:|:---:|" + ("---:|---:|---:|:---:|" if dm else "")]
    other = {(e["model"], e["batch"], e["budget"]): e for e in (dm or {}).get("entries", [])}

    def cells(e, measure=False):
        if "measured_ratio" not in e:
            return (["-", f"failed: {e.get('error', '')[:60]}", "", ""] if not measure else
                    ["-", f"failed: {e.get('error', '')[:40]}", "", ""])
        first = str(len(e["refine"]["candidates"])) if measure else f"{e['predicted_ratio']:.3f}"
        return [first, f"{e['measured_ratio']:.3f}", f"{e['rel_error']:+.1%}", "yes" if e["within_10pct"] else "no"]

    for e in d["entries"]:
        row = [e["model"], str(e["batch"]), str(e["budget"])] + cells(e)
        m = other.get((e["model"], e["batch"], e["budget"]))
        if dm:
            row += cells(m, True) if m else ["-"] * 4
        out.append("| " + " | ".join(row) + " |")
    s = d["summary"]
    out += ["", f"Predicted only: {s['within_10pct']}/{s['measured']} within 10% of the budget, median |error| "
            f"{s['median_abs_error']:.1%}. Produced by `{d['command']}` on {_machine(d)}."]
    if dm:
        s = dm["summary"]
        out += ["", f"With --measure: {s['within_10pct']}/{s['measured']} within 10%, median |error| "
                f"{s['median_abs_error']:.1%}. Produced by `{dm['command']}` on {_machine(dm)}."]
    return out


def depthwise_linear_section(d: dict) -> list[str]:
    out = ["### Depthwise tables: read as linear in channels vs as measured", "",
           "The same budget planned twice on the shipped profile, with the predictor's depthwise tables (their "
           "least-squares line in the channel count) and with the tables as measured (cache cliffs included); "
           "both plans timed side by side with dense. Error: measured fraction of dense over the budget.", "",
           "| model | batch | budget | MACs fewer, linear | error, linear | MACs fewer, as measured | "
           "error, as measured |", "|---|---:|---:|---:|---:|---:|---:|"]
    es = d["entries"]
    for x, y in zip(es[::2], es[1::2]):
        out.append(f"| {x['model']} | {x['batch']} | {x['budget']} | {x['mac_reduction']:.2f}x | "
                   f"{x['rel_error']:+.1%} | {y['mac_reduction']:.2f}x | {y['rel_error']:+.1%} |")
    s = d["summary"]
    over = [sum(e["rel_error"] > 0.10 for e in es[i::2]) for i in (0, 1)]
    out += ["", f"More than 10% over the budget: linear {over[0]}/{s['cases']}, as measured {over[1]}/{s['cases']}. "
            f"Linear is at least as close to the budget in {s['linear_closer_to_budget']}/{s['cases']} cases "
            f"and removes at least as many MACs in {s['linear_removes_at_least_as_many_macs']}/{s['cases']}; median "
            f"|error| {s['median_abs_error']['linear']:.1%} vs {s['median_abs_error']['as measured']:.1%}. "
            f"Produced by `{d['command']}` on {_machine(d)}."]
    return out


def _rel(par: dict, prefix: str) -> str:
    errs = [v["max_rel_error"] for k, v in par.items() if k.startswith(prefix)]
    return f"{max(errs):.1e}" if errs else "-"


def export_zoo_section(d: dict) -> list[str]:
    p = d["protocol"]
    out = ["### Export of the pruned zoo (`compress export` / `compress bench`)", "",
           f"Each model pruned by `compress prune --ratio {p['ratio']}` (torchvision: seeded random weights; MiniLM: the packaged "
           "pretrained all-MiniLM-L6-v2), then driven through the CLI. *parity*: largest relative error vs torch over "
           "the manifest's inputs (bar 1e-4), onnxruntime (model.onnx and model.ort.onnx) / TVM llvm library. "
           f"*ms*: `compress bench` median of {p['bench']['runs']} runs (TVM untuned). *Jetson*: e_machine of the "
           "cross-compiled TVM library read from its ELF header (183 = AArch64 shared object) per device, with "
           "model.onnx and the TensorRT build script present. *gpu 2:4*: layers whose ONNX tensor was re-checked "
           "here (every group of 4 along the reduction axis has >= 2 zeros) / layers the sparse plan lowered. "
           "*ONNX identical*: sha256 of model.onnx equal across that many exports of the same pruned model. "
           "*max abs output*: of the dense model on a random input (CNN weights: torchvision's init with random "
           "BatchNorm statistics, else MobileNet/EfficientNet outputs are ~1e-9 and any parity check passes).", "",
           "| model | MAC red. | max abs output | parity ORT | parity TVM | ORT ms | TVM ms | Jetson TVM lib | gpu 2:4 "
           "| ONNX identical | bars |",
           "|---|---:|---:|---:|---:|---:|---:|---|---|---|:---:|"]
    for e in d["results"]:
        cpu, lat = e.get("export_cpu", {}), e.get("bench_cpu", {}).get("latency_ms", {})
        par = cpu.get("parity", {})
        ms = [_f((lat.get(k) or {}).get("median_ms"), 1) for k in ("onnxruntime", "tvm")]
        jet = ", ".join(f"{dev} {v.get('library', {}).get('e_machine', 'none')}" + ("" if v.get("bar") else " FAILED")
                        for dev, v in e.get("export_jetson", {}).items()) or "-"
        g = e.get("gpu_2_4")
        if g is None:
            gpu = "-"
        else:
            ind = g.get("independent_2_4") or {}
            gpu = (f"{ind.get('layers_checked', 0)}/{ind.get('layers_planned_2_4', 0)}"
                   + (f" ({len(ind['not_in_graph'])} unused, not in graph)" if ind.get("not_in_graph") else "")
                   + ("" if g.get("bar") else " FAILED"))
        det = e.get("determinism", {})
        same = f"{'yes' if det.get('identical') else 'NO'} ({det.get('exports', 0)})" if det else "-"
        failed = [k for k, v in e["bars"].items() if k != "all" and not v]
        out.append(f"| {e['model']} | {_f(e.get('prune', {}).get('mac_reduction'))} | "
                   f"{_f(e.get('weights', {}).get('dense_output_max_abs'), 3)} | {_rel(par, 'onnxruntime')} | "
                   f"{_rel(par, 'tvm')} | {ms[0]} | {ms[1]} | {jet} | {gpu} | {same} | "
                   f"{'met' if e['bars']['all'] else 'FAILED: ' + ', '.join(failed)} |")
    out.append("")
    ref = d.get("refusals", {})
    if ref:
        out.append("Refused as documented (exit 2, one line, nothing written): " + "; ".join(
            f"`{r['command'].split(' --out')[0]}`: {r.get('error', '').split(': ', 2)[-1]}" for r in ref.values()
            if r.get("exit_2_nothing_written")) + ". The CNN 2:4 models are made with the mixed-plan route "
            "(`compress prune --plan` with the pruned plan plus 1x1 convs and Linear layers marked 2:4)."
            + (" (That run predates the current default: `compress sparsify --pattern 2:4` now leaves a layer it cannot "
               "take dense and names it; the refusal above is what `--strict` does.)"
               if any("--pattern 2:4" in r["command"] and "--strict" not in r["command"] for r in ref.values()) else ""))
        out.append("")
    runs = d.get("runs") or [{"command": d["command"], "wall_seconds": d["wall_seconds"], "models": None}]
    out.append("Produced by " + "; ".join(f"`{r['command']}` ({r['wall_seconds'] / 60:.0f} min"
                                          + (f", {', '.join(r['models'])}" if r.get("models") and len(runs) > 1 else "")
                                          + ")" for r in runs)
               + f" on {_machine(d)}, apache-tvm {d['versions'].get('apache-tvm')}. The machine is shared: the "
               "latencies show that each runtime runs and measures, not a comparison.")
    return out


def results_summary_section(results: Path) -> list[str]:
    """One line per other benchmark, read from its JSON."""
    rows = []

    def load(name):
        f = results / f"{name}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    d = load("predict_accuracy")
    if d:
        s = d["summary"]["batch1"]["headline (fastest round)"]
        rows.append(f"| latency model vs measurement (`predict_accuracy.py`) | {s['n']} pruned variants, batch 1: "
                    f"median |error| {s['median_abs_error']:.1%}, worst {s['max_abs_error']:.0%} "
                    f"(bar 10% / 25%: {'met' if s['median_abs_error'] <= .1 and s['max_abs_error'] <= .25 else 'not met'})"
                    + "".join(f"; fraction of dense, batch {b}: median |error| {r['median_abs_error']:.1%}, worst "
                              f"{r['max_abs_error']:.0%}" for b in (1, 8)
                              for r in [d["summary"].get(f"batch{b}", {}).get("ratio to dense (median of rounds)")]
                              if r and r.get("n")) + f" ({_machine(d).split(',')[0]}) |")
    d = load("accuracy_cnn")
    if d:
        b = d["bars"]
        rows.append(f"| fmnist-cnn at {b['mac_reduction']:.2f}x fewer MACs, 1 epoch FT (`accuracy_cnn.py`) | ours "
                    f"{b['best_ours_accuracy']:.2%} vs dense {b['dense_accuracy']:.2%}, Torch-Pruning magnitude "
                    f"{b['tp_magnitude_accuracy']:.2%} |")
    for d in (load("planner_accuracy"), load("planner_accuracy_lite0")):
        if not d:
            continue
        ft = f"{d.get('epochs', 1):g} epoch FT" + (f" on {d['ft_samples']} samples" if d.get("ft_samples") else "")
        seeds = d.get("seeds", [0])
        if len(seeds) > 1:
            ft += f", mean of {len(seeds)} fine-tune seeds"
        if d.get("criterion", "l1") != "l1":
            ft += f", ours scored by {d['criterion']}"
        for e in d["entries"]:
            rows.append(f"| {e['model']} at budget {e['budget']} vs Torch-Pruning round_to=16 (`planner_accuracy.py`, batch "
                        f"{d['batch']}, {ft}, objective {d.get('objective', 'log')}) | ours {e['ours']['accuracy']:.2%} at {e['ours']['ms']:.3f} ms; TP "
                        f"ratio {e['tp16']['ratio']} {e['tp16']['accuracy']:.2%} at {e['tp16']['ms']:.3f} ms "
                        f"(TP {e['latency_gap']:+.0%} latency; equal within 5%: "
                        f"{'yes' if e['equal_latency_within_5pct'] else 'no'})"
                        + (f"; ours ahead in {e['ours_wins_seeds']}/{len(seeds)} seeds, per seed "
                           + ", ".join(f"{x:+.2f}" for x in e["ours_minus_tp16_points_per_seed"]) + " points"
                           if len(seeds) > 1 else "") + " |")
    d = load("minilm_distill")
    if d:
        a = d["after_distill"]
        rows.append(f"| all-MiniLM-L6-v2, 30% heads + MLP removed, distilled (`minilm_distill.py`) | cosine to dense "
                    f"{a['cosine_mean']:.3f} (bar 0.90), probe {a['probe_accuracy']:.3f} vs dense "
                    f"{d['probe_accuracy_dense']:.3f} |")
    d = load("reconstruct")
    if d:
        r = d["results"]
        for key in ("fmnist-cnn", "efficientnet-lite0-fmnist"):
            e = r.get(key)
            if e:
                rows.append(f"| {key} at ratio {e['ratio']}, no fine-tuning, `--reconstruct` on {e['calib'].split(' (')[0]} "
                            f"(`reconstruct.py`) | dense {e['accuracy_dense']:.2%}, pruned "
                            f"{e['accuracy_without_reconstruct']:.2%} without, {e['accuracy_with_reconstruct']:.2%} with "
                            f"(bar: within {e['bar_points']:g} points: {'met' if e['bar_met'] else 'not met'}) |")
        for e in (r.get("minilm"), r.get("minilm-thinet")):
            if not e:
                continue
            both = e.get("with_reconstruct_and_distill")
            rows.append(f"| all-MiniLM-L6-v2, 30% heads + MLP removed by {e.get('criterion', 'l1')}, `--reconstruct` "
                        f"(`reconstruct.py`) | cosine to dense "
                        f"{e['without_reconstruct']['cosine_mean']:.3f} without, {e['with_reconstruct']['cosine_mean']:.3f} "
                        f"with (bar 0.90)" + (f"; + distillation {both['cosine_mean']:.3f} (distilled only "
                                             f"{_f(e['distilled_only_reference']['cosine_mean'], 3)})" if both else "") + " |")
        e = r.get("resnet50")
        if e:
            rows.append(f"| `--reconstruct` time, resnet50 at ratio 0.3, {e['calib']} (`reconstruct.py`) | "
                        f"{e['reconstruct_seconds']:.0f} s, peak {e['peak_rss_gb']:.1f} GB (bar 120 s, 8 GB: "
                        f"{'met' if e['bar']['met'] else 'not met'}; {_machine(d).split(',')[0]}"
                        + (f", load average {e['loadavg_end'][0]:.1f} at the end" if e.get("loadavg_end") else "")
                        + ") |")
    d = load("lowering_error")
    if d:
        h = d["summary"]["heldout"]
        rows.append(f"| MiniLM linear layers, 2:4 output error on held-out text (`lowering_error.py`) | magnitude "
                    f"{h['mean_error_magnitude']:.4f}, OBS update {h['mean_error_obs']:.4f}: "
                    f"{h['reduction_obs_vs_magnitude']:.0%} lower (bar 30%) |")
    d = load("efficientnet_lite")
    if d:
        rows.append(f"| EfficientNet-Lite0 on Fashion-MNIST 64 px (`efficientnet_lite.py`) | dense "
                    f"{d['accuracy_dense']:.3f}, ratio 0.3 + 1 epoch FT {d['accuracy_pruned_finetuned']:.3f} "
                    f"({d['test_samples']} test images) |")
    d = load("int8_accuracy")
    if d:
        parts = []
        for r in d["results"]:
            if "accuracy_int8" in r:
                parts.append(f"{r['model'].split(':')[-1]} {r['accuracy_fp32']:.4f} -> {r['accuracy_int8']:.4f} "
                             f"({'met' if r.get('passes_bar') else 'not met'})")
            elif "cosine_mean" in r or "cosine" in r:
                cos = r.get("cosine_mean", r.get("cosine"))
                parts.append(f"{r['model'].split(':')[-1]} cosine to fp32 {cos:.4f} "
                             f"({'met' if r.get('passes_bar') else 'not met'})")
        rows.append(f"| int8 (`compress export --dtype int8`, no fine-tuning) accuracy (`int8.py --part accuracy`) | "
                    + "; ".join(parts) + " (bars: within 0.5 point top-1; cosine >= 0.98) |")
    d = load("int8_latency")
    if d:
        rows.append("| int8 vs fp32 latency, batch 8 (`int8.py --part latency`) | " + "; ".join(
            f"{r['model'].split(':')[-1]}: int8 {r['speedup_compress_vs_fp32']:.2f}x faster than fp32, "
            f"{1 / r['compress_vs_onnxruntime_int8']:.2f}x faster than onnxruntime's own quantize_static"
            for r in d["results"]) + f" ({_machine(d).split(',')[0]}) |")
    d = load("export_latency")
    if d:
        r = "; ".join(f"{x['model'].split(':')[-1]} ORT {x['latency']['onnxruntime']['median_ms']:.1f} ms, "
                      f"TVM {x['tvm_vs_ort']['tvm_llvm']:.0f}x slower" for x in d["results"] if "tvm_vs_ort" in x)
        rows.append(f"| untuned TVM (llvm) vs onnxruntime (`export_latency.py`, measured under load) | {r} |")
    if not rows:
        return []
    return ["### Other results", "", "| benchmark | result |", "|---|---|"] + rows + [
        "", "GPU numbers (Triton block-sparse kernel, 2:4 via cuSPARSELt, GPU profile): not measured yet — no GPU "
        "was lent to a session so far; `python bench/gpu_suite.py` measures them all in one command."]


def bsr_cpu_section(d: dict) -> list[str]:
    """The CPU block-sparse kernel candidates: speedup over dense per point, and the issue's bars for ours."""
    pts = [p for p in d["points"] if p["threads"] == 2] or d["points"]
    names = [n for n in ("compress_ort", "tvm_bsr", "torch_bsr_mm", "torch_bsr_linear", "ort_sparse_csr",
                         "ort_sparse_coo") if any(n in p["candidates"] for p in pts)]

    def sp(p, n):
        r, dense = p["candidates"].get(n), p["candidates"].get("dense_torch")
        if not r or not r.get("ok") or not dense or not dense.get("ok"):
            return "-"
        return f"{dense['median_ms'] / r['median_ms']:.2f}"

    lines = [f"### CPU block-sparse kernels: speedup over dense `F.linear` (`bsr_cpu_candidates.py`, block "
             f"{pts[0]['block']}, {pts[0]['threads']} threads, fp32)", "",
             "Every point checked against float64 before timing; median of alternating rounds. `compress_ort` is "
             "our kernel as `compress export --target cpu` ships it (the `ai.compress::BlockSparseLinear` op in "
             "onnxruntime); *vs ORT dense* is the same kernel against onnxruntime's own dense MatMul, the baseline "
             "a deployed model really competes with (often faster than torch's `F.linear` here). "
             "`tvm_bsr` is a TensorIR kernel for the same pattern (not shipped: it needs the TVM runtime beside "
             "onnxruntime). " + _machine(d) + ".", "",
             "| N x K | tokens | sparsity | dense ms | " + " | ".join(names) + " | compress_ort vs ORT dense |",
             "|---|---|---|---|" + "---|" * len(names) + "---|"]
    for p in pts:
        dense = p["candidates"].get("dense_torch", {})
        ours, ortd = p["candidates"].get("compress_ort", {}), p["candidates"].get("ort_dense", {})
        vs_ort = (f"{ortd['median_ms'] / ours['median_ms']:.2f}" if ours.get("ok") and ortd.get("ok") else "-")
        lines.append(f"| {p['shape']} | {p['tokens']} | {p['sparsity']} | {_f(dense.get('median_ms'), 3)} | "
                     + " | ".join(sp(p, n) for n in names) + f" | {vs_ort} |")
    bars = d.get("bars")
    if bars:
        lines += ["", f"Bars for `compress_ort` (block 32, 2 threads): break-even with dense at or below 50% "
                  f"from 128 tokens: {'met' if bars['break_even_50']['met'] else 'not met'} "
                  f"({bars['break_even_50']['detail']}); at 90%: at least 3x dense "
                  f"({'met' if bars['x3_dense_90']['met'] else 'not met'}, min {bars['x3_dense_90']['min']:.2f}x) and "
                  f"2x torch's BSR ({'met' if bars['x2_torch_bsr_90']['met'] else 'not met'}, min "
                  f"{bars['x2_torch_bsr_90']['min']:.2f}x)."]
    return lines


def resnet50_block_section(d: dict) -> list[str]:
    lines = ["### ResNet-50 on this CPU: structured vs block-sparse 1x1 convs, exported and timed (`resnet50_block.py`)",
             "", f"Batch 1, {d['threads']} threads, lockstep with the dense artifact; random weights (latency only); "
             f"*predicted*: `compress predict` with the shipped profile for this CPU. {_machine(d)}.", "",
             "| candidate | artifact | latency ms | vs dense | predicted ms | prediction error |", "|---|---|---|---|---|---|"]
    for k, v in d["candidates"].items():
        err = v.get("expected_error")
        lines.append(f"| {k} | {v['file']} | {v['median_ms']:.2f} | {v['speedup_vs_dense']:.2f}x | "
                     f"{_f(v.get('expected_ms'), 2)} | {'-' if err is None else f'{err:+.0%}'} |")
    return lines


def minilm_block_section(d: dict) -> list[str]:
    lines = ["### all-MiniLM-L6-v2 on this CPU: structured vs block-sparse, exported and timed (`minilm_block.py`)", "",
             f"Each candidate distilled the same way, exported with `compress export --target cpu`, timed at batch 1 x "
             f"{d['tokens']} tokens, {d['threads']} threads, in lockstep with the dense artifact. {_machine(d)}.", "",
             "| candidate | artifact | cosine to dense (held-out) | without distillation (one-shot) | latency ms | vs dense |",
             "|---|---|---|---|---|---|"]
    for k, v in d["candidates"].items():
        sel = f" ({v['selection']})" if v.get("selection") else ""
        lines.append(f"| {k}{sel} | {v['file']} | {v['cosine_after']:.3f} | {v['cosine_before']:.3f} | "
                     f"{v['median_ms']:.2f} | {v['speedup_vs_dense']:.2f}x |")
    b = d["bar"]
    lines += ["", f"Bar (a block-sparse MiniLM with cosine >= 0.90 runs faster than dense): "
                  f"{'met by ' + ', '.join(b['met_by']) if b['met'] else 'not met'}."]
    return lines


def format_compare_section(runs: list[dict]) -> list[str]:
    """`format_compare*.json`: the planner's candidates at one budget each, built, recovered, exported, timed."""
    d0 = runs[0]
    lines = ["### The planner's structured / block-sparse / mixed candidates, built and timed on this CPU (`format_compare.py`)",
             "", "`compress plan MODEL --formats structured,block --latency-budget F` with the shipped profile for this "
             "CPU calibrated here (`compress profile --extend` and `--sparse`); each candidate applied, recovered the same "
             "way (MiniLM: distilled; ResNet-50: random weights, latency only), exported with `compress export --target "
             f"cpu` and timed at batch 1 in lockstep with the dense artifact, {d0['threads']} threads. *fraction error*: "
             "predicted / measured fraction of dense - 1 (what the planner optimises); *abs. error*: predicted / "
             "measured ms - 1. *predicted ms*: the planner's for the candidate's plan; after a recalibration "
             "(`format_compare.py --time-only --repredict`), re-planned on the profile as it is now where the plan comes "
             "out the same, else the built candidate priced by `compress predict DIR --profile FILE` (what its artifact "
             f"runs). {_machine(d0)}.", "",
             "| model | budget | sparse layers | candidate | artifact | sparse density | channels kept | quality | latency ms | "
             "vs dense | predicted ms | abs. error | fraction error |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = ("dense", "structured", "unstructured", "mixed")
    for d in runs:
        for r in d["models"].values():
            scope = r.get("sparse_layers") or "every eligible layer"
            scope = "all eligible" if scope.startswith("every ") else "`{}`".format(scope.replace("|", "\\|"))
            for k, v in sorted(r["candidates"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9):
                if "median_ms" not in v:
                    continue
                q = f"cosine {v['cosine_after']:.3f}" if v.get("cosine_after") is not None else "-"
                dens = v.get("sparse_density") if k != "dense" and v.get("sparse_layers_planned") else None
                lines.append(f"| {r['model']} | {r['budget']} | {scope} | {k} | {v['file']} | {'-' if dens is None else dens} | "
                             f"{_f(v.get('channels_kept', 1.0), 2) if k != 'dense' else '1.00'} | {q} | "
                             f"{v['median_ms']:.2f} | {v['speedup_vs_dense']:.2f}x | {v['predicted_ms']:.2f} | "
                             f"{v['predicted_error']:+.0%} | {v['fraction_error']:+.0%} |")
    for d in runs:
        for r in d["models"].values():
            vd = r.get("verdict") or {}
            if vd:
                within = [k for k, ok in vd["fraction_within_10pct"].items() if ok]
                lines.append("")
                scope = r.get("sparse_layers") or "every eligible layer"
                lines.append(f"{r['model']} at {r['budget']} of dense"
                             + ("" if scope.startswith("every ") else " (sparse layers: the MLP, `--sparse-layers`)"
                                if "intermediate" in scope else f" (sparse layers `{scope}`)")
                             + f": fastest **{vd['fastest']}**"
                             + (f", best quality **{vd['best_quality']}**" if vd.get("best_quality") else "")
                             + f"; predicted fraction of dense within 10% for {', '.join(within) or 'none'}"
                             + f" of {len(vd['fraction_within_10pct'])}.")
    return lines


def _pct(x) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _met(ok) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def predict_unprofiled_section(d: dict, title: str = "") -> list[str]:
    """Issue #20: the shipped CPU profile on architectures it was not calibrated on (bench/predict_unprofiled.py)."""
    p, s, prof = d["protocol"], d["summary"], d["profiles"]
    recal = "recalibrated" in prof
    ref = any(e.get("reference") for e in d["entries"])
    head = ("### Latency prediction on architectures the profile was not calibrated on" + (f": {title}" if title else "")
            + " (`predict_unprofiled.py`)")
    if not any("fraction_error" in e for e in d["entries"]):
        return [head, "", f"Not timed yet (`{d['command']}`)."]
    out = [head, "",
           f"Each architecture dense and pruned as `compress prune --ratio {p['ratio']}` does it (seeded random "
           f"weights, 3×224×224, batch {p['batch']}), predicted with the shipped profile `{prof['shipped']['path']}` "
           f"(calibrated on {', '.join(m.split(':')[-1] for m in prof['shipped']['calibrated_on'])}; none of those "
           "is in the table) and timed in lockstep. *fraction*: pruned over dense latency, the figure a "
           "`--latency-budget` plan relies on; *error*: predicted / measured - 1. *fit*: which network calibration "
           "the predictor applied: that of a calibrated model with the same layer structure (kernels, strides, "
           "resolutions; channel counts and groups aside), else a factor per class of layer (conv, depthwise, memory, "
           "other) fitted over the calibrated models (`per-class`; profiles without the per-class split: the median "
           "of their factors)."
           + (f" *recal.*: absolute errors against the profile recalibrated on this host (`{prof['recalibrated']['path']}`)."
              if recal else "")
           + (f" *host*: measured / predicted ms of {s['reference']['model']} (a calibrated model) timed in the same "
              "lockstep: the host's speed against the profile's machine at that moment; *host-corr.*: the absolute "
              "errors with the prediction scaled by it." if ref else ""), "",
           "| model | MAC red. | pred. dense ms | meas. dense ms | pred. fraction | meas. fraction | fraction error "
           "| abs. error dense | abs. error pruned |" + (" recal. dense | recal. pruned |" if recal else "")
           + (" host | host-corr. dense | host-corr. pruned |" if ref else "") + " fit |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if recal else "")
           + ("---:|---:|---:|" if ref else "") + "---|"]
    for e in d["entries"]:
        if "fraction_error" not in e:
            continue
        r = e.get("recalibrated") or {}
        ra = r.get("absolute_error", {})
        out.append(f"| {e['model']} | {e['mac_reduction']:.2f} | {e['predicted_ms']['dense']:.1f} | "
                   f"{e['measured_ms']['dense']:.1f} | {e['predicted_fraction']:.3f} | {e['measured_fraction']:.3f} | "
                   f"{_pct(e['fraction_error'])} | {_pct(e['absolute_error']['dense'])} | "
                   f"{_pct(e['absolute_error']['pruned'])} |"
                   + (f" {_pct(ra.get('dense'))} | {_pct(ra.get('pruned'))} |" if recal else "")
                   + (f" x{e['reference']['host_speed']:.2f} | {_pct(e['reference']['absolute_error_host_corrected']['dense'])} | "
                      f"{_pct(e['reference']['absolute_error_host_corrected']['pruned'])} |" if ref else "")
                   + f" {e.get('fit_model') or ('per-class' if 'per-class' in str(e.get('fit')) else 'median')} |")
    out.append("")
    for which in ("shipped", "recalibrated"):
        x = s.get(which)
        if not x or not x["fraction"]["n"]:
            continue
        b, m = s["bars"], x["met"]
        out.append(f"{'Shipped' if which == 'shipped' else 'Recalibrated'} profile, {x['fraction']['n']} architectures: "
                   f"fraction error median {x['fraction']['median_abs_error']:.1%} (bar {b['fraction_median_abs_error']:.0%}: "
                   f"{_met(m['fraction_median'])}), worst {x['fraction']['max_abs_error']:.1%} (bar "
                   f"{b['fraction_max_abs_error']:.0%}: {_met(m['fraction_worst'])}); absolute error median "
                   f"{x['absolute']['median_abs_error']:.1%} over dense and pruned (bar {b['absolute_median_abs_error']:.0%}: "
                   f"{_met(m['absolute_median'])}).")
        out.append("")
    r = s.get("reference")
    if r and r.get("host_speed"):
        out.append(f"Host speed ({r['model']}, calibrated, timed beside each architecture): measured / predicted "
                   f"x{r['host_speed']['median']:.2f} (median; x{r['host_speed']['min']:.2f}–x{r['host_speed']['max']:.2f}); "
                   f"absolute errors corrected by it: median {r['absolute_host_corrected']['median_abs_error']:.1%}, "
                   f"worst {r['absolute_host_corrected']['max_abs_error']:.1%}, mean signed "
                   f"{r['absolute_host_corrected']['mean_signed_error']:+.1%}."
                   + (f" Corrected, the errors grow (uncorrected median {s['shipped']['absolute']['median_abs_error']:.1%}): "
                      f"the host's slowdown against the profile's machine is not uniform across kernels, what slowed "
                      f"{r['model']} did not slow these architectures alike, and their absolute errors on this host "
                      "say little either way; their fractions of dense, timed in lockstep, are unaffected."
                      if r["absolute_host_corrected"]["median_abs_error"] > s["shipped"]["absolute"]["median_abs_error"]
                      else ""))
        out.append("")
    hs = s.get("host_speed_dense_measured_over_predicted")
    if hs and not r:
        out.append(f"Host speed check: measured / predicted dense latency {hs['median']:.2f} (median; "
                   f"{hs['min']:.2f}–{hs['max']:.2f}): above 1, this host runs slower than the machine the profile "
                   "was measured on.")
        out.append("")
    if d.get("skipped") or d.get("failures"):
        out.append("; ".join(d.get("skipped", []) + [f"{f['model']}: failed ({f['stage']}): {f['error']}"
                                                     for f in d.get("failures", [])]) + ".")
        out.append("")
    out.append(f"Produced by `{d['command']}` ({p['rounds']} rounds x {p['passes']} passes; "
               f"{d['wall_seconds'] / 60:.0f} min) on {_machine(d)}.")
    return out


def int8_pruned_section(d: dict) -> list[str]:
    """Issue #22: pruning on int8 (efficiency) and the int8 profile's predictions (bench/int8_pruned.py)."""
    p, s = d["protocol"], d["summary"]
    title = ("### Pruning on int8 (`int8_pruned.py`)" if s.get("efficiency") or not s.get("prediction")
             else "### int8 latency predicted for pruned variants (`int8_pruned.py --part prediction`"
             + (f", batch {p['batch']})" if p["batch"] != 8 else ")"))
    out = [title, "",
           f"Dense and pruned models quantized as `compress export --target cpu --dtype int8` does it (random:64 "
           f"calibration, seeded random weights, 3×224×224), timed in lockstep at batch {p['batch']}; pruned with "
           f"round_to = the int8 profile's conv step ({d['profile']['steps']['conv']['block']}). Predictions: "
           f"`{d['profile']['path']}`."]
    eff = s.get("efficiency")
    if eff:
        fp32 = any("fp32" in v for v in eff["per_model"].values())
        out += ["", "Efficiency = (dense ms / pruned ms) / (dense MACs / pruned MACs) at ratio 0.3 (1.0: latency "
                "falls as MACs do).", "",
                "| model | MAC red. | dense int8 ms | u0.3 int8 ms | speedup int8 | efficiency int8 |"
                + (" efficiency fp32 |" if fp32 else ""),
                "|---|---:|---:|---:|---:|---:|" + ("---:|" if fp32 else "")]
        dense = {e["model"]: e for e in d["entries"] if e["variant"] == "dense" and "measured" in e}
        for e in d["entries"]:
            if e["variant"] != "u0.3" or e["model"] not in eff["per_model"]:
                continue
            v = e["vs_dense"]
            dm = dense.get(e["model"], {}).get("measured_int8_ms")
            out.append(f"| {e['model']} | {v['int8']['mac_reduction']:.2f} | {_f(dm, 1)} | {e['measured_int8_ms']:.1f} | "
                       f"{v['int8']['speedup']:.2f} | {v['int8']['efficiency']:.2f} |"
                       + (f" {_f(v.get('fp32', {}).get('efficiency'))} |" if fp32 else ""))
        out += ["", f"Bar (int8 efficiency >= {s['bars']['efficiency_min']} on "
                f"{', '.join(s['bars']['efficiency_models'])}): "
                + ("not evaluated (not all of them measured)" if eff["met"] is None else _met(eff["met"])) + "."]
        ob = RESULTS / "op_breakdown" / "mobilenet_v2_int8_r0.3_b8.json"
        if ob.is_file():
            out += [""] + int8_ceiling_lines(json.loads(ob.read_text()))
    pr = s.get("prediction")
    if pr:
        out += ["", "Predicted vs measured int8 latency of pruned variants (none used to fit the profile):", "",
                "| model | variant | MACs (M) | predicted ms | measured ms | error | fraction error |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for e in d["entries"]:
            if "prediction_error" in e and e["model"] in p["prediction_models"] and (
                    e["variant"] in p["prediction_variants"] or e["variant"] == "dense"):
                out.append(f"| {e['model']} | {e['variant']} | {e['macs'] / 1e6:.0f} | {e['predicted_int8_ms']:.2f} | "
                           f"{e['measured_int8_ms']:.2f} | {_pct(e['prediction_error'])} | "
                           f"{_pct(e.get('fraction_error'))} |")
        v, b, m = pr["pruned_variants"], s["bars"], pr["met"]
        out += ["", f"{v['n']} pruned variants: median |error| {v['median_abs_error']:.1%} (bar "
                f"{b['prediction_median_abs_error']:.0%}: {_met(m['median'])}), worst {v['max_abs_error']:.1%} (bar "
                f"{b['prediction_max_abs_error']:.0%}: {_met(m['worst'])}); at least {b['prediction_min_variants']} "
                f"variants: {_met(m['variants'])}."]
    if not eff and not pr:
        out += ["", "Not timed yet."]
    if d.get("failures"):
        out += ["", "Failed: " + "; ".join(d["failures"]) + "."]
    out += ["", f"Produced by `{d['command']}` ({p['rounds']} rounds x {p['passes']} passes; "
            f"{d['wall_seconds'] / 60:.0f} min) on {_machine(d)}."]
    return out


def int8_ceiling_lines(d: dict) -> list[str]:
    """What uniform pruning's efficiency can reach on int8 given the op mix: from a node-profiled dense / pruned pair
    (bench/op_breakdown.py --dtype int8 --out)."""
    red = d["macs"]["dense"] / d["macs"][d["variant"]]
    dm, pm = d["run_ms"]["dense"], d["run_ms"]["pruned"]
    excess = sum(r["excess_ms"] for r in d["layers"])
    mac = [r for r in d["kinds"] if r.get("dense_macs")]
    other = [r for r in d["kinds"] if not r.get("dense_macs")]
    k = 1 - d["ratio"]
    ideal = sum(r["dense_ms"] * r["pruned_macs"] / r["dense_macs"] for r in mac) + k * sum(r["dense_ms"] for r in other)
    total = sum(r["dense_ms"] for r in d["kinds"])
    kinds = ", ".join(f"{r['kind']} {r['efficiency']:.2f}" for r in mac if "efficiency" in r)
    dw = sum(r["dense_ms"] for r in mac if r["kind"] == "conv depthwise") / total
    stem = next((r for r in mac if r["kind"] == "conv stem" and "efficiency" in r), None)
    return [f"What the op mix allows ({d['model']} int8, ratio {d['ratio']}, batch {d['batch']}, node profiler, "
            f"`bench/op_breakdown.py {d['model']} --ratio {d['ratio']} --round-to 16 --dtype int8`, {d['date'][:10]}): "
            f"measured efficiency {dm / pm / red:.2f} (per kind of conv: {kinds}); {dm / (pm - excess) / red:.2f} if "
            f"every conv ran at its dense node's throughput and the ops without MACs (quantize, transposes, QLinearAdd, "
            f"pooling: {sum(r['dense_ms'] for r in other) / total:.0%} of dense kernel time) took what they took; "
            f"{total / ideal / red:.2f} if those also shrank with the channels (x{k:g}). Depthwise convs, whose MACs "
            f"fall only linearly with the channels, are {dw:.0%} of dense int8 kernel time"
            + (f"; the 3-channel stem conv keeps {stem['efficiency']:.2f} of its MAC reduction" if stem else "") + "."]


def int8_joint_section(d: dict) -> list[str]:
    """Issue #22's joint bar: int8 plan + int8 export vs fp32-only pruning vs Torch-Pruning + int8 (bench/int8_joint.py)."""
    arms = d.get("arms", {})
    names = {"int8_plan": "`plan --dtype int8` + int8 export", "fp32_plan": "`plan` (fp32), fp32 ONNX",
             "tp16_int8": "Torch-Pruning round_to=16 + int8 export"}
    out = ["### Planning for int8 at a fixed latency (`int8_joint.py`)", "",
           f"{d['model']} at {d['budget']} of the dense fp32 model's measured onnxruntime latency (batch {d['batch']}); "
           f"each arm fine-tuned the same way ({d['epochs']:g} epochs on {d['ft_samples']:,} training images, distilled "
           f"from dense), once per seed ({', '.join(map(str, d['seeds']))}), and evaluated as it ships on the "
           f"Fashion-MNIST test split in onnxruntime. Dense: fp32 accuracy {d['dense']['accuracy_torch']:.4f}, int8 runs "
           f"at {d['dense']['int8']['fraction']:.2f} of fp32.", "",
           "| arm | measured fraction of dense fp32 | MACs (M) | accuracy (mean) | per seed |", "|---|---:|---:|---:|---|"]
    for k, e in sorted(arms.items(), key=lambda kv: list(names).index(kv[0]) if kv[0] in names else 9):
        out.append(f"| {names.get(k, k)} | {e['fraction_of_dense_fp32']:.3f} | {e['macs'] / 1e6:.1f} | "
                   f"{e['accuracy']:.4f} | {', '.join(f'{x:.4f}' for x in e['accuracy_per_seed'])} |")
    s = d.get("summary")
    if s:
        out += ["", f"int8 plan minus fp32 plan: {s['int8_plan_minus_fp32_plan_points']:+.2f} points; minus Torch-Pruning "
                f"+ int8: {s['int8_plan_minus_tp16_int8_points']:+.2f} points; the other arms within "
                f"{d['tolerance']:.0%} of the int8 plan's measured latency: {_met(s['same_latency'])}. Bar: {_met(s['met'])}."]
    out += ["", f"Produced by `{d['command']}` ({d['wall_seconds'] / 60:.0f} min) on {_machine(d)}."]
    return out


def section(results: Path = RESULTS) -> str:
    parts = ["", "Generated by `python bench/make_tables.py` from `bench/results/cpu/*.json`; "
             "see `bench/README.md`. Do not edit by hand.", ""]
    for fname, fn in (("prune_latency.json", prune_latency_section), ("channel_step.json", channel_step_section),
                      ("planner_budget.json", planner_budget_section),
                      ("depthwise_linear.json", depthwise_linear_section), ("export_zoo.json", export_zoo_section),
                      ("bsr_cpu_candidates.json", bsr_cpu_section), ("minilm_block.json", minilm_block_section),
                      ("resnet50_block.json", resnet50_block_section),
                      ("predict_unprofiled.json", predict_unprofiled_section),
                      ("predict_unprofiled_transformers_b1.json",
                       lambda d: predict_unprofiled_section(d, "vision transformers and hybrids, batch 1")),
                      ("int8_pruned.json", int8_pruned_section),
                      ("int8_pruned_prediction.json", int8_pruned_section),
                      ("int8_pruned_prediction_b1.json", int8_pruned_section), ("int8_joint.json", int8_joint_section)):
        f = results / fname
        if f.is_file():
            extra = results / "planner_budget_measured.json"
            if fname == "planner_budget.json" and extra.is_file():
                parts += planner_budget_section(json.loads(f.read_text()), json.loads(extra.read_text())) + [""]
                continue
            parts += fn(json.loads(f.read_text())) + [""]
            ceil = results / "efficiency_ceiling.json"
            if fname == "prune_latency.json" and ceil.is_file():
                parts += ceiling_rows(json.loads(ceil.read_text()), json.loads(f.read_text())) + [""]
            pvu = results / "plan_vs_uniform.json"
            if fname == "prune_latency.json" and pvu.is_file():
                parts += plan_vs_uniform_rows(json.loads(pvu.read_text())) + [""]
    runs = [json.loads(f.read_text()) for f in sorted(results.glob("format_compare*.json"))]
    runs = [r for r in runs if any("median_ms" in v for m in r.get("models", {}).values() for v in m["candidates"].values())]
    if runs:
        parts += format_compare_section(runs) + [""]
    parts += results_summary_section(results) + [""]
    return "\n".join(parts)


def rewrite(readme: Path, body: str) -> None:
    """Read-modify-write of the text between the markers only; atomic replace."""
    text = readme.read_text() if readme.exists() else ""
    if START in text and END in text and text.index(START) < text.index(END):
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        new = head + START + "\n" + body.strip("\n") + "\n" + END + tail
    else:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        new = text + sep + "## Benchmarks\n\n" + START + "\n" + body.strip("\n") + "\n" + END + "\n"
    if new != text:
        if str(ROOT) not in sys.path:                # compress from this checkout, installed or not
            sys.path.insert(0, str(ROOT))
        from compress.io import write_text_atomic

        write_text_atomic(readme, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--results", default=str(RESULTS), help="folder with prune_latency.json / channel_step.json")
    ap.add_argument("--print", action="store_true", help="print the section, do not touch the README")
    a = ap.parse_args()
    body = section(Path(a.results))
    if a.print:
        print(body)
    else:
        rewrite(Path(a.readme), body)
        print(f"rewrote the benchmark section of {a.readme}")


if __name__ == "__main__":
    main()
