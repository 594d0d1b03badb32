"""`compress inspect`: the command line of `compress.api.inspect.inspect` (InspectRun)."""

from __future__ import annotations

HELP = "print channel groups, parameters and MACs"


def add_arguments(p) -> None:
    from compress.cli import add_model_args

    p.add_argument("model", metavar="MODEL_OR_DIR")
    add_model_args(p)


def run(args) -> dict:
    from compress.api.inspect import InspectRun, inspect
    from compress.models.source import ModelSpec

    return inspect(InspectRun(model=ModelSpec(args.model, args.weights, args.input_shape)))
