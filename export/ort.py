"""onnxruntime side of an export: the model optimised for onnxruntime, running it, comparing outputs."""

from __future__ import annotations

import numpy as np

# ORT_ENABLE_EXTENDED: constant folding, redundant-node removal and operator fusions (Conv+activation,
# GELU, LayerNorm, attention) that stay valid on any CPU. ORT_ENABLE_ALL would add the NCHWc layout
# transforms, which are specific to this machine's SIMD width, so the saved model would not be portable.
OPT_LEVEL = "ORT_ENABLE_EXTENDED"


def optimize(src: str, dst: str) -> None:
    """Write onnxruntime's optimised graph of `src` to `dst` (CPU execution provider)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVEL)
    so.optimized_model_filepath = dst
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run(path: str, arrays: list[np.ndarray], optimized: bool = False) -> np.ndarray:
    """First output of the ONNX model at `path`. An already-optimised file is loaded without re-optimising."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimized
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.log_severity_level = 3
    from compress.kernels import bsr_cpu_runtime

    bsr_cpu_runtime.register_beside(so, path)           # model.bsr.onnx: compress's block-sparse op
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {i.name: a for i, a in zip(sess.get_inputs(), arrays)}
    return sess.run(None, feeds)[0]


def compare(got: np.ndarray, ref: np.ndarray, rel_tol: float) -> dict:
    """Max abs error and max error relative to the reference's largest magnitude."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return {"ok": False, "max_abs_error": None, "max_rel_error": None,
                "error": f"output shape {list(got.shape)} != torch's {list(ref.shape)}"}
    if not np.isfinite(got).all():
        return {"ok": False, "max_abs_error": None, "max_rel_error": None, "error": "non-finite outputs"}
    abs_err = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()) if got.size else 0.0
    rel = abs_err / max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-6)
    return {"ok": bool(rel <= rel_tol), "max_abs_error": abs_err, "max_rel_error": rel, "rel_tolerance": rel_tol}
