"""CPU block-sparse kernel candidates for Y = X @ W^T (fp32), side by side.

Question: for the layers `compress sparsify --pattern block:B` produces (W: N out x K in, fp32, whole
B x B blocks zero), which CPU kernel computes Y = X @ W^T fastest at 8 / 128 / 512 tokens, and at which
block sparsity does it beat the dense matmul? Every candidate is prepared once from the dense weight
(outside timing) and then timed as a zero-argument callable.

Candidates (CANDIDATES, name -> factory(W, X, block, threads) -> zero-argument callable returning Y):
- `dense_torch`: `torch.nn.functional.linear(x, w)`, the reference (MKL/oneDNN sgemm).
- `torch_bsr_linear`: `F.linear(x, W.to_sparse_bsr((b, b)))` (a BSR weight dropped into a Linear).
- `torch_bsr_mm`: `(W_bsr @ x.T).T` (what compress.kernels runs on CPU; torch's BSR x dense path).
- `ort_sparse_coo`, `ort_sparse_csr`: onnxruntime's contrib op `com.microsoft::SparseToDenseMatMul`
  (A sparse x B dense, `transB=1`: Y^T = W . X^T, then a `Transpose` node gives Y) in a one-node (+
  Transpose) model, session with intra_op_num_threads = threads. ORT 1.32 does NOT accept the weight as
  an ONNX sparse initializer: it densifies sparse initializers at load time, so the op sees
  `tensor(float)` ("Type 'tensor(float)' of input parameter (W) ... is invalid"; declaring W also as a
  sparse graph input: "Data in initializer 'W' has element type tensor(float) but usage of initializer in
  graph expects sparse_tensor(float)"). The route ORT's own tests use works: W is a `sparse_tensor(float)`
  graph input, fed once-built `OrtValue.ort_value_from_sparse_tensor` (COO with 2-D (nnz, 2) indices,
  or CSR) through `run_with_ort_values`. X's and Y's dims are symbolic in the model because the op's
  shape inference ignores transB. Kernel (contrib_ops/cpu/math/sparse_dense_matmul.cc): COO is a plain
  scalar loop over the nonzeros, CSR an Eigen sparse x dense product; neither is multithreaded (COO
  takes seconds per call at 4096x4096, 512 tokens, 50%: leave it out with --candidates for a quick pass).
- `ort_dense`: onnxruntime MatMul with W^T as a dense initializer (ORT's own dense baseline).
- `tvm_bsr`: Apache TVM (0.27, `tvm.tirx` TensorIR) kernel generated for the problem's shapes: row
  blocks in parallel, per row block a register tile of `tile` tokens x b outputs accumulated over the
  row's stored blocks (values stored (nnzb, b_in, b_out) so the b outputs are one vector), built for
  {"kind": "llvm", "mcpu": <this host's CPU, tvm.target.codegen.llvm_get_system_cpu()>, "num-cores":
  threads} (TVM 0.27 refuses "llvm -mcpu=native" strings and turns mcpu "native" into "generic"). The
  block pattern (indptr / column indices) is bound once as runtime tensors, not baked into the code.
  TVM's thread pool size comes from TVM_NUM_THREADS, read when the pool starts: it must be set before
  tvm runs anything in the timing process (main() runs each thread count in a fresh worker process
  that sets it before importing tvm; a library caller must do the same).

- `compress_ort`: compress's own kernel (kernels/bsr_cpu.cpp) as it ships in `compress export --target cpu`:
  the `ai.compress::BlockSparseLinear` custom op in onnxruntime (weights as initializers, read in place),
  on onnxruntime's intra-op thread pool.
- `compress_ctypes`: the same kernel called directly (ctypes, OpenMP threads).

Adding a candidate: one function, registered by name:

    @register("compress_cpp")
    def compress_cpp(w: np.ndarray, x: np.ndarray, block: int, threads: int):
        ...prepare once (raise Unavailable("why") if it cannot run here)...
        return lambda: kernel(x_prepared, ...)        # returns Y (T, N): numpy, torch, tvm or OrtValue

`check(fn, w, x)` compares it with float64 numpy; main() then times it beside the others. A dict in
the callable's `info` attribute (e.g. the kernel's tile or target) is recorded with its results.

Protocol (main): per thread count a fresh worker process (TVM_NUM_THREADS, torch.set_num_threads,
ORT intra_op_num_threads); per point (shape, tokens, sparsity) the weight has exactly
round((1 - s) x blocks) random nonzero blocks (at least one); every candidate is prepared and checked
against float64 (max |Y - ref| / max |ref| <= 1e-4) before anything is timed; then `--rounds` rounds,
each timing every candidate once in turn (the starting candidate rotates), each time `--warmup` calls
then calls until `--runs` are timed or `--max-seconds` passed (at least 3); reported per candidate:
the median over rounds of each round's median ms, min and max over rounds. Three thread pools share
the worker process (torch's OpenMP, ORT's, TVM's); the warm-up before each timed block absorbs the
spin-down of the previous candidate's pool. Thread variables are recorded under protocol.workers. On a
loaded 2-core machine the numbers are meaningless: a preempted OpenMP thread turns a 0.1 ms matmul into
steps of 16 or 32 ms (seen while writing this, for every torch candidate, with or without TVM in the
process, TVM_BIND_THREADS=0 or KMP_BLOCKTIME=0 changing nothing reproducible). Run it on a quiet machine:

    nice -n -10 python bench/bsr_cpu_candidates.py --out bench/results/cpu/bsr_cpu_candidates.json
    python bench/bsr_cpu_candidates.py --shapes 384x1536 --tokens 8 --sparsities 0.9 --out /tmp/c.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

OUT = C.RESULTS / "bsr_cpu_candidates.json"
SHAPES = ["384x1536", "1536x384", "1024x4096", "4096x4096"]      # N (out) x K (in)
TOKENS = [8, 128, 512]
SPARSITIES = [0.5, 0.7, 0.9]
WORKER_ENV = ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "TVM_BIND_THREADS", "TVM_THREAD_POOL_SPIN_COUNT", "OMP_WAIT_POLICY",
              "KMP_BLOCKTIME", "MKL_NUM_THREADS")
TOLERANCE = 1e-4                                                 # max |Y - ref| / max |ref|, fp32 vs fp64

Factory = Callable[[np.ndarray, np.ndarray, int, int], Callable[[], Any]]
CANDIDATES: dict[str, Factory] = {}


class Unavailable(Exception):
    """A candidate that cannot run here (a package missing, an op refused); main() records why and goes on."""


def register(name: str) -> Callable[[Factory], Factory]:
    def deco(f: Factory) -> Factory:
        CANDIDATES[name] = f
        return f
    return deco


# --------------------------------------------------------------------------- problems and checks

def make_problem(n: int, k: int, tokens: int, block: int, sparsity: float,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(W (n, k) fp32 with exactly round((1 - sparsity) x blocks) random nonzero b x b blocks, at least one;
    X (tokens, k) fp32). n and k must be multiples of `block`."""
    if n % block or k % block:
        raise ValueError(f"shape {n}x{k} is not a multiple of block {block}")
    rng = np.random.default_rng(seed)
    nbr, nbc = n // block, k // block
    keep = max(1, round((1 - sparsity) * nbr * nbc))
    mask = np.zeros(nbr * nbc, bool)
    mask[rng.permutation(nbr * nbc)[:keep]] = True
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    w = (w.reshape(nbr, block, nbc, block) * mask.reshape(nbr, 1, nbc, 1)).reshape(n, k)
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    return np.ascontiguousarray(w), x


