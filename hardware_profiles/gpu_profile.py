"""A torch device profile measured on a CUDA GPU in float16 (or, for tests, on the CPU in float32): the dense
tables the planner prices structured pruning with, the memory-bound ops, per-model calibration, and a
`sparse` section of 2:4 and block-sparse entries timed with the kernels a planned model runs there.

    layers, dense = model_layers(["torchvision:resnet50"], batch=8)
    prof = measure(layers, GpuProfileConfig(device="cuda"), "gpu.json", "h200-torch-fp16-b8", dense_models=dense)

The code is device-agnostic; only the device string and dtype differ:

- dense tables: `profiler.plan_tables` over the layers' prunable range (a small grid: `max_points` per axis),
  each point `relu(conv2d(x))` / `linear(x)` in torch eager (cuDNN / cuBLAS on CUDA, cuDNN benchmark mode);
- timing (`time_ms`): `inner` back-to-back calls per sample, the median over `reps` samples after `warmup`
  calls; CUDA events on CUDA (what eager execution costs in a network: max of the kernel time and the launch
  rate), perf_counter on CPU. Synchronises only on CUDA;
- `sparse`: for each model's largest distinct Linear / 1x1 (stride 1) conv shapes, dense vs
  2:4 (`torch.sparse.to_sparse_semi_structured`: cuSPARSELt, else CUTLASS; CUDA and 16-bit only, skipped
  elsewhere with the reason recorded) and block-sparse BSR (`compress.kernels.bsr_linear_parts`: our Triton
  kernel on CUDA, autotuned as deployed; torch's BSR on CPU), each checked against the dense result of the
  same masked weight before it is timed. A 1x1 conv runs as `Sparse24Linear` / `BlockSparseLinear` run it
  (NCHW -> rows of channels, the matmul, back). Entries follow the planner's schema
  (`{"layer", "in", "out", "rows", "format": "dense"|"2:4"|"bsrBxB", "density", "ms", "speedup_vs_dense"}`)
  and each names its `runtime`;
- `calibration`: each given dense model timed end to end on the device (`profiler.calibration`).

Nothing here initialises CUDA on import; `measure` with device "cuda" without a CUDA device is a CompressError.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from compress.errors import CompressError, first_line
from compress.hardware_profiles import schema
from compress.hardware_profiles.layers import CONV, DWCONV, LINEAR, MEMORY

RUNTIME_24 = "torch semi-structured (cuSPARSELt)"
RUNTIME_24_CUTLASS = "torch semi-structured (CUTLASS)"
RUNTIME_BSR = "compress Triton BSR"
RUNTIME_BSR_CPU = "compress BSR (torch CPU sparse_bsr)"
RUNTIME_DENSE = "torch dense (cuBLAS / cuDNN)"
RUNTIME_DENSE_CPU = "torch dense (CPU)"
GPU_MEMORY_SIZES = ((16, 8, 8), (64, 14, 14), (64, 28, 28), (64, 56, 56), (64, 112, 112), (128, 112, 112))


@dataclass(frozen=True)
class GpuProfileConfig:
    """What `measure` times and how. dtype "": float16 on CUDA, float32 elsewhere."""
    device: str = "cuda"
    dtype: str = ""
    batch: int = 8
    grid_step: int = 16            # channel grid step (also the profile's channel block)
    max_points: int = 4            # per axis (profiler.grid; the step itself and the full count join)
    warmup: int = 3
    reps: int = 7                  # samples per point; the median is kept
    inner: int = 5                 # back-to-back calls per sample
    memory_sizes: tuple = GPU_MEMORY_SIZES
    sparse_shapes: int = 3         # per model: its largest distinct Linear / 1x1 conv shapes
    blocks: tuple = (32, 64)
    densities: tuple = (0.5,)      # the planner offers densities >= 0.5 only
    two_four: bool = True
    calibrate: bool = True
    models: tuple = ()
    seed: int = 0
    threads: int = 0               # CPU threads for torch (0: as set); the CPU check uses 1


    def resolved_dtype(self) -> str:
        return self.dtype or ("float16" if self.device.startswith("cuda") else "float32")


def _torch_dtype(name: str):
    import torch

    try:
        return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]
    except KeyError:
        raise CompressError(f"dtype {name!r}: use float16, bfloat16 or float32") from None


def resolve_device(device: str):
    """torch.device for `device`; CompressError for CUDA without a CUDA device."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CompressError(f"device {device!r}: no CUDA device here")
    if dev.type not in ("cuda", "cpu"):
        raise CompressError(f"device {device!r}: use cuda or cpu")
    return dev


