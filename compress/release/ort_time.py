"""Median latency of one ONNX file in onnxruntime (CPUExecutionProvider, batch 1), printed as JSON.
Run in a fresh process per measurement; imports only onnxruntime and numpy (as bench/_ort_time.py).

    python -m compress.release.ort_time MODEL.onnx [--runs 50] [--warmup 5]
"""

import argparse
import json
import statistics
import time


def main() -> None:
    import numpy as np
    import onnxruntime as ort

    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(a.path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [1] + [int(d) for d in inp.shape[1:]]
    feeds = {inp.name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    for _ in range(a.warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"median_ms": statistics.median(times), "min_ms": min(times), "runs": len(times)}))


if __name__ == "__main__":
    main()
