#!/usr/bin/env python3
"""Run and time a TVM (Relax) library exported by `compress export`: random inputs, warm-up, then the
median of N runs; prints one JSON line. Needs only apache-tvm 0.27 (built with CUDA on a Jetson) and numpy.

    python3 run_tvm.py model.so --device cpu --shape 1,3,224,224 --dtype float32 --runs 50
    python3 run_tvm.py model_jetson.so --device cuda --shape 1,3,224,224
"""

import argparse
import json
import statistics
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lib")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", required=True, help="input shape, e.g. 1,3,224,224")
    ap.add_argument("--dtype", default="float32", choices=["float32", "int64"])
    ap.add_argument("--high", type=int, default=1000, help="int64 inputs are drawn from [0, high)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    a = ap.parse_args(argv)

    import numpy as np
    import tvm
    from tvm import relax

    dev = tvm.cuda(0) if a.device == "cuda" else tvm.cpu(0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(a.lib), dev)
    shape = [int(s) for s in a.shape.split(",")]
    rng = np.random.default_rng(0)
    x = (rng.integers(0, a.high, shape) if a.dtype == "int64" else rng.standard_normal(shape)).astype(a.dtype)
    arg = tvm.runtime.tensor(x, dev)
    for _ in range(a.warmup):
        vm["main"](arg)
    dev.sync()
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        vm["main"](arg)
        dev.sync()
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"runtime": "tvm", "device": a.device, "median_ms": statistics.median(times),
                      "min_ms": min(times), "max_ms": max(times), "runs": len(times), "warmup": a.warmup,
                      "shape": shape}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
