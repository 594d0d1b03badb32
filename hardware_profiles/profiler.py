"""The profiler behind `compress profile`: measure a device's latency tables on the machine it runs on.

For each distinct layer shape of the given model(s) (or a default set), a grid of (cin, cout)
channel counts over the prunable range (multiples of the grid step, dense at small counts, the
model's own count included; not-prunable dimensions stay fixed) is timed in `rounds` passes
spread over the run; a point's value is its fastest round's median (contention from other
processes only ever adds time). Also measured: memory-bound ops (points over tensor size), the
per-inference and per-op overheads, the in-network cost of chained ops against their table-style
measurement (the `context` line the predictor applies to every layer), peak compute and bandwidth (roofline fallback), a
one-channel-at-a-time scan around a typical conv that shows the staircase and gives the cost of
unaligned channel counts, and (torch CPU) dense vs block-sparse Linear/1x1 timings.

`ProfileConfig.dtype` "int8" (onnxruntime only) times the conv and linear tables, the staircase scan, the
memory-bound ops and the profiled models as the int8 artifact runs them (ort_bench: quantized by export/quantize.py,
the QDQ ops fused into onnxruntime's int8 kernels; a memory op between two int8 convs, with the dequantize /
quantize pair it needs where onnxruntime has no int8 kernel for it) and takes the output-channel block from the
scan (`out_block`) instead of MLAS's fp32 NCHWc block; overheads, the context chains and the peaks stay fp32
measurements. An int8 profile whose memory ops were timed in fp32 (`stale_memory_ops`) gets them all measured
again by `--extend`.

Interrupted runs resume: finished measurements live in FILE.partial.json until FILE is written.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from compress.errors import CompressError
from compress.hardware_profiles import schema
from compress.hardware_profiles.layers import CONV, DWCONV, LINEAR, MEMORY, LayerSig
from compress.hardware_profiles.predictor import table_key
from compress.io import write_text_atomic

FRACTIONS = (1 / 16, 1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 7 / 8, 1.0)
# (c, h, w) per sample: about 1K to 1.6M elements, log-spaced (per-element cost rises once a tensor
# no longer fits in cache, so the predictor interpolates between these rather than fitting a line)
MEMORY_SIZES = ((16, 8, 8), (32, 8, 8), (32, 14, 14), (64, 14, 14), (64, 28, 28), (128, 28, 28),
                (64, 56, 56), (32, 112, 112), (64, 112, 112), (128, 112, 112))
# chainable ops whose in-network cost is compared with the tables' measurement (ort_bench.context_pairs)
CONTEXT_UNITS = tuple(
    [LayerSig(MEMORY, c, c, h=s, w=s, kind=k) for k in ("unary", "silu", "binary") for c, s in ((16, 14), (32, 28), (64, 56))]
    + [LayerSig(CONV, c, c, (3, 3), (1, 1), (1, 1), 1, s, s) for c, s in ((16, 14), (16, 28), (32, 7), (32, 14), (64, 4), (64, 14))]
    + [LayerSig(CONV, c, c, (1, 1), (1, 1), (0, 0), 1, s, s) for c, s in ((16, 28), (32, 14), (128, 28))]
    + [LayerSig(DWCONV, c, c, (3, 3), (1, 1), (1, 1), c, s, s) for c, s in ((16, 28), (32, 14), (96, 56))])

# the default grid (no --model): common CNN layer shapes at 224x224 input
DEFAULT_LAYERS = tuple(
    [LayerSig(CONV, 3, 64, (7, 7), (2, 2), (3, 3), 1, 224, 224, fixed_in=True)]
    + [LayerSig(CONV, c, c, (3, 3), (1, 1), (1, 1), 1, s, s) for c, s in ((64, 56), (128, 28), (256, 14), (512, 7))]
    + [LayerSig(CONV, c, 4 * c, (1, 1), (1, 1), (0, 0), 1, s, s) for c, s in ((64, 56), (128, 28), (256, 14))]
    + [LayerSig(DWCONV, c, c, (3, 3), (1, 1), (1, 1), c, s, s) for c, s in ((96, 56), (192, 28), (384, 14))]
    + [LayerSig(LINEAR, 512, 1000, fixed_out=True)]
    + [LayerSig(MEMORY, 64, 64, h=56, w=56, kind=k) for k in ("unary", "binary", "maxpool", "gap")])


@dataclass(frozen=True)
class ProfileConfig:
    target: str = "cpu"
    runtime: str = "ort"
    batch: int = 1
    grid_step: int = 16
    max_points: int = 10           # per axis
    rounds: int = 3
    warmup: int = 2
    reps: int = 7
    threads: int = 0               # 0: the runtime's default (all cores)
    max_seconds: float = 20.0      # per session: stop waiting for undisturbed runs after this long
    staircase: bool = True
    sparse: bool = True
    models: tuple = ()
    dtype: str = "float32"         # or "int8": the tables as `compress export --dtype int8` runs the layers

    def key(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def grid(cmax: int, step: int, max_points: int, fixed: bool) -> list[int]:
    """Channel counts to measure for a dimension whose full size is cmax: multiples of the step at
    FRACTIONS of cmax (at most max_points of them), cmax, and the step itself (pruned layers reach
    small counts, where fixed costs dominate and extrapolation would guess)."""
    if fixed or cmax <= step:
        return [cmax]
    vals = sorted({max(step, int(round(cmax * f / step)) * step) for f in FRACTIONS} | {cmax})
    vals = [v for v in vals if v <= cmax]
    if len(vals) > max_points:
        idx = sorted({round(i * (len(vals) - 1) / (max_points - 1)) for i in range(max_points)})
        vals = [vals[i] for i in idx]
    return sorted(set(vals) | {step})


def _backend(runtime: str):
    if runtime == "ort":
        from compress.hardware_profiles import ort_bench
        return ort_bench
    if runtime == "torch":
        from compress.hardware_profiles import torch_bench
        return torch_bench
    raise CompressError(f"--runtime {runtime} is not supported by this profiler yet (supported: ort, torch); "
                        "time the model with that runtime's own tools")


DTYPES = ("float32", "int8")


def check_dtype(cfg: ProfileConfig) -> None:
    """int8 tables are measured with onnxruntime (the runtime the int8 artifact ships for)."""
    if cfg.dtype not in DTYPES:
        raise CompressError(f"--dtype {cfg.dtype!r}: the profiler measures fp32 or int8")
    if cfg.dtype == "int8" and cfg.runtime != "ort":
        raise CompressError(f"--dtype int8 is measured with onnxruntime (the runtime `compress export --dtype int8` "
                            f"ships), not --runtime {cfg.runtime}; use --runtime ort")


def _dt(cfg: ProfileConfig) -> dict:
    """The backend's dtype argument: none for fp32 (the torch backend takes none)."""
    return {} if cfg.dtype == "float32" else {"dtype": cfg.dtype}


