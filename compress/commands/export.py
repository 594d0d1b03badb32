"""`compress export MODEL_OR_DIR --target cpu|gpu|jetson --out DIR`: a deployable artifact directory."""

from __future__ import annotations

import shlex
import sys

HELP = "write a deployable artifact (ONNX, TVM/TensorRT builds, scripts, manifest) for a target device"


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL_OR_DIR",
                   help="torchvision:NAME | hf:DIR | compress:NAME | package.module:function | pruned or sparsified DIR")
    p.add_argument("--target", required=True, help="cpu, gpu or jetson")
    p.add_argument("--device", help="jetson: orin-nano or agx-orin; gpu: a name recorded in the manifest")
    p.add_argument("--dtype", help="fp32, fp16 (TensorRT precision; default fp16 for gpu/jetson, fp32 for cpu) or int8 "
                                   "(post-training static quantization: model.int8.onnx, ONNX QDQ; needs --calib)")
    p.add_argument("--calib", metavar="SPEC",
                   help="--dtype int8 calibration data: data[:N] (stratified training subset of compress: models' "
                        "dataset, default N 128), FILE.npy (inputs, one sample per row; token ids: attention masks "
                        "0 on the pad id), tweets[:N] or FILE.csv[:N] (text models: sentences tokenised with their "
                        "padding) or random[:N] (noise)")
    p.add_argument("--calib-method", metavar="METHOD",
                   help="--dtype int8: minmax, percentile or entropy (default: the most accurate on held-out training "
                        "data where the model's dataset is known, else minmax)")
    p.add_argument("--batch", default="dynamic", help="N (static batch) or dynamic (default)")
    p.add_argument("--opt-batch", type=int, default=1, help="the batch TensorRT optimises for when the batch is dynamic")
    p.add_argument("--sparse-plan", metavar="FILE",
                   help="sparse_plan.json with per-layer formats (default: MODEL_OR_DIR/sparse_plan.json when present)")
    p.add_argument("--runtimes", metavar="LIST",
                   help="--target cpu: the runtimes to build, each then required (ort, tvm; e.g. ort,tvm); default: "
                        "onnxruntime, plus TVM when installed and able to build the model (else the manifest says why not)")
    p.add_argument("--dense-fallback", action="store_true",
                   help="ship layers whose sparse format has no kernel on the target (2:4 on --target cpu) as masked "
                        "dense weights instead of refusing")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (token ids: 1,16)")
    p.add_argument("--weights", help="weights for MODEL (.safetensors, or a torch state_dict loaded with weights_only)")
    p.add_argument("--out", required=True, metavar="DIR")


