"""A small constructed profile for the predictor tests (no measurement)."""

from __future__ import annotations

import copy


def constructed() -> dict:
    """A valid profile with one conv table whose cost is exactly 0.001 ms per (cin x cout) point."""
    cin, cout = [16, 32, 64], [16, 32, 64]
    return copy.deepcopy({
        "schema": "compress.hardware_profile", "schema_version": 1, "name": "test-cpu", "source": "measured",
        "source_detail": "constructed for tests", "device": {"kind": "cpu", "name": "test", "cores": 2},
        "runtime": {"name": "ort", "version": "0"}, "dtype": "float32", "batch": 1,
        "measurement": {"warmup": 1, "repetitions": 1, "statistic": "median", "spread": "none"},
        "peak": {"gflops": 100.0, "gbps": 10.0, "source": "constructed"},
        "roofline_efficiency": {"conv": 0.5, "linear": 0.25},
        "overhead": {"per_inference_ms": 0.5, "per_op_ms": 0.01},
        "steps": {"conv": {"block": 8, "unaligned_factor": 2.0}},
        "memory_ops": {"unary": {"ms": 0.002, "ms_per_melem": 0.1}},
        "tables": [{"key": "conv k3x3 s1x1 p1x1 g1 8x8", "op": "conv", "cin": cin, "cout": cout,
                    "ms": [[0.001 * a * b for b in cout] for a in cin]}],
    })


# shapes the sparse tables of a constructed profile cover: (layer kind, in, out, rows)
SPARSE_SHAPES = (("linear", 256, 256, 4), ("conv1x1", 64, 64, 256))


def sparse_section(runtime: str, formats: dict[str, float], shapes=SPARSE_SHAPES, density: float = 0.5,
                   date: str = "2026-12-05T00:00:00+00:00") -> dict:
    """A profile's `sparse` section as `runtime` would have measured it: per shape a dense entry of
    1 ms per million MACs and one entry per format (`bsr16x16`, `2:4` ...) at `density`, taking
    `formats[fmt]` x the dense time (constructed for tests, not measured)."""
    entries = []
    for kind, fin, fout, rows in shapes:
        dense = round(fin * fout * rows * 1e-6, 6)
        entries.append({"layer": kind, "in": fin, "out": fout, "rows": rows, "format": "dense", "ms": dense})
        for fmt, factor in formats.items():
            entries.append({"layer": kind, "in": fin, "out": fout, "rows": rows, "format": fmt,
                            "density": 0.5 if fmt == "2:4" else density, "ms": round(dense * factor, 6)})
    return {"runtime": runtime, "date": date, "note": "constructed for tests", "entries": entries}
