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


def table(layers, batch: int, reps: int, threads: int = 0, have: frozenset = frozenset()) -> dict:
    """Dense vs block-sparse (block size x density) for the model's largest Linear and 1x1 conv shapes, each
    pair timed alternately in this process; every sparse point is checked against the dense one first.
    `have`: (kind, in, out, rows) shapes already measured, skipped."""
    import onnxruntime as ort

    from compress.kernels import bsr_cpu

    lib = bsr_cpu.cached_library()
    rng = np.random.default_rng(0)
    entries = []
    for kind, fin, fout, rows in shapes(layers, batch):
        if (kind, fin, fout, rows) in have:
            continue
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


# ------------------------------------------------------------------ 1x1 convs in their network
CONTEXT_BLOCK = 32
CONTEXT_DENSITIES = (0.5, 0.3)
CONTEXT_NOTE = ("the one-op timings above miss what a sparse 1x1 conv costs inside a CNN: onnxruntime runs dense "
                "convs in MLAS's blocked NCHWc layout, fused with their Add / ReLU, and the kernel's NHWC op breaks "
                "that chain (likely parts: layout reorders, transposes, unfused element-wise ops). Measured: "
                "the whole model dense vs with every eligible 1x1 conv through the kernel (block {block}, random "
                "blocks), the half of those convs with the smaller activations, and the other half, all exported and "
                "timed in lockstep (compress.measure); the part of each measured difference that the one-op factors "
                "do not predict, brought to the profile's speed (the dense model measured / predicted), is fitted as "
                "`ms_per_layer` + `ms_per_melem` x the layers' activation elements (input + output, millions) on the "
                "two halves and checked on the whole set (`fitted_ms` vs `unexplained_ms`): the predictor adds that "
                "to every sparse 1x1 conv on this profile")


def conv1x1_layers(layers, block: int = CONTEXT_BLOCK) -> list:
    """The layers a CPU artifact may run through the kernel as 1x1 convs: stride 1, groups 1, both channel
    counts multiples of `block`."""
    from compress.hardware_profiles.layers import CONV

    return [s for s in layers if s.op == CONV and s.kernel == (1, 1) and s.groups == 1 and s.stride == (1, 1)
            and s.cin % block == 0 and s.cout % block == 0]


def melems(sig, batch: int) -> float:
    """Million activation elements a 1x1 conv reads and writes at `batch`."""
    return batch * sig.h * sig.w * (sig.cin + sig.cout) / 1e6


def _sparse_copy(model, names: list[str], block: int, density: float, seed: int):
    """`model` with the 1x1 convs `names` replaced by block-sparse modules keeping `density` of their blocks
    (random, seeded): what `compress sparsify --pattern block:B` leaves for the CPU export."""
    import copy

    import torch

    from compress.lower.formats import encode_bsr, select_blocks
    from compress.lower.modules import set_module, sparse_module

    out = copy.deepcopy(model).eval()
    mods = dict(out.named_modules())
    gen = torch.Generator().manual_seed(seed)
    for n in names:
        m = mods[n]
        w2 = m.weight.detach().reshape(m.out_channels, -1)
        bmask = select_blocks(torch.rand(w2.shape, generator=gen), block, density)
        set_module(out, n, sparse_module(m, f"block:{block}", encode_bsr(w2, bmask, block), block))
    return out


