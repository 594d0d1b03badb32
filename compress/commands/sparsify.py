"""`compress sparsify`: the command line of `compress.api.sparsify.sparsify` (SparsifyRun): unstructured
masks lowered to 2:4, block-sparse (BSR) or CSR weights, written to DIR."""

from __future__ import annotations

HELP = "lower unstructured masks to 2:4 or block-sparse weights (sparse model + ONNX + summary)"
CRITERIA = ("magnitude", "wanda", "movement", "snip", "grasp", "synflow")
DATA_CRITERIA = ("wanda", "movement", "snip", "grasp")


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help="torchvision:NAME | hf:DIR | compress:NAME | package.module:function")
    p.add_argument("--pattern", required=True, metavar="2:4|block:16|block:32|block:64|unstructured",
                   help="target format: 2:4 along the reduction dim, BSR with the block size, or unstructured (CSR)")
    p.add_argument("--sparsity", type=float, help="fraction of weights removed per layer, in [0, 1) (2:4: 0.5, the default)")
    p.add_argument("--criterion", default="magnitude", choices=CRITERIA)
    p.add_argument("--update", default="none", choices=("none", "obs"),
                   help="2:4 only: obs = SparseGPT-style least-squares update of the kept weights (needs calibration data)")
    p.add_argument("--calib", help="calibration data: random[:N] or a .npy file of inputs (default random:32; "
                   "given explicitly, 2:4 magnitude picks the 2 of 4 that minimise output error on it)")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (token ids: 1,16)")
    p.add_argument("--weights", help="weights for MODEL (.safetensors, or a torch state_dict loaded with weights_only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true",
                   help="refuse the model when a layer cannot take the pattern (2:4 on a reduction dim that is not "
                   "a multiple of 4, e.g. a 3-channel stem conv); default: such layers stay dense, named in the plan")
    p.add_argument("--data", help="fashion-mnist or a directory of labelled images: the data --finetune trains on "
                   "(training split) and measures accuracy on (test split)")
    p.add_argument("--finetune", type=float, metavar="EPOCHS",
                   help="with --criterion movement: movement pruning as published (Sanh et al. 2020), the scores "
                   "-sum W*dL/dW accumulated while the weights are fine-tuned on --data for EPOCHS, the sparsity "
                   "rising on the cubic schedule (Zhu & Gupta 2017) with the masks applied during training; "
                   "without it, movement is scored one shot on the calibration batches")
    p.add_argument("--lr", type=float, help="--finetune learning rate (SGD, Nesterov momentum 0.9; default 0.01)")
    p.add_argument("--out", required=True, metavar="DIR")


def run(args) -> dict:
    from compress.api.sparsify import SparsifyRun, sparsify
    from compress.lower.pipeline import SparsifyConfig
    from compress.models.source import ModelSpec
    from compress.sparse.movement import MovementConfig

    if args.lr is not None and args.finetune is None:
        from compress.errors import CompressError
        raise CompressError("--lr is the learning rate of --finetune EPOCHS")
    return sparsify(SparsifyRun(
        model=ModelSpec(args.model, args.weights, args.input_shape),
        out=args.out,
        lowering=SparsifyConfig(pattern=args.pattern, sparsity=args.sparsity, criterion=args.criterion,
                                update=args.update, calib=args.calib, seed=args.seed,
                                strict=args.strict),
        data=args.data,
        finetune=None if args.finetune is None else MovementConfig(epochs=args.finetune, lr=args.lr, seed=args.seed)))