def plan_tables(layers, cfg: ProfileConfig) -> dict:
    """table key -> (template LayerSig, cin grid, cout grid) over the layers' prunable ranges."""
    spans: dict = {}
    for s in layers:
        if s.op not in (CONV, DWCONV, LINEAR):
            continue
        sp = spans.setdefault(table_key(s), {"t": s, "ci": 0, "co": 0, "fci": set(), "fco": set()})
        if s.fixed_in:
            sp["fci"].add(s.cin)
        else:
            sp["ci"] = max(sp["ci"], s.cin)
        if s.fixed_out:
            sp["fco"].add(s.cout)
        else:
            sp["co"] = max(sp["co"], s.cout)

    def axis(cmax, fixed):   # the prunable range's grid plus every fixed (not prunable) count
        return sorted(set(grid(cmax, cfg.grid_step, cfg.max_points, False) if cmax else []) | fixed)

    out = {}
    for k, sp in sorted(spans.items()):
        t = sp["t"]
        if t.op == DWCONV:
            out[k] = (t, [1], axis(max(sp["co"], sp["ci"]), sp["fco"] | sp["fci"]))  # cin == cout == groups
        elif t.groups > 1:   # a grouped conv keeps its groups when pruned: counts split evenly into them
            out[k] = (t, on_groups(axis(sp["ci"], sp["fci"]), t.groups), on_groups(axis(sp["co"], sp["fco"]), t.groups))
        else:
            out[k] = (t, axis(sp["ci"], sp["fci"]), axis(sp["co"], sp["fco"]))
    return out


def on_groups(vals: list[int], groups: int) -> list[int]:
    """Channel counts of a grouped conv: each to the nearest multiple of its groups, at least one per group."""
    return sorted({max(groups, int(round(v / groups)) * groups) for v in vals})


class _Partial:
    """Finished measurements, saved atomically after every batch of work."""

    def __init__(self, path: Path, cfg: ProfileConfig):
        self.path = path
        self.data = {"config": cfg.key(), "points": {}, "extra": {}}
        self.resumed = 0
        if path.is_file():
            try:
                d = json.loads(path.read_text())
                if d.get("config") == cfg.key():
                    self.data = d
                    self.resumed = len(d["points"]) + len(d["extra"])
            except (ValueError, KeyError, OSError):
                pass

    def get(self, k: str):
        return self.data["points"].get(k)

    def put(self, k: str, v) -> None:
        self.data["points"][k] = v

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data))


def _pkey(tk: str, r: int, ci: int, co: int) -> str:
    return f"{tk}|r{r}|{ci}|{co}"


def _measure(be, sig, pts, cfg):
    if sig.op == LINEAR:
        return be.linear_points(sig, pts, cfg.batch, cfg.warmup, cfg.reps, threads=cfg.threads,
                                max_seconds=cfg.max_seconds, **_dt(cfg))
    return be.conv_points(sig, pts, cfg.batch, cfg.warmup, cfg.reps, threads=cfg.threads, max_seconds=cfg.max_seconds,
                          **_dt(cfg))


