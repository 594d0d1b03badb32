"""manifest.json of an artifact directory: where the model came from, what each file is (sha256),
runtime versions, expected and measured numbers, and what was or was not verified here."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from compress.errors import first_line

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
NOT_VERIFIED = "not verified on this machine"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files(d: str) -> dict[str, dict]:
    out = {}
    for p in sorted(Path(d).rglob("*")):
        if p.is_file() and p.name != MANIFEST_FILE:
            out[str(p.relative_to(d))] = {"sha256": sha256_file(str(p)), "bytes": p.stat().st_size}
    return out


def runtime_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxruntime", "apache-tvm", "apache-tvm-ffi", "tensorrt", "cuda-bindings"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        from compress.export.onnx import OPSET
        out["onnx_opset"] = OPSET
    except ImportError:
        pass
    return out


def expected_latency(model, inputs, target: str, batch: int, sparse: bool = False, dtype: str | None = None) -> dict:
    """The hardware profile's expected latency, or null with the reason it is unavailable. `sparse`: of the
    artifact whose block-sparse layers run the sparse kernel (model.bsr.onnx); `dtype` int8: of model.int8.onnx,
    from the target's int8 profile."""
    from compress.hardware_profiles import expected_latency_ms

    try:
        ms = expected_latency_ms(model, inputs, target, batch, sparse, dtype=dtype)
    except Exception as e:  # a profile missing for this target or op is not an export failure
        return {"ms": None, "reason": f"{type(e).__name__}: {first_line(e, 200, strip=False, empty='')}"}
    if ms is None:
        return {"ms": None, "reason": f"no {dtype + ' ' if dtype else ''}latency profile for target {target} at batch {batch}"}
    return ({"ms": float(ms), "source": "compress.hardware_profiles.expected_latency_ms", "batch": batch}
            | ({"dtype": dtype} if dtype else {}))


def pruning_accuracy(model_dir: str | None) -> dict:
    """Accuracy measured at pruning time (the pruned directory's summary.json), or the reason it is absent."""
    keys = ("accuracy", "accuracy_dense", "accuracy_pruned_before_finetune", "agreement", "functional_distance")
    if not model_dir or not os.path.isdir(model_dir):
        return {"reason": "not a pruned directory: no accuracy was measured at pruning time"}
    p = os.path.join(model_dir, "summary.json")
    if not os.path.isfile(p):
        return {"reason": f"{model_dir} has no summary.json"}
    try:
        s = json.loads(Path(p).read_text())
    except ValueError as e:
        return {"reason": f"summary.json unreadable: {e}"}
    got = {k: s[k] for k in keys if s.get(k) is not None}
    if not got:
        return {"reason": "pruned without --data: no accuracy was measured at pruning time"}
    return got | {"source": p}
