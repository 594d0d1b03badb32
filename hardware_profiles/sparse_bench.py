"""Sparse-format timings for Linear / 1x1 layers, measured with the kernel that ships: dense onnxruntime
(MatMul / Conv) vs compress's block-sparse kernel as the onnxruntime custom op that `compress export
--target cpu` puts in model.bsr.onnx (kernels/bsr_cpu.cpp); and the identity of the machine being profiled."""

from __future__ import annotations

import os
import platform

import numpy as np

RUNTIME = "onnxruntime + compress BSR kernel"   # what measures (and what runs) a CPU artifact's sparse layers
BLOCKS = (16, 32, 64)
DENSITIES = (0.8, 0.7, 0.6, 0.5, 0.3, 0.1)
MAX_SHAPES = 6          # the model's largest distinct Linear / 1x1 shapes
NOTE = ("dense: onnxruntime {ort} CPU (MatMul for Linear, Conv for 1x1 conv); block-sparse: compress's kernel "
        "(libcompress_bsr.so, -march=native) as the onnxruntime custom op ai.compress::BlockSparseLinear, with "
        "the NCHW<->NHWC transposes a 1x1 conv needs around it, exactly as model.bsr.onnx runs it; random "
        "block patterns at each density. onnxruntime's CPU provider has no 2:4 kernel: no 2:4 entries.")


def machine(target: str) -> dict:
    from compress.machine import cpuinfo

    info = cpuinfo()
    name, flags = info.model_name(platform.processor() or "unknown"), info.flags
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "neon", "asimd") if f in flags]
    return {"kind": target, "name": name, "cores": os.cpu_count(), "isa": isa, "arch": platform.machine()}


def shapes(layers, batch: int) -> list[tuple[str, int, int, int]]:
    """(kind, in, out, rows) of the model's largest distinct Linear and 1x1 (stride 1) conv layers."""
    from compress.hardware_profiles.layers import CONV, LINEAR

    out = {}
    for s in layers:
        if s.op == LINEAR:
            key = ("linear", s.cin, s.cout, s.tokens * batch)
        elif s.op == CONV and s.kernel == (1, 1) and s.groups == 1 and s.stride == (1, 1):
            key = ("conv1x1", s.cin, s.cout, s.h * s.w * batch)
        else:
            continue
        out[key] = max(out.get(key, 0), s.macs())
    top = sorted(out, key=lambda k: (-k[1] * k[2] * k[3], k))[:MAX_SHAPES]
    return top or [("linear", 512, 512, batch)]


def _model(kind: str, fin: int, fout: int, rows: int, w: np.ndarray, block: int | None):
    """A one-layer ONNX model: dense (block None) or the block-sparse custom op."""
    from onnx import TensorProto, helper, numpy_helper

    from compress.kernels import bsr_cpu, bsr_cpu_runtime as rt

    side = int(round(rows ** 0.5))
    conv = kind == "conv1x1" and side * side == rows
    xshape = [1, fin, side, side] if conv else [rows, fin]
    yshape = [1, fout, side, side] if conv else [rows, fout]
    inits, nodes = [], []
    if block is None:
        if conv:
            inits.append(numpy_helper.from_array(w[:, :, None, None].copy(), "W"))
            nodes.append(helper.make_node("Conv", ["X", "W"], ["Y"]))
        else:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), "WT"))
            nodes.append(helper.make_node("MatMul", ["X", "WT"], ["Y"]))
    else:
        p = bsr_cpu.from_dense(w, block)
        bias = np.zeros((len(p["rowptr"]) - 1) * block, np.float32)
        inits += [numpy_helper.from_array(a, n) for n, a in
                  (("values", p["values"]), ("rowptr", p["rowptr"]), ("cols", p["cols"]), ("bias", bias))]
        src, dst = ("XT", "YT") if conv else ("X", "Y")
        if conv:
            nodes.append(helper.make_node("Transpose", ["X"], ["XT"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node(rt.OP_TYPE, [src, "values", "rowptr", "cols", "bias"], [dst], domain=rt.DOMAIN,
                                      block=block, out_features=fout))
        if conv:
            nodes.append(helper.make_node("Transpose", ["YT"], ["Y"], perm=[0, 3, 1, 2]))
    g = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("X", TensorProto.FLOAT, xshape)],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, yshape)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(rt.DOMAIN, 1)])
    return m, xshape


def _session(model, threads: int, lib: str):
    import onnxruntime as ort

    from compress.kernels import bsr_cpu_runtime as rt

    so = rt.session_options(lib, threads)
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _time(fn, reps: int) -> float:
    from compress.hardware_profiles.torch_bench import median_ms

    return median_ms(fn, 2, max(reps, 5))


def table(layers, batch: int, reps: int, threads: int = 0) -> dict:
    """Dense vs block-sparse (block size x density) for the model's largest Linear and 1x1 conv shapes, each
    pair timed alternately in this process; every sparse point is checked against the dense one first."""
    import onnxruntime as ort

    from compress.kernels import bsr_cpu

    lib = bsr_cpu.cached_library()
    rng = np.random.default_rng(0)
    entries = []
    for kind, fin, fout, rows in shapes(layers, batch):
        w = rng.standard_normal((fout, fin)).astype(np.float32)
        dm, xshape = _model(kind, fin, fout, rows, w, None)
        x = rng.standard_normal(xshape).astype(np.float32)
        dense_sess = _session(dm, threads, lib)
        dense = _time(lambda: dense_sess.run(None, {"X": x}), reps)
        entries.append({"layer": kind, "in": fin, "out": fout, "rows": rows, "format": "dense", "ms": round(dense, 5)})
        for b in BLOCKS:
            if fout % b or fin % b:
                continue
            for dens in DENSITIES:
                ws = bsr_cpu.random_block_sparse(fout, fin, b, 1.0 - dens, seed=b)
                sess = _session(_model(kind, fin, fout, rows, ws, b)[0], threads, lib)
                ref = (np.einsum("oc,nchw->nohw", ws, x) if x.ndim == 4 else x @ ws.T)
                got = sess.run(None, {"X": x})[0]
                if not np.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max())):
                    raise RuntimeError(f"block-sparse kernel disagrees with dense at {kind} {fin}x{fout} block {b}")
                ms = _time(lambda: sess.run(None, {"X": x}), reps)
                entries.append({"layer": kind, "in": fin, "out": fout, "rows": rows, "format": f"bsr{b}x{b}",
                                "density": dens, "ms": round(ms, 5), "speedup_vs_dense": round(dense / ms, 3)})
    info = bsr_cpu.build_info(lib)
    import datetime

    return {"runtime": RUNTIME, "note": NOTE.format(ort=ort.__version__), "threads": threads,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "kernel": info, "two_four": "not runnable on this runtime", "entries": entries}
