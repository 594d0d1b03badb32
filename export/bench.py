"""Time an artifact directory's runtimes on this machine (the scripts the manifest lists, each in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from compress.errors import CompressError
from compress.export.manifest import MANIFEST_FILE


def load_manifest(d: str) -> dict:
    p = os.path.join(d, MANIFEST_FILE)
    if not os.path.isfile(p):
        raise CompressError(f"{d} has no {MANIFEST_FILE}; pass a directory written by compress export")
    try:
        with open(p) as f:
            return json.load(f)
    except ValueError as e:
        raise CompressError(f"{p} is not valid JSON ({e}); re-run compress export") from None


def batch_of(d: str, man: dict, batch: int | None) -> int:
    """The batch to time artifact `d` (manifest `man`) at: `batch`, or the exported batch when None. A
    static-batch artifact only runs at its own batch."""
    exported = man["source"]["input_shape"][0]
    if batch is None:
        return exported
    if batch < 1:
        raise CompressError(f"--batch must be >= 1, got {batch}")
    if not man.get("onnx", {}).get("dynamic_batch") and batch != exported:
        raise CompressError(f"{d} was exported with a static batch of {exported}; time it at --batch {exported}, "
                            f"or re-export with compress export --batch dynamic")
    return batch


def at_batch(d: str, man: dict, argv: list[str], batch: int | None) -> list[str]:
    """`argv` (a manifest bench entry) with its `--shape`, or the shape of each `--input NAME:SHAPE:DTYPE[:VALUES]`
    (a model with several inputs, one per input spec of the manifest), set to batch `batch` (None: as exported).
    A static-batch artifact only runs at its own batch."""
    if batch is None:
        return argv
    batch = batch_of(d, man, batch)
    out = list(argv)
    for i in range(1, len(out)):
        if out[i - 1] == "--shape":
            out[i] = ",".join([str(batch)] + out[i].split(",")[1:])
        elif out[i - 1] == "--input":
            name, shape, rest = out[i].split(":", 2)
            out[i] = f"{name}:{','.join([str(batch)] + shape.split(',')[1:])}:{rest}"
    return out


def time_runtime(d: str, argv: list[str], runs: int, warmup: int, threads: int) -> dict:
    env = dict(os.environ)
    cmd = [sys.executable] + argv + ["--runs", str(runs), "--warmup", str(warmup)]
    if threads:
        env["TVM_NUM_THREADS"] = str(threads)
        if argv[0] == "run_ort.py":
            cmd += ["--threads", str(threads)]
    p = subprocess.run(cmd, cwd=d, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"median_ms": None, "reason": f"{argv[0]} exited {p.returncode}: {tail[:300]}"}
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"median_ms": None, "reason": f"{argv[0]} printed no JSON"}


def runtimes(d: str, man: dict) -> list[dict]:
    """The manifest's runtimes to time ({"runtime", "argv"}), their files checked to be present."""
    out = []
    for b in man.get("bench", []):
        missing = [a for a in b["argv"][:2] if not os.path.isfile(os.path.join(d, a))]
        if missing:
            raise CompressError(f"{d}: {missing[0]} is missing; re-run compress export")
        out.append(b)
    return out


def bench(d: str, runs: int = 50, warmup: int = 5, threads: int = 0, batch: int | None = None) -> dict:
    if runs < 1 or warmup < 0:
        raise CompressError("--runs must be >= 1 and --warmup >= 0")
    man = load_manifest(d)
    results = []
    shape = man["source"]["input_shape"]
    if batch is not None:
        shape = [batch, *shape[1:]]
    for b in runtimes(d, man):
        argv = at_batch(d, man, b["argv"], batch)
        timed = time_runtime(d, argv, runs, warmup, threads)   # the manifest's runtime name wins over the runner's
        own = {"expected_ms": b["expected_ms"]} if "expected_ms" in b and batch in (None, man["source"]["input_shape"][0]) \
            else {}                                            # a runtime with its own expectation (model.bsr.onnx)
        results.append(timed | {"runtime": b["runtime"], "command": " ".join(["python3"] + argv)} | own)
    nv = list(man.get("not_verified_here", []))
    if man["target"]["name"] != "cpu":
        nv.append(f"latency of the {man['target']['name']} runtimes (TensorRT, TVM CUDA): not measurable on this "
                  "machine; onnxruntime CPU timed as a host reference only")
    exp = man.get("expected_latency", {})
    exp_ms, exp_reason = exp.get("ms"), exp.get("reason")
    exported = man["source"]["input_shape"][0]
    if batch is not None and batch != exported:
        exp_ms, exp_reason = None, f"the manifest's expectation is for batch {exported}, not {batch}"
    inputs = [s | {"shape": [batch, *s["shape"][1:]] if batch is not None else s["shape"]}
              for s in man["source"].get("inputs") or []]
    return {"dir": d, "model": man["source"]["model"], "target": man["target"]["name"],
            "shape": shape, "inputs": inputs, "runs": runs, "warmup": warmup, "threads": threads,
            "expected_ms": exp_ms, "expected_reason": exp_reason, "results": results,
            "loadavg": list(os.getloadavg()), "not_verified_here": nv}
