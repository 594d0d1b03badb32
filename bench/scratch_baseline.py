"""Is pruning + fine-tuning better than training the pruned architecture from scratch?

The baseline of Liu et al. 2019 ("Rethinking the Value of Network Pruning"): for a model of the embedded zoo,
1. dense: the zoo's trained model (compress:NAME, T epochs of its own schedule);
2. pruned + fine-tuned: `compress prune compress:NAME --ratio R --data fashion-mnist --finetune E` (l1, one
   shot, the target's channel step, fixed LR 0.01), as a library call;
3. scratch: the same pruned architecture (the plan's kept channels applied to a freshly constructed model,
   then every layer re-initialised at its pruned shape with PyTorch's default init, seeded), trained from
   random weights with the zoo's own recipe (optimizer, peak LR, one-cycle shape, weight decay, batch size)
   stretched over the same training budget as dense training + fine-tuning ("Scratch-E"): as many samples
   seen, i.e. T + E epochs of the full training split for fmnist-cnn. (EfficientNet-Lite0's dense model
   starts from ImageNet weights and sees a 3,000-image subset for T epochs; its scratch run gets the
   sample count T x 3,000 + E x 60,000 and no ImageNet weights: that asymmetry is the point of comparing.)
Optionally (`--rewind K`) 4. iterative pruning with weight rewinding to epoch K (`compress prune --schedule
iterative --steps S --rewind weights:K --finetune S x (T - K)`, an exact replay per step).

Top-1 on the full Fashion-MNIST test split (10,000 images). One thread (as the zoo trains).

    python bench/scratch_baseline.py                          # fmnist-cnn (~5-10 min on a busy 2-core VM)
    python bench/scratch_baseline.py --lite0                  # + compress:efficientnet-lite0-fmnist (slow on CPU)
    python bench/scratch_baseline.py --models efficientnet-lite0-fmnist --merge   # the Lite0 beside fmnist-cnn's result
    python bench/scratch_baseline.py --rewind 1 --merge --lr-rewinding-only         # + LR rewinding beside weight rewinding
    python bench/scratch_baseline.py --epochs 0.2 --out /tmp/s.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import _common as c


def pruned_finetuned(name: str, ratio: float, epochs: float, seed: int, out_dir: str, rewind: int | None = None,
                     steps: int = 2, lr_rewind: bool = False) -> tuple[dict, object]:
    """compress prune as a library call; (its record, the plan)."""
    from compress.accuracy.schedules import PruneSchedule
    from compress.api.accuracy import FinetuneConfig
    from compress.api.prune import PruneRun, prune
    from compress.models.source import ModelSpec
    from compress.prune.plan import PruneConfig, PrunePlan

    t0 = time.perf_counter()
    run = PruneRun(ModelSpec(f"compress:{name}"), out_dir, PruneConfig(ratio=ratio, criterion="l1", seed=seed),
                   data="fashion-mnist", finetune=FinetuneConfig(epochs=epochs, weight_rewind=rewind, lr_rewind=lr_rewind),
                   schedule=PruneSchedule("iterative", steps) if rewind is not None or lr_rewind
                   else PruneSchedule("oneshot"))
    r = prune(run)
    s = json.loads(open(os.path.join(out_dir, "summary.json")).read())
    with open(os.path.join(out_dir, "plan.json")) as f:
        plan = PrunePlan.from_json(f.read())
    ft = s["finetune"]
    rec = {"ratio": ratio, "criterion": s["criterion"], "round_to": s["round_to"], "schedule": s["schedule"],
           "params_before": s["params_before"], "params_after": s["params_after"],
           "macs_before": s["macs_before"], "macs_after": s["macs_after"],
           "mac_reduction": round(s["mac_reduction"], 3),
           "accuracy_dense": s["accuracy_dense"], "accuracy_before_finetune": s.get("accuracy_pruned_before_finetune"),
           "accuracy": s["accuracy"], "finetune_epochs": epochs, "finetune_lr": ft["lr"],
           "weight_rewind": ft.get("weight_rewind"), "lr_rewind": ft.get("lr_rewind"), "finetune_history": ft["history"],
           "exit_code": r["code"], "wall_seconds": round(time.perf_counter() - t0, 1)}
    return rec, plan


def scratch(name: str, plan, epochs: float, train, test, seed: int) -> dict:
    """The pruned architecture from random weights, trained `epochs` with the zoo's recipe."""
    import torch

    from compress.accuracy.evaluate import accuracy, predict
    from compress.accuracy.train import Schedule, deterministic, fit
    from compress.metrics import count_macs
    from compress.models import zoo
    from compress.prune.structured import apply_keep

    e = zoo.ZOO[name]
    sched = Schedule.from_dict({**e["train"], "epochs": epochs})
    t0 = time.perf_counter()
    with deterministic(seed, 1):
        model = apply_keep(zoo.construct(name), plan.param_keep())
        for m in model.modules():              # default init at the pruned shapes
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
        macs = count_macs(model, (torch.zeros(1, 1, 28, 28),))
        params = sum(p.numel() for p in model.parameters())
        history = fit(model, train, sched, seed=seed, desc=f"scratch {name}")
    acc = accuracy(predict(model, test, desc="test"), test.labels)
    return {"epochs": epochs, "schedule": sched.to_dict(), "seed": seed, "params": params, "macs": macs,
            "accuracy": acc, "history": history, "train_seconds": round(time.perf_counter() - t0, 1)}


