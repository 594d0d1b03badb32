"""The verbs `compress release` composes, each run as a subprocess with `--json`.

Only command-line contracts are used. What is read from each verb:
- `compress prune ... --json`: exit code (1: onnxruntime parity failed) and the JSON keys `accuracy`,
  `accuracy_dense`, `accuracy_pruned_before_finetune`, `params_before`, `params_after`, `macs_before`,
  `macs_after`, `mac_reduction`, `onnx_parity.ok`, `onnx_parity.max_abs_error`; files `model.onnx`.
- `compress eval DIR --data D --json`: `accuracy`, `accuracy_dense` (present when the dense source is
  recovered), `samples`.
- `compress export SRC --target T [--device D] --out DIR --json`: exit code (1: a runtime's output differs from
  torch); the artifact's `manifest.json` keys `ok`, `parity`, `bench`, `not_verified_here`, and its ONNX file
  (`model.onnx`, else the first `*.onnx`, sorted), whose size is the size budget's value.
- `compress plan MODEL --target T --profile F --latency-budget B --out DIR --json`: exit code, `plan`
  (null: nothing to prune), `DIR/plan.json`.
- `compress predict MODEL_OR_DIR --profile F --json`: `predicted_ms`.

Latency on this machine (cpu) is timed by the function `compress bench` times with
(compress.export.bench.time_alternating: the manifest's onnxruntime runner in its own process, warm-up,
median of N runs), dense and pruned artifacts alternating.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

from compress.errors import CompressError


def compress_cmd() -> list[str]:
    return [sys.executable, "-m", "compress"]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no message)"


def run_verb(argv: list[str], ok_codes: tuple[int, ...] = (0,)) -> tuple[int, dict]:
    """Run `compress ARGV --json`; return (exit code, parsed JSON). Other exit codes raise CompressError
    with the verb's own error line."""
    cmd = compress_cmd() + list(argv) + ["--json"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode not in ok_codes:
        raise CompressError(f"`compress {' '.join(argv)}` exited {r.returncode}: {_last_line(r.stderr)}")
    try:
        return r.returncode, json.loads(r.stdout)
    except json.JSONDecodeError:
        raise CompressError(f"`compress {' '.join(argv)}` printed no JSON: {_last_line(r.stdout)}") from None


def machine() -> dict:
    """What a latency measurement depends on (part of the measure step's cache key)."""
    from importlib.metadata import version

    from compress.machine import cpuinfo

    return {"cpu": cpuinfo().model_name(platform.processor()), "cores": os.cpu_count(),
            "machine": platform.machine(), "onnxruntime": version("onnxruntime")}


def find_onnx(d: str) -> str:
    if os.path.isfile(os.path.join(d, "model.onnx")):
        return os.path.join(d, "model.onnx")
    found = sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs if f.endswith(".onnx"))
    if not found:
        raise CompressError(f"no ONNX file in the artifact directory {d}")
    return os.path.join(d, found[0])


def export_artifact(src: str, target: str, device: str | None, out: str,
                    model_args: list[str] | None = None) -> dict:
    """`compress export SRC --target TARGET` into `out` (SRC: a pruned directory, or the dense model spec with
    its `model_args`); return {"onnx": relative path, "manifest": manifest dict}."""
    argv = ["export", src, "--target", target, "--out", out] + (["--device", device] if device else [])
    run_verb(argv + (model_args or []), ok_codes=(0, 1))  # 1: a parity check failed, recorded in the manifest
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    return {"onnx": os.path.relpath(find_onnx(out), out), "manifest": manifest}


WARMUP = 5
MEASURED_BY = "compress.export.bench.time_alternating onnxruntime"  # part of the measure step's key


def measure_ms(dirs: list[str], runs: int, rounds: int, batch: int | None = None) -> list[list[float]]:
    """Median latency (ms) of each artifact directory's onnxruntime runner per round, timed as `compress bench`
    times it (each measurement in its own process: WARMUP warm-up runs, then the median of `runs`, at `batch`
    or the exported batch), the directories alternating round by round. Returns out[i][r] for directory i,
    round r."""
    from compress.export.bench import time_alternating

    rows = time_alternating(dirs, "onnxruntime", runs=runs, warmup=WARMUP, threads=0, rounds=rounds, batch=batch)
    for d, row in zip(dirs, rows):
        bad = [r for r in row if r.get("median_ms") is None]
        if bad:
            raise CompressError(f"timing {d} in onnxruntime failed: {bad[0].get('reason')}")
    return [[float(r["median_ms"]) for r in row] for row in rows]


def predict_ms(model_or_dir: str, profile: str, model_args: list[str] | None = None) -> float:
    _, j = run_verb(["predict", model_or_dir, "--profile", profile] + (model_args or []))
    return float(j["predicted_ms"])
