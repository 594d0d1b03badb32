"""Does the shipped CPU profile predict architectures it was never calibrated on? (issue #20)

For each torchvision architecture that the profile's `calibration` list does not name (one it names is
refused, the reason logged and recorded, so the benchmark stays honest when the profile changes): the
dense model and the model pruned as `compress prune --ratio 0.3` does it (compress.prune.apply.prune,
default criterion l1, uniform ratio, round_to = the cpu channel step), seeded random weights, input
3x224x224. Both are predicted with the shipped profile for this machine at the batch (the file `compress
predict MODEL --profile cpu-x86-2core-ort --batch 8` picks: compress.hardware_profiles.load_profile +
predict_ms), exported to ONNX (compress.export.onnx.export_onnx, dynamic batch) and timed at that batch in
lockstep (_common.alternate_workers: one compress.measure worker per file, blocks in turn, `rounds` rounds
x `passes` passes of fresh workers).

    predicted fraction = predicted pruned / predicted dense      (what a --latency-budget plan relies on)
    measured fraction  = 1 / (median over rounds of dense block / pruned block of the same round)
    fraction error     = predicted fraction / measured fraction - 1
    absolute error     = predicted ms / measured ms (median over blocks) - 1, dense and pruned

Bars (issue #20): fraction error median <= 10% and worst <= 25%, absolute error median <= 15%, over at
least 8 architectures. The host may run slower or faster than the machine the profile was measured on;
`--recalibrated-profile FILE` (a copy of the profile recalibrated on this host: `compress profile --extend
COPY --model M --recalibrate` for the profile's calibrated models) adds the errors against it as a second
column. The JSON names the profile each number comes from, and records the host speed check (dense
measured / predicted per architecture).

    python bench/predict_unprofiled.py                                    # full run, quiet machine (~20 min)

with the second column (the recalibrated copy made first; --model: the profile's `calibration` models):

    cp hardware_profiles/cpu-x86-2core-ort-amd-avx512-b8.json bench/tmp/recal-b8.json
    python -m compress profile --extend bench/tmp/recal-b8.json --recalibrate --model torchvision:resnet18 \
        torchvision:resnet50 torchvision:mobilenet_v2 torchvision:efficientnet_b0 compress:fmnist-cnn \
        compress:efficientnet-lite0-fmnist torchvision:mobilenet_v3_small torchvision:densenet121 \
        torchvision:regnet_x_400mf
    python bench/predict_unprofiled.py --recalibrated-profile bench/tmp/recal-b8.json

smoke tests:

    python bench/predict_unprofiled.py --models resnet18 mobilenet_v3_large --no-time --out /tmp/smoke.json
    nice -n 10 python bench/predict_unprofiled.py --models squeezenet1_1 --rounds 1 --passes 1 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import time

import _common as c

ARCHS = ["resnet34", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v3_large", "efficientnet_b1",
         "regnet_y_400mf", "shufflenet_v2_x1_0", "mnasnet1_0", "googlenet", "squeezenet1_1"]
BARS = {"fraction_median_abs_error": 0.10, "fraction_max_abs_error": 0.25, "absolute_median_abs_error": 0.15,
        "min_architectures": 8}


def calibrated_names(*profiles) -> set[str]:
    """The model names (without the source prefix: torchvision:resnet18 -> resnet18) of the profiles'
    `calibration` lists."""
    return {e["model"].split(":", 1)[-1] for p in profiles if p is not None for e in p.data.get("calibration") or []}


def summary(rows: list[dict], bars: dict = BARS) -> dict:
    """Bars on the rows that were timed (each with `fraction_error` and `absolute_error` {dense, pruned} for the
    shipped profile, and `recalibrated` holding the same for the recalibrated one when given)."""
    timed = [r for r in rows if "fraction_error" in r]
    out = {"architectures_timed": len(timed)}
    for which, get in (("shipped", lambda r: r), ("recalibrated", lambda r: r.get("recalibrated"))):
        rs = [get(r) for r in timed if get(r)]
        if not rs:
            continue
        frac = c.error_stats([r["fraction_error"] for r in rs])
        absolute = c.error_stats([r["absolute_error"][k] for r in rs for k in ("dense", "pruned")])
        s = {"fraction": frac, "absolute": absolute,
             "absolute_dense": c.error_stats([r["absolute_error"]["dense"] for r in rs]),
             "absolute_pruned": c.error_stats([r["absolute_error"]["pruned"] for r in rs]),
             "host_speed_median": round(statistics.median(r["host_speed"] for r in rs), 3)}
        if frac["n"]:
            met = {"fraction_median": frac["median_abs_error"] <= bars["fraction_median_abs_error"],
                   "fraction_worst": frac["max_abs_error"] <= bars["fraction_max_abs_error"],
                   "absolute_median": absolute["median_abs_error"] <= bars["absolute_median_abs_error"],
                   "architectures": len(rs) >= bars["min_architectures"]}
            s["met"] = met | {"all": all(met.values())}
        out[which] = s
    speed = [r["host_speed"] for r in timed if r.get("host_speed")]
    if speed:
        out["host_speed_dense_measured_over_predicted"] = {"median": round(statistics.median(speed), 3),
                                                           "min": round(min(speed), 3), "max": round(max(speed), 3)}
    rs = [r["reference"] for r in timed if r.get("reference")]
    if rs:
        sp = [r["host_speed"] for r in rs]
        out["reference"] = {"model": rs[0]["model"],
                            "host_speed": {"median": round(statistics.median(sp), 3), "min": min(sp), "max": max(sp)},
                            "absolute_host_corrected": c.error_stats([r["absolute_error_host_corrected"][k]
                                                                      for r in rs for k in ("dense", "pruned")])}
    shared = {r["model"]: r["fit_model"] for r in timed if r.get("fit_model")}
    if shared:      # the fingerprint ignores channel counts and groups: e.g. resnext50_32x4d takes resnet50's fit
        out["fit_from_a_calibrated_model"] = shared
    return out | {"bars": bars}


def errors(pred: dict, meas: dict, fraction: float) -> dict:
    """Errors of one profile's predictions {dense, pruned} (ms) against the measured medians and fraction."""
    pf = pred["pruned"] / pred["dense"]
    return {"predicted_ms": pred, "predicted_fraction": round(pf, 4),
            "fraction_error": round(pf / fraction - 1, 4),
            "absolute_error": {k: round(pred[k] / meas[k] - 1, 4) for k in ("dense", "pruned")},
            "host_speed": round(meas["dense"] / pred["dense"], 3)}


