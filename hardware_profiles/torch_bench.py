"""torch (eager, CPU) micro-benchmarks for the profiler, with the same functions as ort_bench.
Times are wall times of the op (median over `reps` after `warmup`), in ms at `batch`."""

from __future__ import annotations

import statistics
import time


def version() -> str:
    import torch
    return torch.__version__


def median_ms(fn, warmup: int, reps: int) -> float:
    """Median wall time in ms of `reps` calls of `fn` after `warmup` untimed ones: the in-process timer of
    the torch tables (torch_bench, sparse_bench)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def _threads(threads: int):
    import torch
    if threads:
        torch.set_num_threads(threads)


def conv_points(sig, points, batch, warmup, reps, max_weight_mb=64.0, threads=0, max_seconds=0.0) -> dict:
    import torch
    import torch.nn.functional as F

    _threads(threads)
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        for ci, co in points:
            x = torch.randn(batch, ci, sig.h, sig.w, generator=g)
            w = torch.randn(*sig.weight_shape(ci, co), generator=g) * 0.05
            b = torch.zeros(co)
            out[(ci, co)] = median_ms(lambda: F.relu(sig.torch_conv(x, w, b)), warmup, reps)
    return out


def linear_points(sig, points, batch, warmup, reps, threads=0, max_seconds=0.0) -> dict:
    import torch
    import torch.nn.functional as F

    _threads(threads)
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        for fi, fo in points:
            x = torch.randn(batch * sig.tokens, fi, generator=g)
            w = torch.randn(fo, fi, generator=g)
            out[(fi, fo)] = median_ms(lambda: F.linear(x, w), warmup, reps)
    return out


_OPS = {
    "unary": lambda t, F, x, s: F.relu(x), "silu": lambda t, F, x, s: F.silu(x), "gelu": lambda t, F, x, s: F.gelu(x),
    "binary": lambda t, F, x, s: x + x, "broadcast": lambda t, F, x, s: x * s,
    "maxpool": lambda t, F, x, s: F.max_pool2d(x, 3, 2, 1), "avgpool": lambda t, F, x, s: F.avg_pool2d(x, 2),
    "gap": lambda t, F, x, s: x.mean((2, 3)), "softmax": lambda t, F, x, s: x.softmax(-1),
    "norm": lambda t, F, x, s: F.layer_norm(x, x.shape[-1:]), "concat": lambda t, F, x, s: t.cat([x, x], 1),
}


def memory_points(kind, sizes, batch, warmup, reps, threads=0, max_seconds=0.0) -> dict:
    import torch
    import torch.nn.functional as F

    _threads(threads)
    out = {}
    with torch.no_grad():
        for c, h, w in sizes:
            x = torch.randn(batch, c, h, w)
            s = torch.randn(batch, c, 1, 1)
            out[(c, h, w)] = median_ms(lambda: _OPS[kind](torch, F, x, s), warmup, reps)
    return out


def overheads(warmup, reps, threads=0) -> dict:
    """Per-call overhead of an eager op on a tiny tensor; nothing per inference beyond the ops."""
    import torch

    _threads(threads)
    x = torch.ones(1, 8)
    with torch.no_grad():
        one = median_ms(lambda: x + x, warmup, reps)
    return {"per_inference_ms": 0.0, "per_op_ms": round(one, 5), "fit": {"tiny_add_ms": round(one, 5)}}


def peaks(warmup, reps, threads=0) -> dict:
    import torch

    _threads(threads)
    a = torch.randn(1024, 1024)
    t = median_ms(lambda: a @ a, warmup, reps)
    x = torch.randn(16 * 2**20)
    t2 = median_ms(lambda: x + x, warmup, reps)
    return {"gflops": round(2 * 1024**3 / (t / 1e3) / 1e9, 2), "gbps": round(3 * x.numel() * 4 / (t2 / 1e3) / 1e9, 2),
            "source": f"measured: torch {torch.__version__} 1024^3 fp32 matmul ({t:.2f} ms), add of 64 MiB tensors ({t2:.2f} ms)"}