def _summary(man: dict, out: str) -> str:
    t = man["target"]
    lines = [f"exported {man['source']['model']} for {t['name']}" + (f" ({t['device']})" if t.get("device") else "")
             + f", {t['dtype']}, batch {t['batch']} -> {out}"]
    ins = man["source"].get("inputs") or []
    if len(ins) > 1:
        lines.append("inputs: " + ", ".join(f"{s['name']} {s['dtype']} {s['shape']}" for s in ins))
    for name, f in man["files"].items():
        lines.append(f"  {name:28s} {f['bytes']:>12,d} bytes  sha256 {f['sha256'][:12]}")
    for c in man["parity"]:
        if c.get("metric"):   # int8 vs fp32: a task metric, not elementwise
            lines.append(f"parity {c['runtime']} on {c['inputs']}: {'ok' if c['ok'] else 'FAILED'} "
                         f"({c['metric']} {c['value']:.4f}, bar >= {c['threshold']})")
            continue
        if c.get("max_rel_error") is None:
            lines.append(f"parity {c['runtime']} on {c['inputs']}: FAILED ({c.get('error')})")
        else:
            lines.append(f"parity {c['runtime']} on {c['inputs']}: {'ok' if c['ok'] else 'FAILED'} "
                         f"(max abs {c['max_abs_error']:.2e}, max rel {c['max_rel_error']:.2e})")
    if not any("real" in c["inputs"] for c in man["parity"]):
        lines.append(f"real inputs: none ({man['real_inputs']})")
    s = man.get("sparsity_2_4")
    if s and s["checked"]:
        bad = [n for n, r in s["layers"].items() if not r["ok"]]
        lines.append(f"2:4 pattern in the ONNX weights: {s['checked'] - len(bad)}/{s['checked']} layers ok"
                     + (f"; NOT 2:4: {', '.join(bad[:8])}" if bad else "")
                     + (f"; not in the graph (the output does not use them): {', '.join(s['not_in_graph'][:8])}"
                        if s.get("not_in_graph") else ""))
    if "tvm" in man and man["tvm"].get("built", True):
        lines.append(f"TVM: {man['tvm']['file']} for {man['tvm'].get('tag') or 'llvm (this host)'}"
                     + (f", ELF e_machine {man['tvm']['elf_machine']} (aarch64)" if man['tvm'].get('elf_machine') else ""))
    elif "tvm" in man:
        lines.append(f"TVM: {man['tvm']['reason']}")
    sc = man.get("sparse_cpu")
    if sc:
        lines.append(f"block-sparse kernel: {len(sc['layers'])} layers of {sc['file']} run {sc['library']['file']} "
                     f"(-march={sc['library']['march']}) in onnxruntime; needs {sc['needs']}")
    for note in man.get("runs_dense", []):
        lines.append(f"dense fallback: {note}")
    out_info = man.get("onnx", {}).get("output")
    if out_info:
        lines.append(f"model.onnx's output: the model's primary output, {out_info['from']}")
    if "aoti" in man:
        a = man["aoti"]
        lines.append("AOTInductor: " + (f"model.pt2 (cpu) parity {'ok' if a['parity']['ok'] else 'FAILED'}"
                                        if a.get("built") else a["reason"]))
    q = man.get("int8")
    if q:
        p = q["parity"]
        lines.append(f"int8: {q['file']} ({q['quantization']['format']}, {q['quantization']['weights']} weights), "
                     f"calibration {q['method']['method']} ({q['method']['chosen_by']}) on {q['calibration']['data']}"
                     + (f" ({q['calibration']['masks']})" if q["calibration"].get("masks") else "")
                     + (f"; accuracy int8 {p['accuracy_int8']:.4f} vs fp32 {p['accuracy_fp32']:.4f}"
                        if "accuracy_int8" in p else ""))
    e = man["expected_latency"]
    lines.append(f"expected latency: {e['ms']:.3f} ms" if e.get("ms") is not None else f"expected latency: unknown ({e['reason']})")
    e8 = (q or {}).get("expected_latency")
    if e8:
        lines.append(f"expected latency, int8: {e8['ms']:.3f} ms" if e8.get("ms") is not None
                     else f"expected latency, int8: unknown ({e8['reason']})")
    acc = man["accuracy_at_pruning"]
    lines.append(f"accuracy at pruning time: {acc['accuracy']:.4f}" if "accuracy" in acc else f"accuracy at pruning time: {acc['reason']}")
    for nv in man["not_verified_here"]:
        lines.append(f"NOT VERIFIED: {nv}")
    for c in man["commands"][1:]:
        lines.append(f"on the device, {c['what']}: {c['command']}")
    if not man["ok"]:
        lines.append("check failed: " + ("the int8 model departs from fp32 beyond its bar"
                                         if not all(c["ok"] for c in man["parity"] if c.get("metric")) else
                                         "a runtime's output differs from torch" if not all(c["ok"] for c in man["parity"])
                                         else "layers planned as 2:4 are not 2:4 in the ONNX weights"))
    return "\n".join(lines)


def run(args) -> dict:
    from compress.export.package import export
    from compress.export.targets import ExportConfig, default_dtype, parse_batch, parse_runtimes
    from compress.models import parse_shape

    cfg = ExportConfig(target=args.target, device=args.device, dtype=args.dtype or default_dtype(args.target),
                       batch=parse_batch(args.batch), opt_batch=args.opt_batch,
                       runtimes=parse_runtimes(args.runtimes),
                       dense_fallback=args.dense_fallback, calib=args.calib,
                       calib_method=args.calib_method).validate()
    shape = parse_shape(args.input_shape) if args.input_shape else None
    command = "compress export " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 and \
        sys.argv[1] == "export" else f"compress export {args.model} --target {args.target} --out {args.out}"

    def log(msg):
        if not args.json:
            sys.stderr.write(f"[export] {msg}\n")

    man = export(args.model, cfg, args.out, weights=args.weights, input_shape=shape,
                 sparse_plan=args.sparse_plan, command=command, log=log)
    return {"text": _summary(man, args.out), "json": man | {"out": args.out}, "code": 0 if man["ok"] else 1}