def synchronize(dev) -> None:
    """Wait for the device's queued work (CUDA only; the CPU runs synchronously)."""
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)


def time_ms(fn, dev, warmup: int = 3, reps: int = 7, inner: int = 5) -> float:
    """Median over `reps` samples of one call's ms, each sample `inner` back-to-back calls (CUDA events on
    CUDA, perf_counter on the CPU), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(dev)
    samples = []
    if dev.type == "cuda":
        import torch

        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(inner):
                fn()
            b.record()
            b.synchronize()
            samples.append(a.elapsed_time(b) / inner)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(samples)


def device_info(dev) -> dict:
    """The profile's `device`: kind gpu with the CUDA device's identity, or this CPU's (kind cpu)."""
    if dev.type == "cuda":
        import torch

        p = torch.cuda.get_device_properties(dev)
        return {"kind": "gpu", "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                "sms": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
                "cuda": torch.version.cuda}
    from compress.hardware_profiles.sparse_bench import machine

    return machine("cpu")


def runtime_info(dev, dtype: str) -> dict:
    import torch

    rt = {"name": "torch", "version": torch.__version__, "threads": torch.get_num_threads(),
          "provider": f"eager, no_grad, {dtype}" + (", cuDNN benchmark" if dev.type == "cuda" else "")}
    if dev.type == "cuda":
        rt["cudnn"] = torch.backends.cudnn.version()
        rt["cusparselt"] = _cusparselt_version()
    return rt


