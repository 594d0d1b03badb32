"""`compress prune`: the command line of `compress.api.prune.prune` (PruneRun)."""

from __future__ import annotations

HELP = "remove channels, heads and hidden units for real"


def add_arguments(p) -> None:
    from compress.cli import add_model_args
    from compress.prune.importance import CRITERIA

    p.add_argument("model", metavar="MODEL", help="torchvision:NAME | hf:DIR | compress:NAME | package.module:function | pruned DIR")
    p.add_argument("--ratio", type=float, help="fraction of channels removed per group, in (0, 1)")
    p.add_argument("--plan", metavar="FILE", help="apply a plan.json from `compress plan` instead of --ratio")
    p.add_argument("--criterion", choices=CRITERIA, help="channel importance (default: l1; taylor with --schedule iterative)")
    p.add_argument("--global", dest="global_ranking", action="store_true",
                   help="rank channels across groups instead of a uniform per-group ratio")
    p.add_argument("--round-to", type=int, help="kept channels are a multiple of N (default: the target's channel step)")
    p.add_argument("--target", default="cpu", help="device whose channel step is used (cpu, gpu, jetson)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME", help="modules whose output channels are kept")
    p.add_argument("--calib", help="calibration data for data-driven criteria and --reconstruct: random[:N], a .npy "
                   "file of inputs, or data[:N] (a stratified subset of --data's training split; the default with "
                   "--data: data:128, data:1024 with --reconstruct)")
    p.add_argument("--reconstruct", action="store_true",
                   help="after removal, refit every layer reading a pruned group by least squares to the dense "
                   "model's outputs on the calibration data and re-estimate BatchNorm statistics (each kept only "
                   "where it lowers the held-out error); needs --calib or --data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="fail on ops that block pruning instead of keeping their channels")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--data", help="fashion-mnist or a directory (IDX files or class subfolders): measure accuracy")
    p.add_argument("--finetune", type=float, default=0, metavar="EPOCHS", help="fine-tune on --data's training split")
    p.add_argument("--distill", action="store_true", help="fine-tune with knowledge distillation from the dense model")
    p.add_argument("--qat", action="store_true",
                   help="fine-tune under int8 fake quantization (the rounding `compress export --dtype int8` applies), "
                        "for an int8 deployment; the result is an ordinary fp32 model")
    p.add_argument("--lr", type=float, help="fixed fine-tuning learning rate (SGD; default 0.01)")
    p.add_argument("--lr-rewind", action="store_true", help="replay the last EPOCHS of the original LR schedule")
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "onecycle"), default="constant",
                   help="fine-tuning LR shape from --lr: held constant (default), cosine decay to 0, or warm-up + decay")
    p.add_argument("--schedule", choices=("oneshot", "gradual", "iterative"), default="oneshot",
                   help="prune at once; gradually (cubic schedule, Zhu & Gupta 2017); or in equal prune/fine-tune "
                   "cycles (Molchanov et al. 2017); gradual/iterative spread --finetune EPOCHS over the steps")
    p.add_argument("--steps", type=int, default=4, metavar="N", help="pruning steps of --schedule gradual|iterative")
    p.add_argument("--rewind", metavar="weights:EPOCH",
                   help="weight rewinding (lottery tickets; Renda et al. 2020) with --schedule iterative: after each "
                   "step reset the surviving weights to their values at that epoch of the model's own training "
                   "(compress:* models keep them) and replay its LR schedule from there")
    add_model_args(p)


def run(args) -> dict:
    from compress.api.accuracy import FinetuneConfig
    from compress.api.prune import PruneRun, prune
    from compress.prune.plan import PruneConfig
    from compress.prune.reconstruct import ReconstructConfig
    from compress.accuracy.schedules import PruneSchedule, parse_rewind
    from compress.models.source import ModelSpec

    return prune(PruneRun(
        model=ModelSpec(args.model, args.weights, args.input_shape),
        out=args.out,
        channels=PruneConfig(ratio=args.ratio, criterion=args.criterion, global_ranking=args.global_ranking,
                             round_to=args.round_to, ignore=tuple(args.ignore), seed=args.seed),
        plan=args.plan, target=args.target, strict=args.strict, calib=args.calib, data=args.data,
        finetune=FinetuneConfig(epochs=args.finetune, distill=args.distill, lr=args.lr, lr_rewind=args.lr_rewind,
                                lr_schedule=args.lr_schedule, qat=args.qat,
                                weight_rewind=None if args.rewind is None else parse_rewind(args.rewind)),
        schedule=PruneSchedule(args.schedule, args.steps),
        reconstruct=ReconstructConfig() if args.reconstruct else None))
