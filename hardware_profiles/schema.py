"""The device-profile JSON format (versioned) and its validation.

One file describes one device + runtime + dtype + batch size:

    {"schema": "compress.hardware_profile", "schema_version": 1, "name": "cpu-x86-2core-ort",
     "source": "measured" | "analytic", "source_detail": "how / from what",
     "device": {"kind": "cpu"|"gpu"|"jetson", "name": ..., "cores"?, "isa"?, "compute_capability"?, "module"?},
     "runtime": {"name": "ort"|"torch"|"tensorrt"|"tvm", "version": ..., ...}, "dtype": "float32", "batch": 1,
     "measurement": {"warmup": int, "repetitions": int, "statistic": "median", "spread": str, ...},
     "peak": {"gflops": float, "gbps": float, "source": str},          # roofline fallback
     "roofline_efficiency": {op: fraction of peak}                      # optional, per compute op
     "overhead": {"per_inference_ms": float, "per_op_ms": float},
     "steps": {op: {"block": int, "unaligned_factor": float, "note": str}},  # the staircase
     "memory_ops": {kind: {"ms": float, "ms_per_melem": float,        # t = ms + ms_per_melem * Melements (all of the batch)
                           "points"?: [[elements, ms]]}},               # measured sizes, interpolated when present
     "memory_ops_dtype"?: "float32" | "int8",                          # int8: timed as the int8 graph runs them
     "context"?: {"a": float, "b": float, "floor": float, "pairs": [...]},  # in-network cost of a layer (see predictor)
     "tables": [{"key": str, "op": str, "cin": [int], "cout": [int], "ms": [[float]]}],   # ms[i][j]: cin[i], cout[j]
     "sparse": {"runtime": str, "note": str, "entries": [{...}]},       # optional
     "calibration"?: [{"model": str, "structure": str, "measured_ms": float, "predicted_ms": float,
                       "factor": float,                                  # measured / predicted, dense
                       "kernel_factor"?: float, "b_ms"?: float,          # a small network's in-network line
                       "predicted_by_class_ms"?: {class: float},        # predicted_ms split (predictor.FIT_CLASSES)
                       "input_shape"?: [int]}]}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from compress.errors import CompressError

SCHEMA = "compress.hardware_profile"
SCHEMA_VERSION = 1
SOURCES = ("measured", "analytic")
RUNTIMES = ("ort", "torch", "tensorrt", "tvm")
KINDS = ("cpu", "gpu", "jetson")
HOWTO = "produce one with `compress profile --target cpu --out FILE` on the device"


def _bad(path, what: str) -> CompressError:
    return CompressError(f"profile {path}: {what}; {HOWTO}")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate(d, path="<profile>") -> dict:
    """Raise CompressError (naming `path` and the first problem) unless `d` is a valid profile."""
    if not isinstance(d, dict):
        raise _bad(path, "not a JSON object")
    if d.get("schema") != SCHEMA:
        raise _bad(path, f"'schema' is {d.get('schema')!r}, expected {SCHEMA!r}")
    if d.get("schema_version") != SCHEMA_VERSION:
        raise _bad(path, f"schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}")
    for k, t in (("name", str), ("source", str), ("source_detail", str), ("device", dict), ("runtime", dict),
                 ("dtype", str), ("batch", int), ("measurement", dict), ("peak", dict), ("overhead", dict),
                 ("steps", dict), ("memory_ops", dict), ("tables", list)):
        if not isinstance(d.get(k), t) or isinstance(d.get(k), bool):
            raise _bad(path, f"field {k!r} missing or not a {t.__name__}")
    if d["source"] not in SOURCES:
        raise _bad(path, f"source {d['source']!r} is not one of {', '.join(SOURCES)}")
    if d["device"].get("kind") not in KINDS:
        raise _bad(path, f"device.kind {d['device'].get('kind')!r} is not one of {', '.join(KINDS)}")
    if d["runtime"].get("name") not in RUNTIMES:
        raise _bad(path, f"runtime.name {d['runtime'].get('name')!r} is not one of {', '.join(RUNTIMES)}")
    if d["batch"] < 1:
        raise _bad(path, f"batch {d['batch']} must be >= 1")
    for k in ("gflops", "gbps"):
        if not _num(d["peak"].get(k)) or d["peak"][k] <= 0:
            raise _bad(path, f"peak.{k} must be a positive number")
    for k in ("per_inference_ms", "per_op_ms"):
        if not _num(d["overhead"].get(k)) or d["overhead"][k] < 0:
            raise _bad(path, f"overhead.{k} must be a non-negative number")
    for op, s in d["steps"].items():
        if not isinstance(s, dict) or not isinstance(s.get("block"), int) or s["block"] < 1 \
                or not _num(s.get("unaligned_factor", 1.0)) or not isinstance(s.get("cin_block", 1), int):
            raise _bad(path, f"steps.{op} needs an integer 'block' >= 1 (and a numeric 'unaligned_factor')")
    for kind, m in d["memory_ops"].items():
        if not isinstance(m, dict) or not _num(m.get("ms")) or not _num(m.get("ms_per_melem")):
            raise _bad(path, f"memory_ops.{kind} needs numbers 'ms' and 'ms_per_melem'")
    for kind, m in d["memory_ops"].items():
        pts = m.get("points")
        if pts is not None and not (isinstance(pts, list) and all(
                isinstance(q, list) and len(q) == 2 and _num(q[0]) and _num(q[1]) and q[0] > 0 for q in pts)
                and [q[0] for q in pts] == sorted({q[0] for q in pts})):
            raise _bad(path, f"memory_ops.{kind}.points must be [elements, ms] pairs with increasing elements")
    ctx = d.get("context")
    if ctx is not None and not (isinstance(ctx, dict) and all(_num(ctx.get(k)) for k in ("a", "b", "floor"))
                                and ctx["a"] > 0 and 0 < ctx["floor"] <= 1):
        raise _bad(path, "context needs numbers 'a' > 0, 'b' and 'floor' in (0, 1]")
    if ctx is not None and not (isinstance(ctx.get("b_by_class", {}), dict) and all(
            k in ("compute", "memory") and _num(v) for k, v in ctx.get("b_by_class", {}).items())):
        raise _bad(path, "context.b_by_class must map 'compute'/'memory' to numbers")
    if ctx is not None and "b_network" in ctx and not _num(ctx["b_network"]):
        raise _bad(path, "context.b_network must be a number")
    for i, t in enumerate(d["tables"]):
        where = f"tables[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("key"), str):
            raise _bad(path, f"{where} has no 'key'")
        cin, cout, ms = t.get("cin"), t.get("cout"), t.get("ms")
        if not (isinstance(cin, list) and isinstance(cout, list) and cin and cout
                and all(isinstance(c, int) and c > 0 for c in cin + cout)):
            raise _bad(path, f"{where} ({t['key']}) needs non-empty positive integer lists 'cin' and 'cout'")
        if sorted(set(cin)) != cin or sorted(set(cout)) != cout:
            raise _bad(path, f"{where} ({t['key']}): 'cin' and 'cout' must be strictly increasing")
        if not (isinstance(ms, list) and len(ms) == len(cin) and all(
                isinstance(r, list) and len(r) == len(cout) and all(_num(v) and v > 0 for v in r) for r in ms)):
            raise _bad(path, f"{where} ({t['key']}): 'ms' must be a {len(cin)}x{len(cout)} grid of positive numbers")
    if len({t["key"] for t in d["tables"]}) != len(d["tables"]):
        raise _bad(path, "duplicate table keys")
    for c in d.get("calibration") or []:
        if not isinstance(c, dict) or not isinstance(c.get("structure"), str) or not _num(c.get("factor")) \
                or any(k in c and not _num(c[k]) for k in ("kernel_factor", "b_ms")):
            raise _bad(path, "calibration entries need a 'structure' string and numeric 'factor' "
                             "(and numeric 'kernel_factor' / 'b_ms' when present)")
    return d


def read(path) -> dict:
    """Read and validate one profile file."""
    p = Path(path)
    if not p.is_file():
        raise _bad(path, "no such file")
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot be read ({type(e).__name__})") from None
    except ValueError as e:
        raise _bad(path, f"is not valid JSON (truncated?): {e}") from None
    return validate(d, path)
