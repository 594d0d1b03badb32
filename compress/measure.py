"""Measured latency ratios on this machine (onnxruntime CPU), for planning by measurement.

`paired_ratio(candidate, dense, batch)` times two ONNX files side by side: each in its own process
(`python -m compress.measure PATH BATCH`: onnxruntime and numpy only, the session loaded once), the
two processes timing one block each in turn, so that only one session runs at a time and each
candidate block has a dense block next to it. The ratio is the median over rounds of
candidate block / dense block. On a shared VM the machine's speed drifts by tens of percent over
seconds, so neighbouring blocks are what can be compared; a fresh pair of processes per pass keeps
one process's placement from biasing the result.

`refine(...)` (planner) uses it to correct the planner's predicted budget by measurement.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from compress.errors import CompressError


@dataclass(frozen=True)
class MeasureConfig:
    """How candidates are timed: `rounds` blocks per file and pass, `passes` fresh process pairs, each
    block at least `block_seconds` (and at least `min_runs` runs) after two untimed runs."""
    rounds: int = 6
    passes: int = 2
    block_seconds: float = 0.25
    min_runs: int = 5
    threads: int = 0
    tolerance: float = 0.03      # refine: stop once the measured ratio is within this of the budget
    iterations: int = 4          # refine: at most this many measured candidates


@dataclass
class Paired:
    ratio: float                  # median over rounds of candidate / dense
    per_round: list[float]
    candidate_ms: float           # medians over blocks
    dense_ms: float


def _worker(path: str, batch: int, cfg: MeasureConfig) -> subprocess.Popen:
    w = subprocess.Popen([sys.executable, "-m", "compress.measure", path, str(batch), str(cfg.block_seconds),
                          str(cfg.min_runs), str(cfg.threads)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if w.stdout.readline().strip() != "ready":
        err = w.stderr.read().strip().splitlines()
        w.kill()
        raise CompressError(f"cannot time {path} in onnxruntime: {(err or ['no output'])[-1]}")
    return w


def _block(w: subprocess.Popen, path: str) -> float:
    w.stdin.write("block\n")
    w.stdin.flush()
    line = w.stdout.readline()
    if not line:
        raise CompressError(f"the timing process for {path} died: {(w.stderr.read().strip().splitlines() or ['?'])[-1]}")
    return json.loads(line)["median_ms"]


def paired_ratio(candidate: str, dense: str, batch: int, cfg: MeasureConfig = MeasureConfig()) -> Paired:
    cand_ms, dense_ms, ratios = [], [], []
    for p in range(cfg.passes):
        ws = {}
        try:
            ws = {"c": _worker(candidate, batch, cfg), "d": _worker(dense, batch, cfg)}
            for r in range(cfg.rounds):
                order = ("c", "d") if (r + p) % 2 == 0 else ("d", "c")
                got = {k: _block(ws[k], candidate if k == "c" else dense) for k in order}
                cand_ms.append(got["c"])
                dense_ms.append(got["d"])
                ratios.append(got["c"] / got["d"])
        finally:
            for w in ws.values():
                w.stdin.close()
                w.wait()
    return Paired(statistics.median(ratios), ratios, statistics.median(cand_ms), statistics.median(dense_ms))


def _serve(path: str, batch: int, block_seconds: float, min_runs: int, threads: int) -> None:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [batch] + [int(d) if isinstance(d, int) else 1 for d in i.shape[1:]]
        feeds[i.name] = (np.ones(shape, np.int64) if "int64" in i.type
                         else np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < block_seconds:     # warm-up
        sess.run(None, feeds)
    print("ready", flush=True)
    for _ in sys.stdin:
        for _ in range(2):          # the thread pool slept while the other process ran
            sess.run(None, feeds)
        ts, start = [], time.perf_counter()
        while len(ts) < min_runs or time.perf_counter() - start < block_seconds:
            t = time.perf_counter()
            sess.run(None, feeds)
            ts.append((time.perf_counter() - t) * 1e3)
        print(json.dumps({"median_ms": statistics.median(ts), "runs": len(ts)}), flush=True)


if __name__ == "__main__":   # a timing process: PATH BATCH BLOCK_SECONDS MIN_RUNS THREADS
    _serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
