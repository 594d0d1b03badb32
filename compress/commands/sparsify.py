"""`compress sparsify`: unstructured masks lowered to 2:4, block-sparse (BSR) or CSR weights.

DIR receives sparse_plan.json + sparse_model.safetensors (weights in their sparse formats),
model.onnx (dense weights with the zeros in place, onnxruntime parity checked) and summary.json.
"""

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
    p.add_argument("--out", required=True, metavar="DIR")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def run(args) -> dict:
    import os
    import time

    import torch

    from compress import models
    from compress.errors import CompressError
    from compress.export.onnx import export_onnx, ort_parity
    from compress.io import atomic_dir, write_json
    from compress.lower.modules import set_backends
    from compress.lower.pipeline import SparsifyConfig, check_layers, save_sparse_dir, sparsify
    from compress.calib import input_batches
    from compress.models.source import ModelSpec

    sparsity = args.sparsity
    if sparsity is None:
        if args.pattern != "2:4":
            raise CompressError(f"--sparsity is required with --pattern {args.pattern}")
        sparsity = 0.5
    cfg = SparsifyConfig(pattern=args.pattern, sparsity=sparsity, criterion=args.criterion, update=args.update,
                         calib=args.calib or "random:32", data_select=bool(args.calib) or args.update == "obs",
                         seed=args.seed)
    fmt, _ = cfg.validate()
    t0 = time.perf_counter()
    lm, inputs = ModelSpec(args.model, args.weights, args.input_shape).load()
    if lm.notes and any(n.startswith("sparse:") for n in lm.notes):
        raise CompressError(f"{args.model} is already sparse; sparsify its source model")
    if lm.plan is not None:
        raise CompressError(f"{args.model} is a pruned directory; sparsify of pruned models is not supported yet")
    check_layers(lm.model, fmt)                       # 2:4 on a reduction dim % 4 != 0: fail before any work
    torch.manual_seed(args.seed)
    calib = input_batches(cfg.calib, lm, inputs)
    source = {"model": lm.spec, "sha256": models.weights_sha256(lm.model),
              "input_shape": list(inputs[0].shape), "input_dtype": lm.input_dtype}
    res = sparsify(lm.model, inputs, cfg, source, calib)
    seconds = time.perf_counter() - t0
    # the lowered model must compute what the masked dense model computes, on every CPU backend
    check = calib[0] if calib else inputs
    with torch.no_grad():
        ref = res.masked(*check)
        errs = {}
        for backend in ("dense", "sparse"):
            set_backends(res.model, prefer=backend)
            out = res.model(*check)
            errs[backend] = float((out - ref).abs().max()) / max(float(ref.abs().max()), 1e-6)
        set_backends(res.model)
    lowered_err = max(errs.values())
    with atomic_dir(args.out) as tmp:
        save_sparse_dir(tmp, res, lm.hf_config)
        onnx_path = os.path.join(tmp, "model.onnx")
        export_onnx(res.masked, inputs, onnx_path)
        parity = ort_parity(onnx_path, res.masked, inputs)
        layers = {lp.name: {"format": lp.format, "module": lp.module, "density": lp.density,
                            "error_before": lp.error_before, "error_after": lp.error_after,
                            "error_magnitude": lp.error_magnitude} for lp in res.plan.layers}
        total = sum(torch.Size(lp.shape).numel() for lp in res.plan.layers)
        kept = sum(torch.Size(lp.shape).numel() * lp.density for lp in res.plan.layers)
        summary = {"model": lm.spec, "pattern": cfg.pattern, "sparsity": cfg.sparsity, "criterion": cfg.criterion,
                   "update": cfg.update, "calib": cfg.calib, "layers": layers, "density": kept / total,
                   "weights_sparsified": total, "max_rel_error_lowered_vs_masked": lowered_err,
                   "onnx_parity": parity, "sparsify_seconds": round(seconds, 3), "notes": list(res.plan.notes)}
        write_json(os.path.join(tmp, "summary.json"), summary)
    width = max(len(lp.name) for lp in res.plan.layers)
    errs_after = [lp.error_after for lp in res.plan.layers if lp.error_after is not None]
    text = [f"sparsified {lm.spec}: {len(layers)} layers to {cfg.pattern} ({cfg.criterion}"
            f"{', obs update' if cfg.update == 'obs' else ''}), density {summary['density']:.3f}",
            f"{'layer':<{width}} {'module':<18} {'density':>7} {'err before':>10} {'err after':>10}"]
    for lp in res.plan.layers:
        text.append(f"{lp.name:<{width}} {lp.module:<18} {lp.density:>7.3f} {_fmt(lp.error_before):>10} "
                    f"{_fmt(lp.error_after):>10}")
    if errs_after:
        text.append(f"mean relative output error {sum(errs_after) / len(errs_after):.4g} on {cfg.calib}")
    text.append(f"lowered vs masked dense: max rel error {lowered_err:.1e}; onnxruntime parity "
                f"{'ok' if parity['ok'] else 'FAILED'} (max rel error {parity['max_rel_error']:.1e}); wrote {args.out}")
    text += [f"note: {n}" for n in res.plan.notes]
    ok = parity["ok"] and lowered_err <= 1e-4
    if not ok:
        text.append("check failed: " + ("onnxruntime output differs from torch" if not parity["ok"]
                                         else "the lowered model differs from the masked dense model"))
    return {"text": "\n".join(text), "json": summary | {"out": args.out}, "code": 0 if ok else 1}