def _dw_points(pts):
    return [(c, c) for _, c in pts]


def missing(base: dict, layers, cfg: ProfileConfig, dense_models: dict) -> tuple[dict, list, dict]:
    """What an extension of the profile `base` has to measure for `layers`: the tables whose key `base`
    lacks (plan_tables), the memory-op kinds it lacks, and the dense models it has not calibrated."""
    have = {t["key"] for t in base["tables"]}
    tables = {k: v for k, v in plan_tables(layers, cfg).items() if k not in have}
    kinds = {s.kind for s in layers if s.op == MEMORY}
    if stale_memory_ops(base):      # measured the old way: every kind again
        kinds = sorted(kinds | set(base.get("memory_ops") or {}))
    else:
        kinds = sorted(kinds - set(base.get("memory_ops") or {}))
    calibrated = {c["model"] for c in base.get("calibration") or []}
    return tables, kinds, {s: v for s, v in (dense_models or {}).items() if s not in calibrated}


def stale_memory_ops(prof: dict) -> bool:
    """An int8 profile whose memory-bound ops were timed in fp32 (before they were timed as the int8 graph runs
    them: ort_bench.INT8_MEMORY_NOTE); `--extend` measures them all again."""
    return prof.get("dtype") == "int8" and prof.get("memory_ops_dtype", "float32") != "int8"


# what an extension takes from the profile it extends instead of measuring it again (see `run`)
_INHERITED = ("overhead", "peak", "context", "staircase", "sparse")


def run(layers, cfg: ProfileConfig, out: str, name: str, progress=True, stop_after: int | None = None,
        dense_models: dict | None = None, base: dict | None = None, table_seconds: float | None = None) -> dict:
    """Measure and write the profile to `out`; returns it. `stop_after` (tests): raise
    KeyboardInterrupt after that many saved batches, leaving the partial file behind.
    `dense_models`: spec -> (its layers, the dense model, example inputs at cfg.batch), each timed
    end to end for the profile's per-model calibration (see calibration).
    `base`: a profile this measurement extends (`merge_into`): only what it lacks is measured (`missing`:
    tables by key, memory-op kinds, uncalibrated models); overheads, peaks, the context pairs, the
    staircase and the sparse table are copied from it, not measured.
    `table_seconds`: a time budget for the tables; a table not begun within it is measured at its ends only
    (the smallest and the full count of each axis; listed in measurement.reduced_tables)."""
    dense_models = dense_models or {}
    check_dtype(cfg)
    be = _backend(cfg.runtime)
    outp = Path(out)
    if outp.parent and not outp.parent.exists():
        raise CompressError(f"--out {out}: directory {outp.parent} does not exist")
    part = _Partial(outp.with_name(outp.name + ".partial.json"), cfg)
    tables = plan_tables(layers, cfg)
    kinds = sorted({s.kind for s in layers if s.op == MEMORY} | ({"reorder"} if cfg.runtime == "ort" else set()))
    if base is not None:
        tables, kinds, dense_models = missing(base, layers, cfg, dense_models)
        inherited = {"overhead": base["overhead"], "peak": base["peak"],
                     "context": (base.get("context") or {}).get("pairs"),
                     "staircase": base.get("staircase"), "sparse": base.get("sparse")}
        for k in _INHERITED:
            part.data["extra"].setdefault(k, inherited[k])
    work = []   # (table key, round, points to measure)
    for r in range(cfg.rounds):
        for k, (t, cins, couts) in tables.items():
            pts = [(ci, co) for ci in cins for co in couts]
            todo = [p for p in pts if part.get(_pkey(k, r, *p)) is None]
            if todo:
                work.append((k, r, todo))
    ctx = ["context"] if hasattr(be, "context_pairs") else []
    extras = [e for e in (["overhead", "peak"] + ctx + [f"memory:{k}:{r}" for k in kinds for r in range(cfg.rounds)]
                          + (["staircase"] if cfg.staircase and cfg.runtime == "ort" else [])
                          + (["sparse"] if cfg.sparse and cfg.dtype == "float32" else [])
                          + ([f"model:{spec}" for spec in dense_models] if hasattr(be, "model_ms") else []))
              if e not in part.data["extra"]]
    total = sum(len(w[2]) for w in work) + len(extras)
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"profiling {name}", unit="pt", disable=not progress, leave=False)
    saves = 0

    def saved():
        nonlocal saves
        part.save()
        saves += 1
        if stop_after is not None and saves >= stop_after:
            raise KeyboardInterrupt

    t0 = time.time()
    load_start = os.getloadavg()
    begun, reduced = set(), []
    try:
        for k, r, todo in work:
            t = tables[k][0]
            if table_seconds is not None and k not in begun and time.time() - t0 > table_seconds:
                tables[k] = (t, *(sorted({v[0], v[-1]}) for v in tables[k][1:]))
                reduced.append(k)
            begun.add(k)
            todo = [p for p in todo if p[0] in tables[k][1] and p[1] in tables[k][2]]
            if not todo:
                continue
            res = _measure(be, t, _dw_points(todo) if t.op == DWCONV else todo, cfg)
            for p in todo:
                part.put(_pkey(k, r, *p), res[(p[1], p[1])] if t.op == DWCONV else res[p])
            bar.update(len(todo))
            saved()
        for e in extras:
            if e == "overhead":
                v = be.overheads(max(cfg.warmup, 10), max(cfg.reps * 20, 100), cfg.threads)
            elif e == "peak":
                v = be.peaks(cfg.warmup, cfg.reps, cfg.threads)
            elif e == "context":
                v = be.context_pairs(CONTEXT_UNITS, cfg.batch, max(cfg.warmup, 10), max(cfg.reps * 20, 100), cfg.threads)
            elif e.startswith("memory:"):
                kind = e.split(":")[1]
                v = {",".join(map(str, s)): ms for s, ms in
                     be.memory_points(kind, list(MEMORY_SIZES), cfg.batch, cfg.warmup, cfg.reps, cfg.threads,
                                      cfg.max_seconds, **_dt(cfg)).items()}
            elif e.startswith("model:"):
                _, model, xb = dense_models[e[len("model:"):]]
                # the fastest of `rounds` fresh-process timings, as a table point keeps its fastest round
                # (outside load only adds time; one timing on a drifting VM came out 1.8x slow)
                v = be.model_ms(model, xb, max(cfg.warmup, 5), max(cfg.reps * 5, 30), cfg.threads, **_dt(cfg),
                                rounds=max(cfg.rounds, 1), nodes_below_ms=NETWORK_MAX_MS)
            elif e == "staircase":
                v = staircase(be, layers, cfg)
            else:
                from compress.hardware_profiles import sparse_bench
                v = sparse_bench.table(layers, cfg.batch, cfg.reps)
            part.data["extra"][e] = v
            bar.update(1)
            saved()
    finally:
        bar.close()
    prof = assemble(part.data, tables, kinds, cfg, name, layers)
    measured = {spec: (v[0], part.data["extra"].get(f"model:{spec}")) for spec, v in dense_models.items()}
    network_context(prof, measured)
    prof["calibration"] = calibration(prof, measured, {spec: [int(d) for d in v[2][0].shape[1:]]
                                                        for spec, v in dense_models.items()})
    prof["measurement"]["wall_seconds"] = round(time.time() - t0, 1)
    prof["measurement"]["load_average_start_end"] = [list(load_start), list(os.getloadavg())]
    prof["measurement"]["resumed_measurements"] = part.resumed
    if reduced:
        prof["measurement"]["reduced_tables"] = reduced
    _write(prof, outp)
    part.path.unlink(missing_ok=True)
    return prof


