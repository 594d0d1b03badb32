"""Accuracy of the pruned embedded CNN (compress:fmnist-cnn) on Fashion-MNIST, ours vs Torch-Pruning.

Bars (issue 3):
- at a quarter of the MACs (channel ratio 0.5) after ONE epoch of fine-tuning with distillation,
  within 0.5 point of the dense model, and at or above Torch-Pruning's magnitude pruner at the same
  MACs with the same fine-tuning budget (same epochs, same recipe: optimizer, LR curve, batch,
  distillation, seed), measured side by side in this run; Torch-Pruning's Taylor criterion too;
- an accuracy-versus-MACs plot, one curve per criterion (accuracy right after pruning, no
  fine-tuning; the fine-tuned points at the main ratio are marked on it).

Every fine-tuned variant starts from the same dense checkpoint, trains on the same 60,000
training images for the same number of steps with `compress.accuracy.train.finetune` (SGD Nesterov,
batch 128, the given LR curve, distillation from the dense model) and is evaluated on the
10,000 test images. Torch-Pruning prunes with its MetaPruner (uniform ratio, classifier
ignored); its Taylor importance takes gradients of the cross-entropy on the same 128
calibration images (true labels) that our data criteria score on (dense-model argmax labels).

    nice -n 19 python bench/accuracy_cnn.py     # everything: 27 min on a 2-core VM at load ~20
    nice -n 19 python bench/accuracy_cnn.py --variants ours:l1 tp:magnitude --no-curves
    python bench/accuracy_cnn.py --train-samples 512 --test-samples 256 --out /tmp/a.json   # smoke run

Each variant and the curves run in their own worker process (own session, so that the kernel's
autogroup scheduler gives each its own CPU share); the committed result was produced by
`nice -n 19 python bench/accuracy_cnn.py --lr 0.02 --lr-schedule cosine --bn-recal 20
--variants ours:l1 ours:bn ours:l1:gradual tp:magnitude tp:taylor` (now the defaults).

Writes bench/results/cpu/accuracy_cnn.json (updated after every variant) and accuracy_cnn.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import _common as c

CURVE_CRITERIA = ["l1", "l2", "bn", "taylor", "fisher", "activation", "apoz", "random"]
TP_CRITERIA = ["magnitude", "taylor"]
DEFAULT_VARIANTS = ["ours:l1", "ours:bn", "ours:l1:gradual", "tp:magnitude", "tp:taylor"]


def tp_prune(model, ratio: float, criterion: str, calib_xy, round_to: int | None):
    """Torch-Pruning 1.6 MetaPruner, uniform ratio, the classifier kept. Prunes `model` in place."""
    import torch
    import torch.nn.functional as F
    import torch_pruning as tp

    example = calib_xy[0][0][:1]
    imp = {"magnitude": tp.importance.MagnitudeImportance(p=1),
           "taylor": tp.importance.TaylorImportance()}[criterion]
    pruner = tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=ratio,
                                  ignored_layers=[model.fc], round_to=round_to)
    if criterion == "taylor":
        model.zero_grad()
        model.eval()
        for x, y in calib_xy:
            F.cross_entropy(model(x), y).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratio", type=float, default=0.5, help="channel ratio of the fine-tuned comparison")
    ap.add_argument("--epochs", type=float, default=1.0, help="fine-tuning budget, the same for every variant")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine", "onecycle"))
    ap.add_argument("--no-distill", action="store_true")
    ap.add_argument("--distill-t", type=float, default=4.0)
    ap.add_argument("--distill-alpha", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=4, help="steps of the gradual/iterative variants")
    ap.add_argument("--bn-recal", type=int, default=20, metavar="BATCHES",
                    help="re-estimate BatchNorm statistics on this many training batches after pruning "
                    "(every variant and every curve point alike; 0: off)")
    ap.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS,
                    help="ours:CRITERION[:gradual|iterative] | tp:magnitude|taylor")
    ap.add_argument("--curve-ratios", default="0.25,0.5,0.75")
    ap.add_argument("--no-curves", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker process")
    ap.add_argument("--jobs", type=int, default=8,
                    help="worker processes at once (one per variant, one for the curves)")
    ap.add_argument("--train-samples", type=int, default=0, help="smoke runs: a stratified training subset")
    ap.add_argument("--test-samples", type=int, default=0, help="smoke runs: a stratified test subset")
    ap.add_argument("--out", default=str(c.RESULTS / "accuracy_cnn.json"))
    ap.add_argument("--merge", action="store_true", help="keep the variants and curves of an existing --out file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)           # VARIANT or "curves": one piece, in a subprocess
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


class Setup:
    """What every worker needs: data, the dense model, calibration batches, the MAC counter."""

    def __init__(self, args):
        import torch

        from compress.accuracy import data
        from compress.models import zoo
        from compress.hardware_profiles import channel_step

        torch.set_num_threads(args.threads)
        self.args = args
        self.tr, self.te = data.load("fashion-mnist", "train"), data.load("fashion-mnist", "test")
        if args.train_samples:
            self.tr = data.calibration_subset(self.tr, args.train_samples, args.seed)
        if args.test_samples:
            self.te = data.calibration_subset(self.te, args.test_samples, args.seed)
        self.dense, self.ckpt = zoo.pretrained("fmnist-cnn")
        self.inputs = (torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)),)
        calib_ds = data.calibration_subset(self.tr, 128, args.seed)
        self.calib = [(x,) for x, _ in calib_ds.batches(8)]
        self.calib_xy = list(calib_ds.batches(8))
        self.step = channel_step("cpu")
        self._d_logits = None

    @property
    def d_logits(self):
        from compress.accuracy.evaluate import predict

        if self._d_logits is None:
            self._d_logits = predict(self.dense, self.te, desc="dense")
        return self._d_logits

    def recal(self, model):
        from _training import recalibrate_bn

        if self.args.bn_recal:
            recalibrate_bn(model, self.tr, self.args.bn_recal, seed=self.args.seed)
        return model

    def metrics(self, model) -> dict:
        from compress.accuracy.evaluate import accuracy, agreement, functional_distance, predict

        lg = predict(model, self.te, desc="eval")
        return {"accuracy": accuracy(lg, self.te.labels), "agreement": agreement(lg, self.d_logits),
                "functional_distance": functional_distance(lg, self.d_logits)}

    def macs(self, model) -> int:
        from compress.metrics import count_macs

        return count_macs(model, self.inputs)


def run_variant(S: Setup, v: str) -> dict:
    from compress.metrics import count_params
    from compress.prune.plan import PruneConfig
    from compress.prune.apply import prune
    from compress.accuracy.schedules import PruneSchedule
    from compress.accuracy.schedules import run as run_schedule
    from compress.accuracy.train import finetune
    from _training import CachedTeacher

    a = S.args
    parts = v.split(":")
    tool, crit = parts[0], parts[1]
    kind = parts[2] if len(parts) > 2 else "oneshot"
    t0 = time.perf_counter()
    # the dense teacher's logits on the training set, computed once per worker (the same numbers everywhere)
    teacher = None if a.no_distill else CachedTeacher(S.dense, S.tr)
    rec = {"tool": tool, "criterion": crit, "schedule": kind, "teacher_seconds": round(time.perf_counter() - t0, 1)}
    ft = dict(lr=a.lr, seed=a.seed, lr_schedule=a.lr_schedule, distill_T=a.distill_t, distill_alpha=a.distill_alpha)
    c.log(f"variant {v}: pruning")
    t0 = time.perf_counter()
    if tool == "tp":
        model = S.recal(tp_prune(copy.deepcopy(S.dense), a.ratio, crit, S.calib_xy, None))
    elif kind == "oneshot":
        model = S.recal(prune(S.dense, S.inputs, PruneConfig(ratio=a.ratio, criterion=crit, seed=a.seed), S.step,
                              {"model": "compress:fmnist-cnn"}, calib=S.calib).model)
    if tool == "tp" or kind == "oneshot":
        rec["prune_seconds"] = round(time.perf_counter() - t0, 2)
        rec["before_finetune"] = S.metrics(model)
        t1 = time.perf_counter()
        hist = finetune(model, S.tr, a.epochs, teacher=teacher, **ft)
    else:
        t1 = t0
        ft.pop("seed")
        sr = run_schedule(S.dense, S.inputs, PruneConfig(ratio=a.ratio, criterion=crit, seed=a.seed), S.step,
                          {"model": "compress:fmnist-cnn"}, PruneSchedule(kind, a.steps), S.tr, a.epochs,
                          calib=S.calib, teacher=teacher, **ft)
        model = sr.result.model
        hist = [h for s in sr.steps for h in s.history]
        rec["steps"] = [{"step": s.step, "ratio": s.ratio, "macs": s.macs, "epochs": s.epochs} for s in sr.steps]
    rec["finetune_seconds"] = round(time.perf_counter() - t1, 1)
    rec["finetune_history"] = hist
    rec["macs"], rec["params"] = S.macs(model), count_params(model)
    rec |= S.metrics(model)
    rec["loadavg"] = c.loadavg()
    c.log(f"variant {v}: accuracy {rec.get('before_finetune', {}).get('accuracy', float('nan')):.4f} -> "
          f"{rec['accuracy']:.4f} ({rec['finetune_seconds']:.0f}s fine-tuning)")
    return rec


def run_curves(S: Setup) -> dict:
    from compress.prune.plan import PruneConfig
    from compress.prune.apply import prune

    a = S.args
    ratios = [float(r) for r in a.curve_ratios.split(",")]
    curves, graph = {}, None
    for crit in CURVE_CRITERIA:
        pts = []
        for r in ratios:
            res = prune(S.dense, S.inputs, PruneConfig(ratio=r, criterion=crit, seed=a.seed), S.step,
                        {"model": "compress:fmnist-cnn"}, calib=S.calib, graph=graph)
            graph = res.graph
            pts.append({"ratio": r, "macs": S.macs(res.model)} | S.metrics(S.recal(res.model)))
        curves[f"ours:{crit}"] = pts
        c.log(f"curve ours:{crit}: " + ", ".join(f"{p['ratio']}:{p['accuracy']:.3f}" for p in pts))
    for crit in TP_CRITERIA:
        pts = []
        for r in ratios:
            m = S.recal(tp_prune(copy.deepcopy(S.dense), r, crit, S.calib_xy, None))
            pts.append({"ratio": r, "macs": S.macs(m)} | S.metrics(m))
        curves[f"tp:{crit}"] = pts
        c.log(f"curve tp:{crit}: " + ", ".join(f"{p['ratio']}:{p['accuracy']:.3f}" for p in pts))
    return curves


def main() -> None:
    args = parse_args()
    if args.worker:
        S = Setup(args)
        t0 = time.perf_counter()
        out = run_curves(S) if args.worker == "curves" else run_variant(S, args.worker)
        c.write_json(c.Path(args.worker_out), {"result": out, "seconds": round(time.perf_counter() - t0, 1)})
        return

    import subprocess
    import sys
    import tempfile

    from compress.models import zoo
    from compress.accuracy.evaluate import accuracy
    from compress.metrics import count_params

    t_start = time.perf_counter()
    out_path = c.Path(args.out)
    # every variant (and the curves) in its own worker process, --jobs at a time
    pieces = list(args.variants) + ([] if args.no_curves else ["curves"])
    tmp = c.Path(tempfile.mkdtemp(prefix="accuracy_cnn-"))
    passthrough = [a for a in sys.argv[1:] if a not in ("--merge",)]
    running, queue = [], list(enumerate(pieces))

    def launch():
        while queue and len(running) < max(1, args.jobs):
            i, piece = queue.pop(0)
            wout = tmp / f"{i}.json"
            cmd = [sys.executable, str(c.Path(__file__).resolve()), *passthrough, "--worker", piece,
                   "--worker-out", str(wout)]
            # own session: with the kernel's autogroup scheduling each worker gets its own CPU share
            running.append((piece, wout, subprocess.Popen(cmd, start_new_session=True)))

    launch()
    S = Setup(args)
    old = json.loads(out_path.read_text()) if args.merge and out_path.is_file() else {}
    dense_macs = S.macs(S.dense)
    result = {
        "benchmark": "accuracy_cnn", "date": c.now(), "command": c.command_line(), "machine": c.machine_info(),
        "versions": c.versions(), "threads_per_worker": args.threads, "loadavg_start": c.loadavg(),
        "model": "compress:fmnist-cnn", "checkpoint": S.ckpt.name, "checkpoint_meta": {
            k: v for k, v in zoo.metadata(S.ckpt).items() if k in ("test_accuracy", "train_seconds", "config")},
        "dense": {"accuracy": accuracy(S.d_logits, S.te.labels), "macs": dense_macs,
                  "params": count_params(S.dense)},
        "ratio": args.ratio, "round_to": S.step,
        "recipe": {"epochs": args.epochs, "optimizer": "sgd (Nesterov 0.9, weight decay 5e-4)", "batch_size": 128,
                   "lr": args.lr, "lr_schedule": args.lr_schedule, "distill": not args.no_distill,
                   "distill_temperature": None if args.no_distill else args.distill_t,
                   "distill_alpha": None if args.no_distill else args.distill_alpha, "seed": args.seed,
                   "train_samples": len(S.tr), "eval_samples": len(S.te), "bn_recalibration_batches": args.bn_recal,
                   "teacher": "the dense model's logits, precomputed once per worker (CachedTeacher)",
                   "gradual_steps": args.steps},
        "variants": old.get("variants", {}), "curves": old.get("curves", {}),
    }
    c.log(f"dense accuracy {result['dense']['accuracy']:.4f}, MACs {dense_macs:,}")

    while queue or running:
        launch()
        time.sleep(2)
        for item in list(running):
            piece, wout, proc = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0 or not wout.is_file():
                c.log(f"worker {piece} failed (exit {proc.returncode})")
                result.setdefault("failed", []).append(piece)
                continue
            w = json.loads(wout.read_text())
            if piece == "curves":
                result["curves"] = w["result"]
            else:
                rec = w["result"]
                rec["mac_reduction"] = round(dense_macs / rec["macs"], 4)
                rec["gap_to_dense_points"] = round(100 * (result["dense"]["accuracy"] - rec["accuracy"]), 3)
                result["variants"][piece] = rec
            result["loadavg_end"] = c.loadavg()
            result["seconds_total"] = round(time.perf_counter() - t_start, 1)
            c.write_json(out_path, result)

    d = result["dense"]["accuracy"]
    ours = {k: v for k, v in result["variants"].items() if v["tool"] == "ours"}
    tp_mag = result["variants"].get("tp:magnitude")
    if ours:
        best_k = max(ours, key=lambda k: ours[k]["accuracy"])
        best = ours[best_k]
        result["bars"] = {
            "best_ours": best_k, "best_ours_accuracy": best["accuracy"], "dense_accuracy": d,
            "within_half_point_of_dense": best["accuracy"] >= d - 0.005,
            "mac_reduction": best["mac_reduction"],
            "tp_magnitude_accuracy": tp_mag["accuracy"] if tp_mag else None,
            "at_or_above_tp_magnitude": (best["accuracy"] >= tp_mag["accuracy"]) if tp_mag else None,
            "same_macs_as_tp": (best["macs"] == tp_mag["macs"]) if tp_mag else None,
        }
    result["loadavg_end"] = c.loadavg()
    result["seconds_total"] = round(time.perf_counter() - t_start, 1)
    c.write_json(out_path, result)
    plot(result, out_path.with_suffix(".png"))
    c.log(f"wrote {out_path} and {out_path.with_suffix('.png')}")


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    dm = result["dense"]["macs"] / 1e6
    nb = result["recipe"].get("bn_recalibration_batches")
    how = f"BN re-estimated on {nb} batches, no fine-tuning" if nb else "no fine-tuning"
    for name, pts in sorted(result["curves"].items()):
        xs = [p["macs"] / 1e6 for p in pts] + [dm]
        ys = [100 * p["accuracy"] for p in pts] + [100 * result["dense"]["accuracy"]]
        order = sorted(range(len(xs)), key=xs.__getitem__)
        ax.plot([xs[i] for i in order], [ys[i] for i in order], "--" if name.startswith("tp:") else "-",
                marker="o", ms=3, label=name)
    for name, v in result["variants"].items():
        ax.scatter([v["macs"] / 1e6], [100 * v["accuracy"]], marker="*" if v["tool"] == "ours" else "x", s=90,
                   zorder=5, label=f"{name} fine-tuned")
    d = 100 * result["dense"]["accuracy"]
    ax.axhline(d, color="k", lw=0.8)
    ax.axhline(d - 0.5, color="k", lw=0.8, ls=":")
    ax.text(dm, d + 0.3, "dense", ha="right", va="bottom", fontsize=8)
    ax.set_xlabel("MACs per image (millions)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title(f"compress:fmnist-cnn on Fashion-MNIST: accuracy vs MACs per criterion\n"
                 f"curves: {how}; markers: {result['recipe']['epochs']:g} epoch of fine-tuning", fontsize=9)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    if result["variants"]:                       # inset: the fine-tuned points near the dense accuracy
        ins = ax.inset_axes([0.07, 0.58, 0.36, 0.33])
        for name, v in result["variants"].items():
            ins.scatter([v["macs"] / 1e6], [100 * v["accuracy"]], marker="*" if v["tool"] == "ours" else "x", s=50)
            ins.annotate(name, (v["macs"] / 1e6, 100 * v["accuracy"]), fontsize=6)
        ins.axhline(d, color="k", lw=0.8)
        ins.axhline(d - 0.5, color="k", lw=0.8, ls=":")
        ys = [100 * v["accuracy"] for v in result["variants"].values()] + [d]
        ins.set_ylim(min(ys) - 0.5, max(ys) + 0.5)
        ins.tick_params(labelsize=6)
        ins.set_title("after fine-tuning", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