def _cusparselt_version():
    import torch

    mod = getattr(torch.backends, "cusparselt", None)
    try:
        return mod.version() if mod is not None and mod.is_available() else None
    except (RuntimeError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------ dense tables

class _Bench:
    """The timed ops on one device in one dtype (the torch_bench functions, device- and dtype-aware)."""

    def __init__(self, cfg: GpuProfileConfig):
        import torch

        self.torch = torch
        self.cfg = cfg
        self.dev = resolve_device(cfg.device)
        self.dtype = _torch_dtype(cfg.resolved_dtype())
        self.gen = torch.Generator(device=self.dev).manual_seed(cfg.seed)   # inputs drawn on the device itself
        if cfg.threads and self.dev.type == "cpu":
            torch.set_num_threads(cfg.threads)

    def randn(self, *shape, scale: float = 1.0):
        x = self.torch.randn(*shape, generator=self.gen, device=self.dev, dtype=self.dtype)
        return x.mul_(scale) if scale != 1.0 else x

    def ms(self, fn) -> float:
        c = self.cfg
        with self.torch.no_grad():
            return time_ms(fn, self.dev, c.warmup, c.reps, c.inner)

    def conv_points(self, sig, points) -> dict:
        import torch.nn.functional as F

        out = {}
        for ci, co in points:
            x = self.randn(self.cfg.batch, ci, sig.h, sig.w)
            w = self.randn(*sig.weight_shape(ci, co), scale=0.05)
            b = self.torch.zeros(co, device=self.dev, dtype=self.dtype)
            out[(ci, co)] = self.ms(lambda: F.relu(sig.torch_conv(x, w, b)))
        return out

    def linear_points(self, sig, points) -> dict:
        import torch.nn.functional as F

        out = {}
        for fi, fo in points:
            x = self.randn(self.cfg.batch * sig.tokens, fi)
            w = self.randn(fo, fi, scale=fi ** -0.5)
            out[(fi, fo)] = self.ms(lambda: F.linear(x, w))
        return out

    def memory_points(self, kind: str) -> dict:
        import torch.nn.functional as F

        from compress.hardware_profiles.torch_bench import _OPS

        out = {}
        for c, h, w in self.cfg.memory_sizes:
            x = self.randn(self.cfg.batch, c, h, w)
            s = self.randn(self.cfg.batch, c, 1, 1)
            out[(c, h, w)] = self.ms(lambda: _OPS[kind](self.torch, F, x, s))
        return out

    def peaks(self) -> dict:
        n = 4096 if self.dev.type == "cuda" else 512
        a = self.randn(n, n, scale=n ** -0.5)
        t = self.ms(lambda: a @ a)
        x = self.randn((64 if self.dev.type == "cuda" else 4) * 2**20)
        t2 = self.ms(lambda: x + x)
        esz = x.element_size()
        return {"gflops": round(2 * n ** 3 / (t / 1e3) / 1e9, 2), "gbps": round(3 * x.numel() * esz / (t2 / 1e3) / 1e9, 2),
                "source": f"measured: torch {self.torch.__version__} {n}^3 {self.cfg.resolved_dtype()} matmul "
                          f"({t:.3f} ms), add of {x.numel() * esz / 2**20:.0f} MiB tensors ({t2:.3f} ms)"}

    def launch_ms(self) -> float:
        x = self.torch.ones(1, 8, device=self.dev, dtype=self.dtype)
        return self.ms(lambda: x + x)


def _tables(bench: _Bench, layers, cfg: GpuProfileConfig, log, hurry: float | None = None) -> list[dict]:
    """The dense tables. Past `hurry` (time.time()) each remaining table is measured at its full counts only
    (one point, marked `"reduced": true`), so the profile is written within the time limit."""
    from compress.hardware_profiles.profiler import plan_tables

    out = []
    for k, (t, cins, couts) in plan_tables(layers, cfg).items():
        reduced = hurry is not None and time.time() > hurry
        if reduced:
            cins, couts = cins[-1:], couts[-1:]
        if t.op == DWCONV:
            res = bench.conv_points(t, [(c, c) for c in couts])
            grid = [[round(res[(c, c)], 5) for c in couts]]
            cins = [1]
        else:
            pts = [(ci, co) for ci in cins for co in couts]
            res = bench.linear_points(t, pts) if t.op == LINEAR else bench.conv_points(t, pts)
            grid = [[round(res[(ci, co)], 5) for co in couts] for ci in cins]
        grid = [[max(v, 1e-6) for v in row] for row in grid]
        out.append({"key": k, "op": t.op, "cin": cins, "cout": couts, "ms": grid, **({"reduced": True} if reduced else {})})
        log(f"table {k}: {len(cins)}x{len(couts)} points" + (" (reduced: time limit)" if reduced else ""))
    return out


def _efficiency(tables, templates: dict, peak_gflops: float, batch: int) -> dict:
    """Per op the median fraction of peak compute its table points reach (the roofline fallback's efficiency)."""
    eff: dict = {}
    for t in tables:
        tmpl = templates[t["key"]]
        for i, ci in enumerate(t["cin"]):
            for j, co in enumerate(t["cout"]):
                s = replace(tmpl, cin=co if tmpl.op == DWCONV else ci, cout=co,
                            groups=co if tmpl.op == DWCONV else tmpl.groups)
                eff.setdefault(t["op"], []).append(2 * s.macs() * batch / (t["ms"][i][j] / 1e3) / 1e9 / peak_gflops)
    out = {op: round(statistics.median(v), 4) for op, v in eff.items()}
    out["default"] = out.get(CONV, out.get(LINEAR, 0.5))
    return out


# ------------------------------------------------------------------------------------------ sparse entries

def sparse_shapes(layers, batch: int, limit: int) -> list[dict]:
    """The `limit` largest (by MACs) distinct Linear and 1x1 stride-1 conv shapes of `layers`: kind, in, out,
    rows (tokens x batch, or output pixels x batch) and, for convs, the spatial size."""
    seen: dict = {}
    for s in layers:
        if s.op == LINEAR:
            key = ("linear", s.cin, s.cout, s.tokens * batch, 1, 1)
        elif s.op == CONV and s.kernel == (1, 1) and s.groups == 1 and s.stride == (1, 1) and s.padding == (0, 0):
            key = ("conv1x1", s.cin, s.cout, s.h * s.w * batch, s.h, s.w)
        else:
            continue
        seen[key] = True
    top = sorted(seen, key=lambda k: (-k[1] * k[2] * k[3], k))[:limit]
    return [{"layer": k[0], "in": k[1], "out": k[2], "rows": k[3], "h": k[4], "w": k[5]} for k in top]


def _mask_24(w):
    """2 of every 4 weights along the input dimension kept (largest magnitudes)."""
    import torch

    n, k = w.shape
    g = w.view(n, k // 4, 4)
    keep = g.abs().topk(2, dim=-1).indices
    return torch.zeros_like(g, dtype=torch.bool).scatter_(-1, keep, True).view(n, k)


def _block_parts(w, block: int, density: float, gen):
    """BSR parts (crow, col, values) of `w` keeping exactly round(density x blocks) random blocks (at least
    one), and the dense masked weight."""
    import torch

    n, k = w.shape
    nr, nc = n // block, k // block
    keep = torch.zeros(nr * nc, dtype=torch.bool)
    keep[torch.randperm(nr * nc, generator=gen)[:max(1, round(density * nr * nc))]] = True
    keep = keep.view(nr, nc)
    blocks = w.view(nr, block, nc, block).permute(0, 2, 1, 3)
    rows, cols = torch.nonzero(keep, as_tuple=True)
    crow = torch.zeros(nr + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(keep.sum(1), 0)
    masked = w * keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return crow, cols.to(torch.int64).contiguous(), blocks[rows, cols].contiguous(), masked


def _layer_fns(shape: dict, bench: _Bench):
    """(x, dense(w) -> fn, as_rows(matmul) -> fn) for one shape: a Linear on (rows, in), or a 1x1 conv on
    NCHW input whose sparse form runs as the lowered modules run it (rows of channels and back)."""
    import torch.nn.functional as F

    b = bench.cfg.batch
    if shape["layer"] == "linear":
        x = bench.randn(shape["rows"], shape["in"])
        return x, (lambda w: (lambda: F.linear(x, w))), (lambda mm: (lambda: mm(x)))
    h, w_ = shape["h"], shape["w"]
    x = bench.randn(b, shape["in"], h, w_)

    def as_rows(mm):
        def fn():
            y = mm(x.permute(0, 2, 3, 1).reshape(-1, shape["in"]))
            return y.view(b, h, w_, shape["out"]).permute(0, 3, 1, 2)
        return fn

    return x, (lambda w: (lambda: F.conv2d(x, w[:, :, None, None]))), as_rows


def _check(got, ref, tol: float) -> float:
    err = float((got.float() - ref.float()).abs().max()) / (float(ref.float().abs().max()) + 1e-6)
    if not err <= tol:
        raise RuntimeError(f"disagrees with the dense result of the same weight (max rel error {err:.2e} > {tol})")
    return err


def sparse_table(layers_by_model: dict, cfg: GpuProfileConfig, log=lambda m: None, deadline: float | None = None) -> dict:
    """The profile's `sparse` section: dense vs 2:4 vs block-sparse for each model's largest Linear / 1x1
    shapes (`layers_by_model`: name -> its layers), on cfg.device in its dtype. Shapes not started by
    `deadline` (time.time()) are listed in `errors` as skipped."""
    import torch

    bench = _Bench(cfg)
    dev, dtype = bench.dev, bench.dtype
    cuda = dev.type == "cuda"
    tol = 2e-2 if dtype != torch.float32 else 1e-4
    rt_dense = RUNTIME_DENSE if cuda else RUNTIME_DENSE_CPU
    rt_bsr = RUNTIME_BSR if cuda else RUNTIME_BSR_CPU
    rt_24 = RUNTIME_24 if _cusparselt_version() else RUNTIME_24_CUTLASS
    why_24 = None
    if not cfg.two_four:
        why_24 = "skipped: not asked for"
    elif not cuda:
        why_24 = "skipped: 2:4 semi-structured sparsity runs on CUDA only (cuSPARSELt / CUTLASS); no CPU kernel"
    elif dtype not in (torch.float16, torch.bfloat16):
        why_24 = f"skipped: 2:4 semi-structured takes float16 / bfloat16, not {dtype}"
    shapes, seen = [], set()
    for name, layers in layers_by_model.items():
        for s in sparse_shapes(layers, cfg.batch, cfg.sparse_shapes):
            k = tuple(s[f] for f in ("layer", "in", "out", "rows"))
            if k not in seen:
                seen.add(k)
                shapes.append(dict(s, model=name))
    entries, errors = [], []
    from compress import kernels

    gen = torch.Generator().manual_seed(cfg.seed)
    for s in shapes:
        n, k = s["out"], s["in"]
        head = {"layer": s["layer"], "in": k, "out": n, "rows": s["rows"]}
        if deadline is not None and time.time() > deadline:
            errors.append({**head, "error": "skipped: the time limit was reached"})
            continue
        w = torch.randn(n, k, generator=gen) * k ** -0.5
        x, dense_fn, as_rows = _layer_fns(s, bench)
        with torch.no_grad():
            wd = w.to(dev, dtype)
            dense = bench.ms(dense_fn(wd))
        entries.append({**head, "format": "dense", "ms": round(dense, 5), "runtime": rt_dense, "model": s["model"]})
        todo = ([] if why_24 or k % 4 else [("2:4", None, 0.5)]) + \
               [(f"bsr{b}x{b}", b, d) for b in cfg.blocks if n % b == 0 and k % b == 0 for d in cfg.densities]
        for fmt, block, dens in todo:
            e = {**head, "format": fmt, "density": dens, "runtime": rt_24 if block is None else rt_bsr}
            try:
                with torch.no_grad():
                    if block is None:
                        from torch.sparse import to_sparse_semi_structured

                        masked = (w * _mask_24(w)).to(dev, dtype)
                        semi = to_sparse_semi_structured(masked)
                        fn = as_rows(lambda x2, semi=semi: torch.nn.functional.linear(x2, semi))
                    else:
                        crow, col, vals, masked = _block_parts(w, block, dens, gen)
                        crow, col, vals, masked = crow.to(dev), col.to(dev), vals.to(dev, dtype), masked.to(dev, dtype)
                        fn = as_rows(lambda x2, p=(crow, col, vals): kernels.bsr_linear_parts(x2, *p, n))
                    ref = dense_fn(masked)()
                    e["max_rel_err"] = round(_check(fn(), ref, tol), 6)
                    ms = bench.ms(fn)
                e.update(ms=round(ms, 5), speedup_vs_dense=round(dense / ms, 3))
                entries.append(e)
            except Exception as exc:  # a shape this backend refuses, or a wrong result: recorded, not priced
                errors.append({**e, "error": f"{type(exc).__name__}: {first_line(exc, 200, strip=False, empty='')}"})
            log(f"sparse {s['layer']} {k}x{n} rows {s['rows']} {fmt}: "
                + (f"{e['speedup_vs_dense']}x dense" if "ms" in e else errors[-1]["error"]))
    runtimes = sorted({e["runtime"] for e in entries if e["format"] != "dense"})
    return {"runtime": " + ".join(runtimes) if runtimes else rt_bsr,
            "note": (f"dense: {rt_dense}; 2:4: torch.sparse.to_sparse_semi_structured then F.linear; block: "
                     f"compress.kernels.bsr_linear_parts ({'Triton, autotuned as deployed' if cuda else 'torch sparse_bsr on CPU'}); "
                     f"random weights, magnitude 2:4 masks, random block masks at each density; a 1x1 conv's sparse forms "
                     f"run as the lowered modules run them (NCHW -> rows -> NCHW); each sparse result checked against "
                     f"the dense result of the same masked weight before timing; {cfg.resolved_dtype()}, batch {cfg.batch}"),
            "dtype": cfg.resolved_dtype(), "batch": cfg.batch,
            "date": _now(),
            "two_four": why_24 or (f"measured ({rt_24})" if any(e["format"] == "2:4" for e in entries)
                                   else "failed on every shape (see errors)"),
            "block": ("skipped: no block sizes asked for" if not cfg.blocks else f"measured ({rt_bsr})"
                      if any(e["format"].startswith("bsr") for e in entries) else "not measured (see errors)"),
            "entries": entries, "errors": errors}


# ------------------------------------------------------------------------------------------ the profile

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def model_layers(specs, batch: int, input_shapes: dict | None = None) -> tuple[list, dict]:
    """Per model spec its layers (traced at its input shape, `input_shapes[spec]` "1,128" or the model's
    default) and (layers, dense model, example inputs at `batch`) for the calibration timing."""
    from compress import models
    from compress.hardware_profiles.layers import extract_layers

    out, dense = [], {}
    for spec in specs:
        lm = models.load(spec)
        shape = (input_shapes or {}).get(spec)
        x = models.example_inputs(lm, models.parse_shape(shape) if shape else None)
        layers = extract_layers(lm.model, x)
        out += layers
        dense[spec] = (layers, lm.model.eval(), models.example_inputs(lm, (batch,) + tuple(x[0].shape[1:])))
    return out, dense


def model_ms(model, inputs, dev, dtype: str, warmup: int = 3, reps: int = 10) -> float:
    """One forward of `model` on `inputs` (float inputs cast to `dtype`), ms on `dev` (time_ms, inner 1):
    the model is moved to the device and dtype in place."""
    import torch

    td = _torch_dtype(dtype)
    model.to(dev, td).eval()
    xs = tuple(x.to(dev, td) if x.is_floating_point() else x.to(dev) for x in inputs)
    with torch.no_grad():
        return time_ms(lambda: model(*xs), dev, warmup, reps, 1)


def measure(layers, cfg: GpuProfileConfig, out: str, name: str, dense_models: dict | None = None,
            log=lambda m: None, deadline: float | None = None) -> dict:
    """Measure the profile of `layers` on cfg.device and write it (validated, atomically) to `out`.
    `dense_models`: spec -> (its layers, the dense model, example inputs at cfg.batch): their layers choose
    the sparse shapes, and each is timed end to end for the calibration. `deadline` (time.time()): tables
    begun in its last 35 s are measured at one point, sparse shapes not begun 8 s before it are skipped (the
    calibration always runs)."""
    import torch

    from compress.hardware_profiles.profiler import _fit, _write, calibration, plan_tables

    outp = Path(out)
    if not outp.resolve().parent.is_dir():
        raise CompressError(f"--out {out}: directory {outp.resolve().parent} does not exist")
    t0 = time.time()
    bench = _Bench(cfg)
    dev, dtype = bench.dev, cfg.resolved_dtype()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    phases = {}
    tables = _tables(bench, layers, cfg, log, None if deadline is None else deadline - 35)
    phases["tables_s"] = round(time.time() - t0, 1)
    kinds = sorted({s.kind for s in layers if s.op == MEMORY})
    mem = {k: _fit({",".join(map(str, sz)): ms for sz, ms in bench.memory_points(k).items()}, cfg.batch) for k in kinds}
    peak = bench.peaks()
    launch = bench.launch_ms()
    phases["memory_peak_s"] = round(time.time() - t0 - phases["tables_s"], 1)
    t1 = time.time()
    by_model = {spec: v[0] for spec, v in (dense_models or {}).items()} or {"layers": list(layers)}
    sparse = sparse_table(by_model, cfg, log, None if deadline is None else deadline - 8)
    phases["sparse_s"] = round(time.time() - t1, 1)
    templates = {k: v[0] for k, v in plan_tables(layers, cfg).items()}
    info = device_info(dev)
    prof = {
        "schema": schema.SCHEMA, "schema_version": schema.SCHEMA_VERSION, "name": name,
        "source": "measured",
        "source_detail": (f"measured by compress.hardware_profiles.gpu_profile on {info['name']} with torch "
                          f"{torch.__version__} eager ({dtype}); layers of {', '.join(cfg.models) or 'the given layers'}"),
        "device": info,
        "runtime": runtime_info(dev, dtype),
        "dtype": dtype, "batch": cfg.batch,
        "measurement": {
            "warmup": cfg.warmup, "repetitions": cfg.reps, "rounds": 1, "inner_calls": cfg.inner,
            "statistic": (f"per point: median over {cfg.reps} samples of {cfg.inner} back-to-back calls each "
                          + ("(CUDA events: kernel time or launch rate, whichever bounds eager execution)"
                             if dev.type == "cuda" else "(perf_counter)")),
            "spread": None,
            "grid": {"step": cfg.grid_step, "max_points_per_axis": cfg.max_points},
            "date": _now(), "python": platform.python_version(), "phases": phases,
        },
        "peak": peak,
        "roofline_efficiency": _efficiency(tables, templates, peak["gflops"], cfg.batch),
        "overhead": {"per_inference_ms": 0.0, "per_op_ms": 0.0,
                     "fit": {"launch_ms": round(launch, 5),
                             "note": "per_op_ms 0: each table value is the rate of back-to-back calls, which "
                                     "includes the launch cost; launch_ms is a tiny add's"}},
        "steps": {op: {"block": cfg.grid_step if op != LINEAR else 1, "unaligned_factor": 1.0,
                       "note": "assumed, not scanned: channel counts are priced at the grid step's multiples"}
                  for op in (CONV, DWCONV, LINEAR)},
        "staircase": None,
        "memory_ops": mem,
        "context": None,
        "tables": tables,
        "sparse": sparse,
    }
    if cfg.calibrate and dense_models:
        measured, shapes = {}, {}
        for spec, (mlayers, model, xb) in dense_models.items():
            measured[spec] = (mlayers, {"wall_ms": model_ms(model, xb, dev, dtype)})
            shapes[spec] = [int(d) for d in xb[0].shape[1:]]
            model.to("cpu", torch.float32)
            log(f"dense {spec}: {measured[spec][1]['wall_ms']:.3f} ms")
        prof["calibration"] = calibration(prof, measured, shapes)
    phases["wall_s"] = round(time.time() - t0, 1)
    prof["measurement"]["wall_seconds"] = phases["wall_s"]
    prof["measurement"]["load_average_end"] = list(os.getloadavg())
    _write(prof, outp)
    return prof
