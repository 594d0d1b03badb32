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


def add_model_args(p):
    """The model options every model-loading verb shares (after its own): --input-shape, --weights, --json."""
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (token ids: 1,16)")
    p.add_argument("--weights", help="weights for MODEL (.safetensors, or a torch state_dict loaded with weights_only)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


# Each verb lives in its own module: `compress/commands/<name>.py` defines HELP, add_arguments(p) and
# run(args) -> {"text", "json", "code"?}. Module import must be cheap (heavy imports inside run).
# `compress --help` lists the verbs in this order.
COMMANDS = ["prune", "eval", "inspect", "export", "bench", "sparsify", "release", "profile", "predict", "plan"]


def _command(name: str):
    import importlib

    return importlib.import_module(f"compress.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="compress", description="Prune, sparsify and export models for a target device.")
    sub = ap.add_subparsers(dest="verb", required=True, parser_class=_Parser)

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
        result = _command(args.verb).run(args)
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