def bsr_parts(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr (N/b + 1,), column block indices (nnzb,), blocks (nnzb, b, b) as in W) of W's nonzero blocks."""
    n, k = w.shape
    blocks = w.reshape(n // block, block, k // block, block).transpose(0, 2, 1, 3)
    mask = np.abs(blocks).sum((2, 3)) != 0
    rows, cols = np.nonzero(mask)
    indptr = np.zeros(n // block + 1, np.int64)
    indptr[1:] = np.cumsum(mask.sum(1))
    return indptr, cols.astype(np.int64), np.ascontiguousarray(blocks[rows, cols])


def to_numpy(y) -> np.ndarray:
    """A candidate's output (numpy, torch tensor, tvm tensor, OrtValue or a list holding one) as numpy."""
    if isinstance(y, (list, tuple)) or type(y).__name__ == "OrtValueVector":
        y = y[0]
    if hasattr(y, "detach"):
        return y.detach().cpu().numpy()
    if hasattr(y, "numpy"):
        return y.numpy()
    return np.asarray(y)


def check(fn: Callable[[], Any], w: np.ndarray, x: np.ndarray, tol: float = TOLERANCE) -> dict:
    """Run `fn` once and compare with X @ W^T in float64: {"ok", "max_rel_error"} (relative to max |ref|)."""
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    y = to_numpy(fn())
    if y.shape != ref.shape:
        return {"ok": False, "max_rel_error": None, "error": f"output shape {y.shape}, expected {ref.shape}"}
    err = float(np.abs(y.astype(np.float64) - ref).max() / max(float(np.abs(ref).max()), 1e-30))
    return {"ok": bool(np.isfinite(err) and err <= tol), "max_rel_error": err}


# --------------------------------------------------------------------------- candidates

def _torch(threads: int):
    import torch

    torch.set_num_threads(threads)
    return torch


@register("dense_torch")
def dense_torch(w, x, block, threads):
    """Dense reference: F.linear(x, w)."""
    torch = _torch(threads)
    wt, xt = torch.from_numpy(w).clone(), torch.from_numpy(x).clone()
    f = torch.nn.functional.linear

    def run():
        with torch.no_grad():        # not inference_mode: BSR F.linear refuses inference tensors
            return f(xt, wt)
    return run


def _bsr(w, block, torch):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # "Sparse BSR tensor support is in beta"
        return torch.from_numpy(w).to_sparse_bsr((block, block))


@register("torch_bsr_linear")
def torch_bsr_linear(w, x, block, threads):
    """torch BSR through F.linear(x, W_bsr)."""
    torch = _torch(threads)
    wb, xt = _bsr(w, block, torch), torch.from_numpy(x).clone()
    f = torch.nn.functional.linear

    def run():
        with torch.no_grad():        # not inference_mode: BSR F.linear refuses inference tensors
            return f(xt, wb)
    return run


@register("torch_bsr_mm")
def torch_bsr_mm(w, x, block, threads):
    """torch BSR as (W_bsr @ X^T)^T, the CPU path of compress.kernels."""
    torch = _torch(threads)
    wb, xt = _bsr(w, block, torch), torch.from_numpy(x).clone()

    def run():
        with torch.no_grad():        # not inference_mode: BSR F.linear refuses inference tensors
            return (wb @ xt.t()).t()
    return run


def _ort_session(model, threads: int):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Unavailable(f"onnxruntime is not importable ({e})") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort, ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_sparse(w, x, threads, fmt: str):
    from onnx import TensorProto, helper

    n, k = w.shape
    node = helper.make_node("SparseToDenseMatMul", ["W", "X"], ["YT"], domain="com.microsoft", transB=1)
    tr = helper.make_node("Transpose", ["YT"], ["Y"], perm=[1, 0])
    graph = helper.make_graph(
        [node, tr], "bsr_candidate",
        [helper.make_sparse_tensor_value_info("W", TensorProto.FLOAT, [n, k]),
         helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "K"])],     # symbolic: see the docstring
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", "N"])])
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    ort, sess = _ort_session(model, threads)
    rows, cols = np.nonzero(w)
    values = np.ascontiguousarray(w[rows, cols])
    dev = ort.OrtDevice.make("cpu", 0)
    if fmt == "coo":
        arrays = (values, np.ascontiguousarray(np.stack([rows, cols], 1), dtype=np.int64))
        st = ort.SparseTensor.sparse_coo_from_numpy([n, k], *arrays, dev)
    else:
        indptr = np.zeros(n + 1, np.int64)
        indptr[1:] = np.cumsum((w != 0).sum(1))
        arrays = (values, cols.astype(np.int64), indptr)
        st = ort.SparseTensor.sparse_csr_from_numpy([n, k], *arrays, dev)
    xc = np.ascontiguousarray(x)
    feeds = {"W": ort.OrtValue.ort_value_from_sparse_tensor(st), "X": ort.OrtValue.ortvalue_from_numpy(xc)}

    def run():
        return sess.run_with_ort_values(["Y"], feeds)
    run.held = (arrays, xc, st)                          # the OrtValues point into these numpy buffers (no copy)
    return run


@register("ort_sparse_coo")
def ort_sparse_coo(w, x, block, threads):
    """onnxruntime com.microsoft::SparseToDenseMatMul, W as a COO sparse tensor input."""
    return _ort_sparse(w, x, threads, "coo")


@register("ort_sparse_csr")
def ort_sparse_csr(w, x, block, threads):
    """onnxruntime com.microsoft::SparseToDenseMatMul, W as a CSR sparse tensor input (Eigen)."""
    return _ort_sparse(w, x, threads, "csr")


@register("ort_dense")
def ort_dense(w, x, block, threads):
    """onnxruntime MatMul(X, W^T) with W^T a dense initializer."""
    from onnx import TensorProto, helper, numpy_helper

    n, k = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "WT"], ["Y"])], "dense_candidate",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", n])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(w.T), "WT")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    _, sess = _ort_session(model, threads)
    feeds = {"X": x}
    return lambda: sess.run(["Y"], feeds)


