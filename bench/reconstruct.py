"""Does `compress prune --reconstruct` recover structured pruning without fine-tuning?

Four cases, each pruned exactly as `compress prune MODEL --ratio 0.3` does (l1, uniform ratio, the cpu
channel step 16), then refit by least squares + BatchNorm re-estimation (compress/prune/reconstruct.py):
- compress:fmnist-cnn at ratio 0.3, calibration data:1024 (stratified training images): top-1 on the
  full Fashion-MNIST test set without and with --reconstruct (bar: within 3 points of dense);
- compress:efficientnet-lite0-fmnist at ratio 0.3, the same (bar: within 5 points);
- hf:minilm with 30% of attention heads and MLP units removed: cosine of the mean-pooled embeddings to
  the dense model's on held-out tweets (as bench/minilm_distill.py measures it), calibration 1,024
  windows of 64 tokens of training-split tweets packed end to end (no padding: the model takes token ids
  only); bar >= 0.90 with reconstruction alone. Case `minilm`: channels chosen by l1 (the default);
  case `minilm-thinet`: by `--criterion thinet` (on the first 128 calibration windows), then also
  distilled as minilm_distill.py does (bar: above the distilled-only number recorded in
  results/cpu/minilm_distill.json);
- torchvision:resnet50 (seeded random weights, 224 px) at ratio 0.3 with 512 calibration inputs
  (random:512): wall time and peak memory of the reconstruction step, in a fresh process (bar: 2 min, 8 GB).

    python bench/reconstruct.py                                  # every case (~30 min on a busy 2-core VM)
    python bench/reconstruct.py --cases fmnist-cnn --out /tmp/r.json
    python bench/reconstruct.py --cases resnet50                 # re-run one case, keep the others in --out

Running a subset of the cases merges into an existing --out (the other cases' results and the runs that
made them are kept; --replace writes only this run's cases).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import _common as c

CASES = ("resnet50", "fmnist-cnn", "efficientnet-lite0-fmnist", "minilm", "minilm-thinet")
BARS = {"fmnist-cnn": 3.0, "efficientnet-lite0-fmnist": 5.0}


def image_case(model: str, ratio: float, samples: int, out_dir: str) -> dict:
    """`compress prune MODEL --ratio R --reconstruct --data fashion-mnist --calib data:N` as a library call."""
    from compress.api.prune import PruneRun, prune
    from compress.models.source import ModelSpec
    from compress.prune.plan import PruneConfig
    from compress.prune.reconstruct import ReconstructConfig

    t0 = time.perf_counter()
    r = prune(PruneRun(ModelSpec(model), out_dir, PruneConfig(ratio=ratio), data="fashion-mnist",
                       calib=f"data:{samples}", reconstruct=ReconstructConfig()))
    s = json.loads(open(os.path.join(out_dir, "summary.json")).read())
    rc = s["reconstruct"]
    dense, before, after = rc["accuracy_dense"], rc["accuracy_before"], rc["accuracy_after"]
    return {"model": model, "ratio": ratio, "round_to": s["round_to"], "criterion": s["criterion"],
            "calib": rc["calib"], "eval_samples": s["eval_samples"], "mac_reduction": s["mac_reduction"],
            "accuracy_dense": dense, "accuracy_without_reconstruct": before, "accuracy_with_reconstruct": after,
            "points_below_dense": round(100 * (dense - after), 2),
            "bar_points": BARS.get(model.split(":")[-1]),
            "bar_met": 100 * (dense - after) <= BARS.get(model.split(":")[-1], 100),
            "layers_refit": rc["layers_refit"], "layers": len(rc["layers"]),
            "batchnorm_reestimated": rc["batchnorm_reestimated"], "heldout_output_error": [
                rc["output_error_before"], rc["output_error_after"]], "reconstruct_seconds": rc["seconds"],
            "groups": rc["groups"], "notes": s["notes"], "exit_code": r["code"],
            "wall_seconds": round(time.perf_counter() - t0, 1)}


def packed_windows(tok, texts, n: int, length: int = 64):
    """`n` windows of `length` token ids: the tokenised texts ([CLS] ... [SEP] each) end to end."""
    import torch

    stream: list[int] = []
    for t in texts:
        stream += tok(t, truncation=True, max_length=length)["input_ids"]
        if len(stream) >= n * length:
            break
    if len(stream) < n * length:
        raise SystemExit(f"only {len(stream)} tokens of text for {n} windows of {length}")
    return torch.tensor(stream[: n * length], dtype=torch.long).view(n, length)


def minilm_case(ratio: float, samples: int, distill_sentences: int, eval_sentences: int, epochs: float,
                distill: bool, criterion: str = "l1") -> dict:
    import numpy as np
    import torch

    from compress import models
    from compress.accuracy import text
    from compress.accuracy.text_distill import TextDistillConfig, distill as run_distill
    from compress.accuracy.text_eval import cosine, embed, mean_cosine
    from compress.hardware_profiles import channel_step
    from compress.prune.apply import prune
    from compress.prune.plan import PruneConfig
    from compress.prune.reconstruct import ReconstructConfig, reconstruct

    lm = models.load("hf:minilm")
    dense = lm.model
    round_to = channel_step("cpu")
    tok = text.tokenizer("hf:minilm")
    train = text.load(text.TWEETS, "train")
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(train)).tolist()
    calib_texts = [train.texts[i] for i in perm[distill_sentences:]]       # disjoint from the distillation set
    ids = packed_windows(tok, calib_texts, samples)
    batches = [(ids[i:i + 8],) for i in range(0, len(ids), 8)]
    res = prune(dense, models.example_inputs(lm), PruneConfig(ratio=ratio, criterion=criterion), round_to,
                {"model": "hf:minilm", "sha256": models.weights_sha256(dense)}, calib=batches[:16])
    held = text.stratified(text.load(text.TWEETS, "test"), eval_sentences, seed=0)
    tk_held = text.tokenize(tok, held.texts)
    d_held = embed(dense, tk_held, desc="dense held-out")

    def cos(model):
        p = embed(model, tk_held, desc="held-out")
        cs = cosine(p, d_held)
        return {"cosine_mean": mean_cosine(p, d_held), "cosine_min": float(cs.min()),
                "cosine_p05": float(torch.quantile(cs, 0.05))}

    before = cos(res.model)
    t0 = time.perf_counter()
    rep = reconstruct(dense, res.model, res.plan.param_keep(), batches, ReconstructConfig(), graph=res.graph)
    t_rec = time.perf_counter() - t0
    after = cos(res.model)
    c.log(f"minilm cosine {before['cosine_mean']:.4f} -> {after['cosine_mean']:.4f} with reconstruction")
    out = {"model": "hf:minilm", "ratio": ratio, "round_to": round_to, "criterion": criterion,
           "calib": f"{samples} windows of 64 tokens of training-split tweets packed end to end "
                    f"(texts disjoint from the distillation set)",
           "held_out": f"{len(held)} tweets of the test split, stratified (as minilm_distill.py)",
           "without_reconstruct": before, "with_reconstruct": after, "reconstruct_seconds": round(t_rec, 1),
           "reconstruct": rep.to_json(), "bar": {"cosine_mean_min": 0.90, "met": after["cosine_mean"] >= 0.90}}
    ref = c.RESULTS / "minilm_distill.json"
    distilled_only = json.loads(ref.read_text())["after_distill"]["cosine_mean"] if ref.is_file() else None
    if distill:
        train_set = train.subset(perm[:distill_sentences], "[distill]")
        cfg = TextDistillConfig(epochs=epochs, lr=5e-4, batch_size=32)
        t0 = time.perf_counter()
        history = run_distill(res.model, dense, text.tokenize(tok, train_set.texts), cfg)
        both = cos(res.model)
        out["with_reconstruct_and_distill"] = both | {"distill": cfg.to_dict(), "history": history,
                                                       "seconds": round(time.perf_counter() - t0, 1)}
        out["distilled_only_reference"] = {"cosine_mean": distilled_only, "from": "results/cpu/minilm_distill.json"}
        out["bar_both"] = {"above_distilled_only": distilled_only,
                           "met": distilled_only is not None and both["cosine_mean"] > distilled_only}
    return out


def resnet50_case(ratio: float, samples: int) -> dict:
    """Prune + reconstruct torchvision resnet50 (random weights) in this process; time and peak RSS."""
    import torch

    from compress import calib, models
    from compress.hardware_profiles import channel_step
    from compress.prune.apply import prune
    from compress.prune.plan import PruneConfig
    from compress.prune.reconstruct import ReconstructConfig, reconstruct

    lm = models.load("torchvision:resnet50")
    inputs = models.example_inputs(lm)
    t0 = time.perf_counter()
    res = prune(lm.model, inputs, PruneConfig(ratio=ratio), channel_step("cpu"), {"model": "torchvision:resnet50"})
    t_prune = time.perf_counter() - t0
    batches = calib.input_batches(f"random:{samples}", lm, inputs)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    load0 = c.loadavg()
    t0, cpu0 = time.perf_counter(), time.process_time()
    rep = reconstruct(lm.model, res.model, res.plan.param_keep(), batches, ReconstructConfig(), graph=res.graph)
    t_rec, cpu_rec = time.perf_counter() - t0, time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": "torchvision:resnet50 (seeded random weights)", "ratio": ratio, "calib": f"random:{samples}",
            "input": list(inputs[0].shape[1:]), "torch_threads": torch.get_num_threads(),
            "prune_seconds": round(t_prune, 1), "reconstruct_seconds": round(t_rec, 1),
            "reconstruct_cpu_seconds": round(cpu_rec, 1),      # process CPU time (all threads): the load-independent part
            "peak_rss_gb": round(peak / 2**20, 2), "rss_before_reconstruct_gb": round(rss0 / 2**20, 2),
            "layers_refit": rep.refit, "layers": len(rep.layers),
            "batchnorm_reestimated": sum(b["reestimated"] for b in rep.batchnorm),
            "heldout_output_error": [rep.output_error_before, rep.output_error_after], "kept": rep.kept,
            "bar": {"seconds": 120, "memory_gb": 8, "met": t_rec < 120 and peak / 2**20 < 8},
            "loadavg_start": load0, "loadavg_end": c.loadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--samples", type=int, default=1024, help="calibration samples (fmnist, lite0, minilm windows)")
    ap.add_argument("--resnet-samples", type=int, default=512)
    ap.add_argument("--no-distill", action="store_true", help="minilm: skip reconstruction + distillation")
    ap.add_argument("--distill-sentences", type=int, default=1500)
    ap.add_argument("--eval-sentences", type=int, default=500)
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)          # resnet50 in a fresh process: JSON path
    ap.add_argument("--out", default=str(c.RESULTS / "reconstruct.json"))
    ap.add_argument("--replace", action="store_true", help="write only this run's cases (default: a subset of the "
                    "cases merges into an existing --out)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        c.write_json(c.Path(args.worker), resnet50_case(args.ratio, args.resnet_samples))
        return
    t_start = time.time()
    out = c.result_header("reconstruct", "structured pruning at ratio 0.3 recovered by least-squares "
                          "reconstruction + BatchNorm re-estimation, no fine-tuning (compress prune --reconstruct)",
                          t_start)
    results = {}
    for case in args.cases:
        c.log(f"case {case}")
        if case == "resnet50":              # a fresh process: its peak memory is its own
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "r.json")
                p = subprocess.run([sys.executable, __file__, "--worker", path, "--ratio", str(args.ratio),
                                    "--resnet-samples", str(args.resnet_samples)])
                peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
                results[case] = json.loads(open(path).read()) if p.returncode == 0 else {
                    "error": f"worker exit code {p.returncode}", "peak_rss_gb_children": round(peak, 2)}
        elif case == "minilm":             # the default criterion (l1), reconstruction alone
            results[case] = minilm_case(args.ratio, args.samples, args.distill_sentences, args.eval_sentences,
                                        args.epochs, False, "l1")
        elif case == "minilm-thinet":      # reconstruction-aware selection, then + distillation
            results[case] = minilm_case(args.ratio, args.samples, args.distill_sentences, args.eval_sentences,
                                        args.epochs, not args.no_distill, "thinet")
        else:
            with tempfile.TemporaryDirectory() as d:
                results[case] = image_case(f"compress:{case}", args.ratio, args.samples, os.path.join(d, "out"))
        c.log(f"{case}: " + json.dumps({k: v for k, v in results[case].items()
                                        if k not in ("groups", "reconstruct", "notes")})[:600])
    out["wall_seconds"] = round(time.time() - t_start, 1)
    old = {}
    if not args.replace and set(args.cases) != set(CASES) and os.path.isfile(args.out):
        old = json.loads(open(args.out).read())
    kept = {k: v for k, v in old.get("results", {}).items() if k not in results}
    if kept:                # the runs that produced the kept cases, then this one
        out["runs"] = old.get("runs") or [{"command": old.get("command"), "date": old.get("date"),
                                           "wall_seconds": old.get("wall_seconds"), "cases": list(old["results"])}]
        out["runs"] = [r | {"cases": [k for k in r["cases"] if k in kept]} for r in out["runs"]]
        out["runs"] = [r for r in out["runs"] if r["cases"]]
        out["runs"].append({k: out[k] for k in ("command", "date", "wall_seconds")} | {"cases": list(results)})
    out["results"] = {k: (results | kept)[k] for k in CASES if k in results or k in kept}
    out["loadavg_end"] = c.loadavg()
    c.write_json(c.Path(args.out), out)
    c.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
