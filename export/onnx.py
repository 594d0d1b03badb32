"""ONNX export (deterministic: the TorchScript-based exporter writes byte-identical files)
and an onnxruntime parity check against torch."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings

import numpy as np
import torch
from torch import nn

from compress.errors import CompressError, first_line

OPSET = 18


@contextlib.contextmanager
def _quiet_fds():
    """Silence file descriptors 1 and 2 too: the TorchScript exporter logs from C++ (std::cerr),
    e.g. the whole IR graph when a conversion fails, which Python-level redirects do not catch."""
    saved = []
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:
                    pass
            yield
        finally:
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)


def quietly(fn, *args, **kwargs):
    """fn(*args, **kwargs) with the C-level stdout/stderr silenced (TVM's ONNX frontend prints as it fails,
    and warns when the half-built module its traceback holds is collected). A CompressError is raised again
    without that traceback, after collecting it, so that the error stays one line."""
    import gc

    with _quiet_fds():
        try:
            return fn(*args, **kwargs)
        except CompressError as e:
            msg = str(e)
        gc.collect()
    raise CompressError(msg)


def _sdpa_gqa_symbolic():
    """`scaled_dot_product_attention(..., enable_gqa=True)` (Hugging Face's sdpa path for
    grouped-query attention without a mask): repeat each kv head for its query heads, as torch
    does (query head j reads kv head j // (hq // hk)), then convert as plain attention."""
    from torch.onnx._internal.torchscript_exporter import symbolic_helper, symbolic_opset14

    def repeat_kv(g, x, hq):
        shape = g.op("Shape", x)
        lead = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([0])),
                    g.op("Constant", value_t=torch.tensor([-3])))
        hk = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([-3])),
                  g.op("Constant", value_t=torch.tensor([-2])))
        tail = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([-2])),
                    g.op("Constant", value_t=torch.tensor([2 ** 62])))
        rep = g.op("Div", hq, hk)
        x5 = g.op("Unsqueeze", x, g.op("Constant", value_t=torch.tensor([-3])))
        x5 = g.op("Expand", x5, g.op("Concat", lead, hk, rep, tail, axis_i=0))
        return g.op("Reshape", x5, g.op("Concat", lead, hq, tail, axis_i=0))

    @symbolic_helper.parse_args("v", "v", "v", "v", "f", "b", "v", "b")
    def sdpa(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if enable_gqa:
            qshape = g.op("Shape", query)
            hq = g.op("Slice", qshape, g.op("Constant", value_t=torch.tensor([-3])),
                      g.op("Constant", value_t=torch.tensor([-2])))
            key, value = repeat_kv(g, key, hq), repeat_kv(g, value, hq)
        return symbolic_opset14.scaled_dot_product_attention(
            g, query, key, value, attn_mask, dropout_p, is_causal, scale, False)

    return sdpa


def input_names(model: nn.Module, n: int) -> list[str]:
    """The ONNX graph's input names: a model's declared `compress_inputs` names (input_ids, attention_mask,
    ...; compress.models.declared_inputs) when it declares n of them, else input, input1, ..."""
    decl = getattr(model, "compress_inputs", None) or ()
    names = [str(d[0]) for d in decl]
    return names if len(names) == n else [f"input{i}" if i else "input" for i in range(n)]


def export_onnx(model: nn.Module, inputs: tuple, path: str, dynamic_batch: bool = True, opset: int = OPSET) -> None:
    """`model` on `inputs` to ONNX at `path`: one graph input per tensor of `inputs` (input_names), each with
    its own shape (a dynamic batch dimension with `dynamic_batch`). An input the traced graph does not use
    would be dropped by the exporter: refused, naming it."""
    names = input_names(model, len(inputs))
    axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
    if axes is not None:
        axes["output"] = {0: "batch"}
    from compress.models.outputs import single_output

    model = model.eval()
    try:
        model, _ = single_output(model, tuple(inputs))   # dicts, tuples, HF outputs: the primary output only
    except Exception as e:
        raise CompressError(f"the model does not run on its example input ({type(e).__name__}: {first_line(e, 200)})") from None
    try:
        torch.onnx.register_custom_op_symbolic("aten::scaled_dot_product_attention", _sdpa_gqa_symbolic(), opset)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), _quiet_fds(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, tuple(inputs), path, dynamo=False, opset_version=opset,
                              input_names=names, output_names=["output"], dynamic_axes=axes,
                              do_constant_folding=True)
    except Exception as e:
        raise CompressError(f"ONNX export failed ({type(e).__name__}: {first_line(e, 300)})") from None
    if len(inputs) > 1:
        import onnx
        graph = onnx.load(path, load_external_data=False).graph
        inits = {t.name for t in graph.initializer}
        dropped = [n for n in names if n not in {i.name for i in graph.input if i.name not in inits}]
        if dropped:
            raise CompressError(f"ONNX export dropped input(s) {', '.join(dropped)}: the traced model does not read "
                                "them at these example inputs; take them out of the model's inputs "
                                "(compress_inputs) or make its forward use them")


def ort_session(path: str, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    from compress.kernels import bsr_cpu_runtime

    bsr_cpu_runtime.register_beside(so, path)           # model.bsr.onnx: compress's block-sparse op
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


@torch.no_grad()
def ort_parity(path: str, model: nn.Module, inputs: tuple) -> dict:
    """Run the ONNX file in onnxruntime and compare with torch: max abs and relative error."""
    sess = ort_session(path)
    given = [i.name for i in sess.get_inputs()]
    names = input_names(model, len(inputs))
    feeds = ({n: t.numpy() for n, t in zip(names, inputs) if n in given} if set(given) <= set(names)
             else {n: t.numpy() for n, t in zip(given, inputs)})
    from compress.models.outputs import describe, primary_tensor

    got = sess.run(None, feeds)[0]
    out = model.eval()(*inputs)
    ref = primary_tensor(out).float().numpy()
    which = {} if isinstance(out, torch.Tensor) else {"output": describe(out)}  # which output model.onnx holds
    if got.shape != ref.shape:
        return {"max_abs_error": float("inf"), "max_rel_error": float("inf"), "ok": False} | which
    abs_err = float(np.abs(got - ref).max())
    rel = abs_err / max(float(np.abs(ref).max()), 1e-6)
    return {"max_abs_error": abs_err, "max_rel_error": rel, "ok": bool(rel <= 1e-4)} | which
