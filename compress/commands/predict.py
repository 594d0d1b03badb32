"""`compress predict`: predicted end-to-end latency of a model from a device profile."""

from __future__ import annotations

HELP = "predict a model's end-to-end latency on a device from its profile"


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL_OR_DIR")
    p.add_argument("--profile", required=True, metavar="FILE",
                   help="a profile file (from `compress profile`) or a shipped profile name")
    p.add_argument("--batch", type=int, help="batch size (default: the profile's)")
    p.add_argument("--runtime", help="require the profile to be for this runtime")
    p.add_argument("--dtype", help="require the profile to be for this dtype")
    p.add_argument("--input-shape", help="example input shape (default: the model's)")
    p.add_argument("--weights", help="weights for MODEL")
    p.add_argument("--layers", action="store_true", help="list every layer's predicted cost")


def run(args) -> dict:
    from compress.errors import CompressError
    from compress.hardware_profiles import extract_layers, load_profile, table_key

    if args.batch is not None and args.batch < 1:
        raise CompressError(f"--batch must be >= 1, got {args.batch}")
    prof = load_profile(args.profile, runtime=args.runtime, dtype=args.dtype, batch=args.batch)
    from compress import models   # imports torch: after the cheap checks
    lm = models.load(args.model, args.weights)
    shape = models.parse_shape(args.input_shape) if args.input_shape else None
    layers = extract_layers(lm.model, models.example_inputs(lm, shape))
    fit = prof.fit(layers)
    total = prof.total_ms(layers, fit)
    fb = prof.fell_back(layers)
    rows = [{"module": s.module, "op": s.op if s.op != "memory" else f"memory:{s.kind}", "fusion": s.fusion,
             "cin": s.cin, "cout": s.cout, "key": table_key(s), "ms": round(prof.layer_ms(s, fit), 5),
             "roofline": s in fb} for s in layers]
    fb_ms = sum(prof.layer_ms(s, fit) for s in fb)
    factor, cal_src = fit.scale, fit.source
    out = {"model": args.model, "profile": prof.path, "profile_name": prof.name, "source": prof.data["source"],
           "runtime": prof.runtime, "dtype": prof.dtype, "batch": prof.batch, "predicted_ms": round(total, 4),
           "overhead_ms": round(prof.overhead_ms(fit, len(layers)), 4),
           "layers": len(layers), "roofline_layers": len(fb), "roofline_ms": round(fb_ms, 4),
           "calibration": {"factor": factor, "source": cal_src, "kernel_factor": fit.kernel_factor if fit.b_ms is not None
                           else None, "b_ms": fit.b_ms}}
    if args.layers:
        out["per_layer"] = rows
    text = (f"{args.model}: predicted {total:.3f} ms at batch {prof.batch} on {prof.name} "
            f"({prof.data['source']}, {prof.runtime} {prof.data['runtime'].get('version', '')}, {prof.dtype}); "
            f"{len(layers)} costed layers" + ("" if cal_src == "none" else f", network fit: {cal_src}" if fit.b_ms is not None
                                              else f", x{factor:.3f} network calibration ({cal_src})"))
    if fb:
        text += f", {len(fb)} from the roofline fallback ({fb_ms:.3f} ms)"
    from compress.hardware_profiles.predictor import block_sparse_layers

    sparse = block_sparse_layers(lm.model)
    if sparse:
        priced = [s for s in layers if s.module in sparse and prof.sparse_factor(s, *sparse[s.module])]
        if priced:
            sms = prof.total_ms(layers, fit, sparse=sparse)
            out["predicted_sparse_kernel_ms"] = round(sms, 4)
            text += (f"\nwith its {len(sparse)} block-sparse layers on compress's CPU kernel (model.bsr.onnx): "
                     f"{sms:.3f} ms ({len(priced)} layers priced from the profile's sparse entries; the figure above "
                     f"is the masked dense model.onnx)")
        else:
            out["predicted_sparse_kernel_ms"] = None
            text += (f"\n{len(sparse)} block-sparse layers, not priced: the profile has no sparse entries measured "
                     f"with the kernel that ships (compress profile --sparse FILE measures them); the figure above is "
                     f"the masked dense model.onnx")
    if args.layers:
        text += "\n" + "\n".join(f"  {r['module'] or '-':40} {r['op']:8} {r['cin']:>5}->{r['cout']:<5} {r['ms']:9.4f} ms"
                                 + ("  (roofline)" if r["roofline"] else "") for r in rows)
    return {"text": text, "json": out}
