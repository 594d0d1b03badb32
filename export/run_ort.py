#!/usr/bin/env python3
"""Run and time an ONNX model in onnxruntime (CPU, or CUDA/TensorRT execution providers when present):
random inputs, warm-up, then the median of N runs; prints one JSON line. Needs onnxruntime and numpy.

    python3 run_ort.py model.ort.onnx --shape 1,3,224,224 --runs 50
    python3 run_ort.py model.bsr.onnx --bsr-kernel --shape 1,128 --dtype int64   (block-sparse layers)
"""

import argparse
import json
import statistics
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--shape", required=True, help="input shape, e.g. 1,3,224,224")
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
    shape = [int(s) for s in a.shape.split(",")]
    rng = np.random.default_rng(0)
    x = (rng.integers(0, a.high, shape) if a.dtype == "int64" else rng.standard_normal(shape)).astype(a.dtype)
    feeds = {sess.get_inputs()[0].name: x}
    for _ in range(a.warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"runtime": "onnxruntime", "provider": a.provider, "median_ms": statistics.median(times),
                      "min_ms": min(times), "max_ms": max(times), "runs": len(times), "warmup": a.warmup,
                      "shape": shape}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
