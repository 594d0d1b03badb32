"""Time one ONNX file in onnxruntime (CPUExecutionProvider) and print JSON on stdout.

Run in a fresh process per measurement: python bench/_ort_time.py MODEL.onnx --batch 8 --warmup 3 --runs 20
Imports only onnxruntime and numpy so that start-up stays cheap.

With --serve the process loads the session once, prints "ready", then times one block per line read
on stdin (a few untimed runs to wake the thread pool, then --runs / --min-seconds as above) and
prints its JSON: a timing worker that _common.alternate_workers drives in lockstep with the workers
of the other files, so that only one session runs at a time and slow drifts of the machine fall on
every file alike.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=0.0,
                    help="stop timing early once this much time is spent (at least --min-runs runs; 0: no cap)")
    ap.add_argument("--min-runs", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=0.3,
                    help="a small model keeps running past --runs until this much time is timed (at most 50 x "
                         "--runs); warm-up likewise lasts at least a third of it: a 0.1 ms network's 15 runs "
                         "are 1.5 ms, too short to settle")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime default)")
    ap.add_argument("--serve", action="store_true", help="time one block per stdin line (see above)")
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if a.threads:
        so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(a.path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [a.batch] + [int(d) for d in inp.shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    feeds = {inp.name: x}
    w0, i = time.perf_counter(), 0
    while i < a.warmup or (time.perf_counter() - w0 < a.min_seconds / 3 and i < 50 * max(a.warmup, 1)):
        sess.run(None, feeds)
        i += 1
    if not a.serve:
        print(json.dumps(block(sess, feeds, a)))
        return
    print("ready", flush=True)
    for _ in sys.stdin:
        for _ in range(2):          # the pool slept while the other workers ran
            sess.run(None, feeds)
        print(json.dumps(block(sess, feeds, a)), flush=True)


def block(sess, feeds, a) -> dict:
    times, cpu = [], []
    start = time.perf_counter()
    for i in range(50 * a.runs):
        spent = time.perf_counter() - start
        if a.max_seconds and i >= a.min_runs and spent > a.max_seconds:
            break
        if i >= a.runs and spent >= a.min_seconds:
            break
        c0, t0 = time.process_time(), time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "cpu_ms": statistics.median(cpu), "runs": len(times), "warmup": a.warmup, "batch": a.batch}


if __name__ == "__main__":
    main()
