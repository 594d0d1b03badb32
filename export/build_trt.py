#!/usr/bin/env python3
"""Build a TensorRT engine from an ONNX model (TensorRT's Python API: Builder, OnnxParser.parse_from_file,
one optimisation profile over the batch dimension of every input, SPARSE_WEIGHTS for 2:4 layers).

The precision follows the installed TensorRT's major version:
- 10.x: weak typing; --fp16 sets BuilderFlag.FP16 on the fp32 model.onnx;
- 11 and later: strongly typed (BuilderFlag.FP16 was removed), the precision comes from the ONNX types:
  --fp16 builds the fp16 file given by --fp16-onnx (model_fp16.onnx in an artifact directory).
--int8: the ONNX file is int8 QDQ (model.int8.onnx, explicit quantization): 10.x sets BuilderFlag.INT8, 11+
  takes the precision from the Q/DQ nodes (strongly typed).
parse_from_file reads ONNX files whose weights live in external data files next to them.

Standalone: `compress export` copies this file into the artifact directory, and calls `build()`
itself when `tensorrt` imports and finds a usable GPU on the exporting machine.

    python3 build_trt.py model.onnx model.engine --fp16 --fp16-onnx model_fp16.onnx --sparsity \
        --min-batch 1 --opt-batch 1 --max-batch 32
"""

import argparse
import os
import sys

WORKSPACE_MIB = 1024  # the builder's workspace pool; build_engine.sh passes the same to trtexec
STRONG_TYPING_MAJOR = 11  # TensorRT 11 removed weak typing (deprecated since 10.12)


def major(version) -> int:
    return int(str(version).split(".")[0])


def strongly_typed(version) -> bool:
    """True where the installed TensorRT only builds strongly typed networks (11 and later)."""
    return major(version) >= STRONG_TYPING_MAJOR


def _first_line(e) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def usable_gpu(trt=None):
    """None when TensorRT can create a Builder here, else why not: `tensorrt` imports on a machine without a
    GPU, but trt.Builder() then raises ('pybind11::init(): factory function returned nullptr')."""
    if trt is None:
        import tensorrt as trt
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as e:  # no CUDA device or driver: TensorRT cannot even create a builder
        return f"tensorrt {trt.__version__} imports but cannot create a Builder, no usable GPU ({_first_line(e)})"
    if builder is None:
        return f"tensorrt {trt.__version__} returned no Builder, no usable GPU"
    del builder
    return None


def build(onnx_path, engine_path, fp16=True, sparsity=False, min_batch=1, opt_batch=1, max_batch=32,
          workspace_mib=WORKSPACE_MIB, fp16_onnx=None, int8=False):
    import tensorrt as trt

    strong = strongly_typed(trt.__version__)
    source = onnx_path
    if strong and fp16:
        if not fp16_onnx:
            raise RuntimeError(f"TensorRT {trt.__version__} is strongly typed: fp16 needs an fp16 ONNX file "
                               "(--fp16-onnx model_fp16.onnx), the fp32 model.onnx would build an fp32 engine")
        source = fp16_onnx
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and major(trt.__version__) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strong and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # accepted, implied on 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.path.abspath(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT cannot parse {os.path.basename(source)}: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16 and not strong:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8 and not strong:  # explicit quantization (Q/DQ nodes) on weak typing needs the INT8 flag
        config.set_flag(trt.BuilderFlag.INT8)
    if sparsity:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):  # each input its own shape; only the batch dimension varies
        t = network.get_input(i)
        rest = tuple(t.shape)[1:]
        profile.set_shape(t.name, (min_batch,) + rest, (opt_batch,) + rest, (max_batch,) + rest)
        shapes[t.name] = list(rest)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    with open(engine_path, "wb") as f:
        f.write(serialized)
    return {"tensorrt": trt.__version__, "typing": "strong" if strong else "weak", "onnx": os.path.basename(source),
            "fp16": fp16, "int8": int8, "sparsity": sparsity, "profile": [min_batch, opt_batch, max_batch], "inputs": shapes,
            "workspace_mib": workspace_mib}