def _write(prof: dict, outp: Path) -> None:
    """Validate, then write atomically (a temporary file renamed into place)."""
    schema.validate(prof, outp)
    write_text_atomic(outp, json.dumps(prof, indent=1) + "\n")


def staircase(be, layers, cfg) -> dict:
    """Time a typical 3x3 conv one channel at a time around 64 (cout, then cin): multiples of the
    block run at full speed; input channels off the block leave the blocked layout."""
    convs = [s for s in layers if s.op == CONV and s.kernel == (3, 3) and s.groups == 1 and not s.fixed_in]
    base = max(convs, key=lambda s: s.macs()) if convs else DEFAULT_LAYERS[1]
    base = replace(base, cin=64, cout=64)
    lo, hi = 48, 80
    cout_scan, cin_scan = {}, {}
    for _ in range(max(cfg.rounds, 1)):   # the fastest of `rounds` passes, as for the tables
        for scan, pts in ((cout_scan, [(64, c) for c in range(lo, hi + 1)]), (cin_scan, [(c, 64) for c in range(lo, hi + 1)])):
            for p, v in be.conv_points(base, pts, cfg.batch, cfg.warmup, cfg.reps, threads=cfg.threads,
                                       max_seconds=cfg.max_seconds, **_dt(cfg)).items():
                scan[p] = min(v, scan.get(p, v))
    return {"key": table_key(base), "channels": list(range(lo, hi + 1)),
            "cout_ms_at_cin64": [round(cout_scan[(64, c)], 5) for c in range(lo, hi + 1)],
            "cin_ms_at_cout64": [round(cin_scan[(c, 64)], 5) for c in range(lo, hi + 1)]}


def _block() -> int:
    """MLAS's NCHWc channel block on this host: 16 with AVX-512, else 8."""
    from compress.hardware_profiles.predictor import host_isa

    return 16 if host_isa() == "avx512" else 8


BLOCKS = (2, 4, 8, 16)   # output-channel blocks the scan (48-80 channels) can tell apart


