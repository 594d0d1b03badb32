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


def time_alternating(dirs: list[str], runtime: str, runs: int = 50, warmup: int = 5, threads: int = 0,
                     rounds: int = 1) -> list[list[dict]]:
    """Time runtime `runtime` (the first manifest entry whose name starts with it) of each artifact directory
    as `compress bench` does (time_runtime: its own process, warm-up, median of `runs`), the directories taken
    in turn, `rounds` times, so drifting machine load hits each alike. Returns out[i][r]: directory i, round r."""
    if runs < 1 or warmup < 0 or rounds < 1:
        raise CompressError("runs and rounds must be >= 1 and warm-up >= 0")
    argvs = []
    for d in dirs:
        found = [b for b in runtimes(d, load_manifest(d)) if b["runtime"].startswith(runtime)]
        if not found:
            raise CompressError(f"{d}: the manifest lists no {runtime} runtime to time")
        argvs.append(found[0]["argv"])
    out: list[list[dict]] = [[] for _ in dirs]
    for _ in range(rounds):
        for i, d in enumerate(dirs):
            out[i].append(time_runtime(d, argvs[i], runs, warmup, threads))
    return out


def bench(d: str, runs: int = 50, warmup: int = 5, threads: int = 0) -> dict:
    if runs < 1 or warmup < 0:
        raise CompressError("--runs must be >= 1 and --warmup >= 0")
    man = load_manifest(d)
    results = []
    for b in runtimes(d, man):
        results.append({"runtime": b["runtime"], "command": " ".join(["python3"] + b["argv"])}
                       | time_runtime(d, b["argv"], runs, warmup, threads))
    nv = list(man.get("not_verified_here", []))
    if man["target"]["name"] != "cpu":
        nv.append(f"latency of the {man['target']['name']} runtimes (TensorRT, TVM CUDA): not measurable on this "
                  "machine; onnxruntime CPU timed as a host reference only")
    exp = man.get("expected_latency", {})
    return {"dir": d, "model": man["source"]["model"], "target": man["target"]["name"],
            "shape": man["source"]["input_shape"], "runs": runs, "warmup": warmup, "threads": threads,
            "expected_ms": exp.get("ms"), "expected_reason": exp.get("reason"), "results": results,
            "loadavg": list(os.getloadavg()), "not_verified_here": nv}
