"""Does pruning still pay on int8, and does the int8 profile predict pruned int8 models? (issue #22)

Every model is built with seeded random weights (input 3x224x224), pruned by compress.prune.apply.prune with
round_to = the channel step the shipped int8 profile asks for (its conv `steps` block, as the planner reads it:
compress.planner.solve.channel_block), exported to ONNX (compress.export.onnx.export_onnx) and quantized the way
`compress export --target cpu --dtype int8` does it (compress.export.quantize: quant_pre_process, then
quantize_static QDQ, per-channel symmetric int8 weights, uint8 activations, MinMax: no labelled data for a
torchvision model) on --calib random:64 (random inputs: fine for latency). The int8 files of one model are
timed at the batch in lockstep (_common.alternate_workers: one compress.measure worker per file, blocks in
turn, `rounds` rounds x `passes` passes of fresh workers). Predictions: the shipped int8 profile
(cpu-x86-2core-ort-int8-*-b8.json, as `compress predict MODEL --profile cpu-x86-2core-ort --dtype int8
--batch 8` picks it).

efficiency (--part efficiency; every zoo CNN, _common.ZOO): dense int8 vs pruned at ratio 0.3 (u0.3) int8;
    efficiency = (dense int8 ms / pruned int8 ms) / (dense MACs / pruned MACs), the speedup the median over
    rounds of dense block / pruned block of the same round. Bar: >= 0.9 on resnet50 and mobilenet_v2.
    --fp32 also times the fp32 files of the same two models beside them (fp32 efficiency for comparison).
prediction (--part prediction): pruned variants of --pred-models (default 5 models x u0.3, u0.5, g0.4 and
    rand1 of bench/predict_accuracy.py = 20 variants, none used to fit the profile); error = predicted int8
    ms / measured - 1. Bar: median |error| <= 10%, worst <= 25%, over at least 20 variants. The dense models
    are timed too (their fraction-of-dense errors are reported; their absolute errors are not in the bar: the
    profile's network calibration was fitted on some of them).

    python bench/int8_pruned.py                                      # both parts, quiet machine (~40 min)
    python bench/int8_pruned.py --part efficiency --fp32
    python bench/int8_pruned.py --part prediction
    python bench/int8_pruned.py --models resnet18 --pred-models resnet18 --variants u0.3 --no-time --out /tmp/s.json
    nice -n 10 python bench/int8_pruned.py --part efficiency --models squeezenet1_1 --rounds 1 --passes 1 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import gc
import shutil
import time

import _common as c
from predict_accuracy import VARIANTS, variants

PRED_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "mobilenet_v3_small"]
PRED_VARIANTS = ["u0.3", "u0.5", "g0.4", "rand1"]
EFF_LABEL = "u0.3"
EFF_BAR_MODELS = ("resnet50", "mobilenet_v2")
CALIB = "random:64"
BARS = {"efficiency_min": 0.9, "efficiency_models": list(EFF_BAR_MODELS), "prediction_median_abs_error": 0.10,
        "prediction_max_abs_error": 0.25, "prediction_min_variants": 20}


class Int8Exporter:
    """fp32 ONNX -> model.int8.onnx as `compress export --target cpu --dtype int8 --calib random:64` makes it,
    the calibration batches drawn once (they depend only on the input shape)."""

    def __init__(self, name: str, inputs: tuple, spec: str = CALIB):
        from compress import models
        from compress.export import quantize as q

        self.q = q
        self.shape = tuple(inputs[0].shape[1:])
        lm = models.LoadedModel(None, f"torchvision:{name}", "torchvision", (1,) + self.shape)
        self.cal = q.calibration(spec, lm, inputs, None, None)

    def __call__(self, fp32_path, int8_path) -> dict:
        info = self.q.build_int8(str(fp32_path), str(int8_path), self.cal, None, None, self.shape, None, "cpu", False)
        return {"quantization": info["quantization"], "method": info["method"]["method"],
                "calibration": info["calibration"]["data"]}


def build_model_files(name: str, labels: list[str], step: int, prof, tmp, fp32: bool) -> tuple[list[dict], dict]:
    """Dense + `labels` variants of `name`: MACs, predicted int8 ms, fp32 and int8 ONNX files. Returns (rows,
    {(label, dtype): path}); a variant that fails is a row with `error`."""
    from compress.errors import first_line
    from compress.hardware_profiles import extract_layers

    rows, files, exporter = [], {}, None
    for want in ["dense"] + labels:     # one generator per variant: a failed pruning costs only that variant
        label, model = want, None
        try:
            label, model, inputs = list(variants(name, step, [] if want == "dense" else [want]))[-1]
        except Exception as e:
            if want == "dense":
                raise
            rows.append({"model": name, "variant": want, "error": f"{type(e).__name__}: {first_line(e, 300, empty='')}"})
            c.log(f"{name} {want}: FAILED {rows[-1]['error']}")
            continue
        row = {"model": name, "variant": label, "round_to": step}
        try:
            if exporter is None:
                exporter = Int8Exporter(name, inputs)
            layers = extract_layers(model, inputs)
            row |= {"macs": c.macs(model), "params": sum(p.numel() for p in model.parameters()),
                    "predicted_int8_ms": round(prof.total_ms(layers), 4), "roofline_layers": len(prof.fell_back(layers)),
                    "fit": prof.fit(layers).source}
            f32 = tmp / f"{name}_{label}.onnx"
            c.export(model, f32)
            t0 = time.perf_counter()
            row["int8"] = exporter(f32, tmp / f"{name}_{label}.int8.onnx")
            row["int8"]["seconds"] = round(time.perf_counter() - t0, 1)
            files[(label, "int8")] = tmp / f"{name}_{label}.int8.onnx"
            if fp32 and label in ("dense", EFF_LABEL):
                files[(label, "fp32")] = f32
            else:
                f32.unlink()
            c.log(f"{name} {label}: MACs {row['macs'] / 1e6:.0f}M, predicted int8 {row['predicted_int8_ms']:.2f} ms "
                  f"({row['roofline_layers']} roofline layers), quantized in {row['int8']['seconds']} s")
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {first_line(e, 300, empty='')}"
            c.log(f"{name} {label}: FAILED {row['error']}")
        rows.append(row)
        del model
        gc.collect()
    return rows, files


def fill_timings(rows: list[dict], samples: dict) -> None:
    """Per row: measured int8 latency (and fp32 when timed), paired speedup / efficiency vs dense, and the
    prediction errors (absolute, and of the fraction of dense)."""
    dense = next((r for r in rows if r["variant"] == "dense" and "error" not in r), None)
    for r in rows:
        for dt in ("int8", "fp32"):
            key = (r["variant"], dt)
            if key not in samples:
                continue
            lat = c.summarize(samples[key])
            r.setdefault("measured", {})[dt] = lat
            if dense is None or r is dense:
                continue
            d = c.derived(c.summarize(samples[("dense", dt)]), lat, dense["macs"], r["macs"],
                          list(zip(samples[("dense", dt)], samples[key])))
            r.setdefault("vs_dense", {})[dt] = d
        if "int8" in r.get("measured", {}):
            r["measured_int8_ms"] = r["measured"]["int8"]["median_ms"]
            r["prediction_error"] = round(r["predicted_int8_ms"] / r["measured_int8_ms"] - 1, 4)
            if dense is not None and r is not dense and "int8" in r.get("vs_dense", {}):
                pf = r["predicted_int8_ms"] / dense["predicted_int8_ms"]
                mf = 1 / r["vs_dense"]["int8"]["speedup"]
                r |= {"predicted_fraction": round(pf, 4), "measured_fraction": round(mf, 4),
                      "fraction_error": round(pf / mf - 1, 4)}


def summary(rows: list[dict], eff_models: list[str], pred_models: list[str], pred_labels: list[str],
            bars: dict = BARS) -> dict:
    """The two bars from the timed rows (those with a `prediction_error`)."""
    out: dict = {"bars": bars}
    eff = {r["model"]: r["vs_dense"] for r in rows
           if r["model"] in eff_models and r["variant"] == EFF_LABEL and "vs_dense" in r}
    if eff:
        e = {m: {dt: v["efficiency"] for dt, v in d.items()} for m, d in eff.items()}
        met = {m: e[m]["int8"] >= bars["efficiency_min"] for m in bars["efficiency_models"] if m in e and "int8" in e[m]}
        out["efficiency"] = {"per_model": e, "bar_models": met,     # None: a bar model was not measured
                             "met": all(met.values()) if len(met) == len(bars["efficiency_models"]) else None}
    timed = [r for r in rows if "prediction_error" in r]
    pv = [r for r in timed if r["model"] in pred_models and r["variant"] in pred_labels]
    if pv:
        s = c.error_stats([r["prediction_error"] for r in pv])
        out["prediction"] = {"pruned_variants": s,
                             "fraction_of_dense": c.error_stats([r["fraction_error"] for r in pv if "fraction_error" in r]),
                             "dense_models": c.error_stats([r["prediction_error"] for r in timed
                                                    if r["model"] in pred_models and r["variant"] == "dense"])}
        met = {"median": s["median_abs_error"] <= bars["prediction_median_abs_error"],
               "worst": s["max_abs_error"] <= bars["prediction_max_abs_error"],
               "variants": s["n"] >= bars["prediction_min_variants"]}
        out["prediction"]["met"] = met | {"all": all(met.values())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["efficiency", "prediction", "all"], default="all")
    ap.add_argument("--models", nargs="+", default=c.ZOO, metavar="NAME", help="efficiency part: torchvision CNNs")
    ap.add_argument("--pred-models", nargs="+", default=PRED_MODELS, metavar="NAME", help="prediction part")
    ap.add_argument("--variants", nargs="+", default=PRED_VARIANTS, choices=[v[0] for v in VARIANTS],
                    help="prediction part: variants of bench/predict_accuracy.py")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--profile", default="cpu-x86-2core-ort", help="shipped profile name (its int8 file) or a file")
    ap.add_argument("--fp32", action="store_true", help="efficiency part: also time the fp32 dense and u0.3 files")
    c.lockstep_args(ap)
    ap.add_argument("--no-time", action="store_true", help="build, prune, predict, quantize only (smoke test)")
    ap.add_argument("--out", default=str(c.RESULTS / "int8_pruned.json"))
    a = ap.parse_args()

    import torch

    from compress.hardware_profiles import load_profile
    from compress.planner.solve import channel_block

    torch.set_num_threads(1)
    t_start = time.time()
    load_start = c.loadavg()
    prof = load_profile(a.profile, dtype="int8", batch=a.batch)
    step = channel_block(prof, "cpu")
    eff_models = a.models if a.part in ("efficiency", "all") else []
    pred_models = a.pred_models if a.part in ("prediction", "all") else []
    proto = {"warmup": a.warmup, "runs": a.runs, "max_seconds": a.max_seconds, "min_runs": 3, "rounds": a.rounds}
    tmp = c.TMP / f"int8_pruned_{int(t_start)}"
    tmp.mkdir(parents=True, exist_ok=True)
    rows, failures = [], []
    try:
        for name in dict.fromkeys(eff_models + pred_models):
            labels = ([EFF_LABEL] if name in eff_models else []) + (a.variants if name in pred_models else [])
            labels = list(dict.fromkeys(labels))
            try:
                mrows, files = build_model_files(name, labels, step, prof, tmp, a.fp32 and name in eff_models)
            except Exception as e:      # the dense model itself: build / trace
                from compress.errors import first_line
                failures.append(f"{name}: {type(e).__name__}: {first_line(e, 300, empty='')}")
                c.log(f"{name}: FAILED {failures[-1]}")
                continue
            failures += [f"{r['model']} {r['variant']}: {r['error']}" for r in mrows if "error" in r]
            rows += mrows
            if a.no_time or not files:
                continue
            jobs = [(key, path, a.batch) for key, path in files.items()]
            c.log(f"{name}: timing {len(jobs)} files x {a.rounds} rounds x {a.passes} passes at batch {a.batch}")
            try:
                samples = c.alternate_workers(jobs, proto, passes=a.passes)
            except Exception as e:
                from compress.errors import first_line
                failures.append(f"{name} timing: {type(e).__name__}: {first_line(e, 300, empty='')}")
                c.log(f"{name}: timing FAILED {failures[-1]}")
                continue
            finally:
                for p in files.values():
                    p.unlink(missing_ok=True)
            fill_timings(mrows, samples)
            c.log(f"{name}: " + "; ".join(
                f"{r['variant']} int8 {r['measured_int8_ms']:.2f} ms (predicted {r['predicted_int8_ms']:.2f}, "
                f"{r['prediction_error']:+.1%})" + (f", eff {r['vs_dense']['int8']['efficiency']:.2f}" if "vs_dense" in r else "")
                for r in mrows if "measured_int8_ms" in r))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summ = summary(rows, eff_models, pred_models, a.variants)
    result = {
        **c.result_header("int8_pruned", "does channel pruning at ratio 0.3 keep its efficiency on int8 "
                          "(onnxruntime CPU), and does the int8 profile predict pruned int8 latency?", t_start),
        "profile": {"path": c.rel(prof.path), "name": prof.name, "batch": prof.batch, "dtype": prof.dtype,
                    "date": prof.data["measurement"].get("date"), "steps": prof.data.get("steps"),
                    "calibrated_on": [e["model"] for e in prof.data.get("calibration") or []]},
        "protocol": {
            "part": a.part, "efficiency_models": eff_models, "prediction_models": pred_models,
            "prediction_variants": {v[0]: f"{v[1]} {v[2]}" for v in VARIANTS if v[0] in a.variants},
            "batch": a.batch,
            "pruning": f"compress.prune.apply.prune (l1; uniform / --global) or random per-group ratios "
                       f"(bench/predict_accuracy.py prune_random), round_to = the int8 profile's conv step {step}; "
                       "seeded random weights",
            "int8": f"compress.export.quantize.build_int8 on compress.export.onnx.export_onnx's fp32 file, --calib "
                    f"{CALIB} (as `compress export --target cpu --dtype int8 --calib {CALIB}`; no parity check)",
            "prediction": "DeviceProfile.total_ms of the model's layers on the shipped int8 profile (the path of "
                          "`compress predict --dtype int8`)",
            "runtime": "onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL, default threads",
            "measurement": "per model, every file (int8 dense and variants; fp32 dense and u0.3 with --fp32) in a "
                           "compress.measure worker (own process, session loaded once), one block each in turn, "
                           "`rounds` rounds x `passes` passes of fresh workers (_common.alternate_workers); a block: "
                           "median of up to `runs` timed runs after `warmup` (at least 3 once max_seconds is spent). "
                           "Latency: median over blocks; speedup: median over rounds of dense block / variant block",
            "efficiency": "(dense ms / pruned ms) / (dense MACs / pruned MACs), MACs at batch 1 "
                          "(compress.metrics.count_macs)",
            "errors": "prediction_error = predicted int8 ms / measured - 1; fraction_error = (predicted / predicted dense) / "
                      "(1 / speedup) - 1",
            "warmup": a.warmup, "runs": a.runs, "max_seconds": a.max_seconds, "rounds": a.rounds,
            "passes": a.passes, "timed": not a.no_time, "load_average_start_end": [load_start, c.loadavg()],
        },
        "failures": failures,
        "summary": summ,
        "entries": rows,
    }
    c.write_json(c.Path(a.out), result)
    if "efficiency" in summ:
        met = summ["efficiency"]["met"]
        c.log(f"efficiency int8: {summ['efficiency']['per_model']} (bar "
              f"{'not evaluated: a bar model missing' if met is None else 'met' if met else 'NOT met'})")
    if "prediction" in summ:
        s = summ["prediction"]["pruned_variants"]
        c.log(f"prediction: {s['n']} pruned variants, median |error| {s['median_abs_error']:.1%}, worst "
              f"{s['max_abs_error']:.1%} (bar {'met' if summ['prediction']['met']['all'] else 'NOT met'})")
    c.log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
