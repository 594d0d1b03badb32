"""Does `compress export --dtype int8` keep accuracy, and is it as fast as onnxruntime's own quantization?

Two parts, each its own JSON under bench/results/cpu/:

accuracy (int8_accuracy.json): post-training static quantization as `compress export --target cpu --dtype int8`
does it (export/quantize.py: onnxruntime's quant_pre_process + quantize_static, QDQ, per-channel symmetric int8
weights, 8-bit activations (uint8 on the CPU), calibration method and bias correction (or not) chosen by accuracy
on held-out training data), no fine-tuning:
- compress:fmnist-cnn and compress:efficientnet-lite0-fmnist, calibrated on --calib data:128 (stratified
  training subset): fp32 (model.onnx) vs int8 (model.int8.onnx) top-1 on the full Fashion-MNIST test set
  (10,000 images), both in onnxruntime. Bar: int8 within 0.5 point of fp32.
- hf:minilm (all-MiniLM-L6-v2, exported at 32 tokens), calibrated on 256 training-split tweets (a .npy of token
  ids, --calib FILE.npy; the tweets of compress/accuracy/text.py, as bench/minilm_distill.py): mean cosine of
  the int8 vs fp32 mean-pooled embeddings (attention mask) on 500 held-out tweets (the test split, disjoint by
  content hash, stratified). Bar: >= 0.98.

latency (int8_latency.json): torchvision resnet50 and mobilenet_v2 (seeded random weights) at batch 8: fp32
model.onnx vs our model.int8.onnx vs onnxruntime's own quantize_static output (quant_pre_process, then QDQ,
per-channel, its defaults otherwise) on the same calibration data (random:64), timed by compress.measure's
lockstep workers (one session loaded per file, blocks in turn; 2 passes x --rounds rounds). Needs a quiet machine.

    nice -n 19 python bench/int8.py --part accuracy
    python bench/int8.py --part latency --rounds 6
    python bench/int8.py --part latency --latency-models mobilenet_v2 --rounds 1 --out /tmp/smoke.json   (smoke)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import _common as c

CNNS = ("compress:fmnist-cnn", "compress:efficientnet-lite0-fmnist")
LATENCY_MODELS = ("resnet50", "mobilenet_v2")
TEXT_SEQ = 32
TEXT_CALIB = 256
TEXT_HELD = 500
ACC_BAR_POINTS = 0.5
COSINE_BAR = 0.98


def _export(spec: str, out: Path, calib: str, input_shape=None) -> dict:
    import shutil

    from compress.export.package import export
    from compress.export.targets import ExportConfig

    if out.exists():
        shutil.rmtree(out)
    cfg = ExportConfig(target="cpu", dtype="int8", runtimes=("ort",), calib=calib).validate()
    t0 = time.perf_counter()
    man = export(spec, cfg, str(out), input_shape=input_shape, log=lambda m: c.log(f"  {spec}: {m}"))
    return man | {"_seconds": round(time.perf_counter() - t0, 1)}


def accuracy_cnn(spec: str, work: Path, batch: int) -> dict:
    from compress.accuracy import data
    from compress.accuracy.evaluate import compare
    from compress.export.quantize import predict_onnx

    d = work / spec.split(":")[1]
    man = _export(spec, d, "data:128")
    q = man["int8"]
    ds = data.load("fashion-mnist", "test")
    t0 = time.perf_counter()
    fp32 = predict_onnx(str(d / "model.onnx"), ds, batch, desc="fp32")
    int8 = predict_onnx(str(d / "model.int8.onnx"), ds, batch, desc="int8")
    r = compare(int8, fp32, ds.labels)
    drop = 100 * (r["accuracy_dense"] - r["accuracy"])
    return {"model": spec, "calibration": q["calibration"], "method": q["method"], "quantization": q["quantization"],
            "test_samples": len(ds), "accuracy_fp32": r["accuracy_dense"], "accuracy_int8": r["accuracy"],
            "drop_points": round(drop, 3), "agreement": r["agreement"], "kl_divergence": r["kl_divergence"],
            "bar": f"int8 within {ACC_BAR_POINTS} point of fp32", "passes_bar": abs(drop) <= ACC_BAR_POINTS,
            "export_check": q["parity"], "export_seconds": man["_seconds"],
            "eval_seconds": round(time.perf_counter() - t0, 1)}


def accuracy_text(work: Path) -> dict:
    import numpy as np

    from compress.accuracy import text
    from compress.export.quantize import run_batched, session

    tok = text.tokenizer("hf:minilm")
    cal = text.stratified(text.load(text.TWEETS, "train"), TEXT_CALIB, seed=1)
    held = text.stratified(text.load(text.TWEETS, "test"), TEXT_HELD, seed=0)

    def ids(ts):
        enc = tok(list(ts.texts), padding="max_length", truncation=True, max_length=TEXT_SEQ, return_tensors="np")
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.float64)

    work.mkdir(parents=True, exist_ok=True)
    npy = work / "minilm_calib.npy"
    np.save(npy, ids(cal)[0])
    d = work / "minilm"
    man = _export("hf:minilm", d, str(npy), input_shape=(1, TEXT_SEQ))
    x, mask = ids(held)
    t0 = time.perf_counter()
    s32, s8 = session(str(d / "model.onnx")), session(str(d / "model.int8.onnx"))
    # the attention mask where both graphs take one; else both run unmasked (an all-ones mask), like for like
    both = all(len(s.get_inputs()) > 1 for s in (s32, s8))

    def hidden(s):
        """The first output on the held-out ids (and the attention mask where the graph takes one)."""
        if len(s.get_inputs()) == 1:
            return run_batched(s, x).astype(np.float64)
        feeds = {"input_ids": x, "attention_mask": (mask if both else np.ones_like(mask)).astype(np.int64)}
        return np.concatenate([s.run(None, {i.name: feeds[i.name][j:j + 64] for i in s.get_inputs()})[0]
                               for j in range(0, len(x), 64)]).astype(np.float64)

    h32, h8 = hidden(s32), hidden(s8)

    def pool(h):
        return (h * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)

    e32, e8 = pool(h32), pool(h8)
    cos = (e32 * e8).sum(1) / (np.linalg.norm(e32, axis=1) * np.linalg.norm(e8, axis=1))
    q = man["int8"]
    return {"model": "hf:minilm", "sequence_tokens": TEXT_SEQ,
            "calibration": q["calibration"] | {"spec": c.rel(npy),
                                                "data": f"{len(cal)} training-split tweets (stratified, seed 1), "
                                                        f"token ids padded/truncated to {TEXT_SEQ}"},
            "method": q["method"], "quantization": q["quantization"],
            "held_out": f"{len(held)} tweets of the test split (disjoint by content hash), stratified, seed 0",
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "cosine_p01": float(np.percentile(cos, 1)), "bar": f"mean cosine >= {COSINE_BAR}",
            "passes_bar": float(cos.mean()) >= COSINE_BAR, "export_check": q["parity"],
            "export_seconds": man["_seconds"], "eval_seconds": round(time.perf_counter() - t0, 1)}


def ort_own(src: Path, dst: Path, arrays: list) -> None:
    """onnxruntime's own recipe: quant_pre_process, then quantize_static QDQ per-channel (defaults otherwise)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    from compress.export.quantize import calibration_reader
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    name = onnx.load(str(pre), load_external_data=False).graph.input[0].name

    quantize_static(str(pre), str(dst), calibration_reader(name, arrays), quant_format=QuantFormat.QDQ,
                    per_channel=True)
    pre.unlink()


