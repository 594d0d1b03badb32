"""Does `--qat` (fine-tuning under int8 fake quantization) recover what post-training int8 loses? (issue #22)

For each starting point, a pruned compress:efficientnet-lite0-fmnist:
    int8-plan B   `compress plan --dtype int8 --latency-budget B` (the shipped int8 profile at --batch), applied
the same fine-tune (distilled from the dense model, --epochs on a stratified --ft-samples subset of the training
split, the same seed) is run twice per seed:
    ptq   plain fp32 fine-tune, then `compress export --target cpu --dtype int8 --calib data:128` (post-training
          quantization, the export's measured choice of calibration method and bias correction)
    qat   the same fine-tune under int8 fake quantization (`compress prune ... --finetune E --qat`:
          compress.accuracy.train.finetune(qat=True)), then the same int8 export
and each is evaluated as it ships: its model.int8.onnx in onnxruntime on the 10,000 Fashion-MNIST test images,
beside its own fp32 model in torch. ptq_loss = fp32 - int8 accuracy of the ptq arm (what post-training
quantization loses); qat_gain = int8 accuracy of qat - int8 accuracy of ptq (what --qat buys). Means over seeds.

    python bench/qat.py                                              # budgets 0.16 0.22, seeds 1-3 (~25 min)
    python bench/qat.py --budgets 0.2 --seeds 1 --epochs 0.2 --ft-samples 1000 --out /tmp/qat_smoke.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import _common as c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet-lite0-fmnist", help="a compress: model trained on Fashion-MNIST")
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.16, 0.22],
                    help="int8 plans at these fractions of the dense int8 latency (predicted, shipped int8 profile)")
    ap.add_argument("--batch", type=int, default=8, help="the int8 profile's batch")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--ft-samples", type=int, default=6000, help="fine-tune on a stratified subset (0: all 60,000)")
    ap.add_argument("--calib", default="data:128", help="the int8 export's --calib")
    ap.add_argument("--out", default=str(c.RESULTS / "qat.json"))
    a = ap.parse_args()

    import torch

    from compress.accuracy.evaluate import accuracy, predict
    from compress.accuracy.train import finetune
    from compress.export import quantize as q
    from compress.export.onnx import export_onnx
    from compress.hardware_profiles import load_profile
    from compress.metrics import count_macs
    from compress.planner.solve import PlanConfig, plan_model
    from compress.prune.apply import apply_plan

    from _training import fmnist_setup

    torch.set_num_threads(2)
    t_start = time.time()
    out = c.result_header("qat", "does fine-tuning under int8 fake quantization (--qat) recover the accuracy that "
                          "post-training int8 quantization of a pruned model loses?", t_start)
    out |= {"model": f"compress:{a.model}", "budgets": a.budgets, "batch": a.batch, "seeds": a.seeds, "epochs": a.epochs,
            "ft_samples": a.ft_samples or 60000, "calib": a.calib, "distill": True,
            "protocol": "per budget: the int8 plan applied once; per seed: the same distilled fine-tune without (ptq) and "
                        "with (qat) int8 fake quantization, each exported as `compress export --target cpu --dtype int8 "
                        f"--calib {a.calib}` does (export/quantize.build_int8 with its measured method choice) and "
                        "evaluated as it ships (model.int8.onnx in onnxruntime, 10,000 test images); fp32 accuracy: "
                        "the fine-tuned model in torch",
            "entries": []}
    work = c.TMP / "qat"
    work.mkdir(parents=True, exist_ok=True)

    fm = fmnist_setup(a.model, a.batch, a.ft_samples, a.calib)
    dense, x1, shape, xb, dataset, test, train, cal = fm.dense, fm.x1, fm.shape, fm.xb, fm.dataset, fm.test, fm.train, fm.cal
    prof = load_profile("cpu-x86-2core-ort", dtype="int8", batch=a.batch)
    out["profile"] = c.rel(prof.path)
    out["dense_accuracy_torch"] = accuracy(predict(dense, test), test.labels)

    def shipped_int8(model, stem: str) -> tuple[float, dict]:
        fp32, i8 = work / f"{stem}.onnx", work / f"{stem}.int8.onnx"
        export_onnx(model, x1, str(fp32))
        info = q.build_int8(str(fp32), str(i8), cal, None, dataset, shape, None, "cpu", False)
        acc = accuracy(q.predict_onnx(str(i8), test, 256, desc=stem), test.labels)
        fp32.unlink(missing_ok=True)
        i8.unlink(missing_ok=True)
        return acc, {"method": info["method"]["method"], "bias_correction": info["method"].get("bias_correction")}

    for budget in a.budgets:
        plan, res, _ = plan_model(copy.deepcopy(dense), xb, prof, PlanConfig(latency_budget=budget), {"model": a.model})
        pruned = apply_plan(copy.deepcopy(dense), x1, plan).model.eval()
        e = {"start": f"int8 plan at {budget}", "budget": budget,
             "predicted_fraction_of_dense_int8": round(res.predicted_ms / res.dense_ms, 4),
             "macs": count_macs(pruned, x1), "dense_macs": count_macs(dense, x1), "seeds": []}
        for seed in a.seeds:
            row = {"seed": seed}
            for arm in ("ptq", "qat"):
                t0 = time.time()
                model = copy.deepcopy(pruned)
                finetune(model, train, a.epochs, teacher=dense, seed=seed, qat=arm == "qat")
                model.eval()
                fp32_acc = accuracy(predict(model, test), test.labels)
                int8_acc, how = shipped_int8(model, f"{budget}_{seed}_{arm}")
                row[arm] = {"fp32_accuracy": fp32_acc, "int8_accuracy": int8_acc, "int8": how,
                            "seconds": round(time.time() - t0, 1)}
                c.log(f"budget {budget} seed {seed} {arm}: fp32 {fp32_acc:.4f}, int8 {int8_acc:.4f} ({how['method']})")
            row["ptq_loss_points"] = round(100 * (row["ptq"]["fp32_accuracy"] - row["ptq"]["int8_accuracy"]), 2)
            row["qat_gain_points"] = round(100 * (row["qat"]["int8_accuracy"] - row["ptq"]["int8_accuracy"]), 2)
            e["seeds"].append(row)
        mean = lambda k, arm=None: round(statistics.mean(r[k] if arm is None else r[arm][k] for r in e["seeds"]), 5)
        e["mean"] = {"ptq_fp32": mean("fp32_accuracy", "ptq"), "ptq_int8": mean("int8_accuracy", "ptq"),
                     "qat_fp32": mean("fp32_accuracy", "qat"), "qat_int8": mean("int8_accuracy", "qat"),
                     "ptq_loss_points": mean("ptq_loss_points"), "qat_gain_points": mean("qat_gain_points"),
                     "qat_better_seeds": sum(r["qat_gain_points"] > 0 for r in e["seeds"])}
        c.log(f"budget {budget}: {e['mean']}")
        out["entries"].append(e)
        out["wall_seconds"] = round(time.time() - t_start, 1)
        c.write_json(c.Path(a.out), out)
    out["wall_seconds"] = round(time.time() - t_start, 1)
    c.write_json(c.Path(a.out), out)
    c.log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