def tvm_target(threads: int) -> dict:
    """This host's CPU for TVM's LLVM backend (0.27 takes JSON-dict targets only; mcpu "native" is not
    resolved by its LLVM, so the host CPU name is asked for explicitly)."""
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": int(threads)}


def default_tile(tokens: int, block: int) -> int:
    """Tokens per register tile: at most 128 fp32 accumulators (tile x block), a divisor of `tokens`."""
    tile = max(1, min(8, 128 // block))
    while tokens % tile:
        tile //= 2
    return tile


def tvm_bsr_primfunc(tokens: int, n: int, k: int, block: int, nnzb: int, tile: int):
    """The TensorIR kernel: Y[t, i*b + o] = sum over the stored blocks j of row block i, sum over c <
    b of X[t, IND[j]*b + c] * V[j, c, o]; row blocks in parallel, `tile` tokens x b outputs in registers."""
    try:
        from tvm.script import tirx as T
    except ImportError as e:
        raise Unavailable(f"tvm (0.27, tvm.script.tirx) is not importable ({e})") from None
    nrb, b = n // block, block

    @T.prim_func
    def bsr(X: T.Buffer((tokens, k), "float32"), V: T.Buffer((nnzb, b, b), "float32"),
            IND: T.Buffer((nnzb,), "int32"), PTR: T.Buffer((nrb + 1,), "int32"), Y: T.Buffer((tokens, n), "float32")):
        T.func_attr({"global_symbol": "bsr", "tirx.noalias": True})
        for i in T.parallel(nrb):
            for t0 in range(tokens // tile):
                acc = T.alloc_buffer((tile, b), "float32", scope="local")
                for tt in T.unroll(tile):
                    for o in T.vectorized(b):
                        acc[tt, o] = T.float32(0)
                for j in range(PTR[i], PTR[i + 1]):
                    for c in range(b):
                        for tt in T.unroll(tile):
                            for o in T.vectorized(b):
                                acc[tt, o] = acc[tt, o] + X[t0 * tile + tt, IND[j] * b + c] * V[j, c, o]
                for tt in T.unroll(tile):
                    for o in T.vectorized(b):
                        Y[t0 * tile + tt, i * b + o] = acc[tt, o]
    return bsr


@register("tvm_bsr")
def tvm_bsr(w, x, block, threads, tile: int | None = None):
    """Apache TVM TensorIR kernel compiled for this shape and host (TVM_NUM_THREADS: see the docstring)."""
    try:
        import tvm
    except ImportError as e:
        raise Unavailable(f"tvm is not importable ({e})") from None
    n, k = w.shape
    tokens = x.shape[0]
    indptr, cols, blocks = bsr_parts(w, block)
    values = np.ascontiguousarray(blocks.transpose(0, 2, 1))       # (nnzb, b_in, b_out): b outputs contiguous
    tile = tile or default_tile(tokens, block)
    func = tvm_bsr_primfunc(tokens, n, k, block, len(cols), tile)
    lib = tvm.compile(tvm.IRModule({"bsr": func}), target=tvm.target.Target(tvm_target(threads)))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (x, values, cols.astype(np.int32), indptr.astype(np.int32),
                                                 np.zeros((tokens, n), np.float32))]
    f = lib["bsr"]

    def run():
        f(*args)
        return args[-1]
    run.info = {"tile": tile, "target": tvm_target(threads), "nnzb": int(len(cols))}
    return run


@register("compress_ort")
def compress_ort(w, x, block, threads):
    """compress's kernel (kernels/bsr_cpu.cpp) as it ships: the BlockSparseLinear custom op in a one-node
    onnxruntime model (weights as initializers), on onnxruntime's intra-op pool of `threads`."""
    from onnx import TensorProto, helper, numpy_helper

    from compress.kernels import bsr_cpu, bsr_cpu_runtime as rt

    if block not in bsr_cpu.BLOCKS:
        raise Unavailable(f"the kernel takes blocks {bsr_cpu.BLOCKS}")
    n, k = w.shape
    p = bsr_cpu.from_dense(w, block)
    bias = np.zeros(len(p["rowptr"]) * block - block, np.float32)
    inits = [numpy_helper.from_array(a, name) for name, a in
             (("values", p["values"]), ("rowptr", p["rowptr"]), ("cols", p["cols"]), ("bias", bias))]
    node = helper.make_node(rt.OP_TYPE, ["X", "values", "rowptr", "cols", "bias"], ["Y"], domain=rt.DOMAIN,
                            block=block, out_features=n)
    graph = helper.make_graph([node], "compress_bsr", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(rt.DOMAIN, 1)])
    import onnxruntime as ort

    so = rt.session_options(bsr_cpu.cached_library(), threads)
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"X": x}
    return lambda: sess.run(["Y"], feeds)


