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


def _start(argv: list[str], what: str) -> subprocess.Popen:
    w = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if w.stdout.readline().strip() != "ready":
        err = w.stderr.read().strip().splitlines()
        w.kill()
        raise CompressError(f"cannot time {what} in onnxruntime: {(err or ['no output'])[-1]}")
    return w


def _block(w: subprocess.Popen, what: str) -> dict:
    w.stdin.write("block\n")
    w.stdin.flush()
    line = w.stdout.readline()
    if not line:
        raise CompressError(f"the timing process for {what} died: {(w.stderr.read().strip().splitlines() or ['?'])[-1]}")
    return json.loads(line)


def lockstep(jobs: list[tuple], rounds: int, passes: int, annotate=None) -> dict:
    """Time several files in lockstep. `jobs`: (key, argv of a timing process, what it times); a
    timing process loads its session, prints "ready", then prints one JSON block per stdin line. Per
    pass every job gets a fresh process; per round each process times one block in turn, the start
    rotated each round. Returns key -> the blocks' JSON (passes x rounds), each passed through
    `annotate` when given."""
    out: dict = {key: [] for key, _, _ in jobs}
    n = len(jobs)
    for p in range(passes):
        ws = []
        try:
            for _, argv, what in jobs:
                ws.append(_start(argv, what))
            for r in range(rounds):
                for i in range(n):
                    j = (i + r + p) % n
                    m = _block(ws[j], jobs[j][2])
                    out[jobs[j][0]].append(annotate(m) if annotate else m)
        finally:
            for w in ws:
                w.stdin.close()
                w.wait()
    return out


def _argv(path: str, batch: int, cfg: MeasureConfig) -> list[str]:
    return [sys.executable, "-m", "compress.measure", path, str(batch), str(cfg.block_seconds),
            str(cfg.min_runs), str(cfg.threads)]


def paired_ratio(candidate: str, dense: str, batch: int, cfg: MeasureConfig = MeasureConfig()) -> Paired:
    got = lockstep([("c", _argv(candidate, batch, cfg), candidate), ("d", _argv(dense, batch, cfg), dense)],
                   cfg.rounds, cfg.passes)
    cand_ms = [m["median_ms"] for m in got["c"]]
    dense_ms = [m["median_ms"] for m in got["d"]]
    ratios = [c / d for c, d in zip(cand_ms, dense_ms)]
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