def out_block(channels: list[int], ms: list[float]) -> int:
    """The output-channel block a kernel processes, from a one-channel-at-a-time scan of the output count:
    the largest b of BLOCKS (tried in increasing order, stopping at the first that fails) such that counts
    off a multiple of b cost what the next multiple costs. Per count c off the multiples, r = (t(next) -
    t(c)) / (t(next) - t(previous multiple)) is 0 on a staircase of block b and (next - c) / b on a cost
    linear in c; b holds when the median r is at most 0.25. 1 when not even 2 holds."""
    t = dict(zip(channels, ms))
    best = 1
    for b in BLOCKS:
        rs = []
        for c in channels:
            lo, hi = c // b * b, -(-c // b) * b
            if c % b == 0 or lo not in t or hi not in t:
                continue
            d = t[hi] - t[lo]
            rs.append(min(max((t[hi] - t[c]) / d, 0.0), 1.0) if d > 0 else 0.0)
        if not rs or statistics.median(rs) > 0.25:
            break
        best = b
    return best


def steps_from(sc: dict | None, runtime: str, dtype: str = "float32") -> dict:
    """The staircase from the scan: `block` (output channels are processed in blocks: a count costs
    what the next multiple costs; fp32 on onnxruntime: MLAS's NCHWc block for this ISA; int8: measured,
    `out_block` of the scan) and `cin_block` with `unaligned_factor` (input channel counts off
    cin_block leave the fast path: measured cost over the line through the multiples of 16)."""
    int8 = dtype == "int8"
    blk = _block() if runtime == "ort" and not int8 else 1
    if sc and int8:
        blk = out_block(sc["channels"], sc["cout_ms_at_cin64"])
    if not sc:
        return {CONV: {"block": blk, "unaligned_factor": 1.0, "note": "no staircase scan in this profile"}}
    ch, ci = sc["channels"], sc["cin_ms_at_cout64"]
    ref = [(c, t) for c, t in zip(ch, ci) if c % 16 == 0]
    if len(ref) < 2:
        return {CONV: {"block": blk, "unaligned_factor": 1.0, "note": "staircase scan too short"}}

    def line(c):   # piecewise linear through the multiples of 16
        for (c0, t0), (c1, t1) in zip(ref, ref[1:]):
            if c <= c1:
                return t0 + (t1 - t0) * (c - c0) / (c1 - c0)
        return ref[-1][1]

    rel = {c: t / line(c) for c, t in zip(ch, ci)}
    cin_block = 16
    for b in (1, 2, 4, 8):
        r = sorted(rel[c] for c in ch if c % b == 0)
        if r[int(0.8 * (len(r) - 1))] <= 1.12:   # (nearly) all multiples of b on the fast line
            cin_block = b
            break
    off = [rel[c] for c in ch if c % cin_block]
    f = round(max(statistics.median(off), 1.0), 3) if off else 1.0
    note = (f"from the staircase scan (3x3 conv, 64 channels): output channels cost what the next multiple of "
            f"{blk} costs; input channel counts that are not multiples of {cin_block} cost {f}x (onnxruntime CPU "
            f"runs such convs outside MLAS's NCHWc layout)") if not int8 else (
            f"from the staircase scan of the int8 conv (QLinearConv, 3x3, 64 channels): output channels cost what "
            f"the next multiple of {blk} costs (measured: the largest block whose in-between counts cost what its "
            f"next multiple costs); input channel counts that are not multiples of {cin_block} cost {f}x")
    return {CONV: {"block": blk, "cin_block": cin_block, "unaligned_factor": f, "note": note},
            DWCONV: {"block": blk, "cin_block": cin_block, "unaligned_factor": f, "note": note},
            LINEAR: {"block": 1, "unaligned_factor": 1.0, "note": "Gemm: no channel blocking observed"}}


def _fit(points: dict, batch: int) -> dict:
    """The measured points (elements over the whole batch, ms; the fastest round of each size), which
    the predictor interpolates, and a line ms = a + b * Melements (least squares on relative error)
    for tools that want two numbers."""
    import numpy as np

    xs = np.array([math.prod(int(v) for v in k.split(",")) for k in points], float) * batch / 1e6
    ys = np.array(list(points.values()), float)
    b, a = np.polyfit(xs, ys, 1, w=1 / ys) if len(xs) > 1 else (ys[0] / xs[0], 0.0)
    pts = sorted({int(round(x * 1e6)): float(y) for x, y in zip(xs, ys)}.items())
    return {"ms": round(max(float(a), 0.0), 5), "ms_per_melem": round(max(float(b), 0.0), 5),
            "points": [[e, round(y, 5)] for e, y in pts]}


def _ctx_class(op: str) -> str:
    """The context line's op classes: onnxruntime parallelises a compute kernel (conv, gemm) over its
    thread pool, and the node profiler's bookkeeping between nodes lets the pool's workers park, so a
    profiled compute node pays their wake-up; small element-wise ops run on one thread."""
    return "memory" if op == MEMORY else "compute"


