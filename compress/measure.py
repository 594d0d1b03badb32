"""The one harness that times ONNX files in onnxruntime (CPU) on this machine.

A file is timed by a worker, its own process (`python -m compress.measure PATH BATCH BLOCK_JSON`:
onnxruntime and numpy only, the session loaded and warmed up once), that prints "ready" and then
times one block per line read on stdin and prints the block as JSON (`median_ms`, `min_ms`,
`max_ms`, `cpu_ms`, `runs`, `warmup`, `batch`). `Block` says how long a block and the warm-up last.

`lockstep(jobs, block, rounds, passes)` drives one worker per file: per round every worker times one
block in turn (the start rotated each round), so only one session runs at a time and every block has
blocks of the other files next to it; every pass starts fresh workers, so that one process's placement
does not bias the result. On a shared VM the machine's speed drifts by tens of percent over seconds,
so neighbouring blocks are what can be compared. `block_ms` gives the blocks' medians in ms.
`lockstep(..., rounds=1, passes=N)` is the fresh-process-per-measurement protocol.

Callers: `paired_ratio(candidate, dense, batch)` (`compress plan --measure`: the median over rounds
of candidate block / dense block), the release gate (compress.release.tools.measure_ms) and the
benchmarks (bench/_common.py).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from compress.errors import CompressError


@dataclass(frozen=True)
class Block:
    """How a worker times. Warm-up, once after loading: at least `warmup` runs and `warmup_seconds`
    (but at most `warmup_max_runs` runs, 0: no cap). A block: two untimed runs (the thread pool slept
    while other workers ran), then timed runs until at least `runs` runs and `min_seconds` are
    done, or a cap is hit: `max_runs` runs, or `max_seconds` once `min_runs` runs are done (0: none).
    `threads`: intra-op threads (0: onnxruntime's default)."""
    runs: int = 5
    min_seconds: float = 0.25
    max_runs: int = 0
    max_seconds: float = 0.0
    min_runs: int = 1
    warmup: int = 0
    warmup_seconds: float = 0.25
    warmup_max_runs: int = 0
    threads: int = 0


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

    def block(self) -> Block:
        return Block(runs=self.min_runs, min_seconds=self.block_seconds, warmup_seconds=self.block_seconds,
                     threads=self.threads)


@dataclass
class Paired:
    ratio: float                  # median over rounds of candidate / dense
    per_round: list[float]
    candidate_ms: float           # medians over blocks
    dense_ms: float


def worker_argv(path: str, batch: int, block: Block) -> list[str]:
    """The command line of a timing worker for `path` at `batch`."""
    return [sys.executable, "-m", "compress.measure", str(path), str(batch), json.dumps(asdict(block))]


def _start(argv: list[str], what: str) -> subprocess.Popen:
    w = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if w.stdout.readline().strip() != "ready":
        err = w.stderr.read().strip().splitlines()
        w.kill()
        w.wait()
        raise CompressError(f"cannot time {what} in onnxruntime: {(err or ['no output'])[-1]}")
    return w


def _block(w: subprocess.Popen, what: str) -> dict:
    w.stdin.write("block\n")
    w.stdin.flush()
    line = w.stdout.readline()
    if not line:
        raise CompressError(f"the timing process for {what} died: {(w.stderr.read().strip().splitlines() or ['?'])[-1]}")
    return json.loads(line)


def lockstep(jobs: list[tuple], block: Block, rounds: int, passes: int, annotate=None) -> dict:
    """Time several ONNX files in lockstep. `jobs`: (key, path, batch[, what]); `what` names the file in
    errors (default: the path). Per pass every job gets a fresh worker; per round each worker times
    one block in turn, the start rotated each round and pass. Returns key -> the blocks' JSON
    (passes x rounds, pass-major), each passed through `annotate` when given."""
    if rounds < 1 or passes < 1:
        raise CompressError(f"rounds and passes must be >= 1, got {rounds} and {passes}")
    jobs = [(j[0], worker_argv(j[1], j[2], block), j[3] if len(j) > 3 else str(j[1])) for j in jobs]
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
                try:
                    w.stdin.close()
                except OSError:
                    pass
                w.wait()
    return out


def block_ms(jobs: list[tuple], block: Block, rounds: int, passes: int) -> dict:
    """`lockstep`, keeping each block's median in ms: key -> [ms per block] (passes x rounds)."""
    return {k: [float(m["median_ms"]) for m in v] for k, v in lockstep(jobs, block, rounds, passes).items()}


def paired_ratio(candidate: str, dense: str, batch: int, cfg: MeasureConfig = MeasureConfig()) -> Paired:
    got = block_ms([("c", candidate, batch), ("d", dense, batch)], cfg.block(), cfg.rounds, cfg.passes)
    ratios = [c / d for c, d in zip(got["c"], got["d"])]
    return Paired(statistics.median(ratios), ratios, statistics.median(got["c"]), statistics.median(got["d"]))


def _run_block(sess, feeds, b: Block, batch: int) -> dict:
    times, cpu = [], []
    start = time.perf_counter()
    while True:
        i, spent = len(times), time.perf_counter() - start
        if i >= b.runs and spent >= b.min_seconds:
            break
        if b.max_runs and i >= b.max_runs:
            break
        if b.max_seconds and i >= b.min_runs and spent > b.max_seconds:
            break
        c0, t0 = time.process_time(), time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "cpu_ms": statistics.median(cpu), "runs": len(times), "warmup": b.warmup, "batch": batch}


def _serve(path: str, batch: int, b: Block) -> None:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if b.threads:
        so.intra_op_num_threads = b.threads
    from compress.kernels import bsr_cpu_runtime

    bsr_cpu_runtime.register_beside(so, path)           # model.bsr.onnx: compress's block-sparse op
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [batch] + [int(d) if isinstance(d, int) else 1 for d in i.shape[1:]]
        feeds[i.name] = (np.ones(shape, np.int64) if "int64" in i.type
                         else np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    t0, n = time.perf_counter(), 0
    while n < b.warmup or (time.perf_counter() - t0 < b.warmup_seconds
                           and not (b.warmup_max_runs and n >= b.warmup_max_runs)):
        sess.run(None, feeds)
        n += 1
    print("ready", flush=True)
    for _ in sys.stdin:
        for _ in range(2):          # the thread pool slept while the other workers ran
            sess.run(None, feeds)
        print(json.dumps(_run_block(sess, feeds, b, batch)), flush=True)


if __name__ == "__main__":   # a timing worker: PATH BATCH BLOCK_JSON (see worker_argv)
    _serve(sys.argv[1], int(sys.argv[2]), Block(**json.loads(sys.argv[3])))
