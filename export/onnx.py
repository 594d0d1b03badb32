"""ONNX export (deterministic: the TorchScript-based exporter writes byte-identical files)
and an onnxruntime parity check against torch."""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np
import torch
from torch import nn

from compress.errors import CompressError

OPSET = 18


def export_onnx(model: nn.Module, inputs: tuple, path: str, dynamic_batch: bool = True, opset: int = OPSET) -> None:
    names = [f"input{i}" if i else "input" for i in range(len(inputs))]
    axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
    if axes is not None:
        axes["output"] = {0: "batch"}
    model = model.eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, tuple(inputs), path, dynamo=False, opset_version=opset,
                              input_names=names, output_names=["output"], dynamic_axes=axes,
                              do_constant_folding=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompressError(f"ONNX export failed ({type(e).__name__}: {msg[:300]})") from None


def ort_session(path: str, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


@torch.no_grad()
def ort_parity(path: str, model: nn.Module, inputs: tuple) -> dict:
    """Run the ONNX file in onnxruntime and compare with torch: max abs and relative error."""
    sess = ort_session(path)
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)}
    got = sess.run(None, feeds)[0]
    ref = model(*inputs)
    ref = getattr(ref, "logits", ref)
    ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    ref = ref.numpy()
    if got.shape != ref.shape:
        return {"max_abs_error": float("inf"), "max_rel_error": float("inf"), "ok": False}
    abs_err = float(np.abs(got - ref).max())
    rel = abs_err / max(float(np.abs(ref).max()), 1e-6)
    return {"max_abs_error": abs_err, "max_rel_error": rel, "ok": bool(rel <= 1e-4)}