def case(name: str, ratio: float, epochs: float, seeds: list[int], rewind: int | None, steps: int) -> dict:
    import torch

    from compress.accuracy import data
    from compress.models import zoo

    zoo.pretrained(name)                         # trained and cached first (not timed below)
    e = zoo.ZOO[name]
    meta = zoo.metadata(zoo.checkpoint_path(name))
    train, test = data.load("fashion-mnist", "train"), data.load("fashion-mnist", "test")
    dense_epochs = float(e["train"]["epochs"])
    dense_samples = int(meta.get("train_samples", len(train)))
    budget_epochs = (dense_epochs * dense_samples + epochs * len(train)) / len(train)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as d:
            c.log(f"{name}: prune {ratio} + fine-tune {epochs:g} epoch(s)")
            pf, plan = pruned_finetuned(name, ratio, epochs, seeds[0], os.path.join(d, "p"))
            rw = None
            if rewind is not None:
                t_dense = dense_epochs - rewind
                c.log(f"{name}: iterative {steps} steps, weights rewound to epoch {rewind}, "
                      f"{steps * t_dense:g} epoch(s)")
                rw, _ = pruned_finetuned(name, ratio, steps * t_dense, seeds[0], os.path.join(d, "r"), rewind, steps)
        runs = []
        for s in seeds:
            c.log(f"{name}: scratch, {budget_epochs:g} epoch(s), seed {s}")
            runs.append(scratch(name, plan, budget_epochs, train, test, s))
    finally:
        torch.set_num_threads(n)
    mean = sum(r["accuracy"] for r in runs) / len(runs)
    out = {"model": f"compress:{name}", "dense": {"epochs": dense_epochs, "train_samples": dense_samples,
                                                  "accuracy": pf["accuracy_dense"],
                                                  "init": "imagenet" if "init" in e else "random"},
           "pruned_finetuned": pf, "scratch": runs, "scratch_mean_accuracy": mean,
           "scratch_budget": {"epochs": budget_epochs, "samples": round(budget_epochs * len(train)),
                              "rule": "dense training + fine-tuning samples seen, in epochs of the full split"},
           "pruned_minus_scratch_points": round(100 * (pf["accuracy"] - mean), 2)}
    if rw is not None:
        out["weight_rewinding"] = rw
    return out


def lr_rewinding(name: str, ratio: float, rewind: int, steps: int, seed: int = 0) -> dict:
    """The LR-rewinding arm beside weight rewinding (Renda et al. 2020): the same iterative steps and epochs,
    the original LR schedule replayed from epoch `rewind`, the weights not reset."""
    import torch

    from compress.models import zoo

    t_dense = float(zoo.ZOO[name]["train"]["epochs"]) - rewind
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as d:
            c.log(f"{name}: iterative {steps} steps, LR rewound to epoch {rewind}, {steps * t_dense:g} epoch(s)")
            rec, _ = pruned_finetuned(name, ratio, steps * t_dense, seed, os.path.join(d, "l"), None, steps,
                                      lr_rewind=True)
    finally:
        torch.set_num_threads(n)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["fmnist-cnn"], choices=["fmnist-cnn", "efficientnet-lite0-fmnist"])
    ap.add_argument("--lite0", action="store_true", help="also compress:efficientnet-lite0-fmnist (slow on CPU)")
    ap.add_argument("--merge", action="store_true", help="keep the other models' results of the --out JSON (each "
                    "with the command that made it)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs after pruning (E)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="scratch runs (one per seed)")
    ap.add_argument("--rewind", type=int, help="also iterative pruning with weights rewound to this epoch")
    ap.add_argument("--steps", type=int, default=2, help="iterative steps of --rewind")
    ap.add_argument("--lr-rewinding-only", action="store_true", help="with --rewind K and --merge: only add the "
                    "LR-rewinding arm (same steps and epochs, weights not reset) to the models' earlier results")
    ap.add_argument("--out", default=str(c.RESULTS / "scratch_baseline.json"))
    args = ap.parse_args()
    t_start = time.time()
    out = c.result_header("scratch_baseline", "pruned + fine-tuned vs the pruned architecture trained from "
                          "scratch with the same training budget (Liu et al. 2019)", t_start)
    names = list(dict.fromkeys(args.models + (["efficientnet-lite0-fmnist"] if args.lite0 else [])))
    results = {}
    if args.merge and c.Path(args.out).is_file():
        old = json.loads(c.Path(args.out).read_text())
        results = {k: {"command": old.get("command"), "date": old.get("date")} | v
                   for k, v in old.get("results", {}).items() if k not in names}
    if args.lr_rewinding_only:
        if args.rewind is None or not args.merge or not c.Path(args.out).is_file():
            ap.error("--lr-rewinding-only adds to an earlier --out JSON: give --rewind K and --merge")
        old = json.loads(c.Path(args.out).read_text())
        results = old["results"]
        for name in names:
            results[name]["lr_rewinding"] = lr_rewinding(name, args.ratio, args.rewind, args.steps) | {
                "command": out["command"], "date": out["date"]}
            c.log(f"{name}: LR rewinding {results[name]['lr_rewinding']['accuracy']:.4f}")
        names = []
    for name in names:
        results[name] = case(name, args.ratio, args.epochs, args.seeds, args.rewind if name == "fmnist-cnn" else None,
                             args.steps)
        r = results[name] | {"command": out["command"], "date": out["date"]}
        results[name] = r
        c.log(f"{name}: dense {r['dense']['accuracy']:.4f}, pruned+ft {r['pruned_finetuned']['accuracy']:.4f}, "
              f"scratch {r['scratch_mean_accuracy']:.4f}"
              + (f", rewound {r['weight_rewinding']['accuracy']:.4f}" if "weight_rewinding" in r else ""))
    out["results"] = results
    out["wall_seconds"] = round(time.time() - t_start, 1)
    out["loadavg_end"] = c.loadavg()
    c.write_json(c.Path(args.out), out)
    c.log(f"wrote {c.rel(args.out)}")


if __name__ == "__main__":
    main()