@register("compress_ctypes")
def compress_ctypes(w, x, block, threads):
    """compress's kernel called directly (ctypes, OpenMP threads): the kernel without onnxruntime around it."""
    from compress.kernels import bsr_cpu

    if block not in bsr_cpu.BLOCKS:
        raise Unavailable(f"the kernel takes blocks {bsr_cpu.BLOCKS}")
    p, lib = bsr_cpu.from_dense(w, block), bsr_cpu.kernel()
    xc = np.ascontiguousarray(x)
    return lambda: bsr_cpu.linear(xc, p, w.shape[0], None, threads, lib)


# --------------------------------------------------------------------------- timing

def time_block(fn: Callable[[], Any], warmup: int, runs: int, max_seconds: float) -> dict:
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - start < max_seconds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": len(times)}


def prepare(names: list[str], w: np.ndarray, x: np.ndarray, block: int, threads: int) -> tuple[dict, dict]:
    """{name: callable} of the candidates that built and passed the check, and {name: record} for all."""
    fns, recs = {}, {}
    for name in names:
        t0 = time.perf_counter()
        try:
            fn = CANDIDATES[name](w, x, block, threads)
        except (Unavailable, ImportError) as e:
            recs[name] = {"available": False, "why": str(e)}
            continue
        prep = time.perf_counter() - t0
        try:
            rec = {"available": True, "prepare_s": round(prep, 3)} | getattr(fn, "info", {}) | check(fn, w, x)
        except Exception as e:                           # a candidate that fails on this point: recorded, not timed
            rec = {"available": True, "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        recs[name] = rec
        if rec["ok"]:
            fns[name] = fn
    return fns, recs


def run_point(names, shape: str, tokens: int, sparsity: float, args) -> dict:
    n, k = (int(v) for v in shape.split("x"))
    w, x = make_problem(n, k, tokens, args.block, sparsity, args.seed)
    nb = (n // args.block) * (k // args.block)
    fns, recs = prepare(names, w, x, args.block, args.threads)
    order = list(fns)
    per = {name: [] for name in order}
    for r in range(args.rounds):
        rot = order[r % len(order):] + order[:r % len(order)] if order else []
        for name in rot:
            per[name].append(time_block(fns[name], args.warmup, args.runs, args.max_seconds))
    for name, blocks in per.items():
        med = [b["median_ms"] for b in blocks]
        recs[name] |= {"median_ms": round(statistics.median(med), 4), "min_ms": round(min(med), 4),
                       "max_ms": round(max(med), 4), "best_ms": round(min(b["min_ms"] for b in blocks), 4),
                       "rounds_ms": [round(v, 4) for v in med], "runs": [b["runs"] for b in blocks]}
    nnzb = int((np.abs(w.reshape(n // args.block, args.block, k // args.block, args.block)).sum((1, 3)) != 0).sum())
    return {"shape": shape, "n": n, "k": k, "tokens": tokens, "sparsity": sparsity, "block": args.block,
            "threads": args.threads, "block_density": round(nnzb / nb, 6), "load1": C.loadavg()[:1],
            "candidates": recs}


def worker(args) -> int:
    names = args.candidates or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        print(f"unknown candidate(s) {unknown}; known: {', '.join(CANDIDATES)}", file=sys.stderr)
        return 2
    points = []
    for shape in args.shapes:
        for tokens in args.tokens:
            for sp in args.sparsities:
                C.log(f"threads {args.threads}: {shape} tokens {tokens} sparsity {sp}")
                points.append(run_point(names, shape, tokens, sp, args))
    print(json.dumps(points))
    return 0


def table(points: list[dict]) -> str:
    names = sorted({c for p in points for c in p["candidates"]})
    head = f"{'thr':>3} {'N x K':>10} {'tok':>4} {'sp':>4} " + " ".join(f"{n:>16}" for n in names)
    lines = [head, "-" * len(head)]
    for p in points:
        cells = []
        for name in names:
            r = p["candidates"].get(name)
            if r is None:
                cells.append("-")
            elif not r.get("available", True):
                cells.append("n/a")
            elif not r.get("ok"):
                cells.append("WRONG")
            else:
                cells.append(f"{r['median_ms']:.3f}")
        lines.append(f"{p['threads']:>3} {p['shape']:>10} {p['tokens']:>4} {p['sparsity']:>4} "
                     + " ".join(f"{c:>16}" for c in cells))
    lines.append("ms, median over rounds of each round's median; n/a: candidate unavailable here; "
                 "WRONG: failed the float64 check (not timed)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- driver

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=SHAPES, help="N x K (out x in features)")
    p.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    p.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    p.add_argument("--threads", nargs="+", type=int, default=[2])
    p.add_argument("--block", type=int, default=32, choices=(16, 32, 64))
    p.add_argument("--candidates", nargs="+", help=f"a subset of {', '.join(CANDIDATES)} (default: all)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=1.0, help="cap on timed seconds per block (>= 3 runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        args.threads = args.threads[0]
        return worker(args)
    t_start = time.time()
    points, workers = [], []
    for threads in args.threads:
        env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--block", str(args.block),
               "--shapes", *args.shapes, "--tokens", *map(str, args.tokens), "--sparsities", *map(str, args.sparsities),
               "--rounds", str(args.rounds), "--runs", str(args.runs), "--warmup", str(args.warmup),
               "--max-seconds", str(args.max_seconds), "--seed", str(args.seed)]
        if args.candidates:
            cmd += ["--candidates", *args.candidates]
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        if p.returncode:
            print(f"worker for {threads} thread(s) failed (exit {p.returncode})", file=sys.stderr)
            return p.returncode
        points += json.loads(p.stdout.strip().splitlines()[-1])
        workers.append({"threads": threads, "env": {k: env.get(k) for k in WORKER_ENV}})
    print(table(points))
    data = C.result_header("bsr_cpu_candidates", "which CPU block-sparse kernel computes X @ W^T fastest, "
                           "and from which block sparsity it beats dense", t_start)
    data["versions"] |= _extra_versions()
    data |= {"protocol": {"rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
                          "max_seconds": args.max_seconds, "block": args.block, "seed": args.seed,
                          "tolerance": TOLERANCE, "workers": workers},
             "loadavg_end": C.loadavg(), "points": points, "bars": bars(points)}
    C.write_json(args.out, data)
    C.log(f"wrote {args.out}")
    bad = [(p["shape"], p["tokens"], p["sparsity"], n) for p in points for n, r in p["candidates"].items()
           if r.get("available", True) and not r.get("ok")]
    if bad:
        print(f"check failed for {len(bad)} candidate point(s), e.g. {bad[0]}", file=sys.stderr)
        return 1
    return 0


def bars(points: list[dict], ours: str = "compress_ort") -> dict | None:
    """Issue #19's kernel bars for `ours` at block 32, 2 threads: break-even with dense F.linear at or below 50%
    block sparsity from 128 tokens; at 90%, at least 3x dense and 2x torch's BSR (its faster path)."""
    pts = [p for p in points if p["threads"] == 2 and p["block"] == 32 and ours in p["candidates"]]
    if not pts:
        return None

    def speed(p, other):
        a, b = p["candidates"].get(ours, {}), p["candidates"].get(other, {})
        return b["median_ms"] / a["median_ms"] if a.get("ok") and b.get("ok") else None

    def torch_bsr(p):
        got = [v for v in (speed(p, "torch_bsr_mm"), speed(p, "torch_bsr_linear")) if v is not None]
        return min(got) if got else None

    half = [(p, speed(p, "dense_torch")) for p in pts if p["tokens"] >= 128 and p["sparsity"] <= 0.5]
    ninety = [p for p in pts if abs(p["sparsity"] - 0.9) < 1e-9]
    x_dense = [v for v in (speed(p, "dense_torch") for p in ninety) if v is not None]
    x_bsr = [v for v in (torch_bsr(p) for p in ninety) if v is not None]
    slow = [f"{p['shape']}@{p['tokens']}: {v:.2f}x" for p, v in half if v is not None and v < 1.0]
    return {"break_even_50": {"met": bool(half) and not slow and all(v is not None for _, v in half),
                              "detail": ("slower than dense at " + ", ".join(slow)) if slow else
                              f"{len(half)} points at 50% from 128 tokens, min "
                              f"{min(v for _, v in half if v is not None):.2f}x dense" if half else "no points"},
            "x3_dense_90": {"met": bool(x_dense) and min(x_dense) >= 3.0, "min": min(x_dense) if x_dense else 0.0},
            "x2_torch_bsr_90": {"met": bool(x_bsr) and min(x_bsr) >= 2.0, "min": min(x_bsr) if x_bsr else 0.0}}


def _extra_versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("apache-tvm", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
