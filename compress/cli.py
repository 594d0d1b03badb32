"""`compress <verb>`: one subcommand per verb; verbs only compose library calls.

Exit codes: 0 success, 1 a requested check failed, 2 bad input (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys

from compress.errors import CheckFailed, CompressError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _model_args(p):
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (token ids: 1,16)")
    p.add_argument("--weights", help="weights for MODEL (.safetensors, or a torch state_dict loaded with weights_only)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


# Verbs added by their own modules: `compress/commands/<name>.py` defines HELP, add_arguments(p) and
# run(args) -> {"text", "json", "code"?}. Module import must be cheap (heavy imports inside run).
COMMANDS = ["export", "bench", "sparsify", "release", "profile", "predict", "plan"]


def _command(name: str):
    import importlib

    return importlib.import_module(f"compress.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    from compress.importance import CRITERIA

    ap = _Parser(prog="compress", description="Prune, sparsify and export models for a target device.")
    sub = ap.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    p = sub.add_parser("prune", help="remove channels, heads and hidden units for real")
    p.add_argument("model", metavar="MODEL", help="torchvision:NAME | hf:DIR | compress:NAME | package.module:function | pruned DIR")
    p.add_argument("--ratio", type=float, help="fraction of channels removed per group, in (0, 1)")
    p.add_argument("--plan", metavar="FILE", help="apply a plan.json from `compress plan` instead of --ratio")
    p.add_argument("--criterion", choices=CRITERIA, help="channel importance (default: l1; taylor with --schedule iterative)")
    p.add_argument("--global", dest="global_ranking", action="store_true",
                   help="rank channels across groups instead of a uniform per-group ratio")
    p.add_argument("--round-to", type=int, help="kept channels are a multiple of N (default: the target's channel step)")
    p.add_argument("--target", default="cpu", help="device whose channel step is used (cpu, gpu, jetson)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME", help="modules whose output channels are kept")
    p.add_argument("--calib", help="calibration data for data-driven criteria: random[:N], a .npy file of inputs, "
                   "or data[:N] (a stratified subset of --data's training split; the default with --data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="fail on ops that block pruning instead of keeping their channels")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--data", help="fashion-mnist or a directory (IDX files or class subfolders): measure accuracy")
    p.add_argument("--finetune", type=float, default=0, metavar="EPOCHS", help="fine-tune on --data's training split")
    p.add_argument("--distill", action="store_true", help="fine-tune with knowledge distillation from the dense model")
    p.add_argument("--lr", type=float, help="fixed fine-tuning learning rate (SGD; default 0.01)")
    p.add_argument("--lr-rewind", action="store_true", help="replay the last EPOCHS of the original LR schedule")
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "onecycle"), default="constant",
                   help="fine-tuning LR shape from --lr: held constant (default), cosine decay to 0, or warm-up + decay")
    p.add_argument("--schedule", choices=("oneshot", "gradual", "iterative"), default="oneshot",
                   help="prune at once; gradually (cubic schedule, Zhu & Gupta 2017); or in equal prune/fine-tune "
                   "cycles (Molchanov et al. 2017); gradual/iterative spread --finetune EPOCHS over the steps")
    p.add_argument("--steps", type=int, default=4, metavar="N", help="pruning steps of --schedule gradual|iterative")
    _model_args(p)

    p = sub.add_parser("eval", help="accuracy on a labelled test split (and agreement with the dense source)")
    p.add_argument("model", metavar="MODEL_OR_DIR")
    p.add_argument("--data", required=True, help="fashion-mnist or a directory (IDX files or class subfolders)")
    p.add_argument("--source-weights", help="weights of a pruned directory's dense source model")
    p.add_argument("--batch-size", type=int, default=256)
    _model_args(p)

    p = sub.add_parser("inspect", help="print channel groups, parameters and MACs")
    p.add_argument("model", metavar="MODEL_OR_DIR")
    _model_args(p)

    for name in COMMANDS:
        mod = _command(name)
        p = sub.add_parser(name, help=mod.HELP)
        mod.add_arguments(p)
        if not any(a.dest == "json" for a in p._actions):
            p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.verb in COMMANDS:
            result = _command(args.verb).run(args)
        else:
            from compress import verbs
            result = getattr(verbs, args.verb)(args)
    except CompressError as e:
        sys.stderr.write(f"compress {args.verb}: error: {e}\n")
        return 2
    except CheckFailed as e:
        sys.stderr.write(f"compress {args.verb}: check failed: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    if args.json:
        sys.stdout.write(json.dumps(result["json"], indent=1, sort_keys=True) + "\n")
    else:
        sys.stdout.write(result["text"].rstrip("\n") + "\n")
    return result.get("code", 0)