# ------------------------------------------------------------------ artifact scripts (written by compress export)

FP16_ONNX = "model_fp16.onnx"
INT8_ONNX = "model.int8.onnx"  # ONNX QDQ from compress export --dtype int8 (explicit quantization)
TRTEXEC_DIR = "/usr/src/tensorrt/bin"  # where TensorRT's deb and tar installs (and JetPack) keep trtexec


def shape_spec(inputs, batch: int) -> str:
    """trtexec's shape list: every input with its own shape, batch dimension first ('input:4x3x32x32,input1:4x8')."""
    return ",".join(f"{name}:" + "x".join(str(d) for d in (batch, *dims)) for name, dims in inputs)


def trtexec_args(trt_major: int, fp16: bool, sparse: bool, inputs, batches=None, int8: bool = False) -> list:
    """The build-only trtexec arguments for TensorRT `trt_major`: weak typing with --fp16 on 10.x, strongly
    typed from the fp16 ONNX file on 11+. `int8`: the QDQ file, with --int8 on 10.x (explicit quantization),
    its Q/DQ types alone on 11+. `batches` (min, opt, max) for a dynamic batch, else None."""
    strong = trt_major >= STRONG_TYPING_MAJOR
    onnx = INT8_ONNX if int8 else FP16_ONNX if fp16 and strong else "model.onnx"
    args = [f"--onnx={onnx}", "--saveEngine=model.engine"]
    if fp16 and not strong:
        args.append("--fp16")
    if int8 and not strong:
        args.append("--int8")
    if sparse:
        args.append("--sparsity=enable")
    if batches is not None:
        args += [f"{flag}={shape_spec(inputs, b)}" for flag, b in zip(("--minShapes", "--optShapes", "--maxShapes"),
                                                                         batches)]
    return args + [f"--memPoolSize=workspace:{WORKSPACE_MIB}", "--skipInference"]


_FIND_TRTEXEC = f"""# trtexec: $TRTEXEC, else PATH, else {TRTEXEC_DIR}
if [ -n "${{TRTEXEC:-}}" ]; then
  found=$(command -v "$TRTEXEC" || true)
  [ -n "$found" ] || {{ echo "TRTEXEC=$TRTEXEC is not an executable" >&2; exit 127; }}
else
  found=$(command -v trtexec || true)
  if [ -z "$found" ] && [ -x {TRTEXEC_DIR}/trtexec ]; then found={TRTEXEC_DIR}/trtexec; fi
  [ -n "$found" ] || {{ echo "trtexec not found: set TRTEXEC=/path/to/trtexec, put it on PATH, or install TensorRT \
(deb and tar installs keep it in {TRTEXEC_DIR})" >&2; exit 127; }}
fi
TRTEXEC=$found
"""

_TRT_MAJOR = r"""# TensorRT's major version: $TRT_MAJOR, else trtexec's banner ('[TensorRT v100300]' is 10.3.0)
if [ -z "${TRT_MAJOR:-}" ]; then
  v=$("$TRTEXEC" --help 2>&1 | sed -n 's/.*\[TensorRT v\([0-9][0-9]*\)\].*/\1/p' | head -n 1)
  [ -n "$v" ] || { echo "cannot read TensorRT's version from '$TRTEXEC --help': set TRT_MAJOR=10 or 11" >&2; exit 2; }
  if [ "$v" -ge 100000 ]; then TRT_MAJOR=$((v / 10000)); else TRT_MAJOR=$((v / 1000)); fi
fi
"""


