"""The verbs `compress release` composes, each run as a subprocess with `--json`.

Only command-line contracts are used. What is read from each verb:
- `compress prune ... --json`: exit code (1: onnxruntime parity failed) and the JSON keys `accuracy`,
  `accuracy_dense`, `accuracy_pruned_before_finetune`, `params_before`, `params_after`, `macs_before`,
  `macs_after`, `mac_reduction`, `onnx_parity.ok`, `onnx_parity.max_abs_error`; files `model.onnx`.
- `compress eval DIR --data D --json`: `accuracy`, `accuracy_dense` (present when the dense source is
  recovered), `samples`.
- `compress export SRC --target T [--device D] --out DIR --json` (gpu and jetson always; cpu when
  USE_EXPORT_FOR_CPU): exit code; the artifact's `manifest.json` key `parity` (kept as is) and its ONNX file
  (`model.onnx`, else the first `*.onnx`, sorted), whose size is the size budget's value.
- `compress bench DIR --runs N --json` (switch in `measure_ms`): `results[i].median_ms` of the first entry
  whose `runtime` starts with "onnxruntime".
- `compress plan MODEL --target T --profile F --latency-budget B --out DIR --json`: exit code, `DIR/plan.json`.
- `compress predict DIR --profile F --json`: `predicted_ms`.

While `compress export` / `compress bench` are being built, the cpu artifact is the pruned directory's ONNX file with
a manifest written here (the dense model's ONNX comes from `python -m compress.release.dense_onnx`), and
latency is measured by `python -m compress.release.ort_time` (one process per measurement).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys

from compress.errors import CompressError

# The cpu artifact: False -> the pruned directory's model.onnx with a manifest written here; True -> `compress
# export --target cpu` (adds the TVM build). Flip once `compress export` is settled; cached steps re-run.
USE_EXPORT_FOR_CPU = False


def compress_cmd() -> list[str]:
    return [sys.executable, "-m", "compress"]


@functools.cache
def has_verb(name: str) -> bool:
    """Whether this install's CLI has verb NAME (`compress NAME --help` exits 0)."""
    r = subprocess.run(compress_cmd() + [name, "--help"], capture_output=True, text=True)
    return r.returncode == 0


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
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    from importlib.metadata import version

    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "onnxruntime": version("onnxruntime")}


def find_onnx(d: str) -> str:
    if os.path.isfile(os.path.join(d, "model.onnx")):
        return os.path.join(d, "model.onnx")
    found = sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs if f.endswith(".onnx"))
    if not found:
        raise CompressError(f"no ONNX file in the artifact directory {d}")
    return os.path.join(d, found[0])


def export_artifact(src: str, target: str, device: str | None, out: str, dense_args: list[str] | None = None,
                    parity: dict | None = None) -> dict:
    """Write the deployable artifact for `src` (a pruned directory, or with `dense_args` the dense model
    spec) into `out`; return {"onnx": relative path, "manifest": manifest dict, "by": tool}."""
    if target != "cpu" or USE_EXPORT_FOR_CPU:
        argv = ["export", src, "--target", target, "--out", out] + (["--device", device] if device else [])
        argv += dense_args or []
        run_verb(argv)
        with open(os.path.join(out, "manifest.json")) as f:
            manifest = json.load(f)
        return {"onnx": os.path.relpath(find_onnx(out), out), "manifest": manifest, "by": "compress export"}
    return _fallback_cpu_artifact(src, out, dense_args, parity)


def _fallback_cpu_artifact(src: str, out: str, dense_args: list[str] | None, parity: dict | None) -> dict:
    import shutil

    from compress.io import write_json
    from compress.release.cache import file_sha256

    os.makedirs(out, exist_ok=True)
    onnx = os.path.join(out, "model.onnx")
    if dense_args is None:
        shutil.copyfile(os.path.join(src, "model.onnx"), onnx)
    else:
        cmd = [sys.executable, "-m", "compress.release.dense_onnx", src, onnx] + dense_args
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise CompressError(f"exporting the dense model {src} to ONNX failed: {_last_line(r.stderr)}")
        parity = json.loads(r.stdout)
    from importlib.metadata import version

    manifest = {
        "target": "cpu", "runtime": {"onnxruntime": version("onnxruntime")},
        "source": src if dense_args is not None else os.path.basename(os.path.normpath(src)),
        "files": [{"path": "model.onnx", "sha256": file_sha256(onnx), "bytes": os.path.getsize(onnx)}],
        "parity": parity, "expected_latency_ms": None,
        "commands": {"run": "python -c \"import onnxruntime as ort, numpy as np; "
                            "s = ort.InferenceSession('model.onnx', providers=['CPUExecutionProvider']); "
                            "i = s.get_inputs()[0]; print(s.run(None, {i.name: np.zeros([1] + i.shape[1:], "
                            "np.float32)})[0])\""},
        "written_by": "compress release (cpu fallback: `compress export` is not installed)",
    }
    write_json(os.path.join(out, "manifest.json"), manifest)
    return {"onnx": "model.onnx", "manifest": manifest, "by": "compress release fallback"}


MEASURED_BY = "python -m compress.release.ort_time"  # part of the measure step's key; "compress bench" after the switch


def measure_ms(artifact_dir: str, onnx_rel: str, runs: int) -> float:
    """Median latency (ms, batch 1) of one artifact on this machine, in a fresh process.
    The one switch point: to use `compress bench`, return _bench_ms(artifact_dir, runs)."""
    return _ort_time_ms(os.path.join(artifact_dir, onnx_rel), runs)


def _ort_time_ms(onnx: str, runs: int) -> float:
    cmd = [sys.executable, "-m", "compress.release.ort_time", onnx, "--runs", str(runs), "--warmup", "5"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise CompressError(f"timing {onnx} in onnxruntime failed: {_last_line(r.stderr)}")
    return float(json.loads(r.stdout)["median_ms"])


def _bench_ms(artifact_dir: str, runs: int) -> float:
    _, j = run_verb(["bench", artifact_dir, "--runs", str(runs)])
    ort = [r for r in j["results"] if r["runtime"].startswith("onnxruntime") and r.get("median_ms") is not None]
    if not ort:
        raise CompressError(f"`compress bench {artifact_dir}` measured no onnxruntime latency")
    return float(ort[0]["median_ms"])


def predict_ms(model_or_dir: str, profile: str) -> float:
    _, j = run_verb(["predict", model_or_dir, "--profile", profile])
    return float(j["predicted_ms"])