def reference_errors(model: str, ref_pred: float, ref_meas: float, pred: dict, meas: dict) -> dict:
    """The reference model timed beside an architecture: host_speed = its measured / predicted ms, and the
    architecture's absolute errors {dense, pruned} with its predictions scaled by that speed."""
    speed = ref_meas / ref_pred
    return {"model": model, "measured_ms": ref_meas, "predicted_ms": ref_pred, "host_speed": round(speed, 3),
            "absolute_error_host_corrected": {k: round(pred[k] * speed / meas[k] - 1, 4) for k in ("dense", "pruned")}}


def reference_file(name: str, prof, tmp) -> dict:
    """The dense ONNX file of a model the profile is calibrated on, and its predicted ms (as `compress predict`)."""
    from compress.hardware_profiles import extract_layers

    m = c.build(name)
    f = tmp / f"reference_{name}.onnx"
    c.export(m, f)
    return {"file": f, "predicted_ms": round(prof.total_ms(extract_layers(m, c.example(1))), 4)}


def build_one(name: str, ratio: float, step: int, profiles: dict, tmp) -> tuple[dict, dict]:
    """Dense and pruned `name`: MACs, predictions with every profile, ONNX files. Returns (row, files)."""
    from compress.hardware_profiles import extract_layers

    row, files = {"model": name}, {}
    dense = c.build(name)
    ref = c.output_shape(dense)
    t0 = time.perf_counter()
    res = c.prune_ours(dense, ratio, step)[0]
    row["prune_seconds"] = round(time.perf_counter() - t0, 2)
    pruned = res.model
    c.check_runs(pruned, ref)
    row |= {"macs": {"dense": c.macs(dense), "pruned": c.macs(pruned)},
            "params": {"dense": sum(p.numel() for p in dense.parameters()),
                       "pruned": sum(p.numel() for p in pruned.parameters())},
            "prune_max_rel_error": res.max_rel_error}
    row["mac_reduction"] = round(row["macs"]["dense"] / row["macs"]["pruned"], 4)
    layers = {k: extract_layers(m, c.example(1)) for k, m in (("dense", dense), ("pruned", pruned))}
    row["layers"] = {k: len(v) for k, v in layers.items()}
    for which, prof in profiles.items():    # as `compress predict`: total_ms of the layers with the profile's fit
        row.setdefault("fit", {})[which] = src = prof.fit(layers["dense"]).source
        if which == "shipped":      # a calibrated model whose layer structure (channels and groups aside) it shares
            row["fit_model"] = src.removeprefix("model ").split(": ")[0] if src.startswith("model ") else None
        row.setdefault("roofline_layers", {})[which] = {k: len(prof.fell_back(v)) for k, v in layers.items()}
        row.setdefault("roofline_ms", {})[which] = {      # the part of the prediction from the roofline fallback
            k: round(sum(prof.layer_ms(x, fit) for x in prof.fell_back(v)), 4)
            for k, v in layers.items() for fit in [prof.fit(v)]}
        row.setdefault("predictions", {})[which] = {k: round(prof.total_ms(v), 4) for k, v in layers.items()}
    for k, m in (("dense", dense), ("pruned", pruned)):
        files[k] = tmp / f"{name}_{k}.onnx"
        c.export(m, files[k])
    del dense, pruned, res
    gc.collect()
    return row, files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=ARCHS, metavar="NAME", help="torchvision architectures")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--profile", default="cpu-x86-2core-ort",
                    help="shipped profile name (the file for this CPU and --batch is picked) or a file")
    ap.add_argument("--recalibrated-profile", metavar="FILE",
                    help="the profile recalibrated on this host: absolute errors against it as a second column")
    c.lockstep_args(ap)
    ap.add_argument("--reference", metavar="NAME",
                    help="a model the profile IS calibrated on (e.g. resnet50), its dense file timed in the same "
                         "lockstep as each architecture's: its measured / predicted ms is the host's speed at that "
                         "moment, and each row also gets its absolute errors corrected by it")
    ap.add_argument("--no-time", action="store_true", help="build, prune, predict and export only (smoke test)")
    ap.add_argument("--out", default=str(c.RESULTS / "predict_unprofiled.json"))
    a = ap.parse_args()

    import torch

    from compress.errors import first_line
    from compress.hardware_profiles import channel_step, load_profile

    torch.set_num_threads(1)
    t_start = time.time()
    load_start = c.loadavg()
    step = channel_step("cpu")
    profiles = {"shipped": load_profile(a.profile, dtype="fp32", batch=a.batch)}
    if a.recalibrated_profile:
        profiles["recalibrated"] = load_profile(a.recalibrated_profile, dtype="fp32", batch=a.batch)
    calibrated = calibrated_names(*profiles.values())
    proto = {"warmup": a.warmup, "runs": a.runs, "max_seconds": a.max_seconds, "min_runs": 3, "rounds": a.rounds}
    if a.reference and a.reference not in calibrated:
        raise SystemExit(f"--reference {a.reference}: not in the profile's calibration list "
                         f"({', '.join(sorted(calibrated))}); pick one of those")
    tmp = c.TMP / f"predict_unprofiled_{int(t_start)}"
    tmp.mkdir(parents=True, exist_ok=True)
    rows, skipped, failures = [], [], []
    ref = None
    try:
        if a.reference and not a.no_time:
            ref = reference_file(a.reference, profiles["shipped"], tmp)
            c.log(f"reference {a.reference}: predicted {ref['predicted_ms']:.2f} ms (calibrated)")
        for name in a.models:
            if name in calibrated:
                why = f"{name}: refused, named in the profile's calibration list (not an unprofiled architecture)"
                c.log(why)
                skipped.append(why)
                continue
            try:
                row, files = build_one(name, a.ratio, step, profiles, tmp)
            except Exception as e:  # a failed architecture is recorded, not fatal
                failures.append({"model": name, "stage": "build/prune/predict/export",
                                 "error": f"{type(e).__name__}: {first_line(e, 300, empty='')}"})
                c.log(f"{name}: FAILED {failures[-1]['error']}")
                gc.collect()
                continue
            p = row["predictions"]["shipped"]
            c.log(f"{name}: MACs x{row['mac_reduction']:.2f} fewer; predicted dense {p['dense']:.2f} ms, pruned "
                  f"{p['pruned']:.2f} ms (fraction {p['pruned'] / p['dense']:.3f}; fit: {row['fit']['shipped']})")
            rows.append(row)
            if a.no_time:
                for f in files.values():
                    f.unlink(missing_ok=True)
                continue
            try:
                c.log(f"{name}: timing 2 files x {a.rounds} rounds x {a.passes} passes at batch {a.batch}")
                jobs = [(k, f, a.batch) for k, f in files.items()] + ([("reference", ref["file"], a.batch)] if ref else [])
                s = c.alternate_workers(jobs, proto, passes=a.passes)
            except Exception as e:
                failures.append({"model": name, "stage": "timing",
                                 "error": f"{type(e).__name__}: {first_line(e, 300, empty='')}"})
                c.log(f"{name}: timing FAILED {failures[-1]['error']}")
                continue
            finally:
                for f in files.values():
                    f.unlink(missing_ok=True)
            lat = {k: c.summarize(v) for k, v in s.items()}
            d = c.derived(lat["dense"], lat["pruned"], row["macs"]["dense"], row["macs"]["pruned"],
                          list(zip(s["dense"], s["pruned"])))
            meas = {k: lat[k]["median_ms"] for k in ("dense", "pruned")}
            frac = 1 / d["speedup"]
            row |= {"measured": lat, "measured_ms": meas, "measured_fraction": round(frac, 4),
                    "measured_fraction_of_medians": round(meas["pruned"] / meas["dense"], 4),
                    "speedup": d["speedup"], "efficiency": d["efficiency"]}
            row |= errors(p, meas, frac)
            if "recalibrated" in profiles:
                row["recalibrated"] = errors(row["predictions"]["recalibrated"], meas, frac)
            if ref:
                row["reference"] = reference_errors(a.reference, ref["predicted_ms"],
                                                    c.summarize(s["reference"])["median_ms"], p, meas)
            c.log(f"{name}: measured dense {meas['dense']:.2f} ms, pruned {meas['pruned']:.2f} ms (fraction "
                  f"{frac:.3f}); fraction error {row['fraction_error']:+.1%}, absolute dense "
                  f"{row['absolute_error']['dense']:+.1%} pruned {row['absolute_error']['pruned']:+.1%}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summ = summary(rows)
    result = {
        **c.result_header("predict_unprofiled", "does the shipped CPU profile predict the latency (and the fraction of "
                          "dense a pruning keeps) of architectures it was not calibrated on?", t_start),
        "profiles": {k: {"path": c.rel(p.path), "name": p.name, "batch": p.batch, "source": p.data["source"],
                         "date": p.data["measurement"].get("date"),
                         "calibrated_on": [e["model"] for e in p.data.get("calibration") or []]}
                     for k, p in profiles.items()},
        "protocol": {
            "architectures": a.models, "batch": a.batch, "ratio": a.ratio,
            "pruning": f"compress.prune.apply.prune (as `compress prune --ratio {a.ratio}`): criterion l1, uniform "
                       f"ratio, round_to = channel_step('cpu') = {step}; seeded random weights (torch.manual_seed(0))",
            "prediction": "compress.hardware_profiles.predict_ms (the path of `compress predict`): the layers' table "
                          "times on the profile, fitted by the profile's network calibration (an architecture it "
                          "was not calibrated on takes the median factor of its calibrated models)",
            "refused": "architectures named in any used profile's calibration list",
            "reference": (f"{a.reference}'s dense file (a calibrated model) timed in the same lockstep as each "
                          "architecture's two files: host_speed = its measured / predicted ms at that moment; "
                          "absolute_error_host_corrected = predicted ms x host_speed / measured ms - 1")
                         if ref else None,
            "onnx": "compress.export.onnx.export_onnx (dynamic batch), fp32, input 3x224x224",
            "runtime": "onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL, default threads",
            "measurement": "per architecture, dense and pruned each in a compress.measure worker (own process, "
                           "session loaded once), one block each in turn, `rounds` rounds x `passes` passes of fresh "
                           "workers (_common.alternate_workers); a block: median of up to `runs` timed runs after "
                           "`warmup` (at least 3 runs once max_seconds is spent). measured_ms: median over blocks; "
                           "measured_fraction: 1 / median over rounds of dense block / pruned block of the same round",
            "errors": "fraction_error = predicted fraction / measured fraction - 1; absolute_error = predicted ms / "
                      "measured ms - 1; host_speed = measured dense ms / predicted dense ms (per profile; at the "
                      "top of a row: the shipped one): above 1 the host runs slower than the profile says",
            "warmup": a.warmup, "runs": a.runs, "max_seconds": a.max_seconds, "rounds": a.rounds,
            "passes": a.passes, "timed": not a.no_time,
            "load_average_start_end": [load_start, c.loadavg()],
        },
        "skipped": skipped,
        "failures": failures,
        "summary": summ,
        "entries": rows,
    }
    c.write_json(c.Path(a.out), result)
    for which in ("shipped", "recalibrated"):
        s = summ.get(which)
        if s and s["fraction"]["n"]:
            c.log(f"{which} profile: fraction error median {s['fraction']['median_abs_error']:.1%}, worst "
                  f"{s['fraction']['max_abs_error']:.1%}; absolute median {s['absolute']['median_abs_error']:.1%} "
                  f"(bars {'met' if s['met']['all'] else 'NOT met'}: {s['met']})")
    c.log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
