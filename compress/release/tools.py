"""The verbs `compress release` composes, each run as a subprocess with `--json`.

Only command-line contracts are used. What is read from each verb:
- `compress prune ... --json`: exit code (1: onnxruntime parity failed) and the JSON keys `accuracy`,
  `accuracy_dense`, `accuracy_pruned_before_finetune`, `params_before`, `params_after`, `macs_before`,
  `macs_after`, `mac_reduction`, `onnx_parity.ok`, `onnx_parity.max_abs_error`; files `model.onnx`.
- `compress eval DIR --data D --json`: `accuracy`, `accuracy_dense` (present when the dense source is
  recovered), `samples`; on an int8 artifact directory (dtype = "int8"): `accuracy`, `samples`, `agreement_fp32`.
- `compress export SRC --target T [--device D] --out DIR --json`: exit code (1: a runtime's output differs from
  torch); the artifact's `manifest.json` keys `ok`, `parity`, `bench`, `not_verified_here`, and its ONNX file
  (`model.onnx`, else the first `*.onnx`, sorted), whose size is the size budget's value; with `--dtype int8 --calib
  SPEC`, the manifest's `int8.file` (model.int8.onnx, the size budget's file) and `int8.parity`.
- `compress plan ... --dtype int8` for an int8 target (an int8 profile).
- `compress plan MODEL --target T --profile F --latency-budget B --out DIR --json`: exit code, `plan`
  (null: nothing to prune), `DIR/plan.json`.
- `compress predict MODEL_OR_DIR --profile F --json`: `predicted_ms`.

Latency on this machine (cpu) is timed by the project's onnxruntime timing harness
(compress.measure.lockstep: each artifact's ONNX file in its own worker process, session loaded once,
the dense and pruned workers timing one block of N runs each in turn).
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
                    model_args: list[str] | None = None, dtype_args: list[str] | None = None) -> dict:
    """`compress export SRC --target TARGET [DTYPE_ARGS]` into `out` (SRC: a pruned directory, or the dense model
    spec with its `model_args`; `dtype_args`: e.g. --dtype int8 --calib SPEC); return {"onnx": relative path of
    the fp32 ONNX file, "manifest": manifest dict} (an int8 export's file is the manifest's int8.file)."""
    argv = ["export", src, "--target", target, "--out", out] + (["--device", device] if device else [])
    run_verb(argv + (model_args or []) + (dtype_args or []), ok_codes=(0, 1))  # 1: a check failed, in the manifest
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    return {"onnx": os.path.relpath(find_onnx(out), out), "manifest": manifest}


WARMUP = 5
MEASURED_BY = "compress.measure.lockstep onnxruntime"  # part of the measure step's key
PASSES = 2


def measure_ms(dirs: list[str], runs: int, rounds: int, batch: int | None = None) -> list[list[float]]:
    """Median latency (ms) of each artifact directory's ONNX file (find_onnx; or an ONNX file of an artifact
    directory given as such, e.g. its model.int8.onnx) in onnxruntime per round, timed
    by compress.measure.lockstep: one worker process per directory (session loaded once, WARMUP warm-up
    runs), the workers timing one block of `runs` runs each in turn, at `batch` or the exported batch;
    PASSES passes of fresh workers share the `rounds` rounds. Returns out[i][r] for directory i, round r."""
    from compress.export.bench import batch_of, load_manifest
    from compress.measure import Block, block_ms

    if runs < 1 or rounds < 1:
        raise CompressError("runs and rounds must be >= 1")
    jobs = []
    for i, d in enumerate(dirs):
        path = d if d.endswith(".onnx") else find_onnx(d)
        d = os.path.dirname(path) if d.endswith(".onnx") else d
        b = batch_of(d, load_manifest(d), batch)
        jobs.append((i, path, b, f"{path} (batch {b})"))
    passes = min(PASSES, rounds)
    per_pass = -(-rounds // passes)          # the last pass's surplus rounds are dropped
    got = block_ms(jobs, Block(runs=runs, min_seconds=0.0, max_runs=runs, warmup=WARMUP, warmup_seconds=0.0),
                   per_pass, passes)
    return [got[i][:rounds] for i in range(len(dirs))]


def predict_ms(model_or_dir: str, profile: str, model_args: list[str] | None = None) -> float:
    _, j = run_verb(["predict", model_or_dir, "--profile", profile] + (model_args or []))
    return float(j["predicted_ms"])
