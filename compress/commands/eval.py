"""`compress eval`: the command line of `compress.api.eval.evaluate` (EvalRun)."""

from __future__ import annotations

HELP = "accuracy on a labelled test split (and agreement with the dense source)"


def add_arguments(p) -> None:
    from compress.cli import add_model_args

    p.add_argument("model", metavar="MODEL_OR_DIR",
                   help="a model spec, a pruned directory, or an export directory / .onnx file (run in onnxruntime: "
                        "an export directory's model.int8.onnx when present, compared with its model.onnx)")
    p.add_argument("--data", required=True, help="fashion-mnist or a directory (IDX files or class subfolders); "
                   "text models (hf:..., or their ONNX exports): tweets or FILE.csv")
    p.add_argument("--source-weights", help="weights of a pruned directory's dense source model")
    p.add_argument("--batch-size", type=int, default=256)
    add_model_args(p)


def run(args) -> dict:
    from compress.api.eval import EvalRun, evaluate
    from compress.models.source import ModelSpec

    return evaluate(EvalRun(model=ModelSpec(args.model, args.weights, args.input_shape), data=args.data,
                            source_weights=args.source_weights, batch_size=args.batch_size))