def context_fit(pairs: list[dict] | None) -> dict | None:
    """The profiler's per-node bookkeeping, from the context pairs: per op class (see _ctx_class),
    b = -median(profiled - marginal) over that class's small ops (< 0.05 ms; for larger ops the
    difference is lost in run-to-run noise); `b` over all of them for classes with fewer than 2.
    a = 1. The predictor charges a layer max(table ms + b, floor x table ms)."""
    good = [p for p in pairs or [] if 0 < p["profiled_ms"] < 0.05 and p["marginal_ms"] > 0]
    if len(good) < 3:
        return None
    b = -statistics.median(p["profiled_ms"] - p["marginal_ms"] for p in good)
    by_class = {}
    for cls in ("compute", "memory"):
        diffs = [p["profiled_ms"] - p["marginal_ms"] for p in good if _ctx_class(p["op"]) == cls]
        if len(diffs) >= 2:
            by_class[cls] = round(-statistics.median(diffs), 5)
    floor = 0.15

    def cost(p):
        return max(p["profiled_ms"] + by_class.get(_ctx_class(p["op"]), b), floor * p["profiled_ms"])

    errs = [abs(cost(p) / p["marginal_ms"] - 1) for p in pairs if p["marginal_ms"] > 0]
    return {"a": 1.0, "b": round(b, 5), "b_by_class": by_class, "floor": floor,
            "median_abs_error_on_pairs": round(statistics.median(errs), 4),
            "note": "a layer's in-network cost = max(a x its table ms + b, floor x its table ms), b = b_by_class of "
                    "the layer's class (compute: conv, gemm, matmul; memory: element-wise, pooling) else b: minus "
                    "the median, over chained synthetic ops under 0.05 ms (not any model), of node-profiler "
                    "kernel time less the marginal end-to-end time without the profiler; replaces overhead.per_op_ms",
            "pairs": pairs}


NETWORK_MAX_MS = 5.0   # networks whose per-node effects stand out of run-to-run noise


def _wall(v) -> float | None:
    """A model measurement: {"wall_ms", "node_ms", "nodes"} (or a bare wall ms from older partial files)."""
    return v.get("wall_ms") if isinstance(v, dict) else v


def network_context(prof: dict, measured: dict) -> None:
    """The context line's b measured inside real networks: for each profiled dense model under
    NETWORK_MAX_MS, (its end-to-end wall time - the per-inference overhead - the sum of its nodes'
    profiled kernel times in the same process) / its costed layers. In networks the profiler's
    per-node bookkeeping (worker threads parked between profiled nodes) costs more than in the
    synthetic chains (about 4 us per node on this machine against 1.5-3.4 us), and the networks are
    what is predicted; the median over the models becomes `b_network`, which the predictor charges
    every layer. Dense models only: no pruned variant is measured."""
    ctx = prof.get("context")
    if not ctx:
        return
    rows = []
    for spec, (layers, v) in measured.items():
        if not isinstance(v, dict) or not v.get("node_ms") or v["wall_ms"] > NETWORK_MAX_MS or not layers:
            continue
        b = (v["wall_ms"] - prof["overhead"]["per_inference_ms"] - v["node_ms"]) / len(layers)
        rows.append({"model": spec, "wall_ms": round(v["wall_ms"], 5), "node_ms": round(v["node_ms"], 5),
                     "nodes": v["nodes"], "layers": len(layers), "b_ms": round(b, 5)})
    if rows:
        ctx["b_network"] = round(statistics.median(r["b_ms"] for r in rows), 5)
        ctx["network"] = rows


def calibration(prof: dict, measured: dict, shapes: dict | None = None) -> list[dict]:
    """Per profiled model: its dense end-to-end latency measured here against the tables' prediction
    of it. A network runs slower than the sum of its layers timed alone (cold weights and
    activations, layout changes between kernels); the predictor scales a model's prediction by the
    factor of the profiled model with the same layer structure (its pruned variants keep it), or by
    the median factor for other models. Only dense models are measured: no pruned variant is.
    `shapes`: spec -> the input shape (batch dimension dropped) it was traced at, recorded for `refit`."""
    from compress.hardware_profiles.predictor import DeviceProfile, fit_network, structure

    p = DeviceProfile({k: v for k, v in prof.items() if k != "calibration"})
    out = []
    for spec, (layers, v) in measured.items():
        ms = _wall(v)
        if not ms:
            continue
        ms = round(ms, 5)          # as stored: `refit` recomputes from the stored values, to the same result
        parts = p.by_class_ms(layers)         # the uncalibrated prediction (p has no calibration), split by class
        pred = sum(parts.values())
        row = {"model": spec, "structure": structure(layers), "measured_ms": ms,
               "predicted_ms": round(pred, 5), "factor": round(ms / pred, 4),
               "predicted_by_class_ms": {c: round(v, 5) for c, v in parts.items()}}
        if prof.get("context") and isinstance(v, dict) and v.get("node_ms") and ms <= NETWORK_MAX_MS:
            # a small network: per-layer fixed costs are a large part of it and do not shrink when it is
            # pruned, so its own line (kernels x kernel_factor + b_ms per layer) replaces the scale
            row["kernel_factor"], row["b_ms"] = fit_network(prof, layers, ms, round(v["node_ms"], 5))
        if (shapes or {}).get(spec):
            row["input_shape"] = shapes[spec]
        out.append(row)
    return out


