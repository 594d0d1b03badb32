#!/usr/bin/env python3
"""Run and time an ONNX model in onnxruntime (CPU, or CUDA/TensorRT execution providers when present):
random inputs, warm-up, then the median of N runs; prints one JSON line. Needs onnxruntime and numpy.

    python3 run_ort.py model.ort.onnx --shape 1,3,224,224 --runs 50
    python3 run_ort.py model.bsr.onnx --bsr-kernel --shape 1,128 --dtype int64   (block-sparse layers)
    python3 run_ort.py model.ort.onnx --input input_ids:1,16:int64:high=30522 --input attention_mask:1,16:int64:mask
      (a model with several inputs: one --input NAME:SHAPE:DTYPE[:VALUES] each; VALUES high=N (integers in
       [0, N)), mask (each row 1s then 0s: padding), zeros, normal (float))
"""

import argparse
import json
import statistics
import sys
import time

VALUES = ("normal", "mask", "zeros")


def parse_input(text):
    """NAME:SHAPE:DTYPE[:VALUES] -> (name, shape, dtype, values); values 'high=N', mask, zeros or normal."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or not parts[0]:
        raise argparse.ArgumentTypeError(f"--input {text!r}: use NAME:SHAPE:DTYPE[:VALUES], "
                                         "e.g. input_ids:1,16:int64:high=30522 or attention_mask:1,16:int64:mask")
    name, shape, dtype = parts[:3]
    values = parts[3] if len(parts) == 4 else ("normal" if dtype == "float32" else "high=1000")
    try:
        dims = [int(s) for s in shape.split(",")]
        ok = dtype in ("float32", "int64") and min(dims) > 0 and (
            values in VALUES or (values.startswith("high=") and int(values[5:]) > 0))
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"--input {text!r}: SHAPE positive integers, DTYPE float32 or int64, "
                                         f"VALUES high=N, {', '.join(VALUES)}")
    return name, dims, dtype, values


def make_input(rng, shape, dtype, values):
    """Random values for one input: token ids below N, a padded 0/1 mask (row i keeps its first 1..len tokens),
    zeros, or standard normal floats."""
    import numpy as np

    if values == "mask":
        keep = rng.integers(1, shape[-1] + 1, size=tuple(shape[:-1]) + (1,))
        return (np.arange(shape[-1]) < keep).astype(dtype)
    if values == "zeros":
        return np.zeros(shape, dtype)
    if values.startswith("high="):
        return rng.integers(0, int(values[5:]), shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--shape", help="input shape, e.g. 1,3,224,224 (a model with one input)")
    ap.add_argument("--input", action="append", type=parse_input, default=[], metavar="NAME:SHAPE:DTYPE[:VALUES]",
                    help="one per input of a model with several (instead of --shape/--dtype/--high)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "int64"])
    ap.add_argument("--high", type=int, default=1000, help="int64 inputs are drawn from [0, high)")
    ap.add_argument("--provider", default="CPUExecutionProvider")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    ap.add_argument("--bsr-kernel", action="store_true",
                    help="run BlockSparseLinear nodes with the kernel shipped beside the model "
                         "(bsr_cpu_runtime.py + libcompress_bsr.so)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    a = ap.parse_args(argv)
    if bool(a.shape) == bool(a.input):
        ap.error("give --shape (one input) or an --input for every input")

    import numpy as np
    import onnxruntime as ort

    if a.bsr_kernel:
        import os
        sys.path.insert(0, os.path.dirname(os.path.abspath(a.model)))
        import bsr_cpu_runtime

        so = bsr_cpu_runtime.session_options(threads=a.threads)
    else:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if a.threads:
            so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(a.model, so, providers=[a.provider])
    rng = np.random.default_rng(0)
    graph = [i.name for i in sess.get_inputs()]
    if a.input:
        given = [i[0] for i in a.input]
        if sorted(given) != sorted(graph):
            print(f"run_ort.py: {a.model} takes inputs {', '.join(graph)}; --input gave {', '.join(given)}",
                  file=sys.stderr)
            return 2
        feeds = {n: make_input(rng, s, d, v) for n, s, d, v in a.input}
        shape = a.input[0][1]
    else:
        if len(graph) != 1:
            print(f"run_ort.py: {a.model} takes {len(graph)} inputs ({', '.join(graph)}): give an --input for each",
                  file=sys.stderr)
            return 2
        shape = [int(s) for s in a.shape.split(",")]
        feeds = {graph[0]: make_input(rng, shape, a.dtype, f"high={a.high}" if a.dtype == "int64" else "normal")}
    for _ in range(a.warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"runtime": "onnxruntime", "provider": a.provider, "median_ms": statistics.median(times),
                      "min_ms": min(times), "max_ms": max(times), "runs": len(times), "warmup": a.warmup,
                      "shape": shape} | ({"inputs": {n: s for n, s, _, _ in a.input}} if a.input else {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
