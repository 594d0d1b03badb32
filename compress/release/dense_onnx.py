"""Fallback until `compress export` exists: the dense model's ONNX, exported as `compress prune` exports
the pruned one (same loader, same exporter), with its onnxruntime parity printed as JSON.

    python -m compress.release.dense_onnx MODEL OUT.onnx [--weights W] [--input-shape 1,1,28,28]
"""

from __future__ import annotations

import argparse
import json
import sys

from compress.errors import CompressError


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--weights")
    ap.add_argument("--input-shape")
    a = ap.parse_args()
    from compress import models
    from compress.export.onnx import export_onnx, ort_parity

    try:
        lm = models.load(a.model, a.weights)
        inputs = models.example_inputs(lm, models.parse_shape(a.input_shape) if a.input_shape else None)
        export_onnx(lm.model, inputs, a.out)
        parity = ort_parity(a.out, lm.model, inputs)
    except CompressError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    print(json.dumps(parity))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