def merge_into(base: dict, new: dict) -> tuple[dict, dict]:
    """`base` extended with what `new` (a profile of the same device, runtime, dtype and batch) adds:
    its tables whose key `base` lacks, and the dense timings (calibration rows, with their
    context.network rows) of models `base` has not calibrated. Everything else is `base`'s: its tables,
    memory-op fits, overheads and context line stay as measured. The calibration factors of the added
    models must then be recomputed against the merged tables (`refit`). Returns (merged, what was added)."""
    for k in ("dtype", "batch"):
        if base.get(k) != new.get(k):
            raise CompressError(f"cannot extend a {k} {base.get(k)!r} profile with a {k} {new.get(k)!r} measurement")
    if base["runtime"].get("name") != new["runtime"].get("name") or base["device"].get("kind") != new["device"].get("kind"):
        raise CompressError(f"cannot extend a {base['device'].get('kind')}/{base['runtime'].get('name')} profile with a "
                            f"{new['device'].get('kind')}/{new['runtime'].get('name')} measurement")
    out = json.loads(json.dumps(base))
    keys = {t["key"] for t in out["tables"]}
    tables = [t for t in new["tables"] if t["key"] not in keys]
    out["tables"] = sorted(out["tables"] + tables, key=lambda t: t["key"])
    if stale_memory_ops(out) and new.get("memory_ops_dtype") == "int8":     # replaced whole, not merged
        kinds = sorted(new.get("memory_ops") or {})
        out["memory_ops"], out["memory_ops_dtype"] = dict(new["memory_ops"]), "int8"
    else:
        kinds = sorted(set(new.get("memory_ops") or {}) - set(out["memory_ops"]))
        out["memory_ops"] |= {k: new["memory_ops"][k] for k in kinds}
    have = {c["model"] for c in out.get("calibration") or []}
    rows = [c for c in new.get("calibration") or [] if c["model"] not in have]
    out["calibration"] = (out.get("calibration") or []) + rows
    added = {c["model"] for c in rows}
    net = [r for r in (new.get("context") or {}).get("network", []) if r["model"] in added]
    if net and out.get("context"):
        out["context"]["network"] = out["context"].get("network", []) + net
    info = {"date": new["measurement"].get("date"), "models": sorted(added), "tables": len(tables),
            "memory_ops": kinds, "grid": new["measurement"].get("grid"), "rounds": new["measurement"].get("rounds"),
            "device": new["device"].get("name"), "wall_seconds": new["measurement"].get("wall_seconds")}
    out["measurement"]["extensions"] = out["measurement"].get("extensions", []) + [info]
    out["source_detail"] += (f"; extended {str(info['date'])[:16]} UTC by `compress profile --extend` on {info['device']}: "
                             f"{len(tables)} layer tables" + (f", memory ops {', '.join(kinds)}" if kinds else "")
                             + f" and the dense timings of {', '.join(sorted(added)) or 'no new model'}")
    return out, info


def refit(path: str, layers_of) -> dict:
    """Recompute a measured profile's derived calibration (the per-model factors and in-network fits)
    from the measurements stored in it: each calibration entry's measured wall time and, for the small
    networks, the node-profiled kernel sum in context.network. No timing. `layers_of(spec)` gives a
    model's layers (the dense architecture; weights do not matter) at the entry's input_shape
    (None: the model's default). Written atomically."""
    from compress.hardware_profiles.predictor import structure

    outp = Path(path)
    prof = schema.read(outp)
    layers = {}
    for c in prof.get("calibration") or []:
        layers[c["model"]] = layers_of(c["model"], c.get("input_shape"))
        if structure(layers[c["model"]]) != c["structure"]:
            raise CompressError(f"{path}: model {c['model']} no longer has the layer structure it was profiled with; "
                                "profile it again")
    recalibrate(prof, layers)
    _write(prof, outp)
    return prof


def recalibrate(prof: dict, layers: dict) -> None:
    """Recompute, in `prof`, the calibration rows of the models in `layers` (spec -> its layers at the
    row's input_shape) from the measurements stored in `prof` (the row's measured wall time and, for a
    small network, its node-profiled kernel sum in context.network); the other rows stay as they are."""
    nodes = {r["model"]: r for r in (prof.get("context") or {}).get("network", [])}
    rows = [c for c in prof.get("calibration") or [] if c["model"] in layers]
    measured = {}
    for c in rows:
        r = nodes.get(c["model"])
        measured[c["model"]] = (layers[c["model"]], {"wall_ms": c["measured_ms"], "node_ms": r["node_ms"],
                                                     "nodes": r["nodes"]} if r else c["measured_ms"])
    new = {c["model"]: c for c in calibration(prof, measured, {c["model"]: c.get("input_shape") for c in rows})}
    prof["calibration"] = [new.get(c["model"], c) for c in prof.get("calibration") or []]