def latency(work: Path, batch: int, rounds: int, names=LATENCY_MODELS) -> list[dict]:
    from compress import models
    from compress.export.quantize import calibration

    out = []
    proto = {"runs": 10, "warmup": 3, "rounds": rounds, "min_seconds": 0.5}
    for name in names:
        spec = f"torchvision:{name}"
        d = work / name
        man = _export(spec, d, "random:64")
        lm = models.load(spec)
        cal = calibration("random:64", lm, models.example_inputs(lm), None, None)
        own = d / "ort_quantize_static.onnx"
        ort_own(d / "model.onnx", own, cal.arrays)
        jobs = [("fp32", d / "model.onnx", batch), ("int8_compress", d / "model.int8.onnx", batch),
                ("int8_onnxruntime", own, batch)]
        c.log(f"timing {name} batch {batch}: {rounds} rounds x 2 passes")
        meas = c.alternate_workers(jobs, proto, passes=2)
        s = {k: c.summarize(v) for k, v in meas.items()}
        out.append({"model": spec, "batch": batch, "timings": s,
                    "speedup_compress_vs_fp32": round(s["fp32"]["median_ms"] / s["int8_compress"]["median_ms"], 3),
                    "compress_vs_onnxruntime_int8": round(s["int8_compress"]["median_ms"]
                                                          / s["int8_onnxruntime"]["median_ms"], 3),
                    "quantization": man["int8"]["quantization"], "export_check": man["int8"]["parity"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["accuracy", "latency"], required=True)
    ap.add_argument("--models", default="fmnist-cnn,efficientnet-lite0-fmnist,minilm",
                    help="accuracy part: which of fmnist-cnn, efficientnet-lite0-fmnist, minilm")
    ap.add_argument("--latency-models", default=",".join(LATENCY_MODELS), help="latency part: torchvision names")
    ap.add_argument("--batch", type=int, default=8, help="latency: batch; accuracy: evaluation batch 256")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="torch threads while exporting")
    ap.add_argument("--out", help="default bench/results/cpu/int8_<part>.json")
    args = ap.parse_args()
    t_start = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    work = c.TMP / "int8"
    out = Path(args.out) if args.out else c.RESULTS / f"int8_{args.part}.json"
    if args.part == "accuracy":
        want = args.models.split(",")
        res = [accuracy_cnn(s, work, 256) for s in CNNS if s.split(":")[1] in want]
        if "minilm" in want:
            res.append(accuracy_text(work))
        for r in res:
            c.log(f"{r['model']}: " + (f"fp32 {r['accuracy_fp32']:.4f} int8 {r['accuracy_int8']:.4f}"
                                       if "accuracy_int8" in r else f"cosine {r['cosine_mean']:.4f}")
                  + f" ({'passes' if r['passes_bar'] else 'FAILS'} the bar)")
        body = {"results": res}
        question = ("does post-training static int8 quantization (compress export --dtype int8, no fine-tuning) keep "
                    f"top-1 within {ACC_BAR_POINTS} point on Fashion-MNIST and embedding cosine >= {COSINE_BAR}?")
    else:
        body = {"results": latency(work, args.batch, args.rounds, args.latency_models.split(","))}
        question = "int8 (compress export) vs fp32 vs onnxruntime's own quantize_static latency at batch 8"
    c.write_json(out, c.result_header(f"int8_{args.part}", question, t_start) | body)
    c.log(f"wrote {out}")


if __name__ == "__main__":
    main()
