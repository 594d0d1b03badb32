#!/usr/bin/env python3
"""Build a TensorRT engine from an ONNX model (TensorRT's Python API: Builder, OnnxParser, an
optimisation profile for the batch dimension, FP16 and SPARSE_WEIGHTS flags).

Standalone: `compress export` copies this file into the artifact directory, and calls `build()`
itself when `tensorrt` is importable on the exporting machine.

    python3 build_trt.py model.onnx model.engine --fp16 --sparsity --min-batch 1 --opt-batch 1 --max-batch 32
"""

import argparse
import sys


def build(onnx_path, engine_path, fp16=True, sparsity=False, min_batch=1, opt_batch=1, max_batch=32,
          workspace_mib=1024):
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError("TensorRT cannot parse the ONNX model: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if sparsity:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rest = tuple(t.shape)[1:]
        profile.set_shape(t.name, (min_batch,) + rest, (opt_batch,) + rest, (max_batch,) + rest)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    with open(engine_path, "wb") as f:
        f.write(serialized)
    return {"tensorrt": trt.__version__, "fp16": fp16, "sparsity": sparsity,
            "profile": [min_batch, opt_batch, max_batch]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx")
    ap.add_argument("engine")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--sparsity", action="store_true")
    ap.add_argument("--min-batch", type=int, default=1)
    ap.add_argument("--opt-batch", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--workspace-mib", type=int, default=1024)
    a = ap.parse_args(argv)
    info = build(a.onnx, a.engine, a.fp16, a.sparsity, a.min_batch, a.opt_batch, a.max_batch, a.workspace_mib)
    print(f"wrote {a.engine} ({info})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