def assemble(pd: dict, tables: dict, kinds: list, cfg: ProfileConfig, name: str, layers) -> dict:
    pts, ex = pd["points"], pd["extra"]
    out_tables, spread = [], []
    for k, (t, cins, couts) in tables.items():
        grid_ms = []
        for ci in cins:
            row = []
            for co in couts:
                vals = [pts[_pkey(k, r, ci, co)] for r in range(cfg.rounds)]
                row.append(round(min(vals), 5))
                if len(vals) > 1 and min(vals) > 0:
                    spread.append(max(vals) / min(vals))
            grid_ms.append(row)
        if t.op == DWCONV:
            cins = [1]
        out_tables.append({"key": k, "op": t.op, "cin": cins, "cout": couts, "ms": grid_ms})
    mem = {}
    for kind in kinds:
        rounds = [ex[f"memory:{kind}:{r}"] for r in range(cfg.rounds)]
        mem[kind] = _fit({s: min(rd[s] for rd in rounds) for s in rounds[0]}, cfg.batch)
    peak = ex["peak"]
    eff = {}
    for t in out_tables:
        tmpl = tables[t["key"]][0]
        for i, ci in enumerate(t["cin"]):
            for j, co in enumerate(t["cout"]):
                s = replace(tmpl, cin=co if tmpl.op == DWCONV else ci, cout=co,
                            groups=co if tmpl.op == DWCONV else tmpl.groups)
                eff.setdefault(t["op"], []).append(2 * s.macs() * cfg.batch / (t["ms"][i][j] / 1e3) / 1e9 / peak["gflops"])
    roofline_eff = {op: round(statistics.median(v), 4) for op, v in eff.items()}
    roofline_eff["default"] = roofline_eff.get(CONV, 0.5)
    from compress.hardware_profiles.sparse_bench import machine

    dev = machine(cfg.target)
    be = _backend(cfg.runtime)
    return {
        "schema": schema.SCHEMA, "schema_version": schema.SCHEMA_VERSION, "name": name,
        "source": "measured",
        "source_detail": f"measured by `compress profile` on {dev['name']} ({dev.get('cores')} cores) with "
                         f"{cfg.runtime} {be.version()}; layers of {', '.join(cfg.models) or 'the default grid'}"
                         + ("; int8: conv/linear tables, staircase, memory-bound ops and model timings after the int8 "
                            "artifact's QDQ quantization (onnxruntime's fused int8 kernels; memory ops: "
                            "ort_bench.INT8_MEMORY_NOTE); overheads, context and peaks in fp32" if cfg.dtype == "int8" else ""),
        "device": dev,
        "runtime": {"name": cfg.runtime, "version": be.version(),
                    "provider": ("CPUExecutionProvider, ORT_ENABLE_ALL" + (", QDQ int8 (export/quantize.py)"
                                                                            if cfg.dtype == "int8" else ""))
                    if cfg.runtime == "ort" else "eager, no_grad",
                    "threads": cfg.threads or os.cpu_count()},
        "dtype": cfg.dtype, "batch": cfg.batch,
        "measurement": {
            "warmup": cfg.warmup, "repetitions": cfg.reps, "rounds": cfg.rounds,
            "statistic": "per point: median over undisturbed repetitions (process CPU time >= 0.75 x threads x "
                         "wall time; the fastest run if fewer than 3) of the op's kernel time "
                         + ("(onnxruntime node profiler; layout reorders excluded)" if cfg.runtime == "ort"
                            else "(wall time of the op)") + "; table value: the fastest of `rounds` rounds "
                         "spread over the run (other processes only add time)",
            "spread": {"max_over_min_rounds_median": round(statistics.median(spread), 3) if spread else None,
                       "max_over_min_rounds_p90": round(sorted(spread)[int(0.9 * (len(spread) - 1))], 3) if spread else None},
            "grid": {"step": cfg.grid_step, "max_points_per_axis": cfg.max_points,
                     "fractions_of_full_width": [round(f, 4) for f in FRACTIONS]},
            "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            "python": platform.python_version(),
        },
        "peak": peak,
        "roofline_efficiency": roofline_eff,
        "overhead": {k: ex["overhead"][k] for k in ("per_inference_ms", "per_op_ms")} | {"fit": ex["overhead"].get("fit")},
        "steps": steps_from(ex.get("staircase"), cfg.runtime, cfg.dtype),
        "staircase": ex.get("staircase"),
        "memory_ops": mem,
        "memory_ops_dtype": cfg.dtype,
        "context": context_fit(ex.get("context")),
        "tables": out_tables,
        "sparse": ex.get("sparse"),
    }