def _fit_two(u: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(ms per layer, ms per million elements) >= 0 explaining unexplained ms `x` of subsets (layers, melems, x):
    least squares through the origin; a negative coefficient is dropped and the other refitted alone."""
    import numpy as np

    a = np.array([[n, e] for n, e, _ in u], dtype=float)
    y = np.array([x for _, _, x in u], dtype=float)
    c, *_ = np.linalg.lstsq(a, y, rcond=None)
    if c[0] >= 0 and c[1] >= 0:
        return float(c[0]), float(c[1])
    per_layer = max(0.0, float(a[:, 0] @ y / max(a[:, 0] @ a[:, 0], 1e-12)))
    per_elem = max(0.0, float(a[:, 1] @ y / max(a[:, 1] @ a[:, 1], 1e-12)))
    # the one-parameter fit with the smaller residual
    r0 = float(((a[:, 0] * per_layer - y) ** 2).sum())
    r1 = float(((a[:, 1] * per_elem - y) ** 2).sum())
    return (per_layer, 0.0) if r0 <= r1 else (0.0, per_elem)


def conv_context(spec: str, model, example: tuple, layers, p, rounds: int = 3, passes: int = 2,
                 threads: int = 0) -> dict | None:
    """The in-network cost of running `model`'s eligible 1x1 convs through the kernel (CONTEXT_NOTE), on the
    profile `p` (a predictor.DeviceProfile without a context rate: its dense tables and sparse entries price the
    part the one-op timings predict). `example`: the model's input at the profile's batch; `layers`: its layers.
    Timed in lockstep with the dense model: the layers with the larger activations sparse, those with the smaller
    ones sparse (density CONTEXT_DENSITIES[0]), and all of them (each density): the cost the one-op factors do not
    explain is fitted as ms per layer + ms per million activation elements on the two halves, and checked on
    the whole set. None when the model has no eligible 1x1 conv."""
    import shutil
    import statistics
    import tempfile
    from pathlib import Path

    from compress.export.onnx import export_onnx
    from compress.export.sparse_cpu import export as export_bsr
    from compress.kernels import bsr_cpu
    from compress.kernels import bsr_cpu_runtime as rt
    from compress.measure import Block, block_ms

    convs = conv1x1_layers(layers)
    if not convs:
        return None
    batch = int(p.batch)
    fit = p.fit(layers)
    pred_dense = p.total_ms(layers, fit)
    by_size = sorted(convs, key=lambda s: (melems(s, batch), s.module))
    half = len(by_size) // 2
    subsets = {"all": convs}
    if half:
        subsets |= {"small": by_size[:half], "large": by_size[half:]}
    cases = [(k, CONTEXT_DENSITIES[0]) for k in subsets if k != "all"] + [("all", d) for d in CONTEXT_DENSITIES]
    lib = bsr_cpu.cached_library()
    with tempfile.TemporaryDirectory(prefix="compress-ctx-") as tmp:
        dense_path = Path(tmp) / "dense.onnx"
        export_onnx(model, example, str(dense_path), dynamic_batch=False)
        jobs = [("dense", str(dense_path), batch)]
        for i, (k, dens) in enumerate(cases):
            names = [s.module for s in subsets[k]]
            d = Path(tmp) / f"c{i}"
            d.mkdir()
            shutil.copyfile(lib, d / rt.LIB_NAME)
            export_bsr(_sparse_copy(model, names, CONTEXT_BLOCK, dens, seed=i), {n: CONTEXT_BLOCK for n in names},
                       example, str(d / "model.bsr.onnx"), dynamic_batch=False)
            jobs.append((f"{k}@{dens}", str(d / "model.bsr.onnx"), batch))
        got = block_ms(jobs, Block(runs=5, min_seconds=0.3, warmup=3, threads=threads), rounds, passes)
    dense_ms = statistics.median(got["dense"])
    scale = dense_ms / pred_dense
    points = []
    for k, dens in cases:
        sub = subsets[k]
        sparse_ms = statistics.median(got[f"{k}@{dens}"])
        pred_sparse = p.total_ms(layers, fit, sparse={s.module: (CONTEXT_BLOCK, dens) for s in sub})
        points.append({"layers": k, "n": len(sub), "melems": round(sum(melems(s, batch) for s in sub), 4),
                       "density": dens, "measured_ms": round(sparse_ms, 4),
                       "predicted_ms_one_op": round(pred_sparse * scale, 4),
                       "unexplained_ms": round((sparse_ms - dense_ms) / scale - (pred_sparse - pred_dense), 4)})
    fitted = [pt for pt in points if pt["layers"] != "all"] or points
    per_layer, per_elem = _fit_two([(pt["n"], pt["melems"], pt["unexplained_ms"]) for pt in fitted])
    for pt in points:
        pt["fitted_ms"] = round(per_layer * pt["n"] + per_elem * pt["melems"], 4)
    return {"model": spec, "layers": len(convs), "block": CONTEXT_BLOCK,
            "activation_melems": round(sum(melems(s, batch) for s in convs), 4),
            "dense_measured_ms": round(dense_ms, 4), "dense_predicted_ms": round(pred_dense, 4),
            "speed_scale": round(scale, 4), "points": points, "rounds": rounds, "passes": passes,
            "ms_per_layer": round(per_layer, 6), "ms_per_melem": round(per_elem, 6)}
