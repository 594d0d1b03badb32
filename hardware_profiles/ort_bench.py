"""onnxruntime micro-benchmarks for the profiler: one-op ONNX graphs built with onnx.helper, timed
with onnxruntime's node profiler (kernel time per node, so layout reorders and session overhead
stay out of a layer's entry), plus end-to-end timing of tiny graphs for the fixed overheads.

Every function returns milliseconds at `batch`: the median over `reps` undisturbed runs after `warmup`
runs (see `clean` and `robust`: on a shared machine, runs that other processes preempted are dropped).

`dtype` (conv_points, linear_points, model_ms): "float32" times the graph as built; "int8" times it as the
int8 artifact runs it: quantized by `compress export --dtype int8`'s own path (export/quantize.py: ONNX QDQ,
per-channel int8 weights, asymmetric uint8 activations, MinMax on the timing input), so onnxruntime fuses each
QDQ Conv / Gemm into its int8 kernel (QLinearConv, QGemm) as in the artifact. Each timed op then reads its
own graph input (no QuantizeLinear shared between timed ops: with int8 activations onnxruntime left such ops
unfused), and only the fused kernels count: the QuantizeLinear / DequantizeLinear / Transpose nodes at the
one-op graph's edges sit between consecutive int8 ops only at a network's edges.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time

import numpy as np

OPSET = 17
_TAG = re.compile(r"P(\d+)_")
DTYPES = ("float32", "int8")
# nodes of an int8 one-op graph that are not the op: the input's quantization and the output's dequantization,
# and the layout transposes around an NHWC int8 conv (inside a network they cancel between consecutive convs)
INT8_GLUE = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Transpose")


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        from compress.errors import CompressError
        raise CompressError("the ort profiler needs onnxruntime (pip install onnxruntime)") from None
    return ort


def version() -> str:
    return _ort().__version__


def _session(model, profile_dir: str | None = None, threads: int = 0):
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "p")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _model(nodes, inputs, outputs, inits):
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        from compress.errors import CompressError
        raise CompressError(f"the ort profiler times {' or '.join(DTYPES)}, not {dtype!r}")


def quantized(model, feeds: list[dict], preprocess: bool = True):
    """`model` after the int8 artifact's quantization (export/quantize.py: quant_pre_process, then
    quantize_static to QDQ with per-channel int8 weights and asymmetric uint8 activations, MinMax),
    calibrated on the first sample of each of `feeds` (the ranges do not change the kernels' time). The
    batch dimension becomes symbolic so the quantized graph runs at the timing batch. `preprocess=False`
    (the one-op graphs, built with every shape declared and nothing to fold): quantize_static alone;
    quant_pre_process took 8 s on a 4-conv graph, most of a session's cost."""
    import onnx

    from compress.export import quantize as q

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i in m.graph.input:
        dims = i.type.tensor_type.shape.dim
        if len(dims):
            dims[0].dim_param = "N"
    feeds = [{k: v[:1] for k, v in f.items()} for f in feeds]
    with tempfile.TemporaryDirectory(prefix="compress-profile-int8-") as tmp:
        src, pre, dst = (os.path.join(tmp, f) for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(m, src)
        if preprocess:
            q.preprocess(src, pre)
        q.quantize(pre if preprocess else src, dst, list(feeds), "minmax", symmetric_activations=False, text=False)
        return onnx.load(dst)


def _as_run(model, feeds: dict, dtype: str):
    """(the model as timed, the profiler event -> point index matcher) for `dtype`."""
    _check_dtype(dtype)
    if dtype == "float32":
        return model, None

    def match(e):
        if e.get("args", {}).get("op_name") in INT8_GLUE:
            return None
        m = _TAG.search(e["name"])
        return int(m.group(1)) if m else None

    return quantized(model, [feeds], preprocess=False), match


def _init(name: str, arr: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name)


def clean(wall: float, cpu: float, threads: int) -> bool:
    """A run had the cores to itself: onnxruntime's worker threads spin while a run is in flight, so
    an undisturbed run burns about `threads` CPU-seconds per second; a run that other processes
    preempted burns much less."""
    return cpu >= 0.75 * threads * wall


def robust(values: list[float], ok: list[bool]) -> float:
    """Median over the undisturbed runs; the fastest run when fewer than 3 were undisturbed."""
    good = [v for v, k in zip(values, ok) if k]
    return statistics.median(good) if len(good) >= 3 else min(values)


def profile_nodes(model, feeds: dict, n_points: int, warmup: int, reps: int, threads: int = 0,
                  max_seconds: float = 20.0, match=None) -> list[float]:
    """Run `model` with onnxruntime's profiler until `reps` undisturbed runs (see `clean`) follow
    `warmup` runs (at most 6 x reps runs or max_seconds); return, per point (nodes tagged P<i>_),
    the robust statistic (`robust`) of its summed kernel time over the timed runs, in ms."""
    import bisect

    nthreads = threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="compress-profile-") as tmp:
        sess = _session(model, tmp, threads)
        ok: list[bool] = []
        start = time.perf_counter()
        for i in range(warmup + 6 * reps):
            c0, t0 = time.process_time(), time.perf_counter()
            sess.run(None, feeds)
            ok.append(clean(time.perf_counter() - t0, time.process_time() - c0, nthreads))
            timed = ok[warmup:]
            if len(timed) >= reps and (sum(timed) >= reps or time.perf_counter() - start > max_seconds):
                break
        path = sess.end_profiling()
        events = json.load(open(path))
        del sess
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    per: list[list[float]] = [[0.0] * len(runs) for _ in range(n_points)]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if match is not None:
            idx = match(e)
        else:
            m = _TAG.search(e["name"])
            idx = int(m.group(1)) if m else None
        r = bisect.bisect_right(runs, e["ts"]) - 1
        if idx is None or r < 0:
            continue
        per[idx][r] += e["dur"] / 1e3
    return [robust(p[warmup:], ok[warmup:len(p)]) if len(p) > warmup else float("nan") for p in per]


def _input_names(n: int, split: bool) -> list[str]:
    """The graph input each of n timed ops reads: one shared "x", or (split: int8) "x<i>" each."""
    return [f"x{i}" for i in range(n)] if split else ["x"] * n


def _conv_model(sig, ci: int, couts: list[int], batch: int, rng, split: bool = False):
    """One model with a Conv(+Relu) per output count in `couts` (a ConvTranspose for a transposed `sig`), all
    reading the same input (split: each its own graph input, fed the same array)."""
    from onnx import helper

    kh, kw = sig.kernel
    xs = _input_names(len(couts), split)
    nodes, inits, outs = [_warm(x, f"{x}w") for x in sorted(set(xs))], [], []
    for i, co in enumerate(couts):
        g = sig.conv_groups(ci, co)
        w = rng.standard_normal(sig.weight_shape(ci, co), dtype=np.float32) * 0.05
        inits += [_init(f"P{i}_w", w), _init(f"P{i}_b", np.zeros(co, np.float32))]
        nodes.append(helper.make_node("ConvTranspose" if sig.transposed else "Conv",
                                      [f"{xs[i]}w", f"P{i}_w", f"P{i}_b"], [f"P{i}_c"], name=f"P{i}_conv",
                                      kernel_shape=[kh, kw], strides=list(sig.stride), group=g,
                                      pads=[sig.padding[0], sig.padding[1]] * 2, dilations=list(sig.dilation)))
        nodes.append(helper.make_node("Relu", [f"P{i}_c"], [f"P{i}_y"], name=f"P{i}_relu"))
        outs.append(f"P{i}_y")
    return _model(nodes, [(x, [batch, ci, sig.h, sig.w]) for x in sorted(set(xs))], outs, inits)


def conv_points(sig, points: list[tuple[int, int]], batch: int, warmup: int, reps: int,
                max_weight_mb: float = 64.0, threads: int = 0, max_seconds: float = 20.0,
                dtype: str = "float32") -> dict:
    """(cin, cout) -> kernel ms of Conv(+Relu) with `sig`'s kernel/stride/padding/spatial size and
    groups (LayerSig.conv_groups), in `dtype` (int8: the fused QLinearConv). One session per input
    channel count (and weight chunk)."""
    rng = np.random.default_rng(0)
    kh, kw = sig.kernel
    by_cin: dict[int, list[int]] = {}
    for ci, co in points:
        by_cin.setdefault(ci, []).append(co)
    out = {}
    for ci, couts in sorted(by_cin.items()):
        chunks, cur, size = [], [], 0.0
        for co in sorted(couts):
            wmb = co * (ci // sig.conv_groups(ci, co)) * kh * kw * 4 / 2**20
            if cur and size + wmb > max_weight_mb:
                chunks.append(cur)
                cur, size = [], 0.0
            cur.append(co)
            size += wmb
        chunks.append(cur)
        x = rng.standard_normal((batch, ci, sig.h, sig.w), dtype=np.float32)
        split = dtype != "float32"
        for chunk in chunks:
            feeds = {n: x for n in set(_input_names(len(chunk), split))}
            m, match = _as_run(_conv_model(sig, ci, chunk, batch, rng, split), feeds, dtype)
            ms = profile_nodes(m, feeds, len(chunk), warmup, reps, threads, max_seconds, match)
            for co, t in zip(chunk, ms):
                out[(ci, co)] = t
    return out


def linear_points(sig, points: list[tuple[int, int]], batch: int, warmup: int, reps: int,
                  threads: int = 0, max_seconds: float = 20.0, dtype: str = "float32") -> dict:
    """(in, out) -> kernel ms of a Linear as a Gemm over batch x tokens rows, in `dtype` (int8: the fused
    int8 Gemm)."""
    from onnx import helper

    rng = np.random.default_rng(0)
    by_in: dict[int, list[int]] = {}
    for fi, fo in points:
        by_in.setdefault(fi, []).append(fo)
    out = {}
    rows = batch * sig.tokens
    for fi, fouts in sorted(by_in.items()):
        x = rng.standard_normal((rows, fi), dtype=np.float32)
        xs = _input_names(len(fouts), dtype != "float32")
        nodes, inits, outs = [_warm(n, f"{n}w") for n in sorted(set(xs))], [], []
        for i, fo in enumerate(sorted(fouts)):
            inits += [_init(f"P{i}_w", rng.standard_normal((fo, fi), dtype=np.float32) * 0.05),
                      _init(f"P{i}_b", np.zeros(fo, np.float32))]
            nodes.append(helper.make_node("Gemm", [f"{xs[i]}w", f"P{i}_w", f"P{i}_b"], [f"P{i}_y"], name=f"P{i}_gemm",
                                          transB=1))
            outs.append(f"P{i}_y")
        feeds = {n: x for n in set(xs)}
        m, match = _as_run(_model(nodes, [(n, [rows, fi]) for n in sorted(set(xs))], outs, inits), feeds, dtype)
        for fo, t in zip(sorted(fouts), profile_nodes(m, feeds, len(fouts), warmup, reps, threads, max_seconds, match)):
            out[(fi, fo)] = t
    return out


def memory_points(kind: str, sizes: list[tuple[int, int, int]], batch: int, warmup: int, reps: int,
                  threads: int = 0, max_seconds: float = 20.0, dtype: str = "float32") -> dict:
    """(c, h, w) -> kernel ms of one memory-bound op of `kind` on a [batch, c, h, w] tensor. int8: the op as the
    int8 artifact runs it between two int8 convs (a QLinear kernel where onnxruntime has one, else
    DequantizeLinear -> the fp32 op -> QuantizeLinear, all of it timed); see INT8_MEMORY_NOTE."""
    _check_dtype(dtype)
    if kind == "reorder":
        return {s: _reorder(s, batch, warmup, reps, threads, max_seconds) for s in sizes}
    m, feeds = memory_model(kind, sizes, batch, dtype)
    return dict(zip(sizes, profile_nodes(m, feeds, len(sizes), warmup, reps, threads, max_seconds)))


def memory_model(kind: str, sizes: list[tuple[int, int, int]], batch: int, dtype: str = "float32"):
    """(the graph memory_points times, its feeds): one op of `kind` per size, its nodes named P<i>_ (timed)."""
    from onnx import helper

    int8 = dtype != "float32"
    rng = np.random.default_rng(0)
    nodes, inits, inputs, feeds, outs = [], [], [], {}, []
    for i, (c, h, w) in enumerate(sizes):
        xin, shape, y = f"x{i}", [batch, c, h, w], f"P{i}_y"
        x = f"P{i}_w" if int8 else f"x{i}w"
        inputs.append((xin, shape))
        feeds[xin] = rng.standard_normal(shape, dtype=np.float32)
        if int8:   # an untimed 1x1 conv in front: the op reads uint8 in onnxruntime's int8 (NHWC) layout, as in a network
            inits.append(_init(f"w{i}_k", rng.standard_normal((c, c, 1, 1), dtype=np.float32) * 0.1))
            nodes.append(helper.make_node("Conv", [xin, f"w{i}_k"], [x], name=f"w{i}_warm"))
        else:
            nodes.append(_warm(xin, x))
        if kind == "unary":     # int8: an activation with no int8 kernel (DequantizeLinear, op, QuantizeLinear)
            nodes.append(helper.make_node("HardSigmoid" if int8 else "Relu", [x], [y], name=f"P{i}_op"))
        elif kind == "hardswish":   # HardSwish as onnxruntime (and, for int8, quant_pre_process) inlines it
            nodes += [helper.make_node("HardSigmoid", [x], [f"P{i}_h"], name=f"P{i}_hsig", alpha=1 / 6, beta=0.5),
                      helper.make_node("Mul", [x, f"P{i}_h"], [y], name=f"P{i}_mul")]
        elif kind == "silu":
            nodes += [helper.make_node("Sigmoid", [x], [f"P{i}_s"], name=f"P{i}_sig"),
                      helper.make_node("Mul", [x, f"P{i}_s"], [y], name=f"P{i}_mul")]
        elif kind == "gelu":   # x * 0.5 * (1 + erf(x / sqrt 2)), as exported; onnxruntime fuses it
            inits += [_init(f"P{i}_k", np.array(0.70710678, np.float32)), _init(f"P{i}_h", np.array(0.5, np.float32)),
                      _init(f"P{i}_o", np.array(1.0, np.float32))]
            nodes += [helper.make_node("Mul", [x, f"P{i}_k"], [f"P{i}_a"], name=f"P{i}_m1"),
                      helper.make_node("Erf", [f"P{i}_a"], [f"P{i}_e"], name=f"P{i}_erf"),
                      helper.make_node("Add", [f"P{i}_e", f"P{i}_o"], [f"P{i}_p"], name=f"P{i}_add"),
                      helper.make_node("Mul", [x, f"P{i}_p"], [f"P{i}_q"], name=f"P{i}_m2"),
                      helper.make_node("Mul", [f"P{i}_q", f"P{i}_h"], [y], name=f"P{i}_m3")]
        elif kind == "binary":
            x2 = f"x{i}b"
            inputs.append((x2, shape))
            feeds[x2] = rng.standard_normal(shape, dtype=np.float32)
            nodes.append(helper.make_node("Add", [x, x2], [y], name=f"P{i}_op"))
        elif kind == "broadcast":
            s = f"x{i}s"
            inputs.append((s, [batch, c, 1, 1]))
            feeds[s] = rng.standard_normal([batch, c, 1, 1], dtype=np.float32)
            nodes.append(helper.make_node("Mul", [x, s], [y], name=f"P{i}_op"))
        elif kind == "maxpool":
            nodes.append(helper.make_node("MaxPool", [x], [y], name=f"P{i}_op", kernel_shape=[3, 3],
                                          strides=[2, 2], pads=[1, 1, 1, 1]))
        elif kind == "avgpool":
            nodes.append(helper.make_node("AveragePool", [x], [y], name=f"P{i}_op", kernel_shape=[2, 2], strides=[2, 2]))
        elif kind == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", [x], [y], name=f"P{i}_op"))
        elif kind == "softmax":
            nodes.append(helper.make_node("Softmax", [x], [y], name=f"P{i}_op", axis=-1))
        elif kind == "norm":
            sc = f"P{i}_g"
            inits += [_init(sc, np.ones(w, np.float32)), _init(f"P{i}_bb", np.zeros(w, np.float32))]
            nodes.append(helper.make_node("LayerNormalization", [x, sc, f"P{i}_bb"], [y], name=f"P{i}_op", axis=-1))
        elif kind == "concat":
            nodes.append(helper.make_node("Concat", [x, x], [y], name=f"P{i}_op", axis=1))
        else:
            raise ValueError(f"unknown memory kind {kind}")
        if int8:    # and one behind: the op's output is requantized where the op has no int8 kernel
            co = 2 * c if kind == "concat" else c
            inits.append(_init(f"c{i}_k", rng.standard_normal((co, co, 1, 1), dtype=np.float32) * 0.1))
            nodes.append(helper.make_node("Conv", [y, f"c{i}_k"], [f"o{i}"], name=f"c{i}_cool"))
        outs.append(f"o{i}" if int8 else y)
    m = _model(nodes, inputs, outs, inits)
    if int8:        # every node named for the point (P<i>_..., its glue included) is timed; the rest is not
        m = quantized(m, [feeds], preprocess=False)
    return m, feeds


INT8_MEMORY_NOTE = ("int8 memory ops are timed as the int8 artifact runs them between two int8 1x1 convs (not timed; "
                    "onnxruntime's NHWC int8 layout): QLinearAdd, "
                    "QLinearMul, QLinearSigmoid, QLinearGlobalAveragePool, QLinearConcat and uint8 MaxPool where "
                    "onnxruntime has an int8 kernel; DequantizeLinear, the fp32 op and QuantizeLinear where it has "
                    "none (unary: HardSigmoid; hardswish: HardSigmoid and QLinearMul, as quant_pre_process inlines "
                    "HardSwish)")


def _warm(x: str, y: str):
    """An untimed Relu in front of the timed ops: in a network an op reads a tensor the previous op
    has just written (in cache) while the thread pool is already awake; a graph's first node pays
    for neither, so it is not the one timed."""
    from onnx import helper

    return helper.make_node("Relu", [x], [y], name=f"warm_{y}")


def _reorder(size, batch, warmup, reps, threads, max_seconds=20.0) -> float:
    """One NCHW -> NCHWc -> NCHW round trip of a [batch, c, h, w] tensor: the ReorderInput and
    ReorderOutput nodes onnxruntime puts around a blocked 1x1 conv (what an op without an NCHWc kernel,
    e.g. a broadcast multiply, costs in between blocked convs)."""
    from onnx import helper

    c, h, w = size
    c = max(8, -(-c // 8) * 8)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c, h, w), dtype=np.float32)
    wt = _init("w", rng.standard_normal((c, c, 1, 1), dtype=np.float32) * 0.05)
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[1, 1])],
               [("x", [batch, c, h, w])], ["y"], [wt])
    return profile_nodes(m, {"x": x}, 1, warmup, reps, threads, max_seconds,
                         match=lambda e: 0 if e["args"].get("op_name", "").startswith("Reorder") else None)[0]


def e2e_ms(model, feeds: dict, warmup: int, reps: int, threads: int = 0) -> float:
    """Robust wall time of session.run (no profiler): median over undisturbed runs."""
    nthreads = threads or os.cpu_count() or 1
    sess = _session(model, None, threads)
    for _ in range(warmup):
        sess.run(None, feeds)
    ts, ok = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        sess.run(None, feeds)
        w = time.perf_counter() - t0
        ts.append(w * 1e3)
        ok.append(clean(w, time.process_time() - c0, nthreads))
    return robust(ts, ok)


def overheads(warmup: int, reps: int, threads: int = 0) -> dict:
    """Fixed costs: a chain of n tiny Add nodes timed end to end for n in (1, 16, 64); the slope of
    the fit t = a + n * per_op is the per-node overhead; per_inference is the one-node graph's time
    less one node's (from n = 1 to 16)."""
    from onnx import helper

    ns, ts = (1, 16, 64), []
    feeds = {"x": np.ones((1, 8), np.float32), "z": np.ones((1, 8), np.float32)}
    for n in ns:
        nodes, prev = [], "x"
        for i in range(n):
            nodes.append(helper.make_node("Add", [prev, "z"], [f"a{i}"], name=f"add{i}"))
            prev = f"a{i}"
        m = _model(nodes, [("x", [1, 8]), ("z", [1, 8])], [prev], [])
        ts.append(min(e2e_ms(m, feeds, warmup, reps, threads) for _ in range(3)))
    slope, _ = np.polyfit(np.array(ns, float), np.array(ts), 1)
    # a run of the one-node graph, less that node: what any inference pays (session.run, feeds, fetches)
    per_inference = ts[0] - (ts[1] - ts[0]) / (ns[1] - ns[0])
    return {"per_inference_ms": round(max(float(per_inference), 0.0), 5), "per_op_ms": round(max(float(slope), 0.0), 5),
            "fit": {"nodes": list(ns), "ms": [round(t, 5) for t in ts]}}


def peaks(warmup: int, reps: int, threads: int = 0) -> dict:
    """Measured peak compute (a 1024^3 fp32 MatMul) and memory bandwidth (Add of two 64 MiB tensors:
    three tensors' bytes per run)."""
    from onnx import helper

    n = 1024
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    m = _model([helper.make_node("MatMul", ["a", "b"], ["P0_y"], name="P0_mm")], [("a", [n, n]), ("b", [n, n])], ["P0_y"], [])
    t = min(profile_nodes(m, {"a": a, "b": a}, 1, warmup, reps, threads)[0] for _ in range(2))
    gflops = 2 * n ** 3 / (t / 1e3) / 1e9
    k = 16 * 2**20
    x = rng.standard_normal(k, dtype=np.float32)
    m = _model([helper.make_node("Add", ["a", "b"], ["P0_y"], name="P0_add")], [("a", [k]), ("b", [k])], ["P0_y"], [])
    t2 = min(profile_nodes(m, {"a": x, "b": x}, 1, warmup, reps, threads)[0] for _ in range(2))
    gbps = 3 * k * 4 / (t2 / 1e3) / 1e9
    return {"gflops": round(gflops, 2), "gbps": round(gbps, 2),
            "source": f"measured: onnxruntime {version()} MatMul 1024x1024x1024 fp32 ({t:.2f} ms) and "
                      f"Add of two 64 MiB fp32 tensors ({t2:.2f} ms), node kernel time, best of 2 x median of {reps}"}


CHAIN = 16


def _chain(sig, k: int, batch: int, rng):
    """`k` copies of the op `sig` (shape-preserving: a stride-1 'same' conv with cin == cout, a
    depthwise conv, or an element-wise memory op) in a chain, step j's nodes tagged P<j>_."""
    from onnx import helper

    c, h, w = sig.cout, sig.h, sig.w
    nodes, inits, prev = [], [], "x"
    inputs, feeds = [("x", [batch, c, h, w])], {"x": rng.standard_normal((batch, c, h, w), dtype=np.float32)}
    if sig.op == "memory" and sig.kind == "binary":
        inputs.append(("z", [batch, c, h, w]))
        feeds["z"] = rng.standard_normal((batch, c, h, w), dtype=np.float32)
    for j in range(k):
        y = f"P{j}_y"
        if sig.op in ("conv", "dwconv"):
            g = c if sig.op == "dwconv" else 1
            kh, kw = sig.kernel
            inits += [_init(f"P{j}_w", rng.standard_normal((c, c // g, kh, kw), dtype=np.float32) * 0.05),
                      _init(f"P{j}_b", np.zeros(c, np.float32))]
            nodes += [helper.make_node("Conv", [prev, f"P{j}_w", f"P{j}_b"], [f"P{j}_c"], name=f"P{j}_conv",
                                       kernel_shape=[kh, kw], group=g, pads=[kh // 2, kw // 2] * 2),
                      helper.make_node("Relu", [f"P{j}_c"], [y], name=f"P{j}_relu")]
        elif sig.kind == "unary":
            nodes.append(helper.make_node("Relu", [prev], [y], name=f"P{j}_op"))
        elif sig.kind == "silu":
            nodes += [helper.make_node("Sigmoid", [prev], [f"P{j}_s"], name=f"P{j}_sig"),
                      helper.make_node("Mul", [prev, f"P{j}_s"], [y], name=f"P{j}_mul")]
        elif sig.kind == "binary":
            nodes.append(helper.make_node("Add", [prev, "z"], [y], name=f"P{j}_op"))
        else:
            raise ValueError(f"cannot chain {sig.op} {sig.kind}")
        prev = y
    return _model(nodes, inputs, [prev], inits), feeds


def context_pairs(units, batch: int, warmup: int, reps: int, threads: int = 0) -> list[dict]:
    """What a layer costs inside a network, against what the tables' measurement says: for each
    chainable op, (a) its node-profiler kernel time in a chain of CHAIN copies (steps after the
    first, as the tables time ops: on a just-written input with the thread pool awake) and (b) its
    marginal end-to-end cost without the profiler, (t(CHAIN) - t(2)) / (CHAIN - 2) of session.run
    wall time, each the best of 3 robust medians. The profiler's own bookkeeping and the per-node
    dispatch make (a) and (b) differ most for small ops; the predictor maps (a) to (b) with a line
    fitted on these pairs (see profiler.context_fit)."""
    rng = np.random.default_rng(0)
    out = []
    for sig in units:
        m_full, f_full = _chain(sig, CHAIN, batch, rng)
        m_two, f_two = _chain(sig, 2, batch, rng)
        t_full = min(e2e_ms(m_full, f_full, warmup, reps, threads) for _ in range(3))
        t_two = min(e2e_ms(m_two, f_two, warmup, reps, threads) for _ in range(3))
        steps = min((profile_nodes(m_full, f_full, CHAIN, warmup, max(reps // 10, 7), threads) for _ in range(2)),
                    key=lambda v: sum(v[1:]))
        out.append({"op": sig.op, "kind": sig.kind, "c": sig.cout, "h": sig.h, "w": sig.w,
                    "kernel": list(sig.kernel),
                    "profiled_ms": round(statistics.mean(steps[1:]), 5),
                    "marginal_ms": round(max((t_full - t_two) / (CHAIN - 2), 0.0), 5)})
    return out


def network_ms(model, feeds: dict, min_runs: int, threads: int = 0, seconds: float = 2.0, max_runs: int = 600,
               nodes_below_ms: float | None = None) -> dict:
    """A whole network as a user runs it and as the tables see it, in this process: `wall_ms`, the
    median session.run wall time over `runs` runs (about `seconds` of them, at least min_runs, at most
    max_runs) after runs // 3 warm-up runs (no profiler); and `node_ms`, the sum over its nodes of
    each node's median kernel time under the node profiler (runs // 3 warm-up, then `runs`), with
    `nodes`. Plain medians over many runs: a small network's runs are short and its first profiled
    runs slow (the profiler's buffers grow). With `nodes_below_ms`, a network slower than that is not run
    under the profiler (`node_ms`, `nodes` None: the profile uses them for small networks only)."""
    sess = _session(model, None, threads)
    probe = []
    for _ in range(3):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        probe.append((time.perf_counter() - t0) * 1e3)
    runs = min(max(int(seconds * 1e3 / max(statistics.median(probe), 1e-3)), min_runs), max_runs)
    for _ in range(runs // 3):
        sess.run(None, feeds)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        ts.append((time.perf_counter() - t0) * 1e3)
    del sess
    if nodes_below_ms is not None and statistics.median(ts) > nodes_below_ms:
        return {"wall_ms": statistics.median(ts), "node_ms": None, "nodes": None}
    with tempfile.TemporaryDirectory(prefix="compress-profile-") as tmp:
        sess = _session(model, tmp, threads)
        for _ in range(runs // 3 + runs):
            sess.run(None, feeds)
        events = json.load(open(sess.end_profiling()))
        del sess
    per: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per.setdefault(e["name"], []).append(e["dur"] / 1e3)
    node = sum(statistics.median(v[runs // 3:] or v) for v in per.values())
    return {"wall_ms": statistics.median(ts), "node_ms": node, "nodes": len(per)}


def quantize_file(src: str, dst: str, example_inputs) -> None:
    """The ONNX file `src` quantized as the int8 artifact is (`quantized`), calibrated on `example_inputs`
    (torch tensors, in the graph's input order), written to `dst` (may be `src`)."""
    import onnx

    m = onnx.load(src)
    names = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    feeds = {n: x.detach().cpu().numpy() for n, x in zip(names, example_inputs)}
    onnx.save(quantized(m, [feeds]), dst)


def model_ms(model, example_inputs, warmup: int, reps: int, threads: int = 0, dtype: str = "float32",
             rounds: int = 1, nodes_below_ms: float | None = None) -> dict:
    """A whole model's end-to-end latency as a user runs it: exported to ONNX (compress.export.onnx;
    int8: then quantized as `compress export --dtype int8` does, calibrated on the example inputs) and
    timed in `rounds` fresh processes (no torch, no earlier sessions in them; exported once): the fastest
    round's network_ms (outside load only adds time)."""
    import subprocess
    import sys

    from compress.errors import CompressError
    from compress.export.onnx import export_onnx

    with tempfile.TemporaryDirectory(prefix="compress-profile-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(model, example_inputs, path)
        _check_dtype(dtype)
        if dtype != "float32":
            quantize_file(path, os.path.join(tmp, "model.int8.onnx"), example_inputs)
            path = os.path.join(tmp, "model.int8.onnx")
        shapes = ";".join(",".join(str(d) for d in x.shape) for x in example_inputs)
        best = None
        for _ in range(max(rounds, 1)):
            p = subprocess.run([sys.executable, "-m", "compress.hardware_profiles.ort_bench", path, shapes,
                                str(warmup), str(reps), str(threads), str(nodes_below_ms or "")],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise CompressError(f"timing the exported model failed: "
                                    f"{(p.stderr.strip().splitlines() or ['?'])[-1]}")
            v = json.loads(p.stdout.strip().splitlines()[-1])
            best = v if best is None or v["wall_ms"] < best["wall_ms"] else best
    return best


if __name__ == "__main__":   # model_ms's timing process: PATH SHAPES WARMUP REPS THREADS [NODES_BELOW_MS]
    import sys

    import onnx

    _path, _shapes, _warm, _reps, _threads = sys.argv[1:6]
    _below = float(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[6] else None
    _m = onnx.load(_path)
    _rng = np.random.default_rng(0)
    _inputs = [i for i in _m.graph.input if i.name not in {t.name for t in _m.graph.initializer}]
    _feeds = {}
    for _i, _sh in zip(_inputs, _shapes.split(";")):
        _dims = [int(d) for d in _sh.split(",")]
        _int = _i.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        _feeds[_i.name] = (np.ones(_dims, np.int64 if _i.type.tensor_type.elem_type == onnx.TensorProto.INT64
                                   else np.int32) if _int else _rng.standard_normal(_dims, dtype=np.float32))
    print(json.dumps(network_ms(_m, _feeds, max(int(_reps), int(_warm)), int(_threads), nodes_below_ms=_below)))