def engine_scripts(weak: list, strong: list, run: list, api_cmd: str) -> tuple:
    """(build_engine.sh, run_engine.sh). Both find trtexec as _FIND_TRTEXEC says; the build runs the TensorRT 10
    line (weak typing) or the 11+ line (strongly typed) by the version of the trtexec it found."""
    start = '#!/bin/sh\n{}set -e\ncd "$(dirname "$0")"\n'
    build = (start.format(f"# Build the TensorRT engine on the device with trtexec. With the Python API instead:\n"
                          f"# {api_cmd}\n")
             + _FIND_TRTEXEC + _TRT_MAJOR
             + f'echo "TensorRT $TRT_MAJOR ($TRTEXEC)"\nif [ "$TRT_MAJOR" -ge {STRONG_TYPING_MAJOR} ]; then\n'
             + "  # strongly typed (TensorRT 11+): the precision is the ONNX file's\n"
             + '  "$TRTEXEC" ' + " ".join(strong) + "\nelse\n"
             + '  # weak typing (TensorRT 10.x)\n  "$TRTEXEC" ' + " ".join(weak) + "\nfi\n")
    run_sh = start.format("# Run and time the engine that build_engine.sh built.\n") + _FIND_TRTEXEC + (
        '"$TRTEXEC" ' + " ".join(run) + "\n")
    return build, run_sh


def run_args(inputs, opt_batch=None) -> list:
    return ["--loadEngine=model.engine"] + ([f"--shapes={shape_spec(inputs, opt_batch)}"] if opt_batch else [])


def onnx_inputs(path: str, example_shapes=()) -> list:
    """(name, shape without the batch dimension) of every graph input of an ONNX file, each its own; a
    dimension the file leaves symbolic takes the example input's (same position) size."""
    import onnx

    g = onnx.load(path, load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    out = []
    for k, i in enumerate(x for x in g.input if x.name not in inits):
        ex = tuple(example_shapes[k]) if k < len(example_shapes) else ()
        dims = i.type.tensor_type.shape.dim[1:]
        out.append((i.name, tuple(d.dim_value if d.dim_value > 0 else ex[j] for j, d in enumerate(dims))))
    return out


def write_fp16_onnx(src: str, dst: str) -> dict:
    """The fp16 copy of an fp32 ONNX file that strongly typed TensorRT builds for fp16: weights and compute in
    fp16, inputs and outputs kept fp32 (Casts at the edges), nodes in topological order."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(src), keep_io_types=True)
    g = m.graph
    known = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    todo, order = list(g.node), []
    while todo:  # the converter appends its input Casts at the end: sort for parsers that read in order
        ready = [n for n in todo if all(i in known for i in n.input)]
        if not ready:
            raise ValueError(f"{src}: the fp16 graph has a cycle or a missing input")
        for n in ready:
            known.update(n.output)
        order += ready
        todo = [n for n in todo if not any(n is r for r in ready)]
    del g.node[:]
    g.node.extend(order)
    onnx.save(m, dst)
    return {"file": os.path.basename(dst), "from": os.path.basename(src),
            "converter": "onnxruntime.transformers.float16 (keep_io_types: fp32 inputs and outputs)"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx")
    ap.add_argument("engine")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--fp16-onnx", help="the fp16 ONNX file strongly typed TensorRT (11+) builds for --fp16")
    ap.add_argument("--int8", action="store_true", help="the ONNX file is int8 QDQ (explicit quantization)")
    ap.add_argument("--sparsity", action="store_true")
    ap.add_argument("--min-batch", type=int, default=1)
    ap.add_argument("--opt-batch", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--workspace-mib", type=int, default=WORKSPACE_MIB)
    a = ap.parse_args(argv)
    try:
        import tensorrt as trt
    except ImportError as e:
        print(f"build_trt.py: TensorRT's Python bindings are not installed ({_first_line(e)})", file=sys.stderr)
        return 2
    why = usable_gpu(trt)
    if why:
        print(f"build_trt.py: {why}", file=sys.stderr)
        return 2
    info = build(a.onnx, a.engine, a.fp16, a.sparsity, a.min_batch, a.opt_batch, a.max_batch, a.workspace_mib,
                 a.fp16_onnx, a.int8)
    print(f"wrote {a.engine} ({info})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
