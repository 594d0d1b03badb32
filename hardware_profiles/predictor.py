"""DeviceProfile: per-layer latency from a profile's tables, and whole-model latency prediction.

    predicted ms = overhead.per_inference_ms + sum over costed layers of (layer_ms + per_op_ms)

With a `context` line in the profile (measured profiles since the chain calibration), layer_ms is the
layer's in-network cost, max(a x table ms + b, floor x table ms) with b the line's b_network
(measured inside the profiled networks) or else its value for the layer's class (compute or memory), and per_op_ms is 0 (b carries the per-node dispatch); without one, layer_ms is the table time and per_op_ms the measured overhead.

layer_ms interpolates the measured (cin, cout) grid of the layer's table bilinearly after rounding
channel counts up to the op's block (the staircase: a kernel processes whole blocks), multiplies by
the measured unaligned factor when input channels are off the block (onnxruntime's CPU convs then
leave the NCHWc layout), and falls back to a roofline (measured peak compute x the table's measured
efficiency, measured bandwidth) when the profile has no table for the layer's shape.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from compress import machine
from compress.errors import CompressError
from compress.hardware_profiles import schema
from compress.hardware_profiles.layers import CONV, DWCONV, KIND_FALLBACK, LINEAR, MATMUL, MEMORY, LayerSig

HERE = Path(__file__).resolve().parent
# target (as in `compress prune --target`) -> shipped profile name
TARGETS = {"cpu": "cpu-x86-2core-ort", "jetson": "jetson-orin-nano"}


def table_key(sig: LayerSig) -> str:
    """The table a layer's cost comes from: everything but its channel counts."""
    if sig.op in (CONV, DWCONV):
        g = "dw" if sig.op == DWCONV else str(sig.groups)
        return (f"{sig.op} k{sig.kernel[0]}x{sig.kernel[1]} s{sig.stride[0]}x{sig.stride[1]} "
                f"p{sig.padding[0]}x{sig.padding[1]} g{g} {sig.h}x{sig.w}{sig.conv_variant}")
    if sig.op == LINEAR:
        return f"linear t{sig.tokens}"
    if sig.op == MATMUL:
        return f"matmul t{sig.tokens} h{sig.groups}"
    return f"memory {sig.kind}"


def _bracket(grid: tuple, v: float) -> tuple[int, int, float]:
    """Indices (i, j) and weight of v between grid[i] and grid[j]; outside: the nearest two (extrapolate)."""
    n = len(grid)
    if n == 1:
        return 0, 0, 0.0
    k = bisect.bisect_left(grid, v)
    if k < n and grid[k] == v:
        return k, k, 0.0
    i = min(max(k - 1, 0), n - 2)
    return i, i + 1, (v - grid[i]) / (grid[i + 1] - grid[i])


@dataclass(frozen=True)
class _Table:
    cin: tuple
    cout: tuple
    ms: tuple   # tuple of tuples

    @staticmethod
    def _axis(grid, v: float):
        """(index, weight) pairs along one axis: inside the grid, linear; outside it, linear
        extrapolation from the nearest two points (below the grid a layer keeps its fixed cost, so
        proportional scaling would under-predict); a one-point axis scales proportionally."""
        if len(grid) == 1:
            return [(0, v / grid[0])]
        i, j, t = _bracket(grid, v)
        return [(i, 1.0 - t), (j, t)] if i != j else [(i, 1.0)]

    def at(self, cin: float, cout: float) -> float:
        out = 0.0
        for i, wi in self._axis(self.cin, cin):
            for j, wj in self._axis(self.cout, cout):
                out += wi * wj * self.ms[i][j]
        # below the grid, never less than proportional scaling of the smallest measured point
        low = self.ms[0][0] * min(cin / self.cin[0], 1.0) * min(cout / self.cout[0], 1.0)
        return max(out, low if (cin < self.cin[0] or cout < self.cout[0]) else 0.0, 0.0)


def _line(cs, ms) -> tuple:
    """A depthwise table's times as the least-squares line in the channel count, at its grid points.
    A depthwise conv reads and writes c planes and does c planes of arithmetic: its cost is linear in c.
    What a standalone timing adds on top is cache residency: a tensor small enough to stay in cache
    between the timed runs runs several times faster than one that is not (one shipped table drops 5x
    between 96 and 64 channels at 56x56, batch 8; the same layer measured on another VM, and inside the
    network, does not). Inside a network the tensor was just written by the op before, amid that op's
    traffic, so the cliff is not there; read as measured, it makes the planner cut exactly those layers
    for savings that do not appear."""
    n = len(cs)
    mx, my = sum(cs) / n, sum(ms) / n
    sxx = sum((c - mx) ** 2 for c in cs)
    slope = max(sum((c - mx) * (m - my) for c, m in zip(cs, ms)) / sxx, 0.0) if sxx else 0.0
    fixed = my - slope * mx
    if fixed < 0:      # no negative fixed cost: the least-squares line through the origin
        fixed, slope = 0.0, sum(c * m for c, m in zip(cs, ms)) / sum(c * c for c in cs)
    return tuple(fixed + slope * c for c in cs)


def structure(layers) -> str:
    """A fingerprint of a network's layer structure without its channel counts (pruning keeps it). Attention heads
    count as channels: an attention softmax's rows (`tokens` = queries x heads) are left out, as its matmuls' heads
    (`groups`) are, so a head-pruned transformer keeps its dense model's fit."""
    key = [(s.op, KIND_FALLBACK.get(s.kind, s.kind), list(s.kernel), list(s.stride), list(s.padding), s.h, s.w,
            None if s.fusion == "attention.softmax" else s.tokens)
           + ((s.conv_variant,) if s.conv_variant else ()) for s in layers]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def _mem_at(m: dict, n: float) -> float:
    """ms of a memory-bound op over n elements: linear between the measured points (flat below the
    smallest, the last segment's slope above the largest), or the fitted line when there are none."""
    pts = m.get("points")
    if not pts or len(pts) < 2:
        return m["ms"] + m["ms_per_melem"] * n / 1e6
    xs = [p[0] for p in pts]
    if n <= xs[0]:
        return pts[0][1]
    k = min(bisect.bisect_left(xs, n), len(pts) - 1)
    (x0, y0), (x1, y1) = pts[k - 1], pts[k]
    return max(y0 + (y1 - y0) * (n - x0) / (x1 - x0), 0.0)


@dataclass
class DeviceProfile:
    data: dict
    path: str = ""
    _tables: dict = field(default_factory=dict, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)
    fallbacks: set = field(default_factory=set, repr=False)   # table keys that used the roofline

    def __post_init__(self) -> None:
        for t in self.data["tables"]:
            ms = tuple(tuple(r) for r in t["ms"])
            if t["key"].startswith(DWCONV) and len(t["cin"]) == 1 and len(t["cout"]) >= 3:
                ms = (_line(t["cout"], ms[0]),)
            self._tables[t["key"]] = _Table(tuple(t["cin"]), tuple(t["cout"]), ms)
        self._eff = dict(self.data.get("roofline_efficiency") or {})
        # Linear tables by token count, for layers at a token count without a table (_linear_at_other_tokens)
        self._linear_by_tokens = {int(k.split("t", 1)[1]): tb for k, tb in self._tables.items() if k.startswith("linear t")}

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def batch(self) -> int:
        return self.data["batch"]

    @property
    def runtime(self) -> str:
        return self.data["runtime"]["name"]

    @property
    def dtype(self) -> str:
        return self.data["dtype"]

    @property
    def analytic(self) -> bool:
        return self.data["source"] == "analytic"

    def _dtype_bytes(self) -> int:
        return {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}.get(self.dtype, 4)

    # ------------------------------------------------------------------ costs
    def roofline_ms(self, sig: LayerSig) -> float:
        """max(compute time at the op's measured efficiency, memory time) + nothing else."""
        b = self.batch
        flops = 2.0 * sig.macs() * b
        eff = self._eff.get(sig.op, self._eff.get("default", 1.0)) if sig.op != MEMORY else 1.0
        t_compute = flops / (self.data["peak"]["gflops"] * 1e9 * eff) if flops else 0.0
        t_mem = sig.bytes(self._dtype_bytes()) * b / (self.data["peak"]["gbps"] * 1e9)
        return max(t_compute, t_mem) * 1e3

    def _memory_op(self, kind: str) -> dict | None:
        mem = self.data["memory_ops"]
        return mem.get(kind, mem.get(KIND_FALLBACK.get(kind, kind)))

    def _memory_ms(self, sig: LayerSig) -> float:
        m = self._memory_op(sig.kind)
        if m is None:
            self.fallbacks.add(table_key(sig))
            return self.roofline_ms(sig)
        n = sig.elements() * self.batch
        ms = _mem_at(m, n)
        r = self.data["memory_ops"].get("reorder")
        if sig.kind == "broadcast" and sig.h * sig.w > 1 and r is not None and self.dtype != "int8":
            # onnxruntime's blocked (NCHWc) fp32 layout has no broadcast multiply (squeeze-excitation):
            # the tensor leaves the layout and comes back, one reorder round trip (int8 runs NHWC QLinearMul)
            ms += _mem_at(r, n)
        return ms

    def _step(self, op: str, v: int, fixed: bool, grid: tuple) -> int:
        """The staircase: a count between grid points costs what the next multiple of the block costs."""
        s = self.data["steps"].get(op)
        if s is None or fixed or v in grid:
            return v
        blk = s["block"]
        return -(-v // blk) * blk

    def table_ms(self, sig: LayerSig) -> float:
        """The layer's kernel time as its table (or the roofline) says, alone, at this batch size (cached)."""
        hit = self._cache.get(sig)
        if hit is not None:
            return hit
        if sig.op == MEMORY:
            ms = self._memory_ms(sig)
        else:
            key = table_key(sig)
            t = self._tables.get(key)
            near = self._linear_at_other_tokens(sig) if t is None and sig.op == LINEAR else None
            if near is not None:
                ms = near
            elif t is None:
                self.fallbacks.add(key)
                ms = self.roofline_ms(sig)
            else:
                if sig.op == DWCONV:
                    c = self._step(sig.op, sig.cout, False, t.cout)
                    ms = t.at(t.cin[0], c) if len(t.cin) == 1 else t.at(c, c)
                else:
                    ms = t.at(self._step(sig.op, sig.cin, sig.fixed_in, t.cin),
                              self._step(sig.op, sig.cout, sig.fixed_out, t.cout))
                s = self.data["steps"].get(sig.op)
                if s and not sig.fixed_in and sig.cin % s.get("cin_block", s["block"]) and sig.op in (CONV, DWCONV):
                    ms *= s.get("unaligned_factor", 1.0)
        self._cache[sig] = ms
        return ms

    def _linear_at_other_tokens(self, sig: LayerSig) -> float | None:
        """A Linear layer at a token count the profile has no table for (a ViT's 197 tokens, a text model run at
        another sequence length): the table of the nearest token count (in ratio) at the layer's features, scaled by
        tokens / its tokens. Within a factor of a few of the measured rows, a GEMM's throughput barely moves; the
        roofline at the median efficiency of every measured point (small heads included) priced ViT-B's layers ~9x
        too high. Classifier heads (1 token) serve only 1-token layers: their GEMV is another kernel. None when no
        Linear table fits."""
        near = [n for n in self._linear_by_tokens if (n == 1) == (sig.tokens == 1)]
        if not near:
            return None
        n = min(near, key=lambda x: (abs(math.log(x / max(sig.tokens, 1))), -x))
        tb = self._linear_by_tokens[n]
        return tb.at(self._step(sig.op, sig.cin, sig.fixed_in, tb.cin), self._step(sig.op, sig.cout, sig.fixed_out, tb.cout)) \
            * sig.tokens / n

    def _context_b(self, sig: LayerSig) -> float:
        ctx = self.data["context"]
        return ctx.get("b_network", (ctx.get("b_by_class") or {}).get("memory" if sig.op == MEMORY else "compute", ctx["b"]))

    def layer_ms(self, sig: LayerSig, fit: "NetworkFit | None" = None) -> float:
        """Predicted in-network ms of one layer at this profile's batch size: with a context line,
        max(a x table ms + b, floor x a x table ms); `fit` (see `fit`) gives a network's own a and b
        and its calibration scale (default: the profile's line, scale 1)."""
        t = self.table_ms(sig)
        ctx = self.data.get("context")
        if fit is not None and fit.b_ms is not None:
            floor = ctx["floor"] if ctx else 0.0
            return max(fit.kernel_factor * t + fit.b_ms, floor * fit.kernel_factor * t)
        scale = 1.0 if fit is None else fit.class_scale[fit_class(sig)] if fit.class_scale else fit.scale
        if ctx:
            return scale * max(ctx["a"] * t + self._context_b(sig), ctx["floor"] * t)
        return scale * t        # per_op_ms is in overhead_ms

    def fell_back(self, layers) -> list:
        """The layers whose cost came from the roofline rather than a measured table."""
        out = []
        for sig in layers:
            key = table_key(sig)
            if (sig.op == MEMORY and self._memory_op(sig.kind) is None) or \
                    (sig.op != MEMORY and key not in self._tables
                     and not (sig.op == LINEAR and self._linear_at_other_tokens(sig) is not None)):
                out.append(sig)
        return out

    def per_op_ms(self) -> float:
        return 0.0 if self.data.get("context") else self.data["overhead"]["per_op_ms"]

    def fit(self, layers) -> "NetworkFit":
        """How `layers` add up on this profile. A profiled dense model with the same layer structure
        (pruning keeps it) that carries an in-network fit (`kernel_factor`: its kernels' time inside the
        network over their tables' time; `b_ms`: its per-layer dispatch cost) is predicted with those,
        so that a pruned variant keeps the network's per-layer fixed cost while its kernels shrink;
        one with only a `factor` scales the whole prediction. Other models: each class of layer (FIT_CLASSES) scaled
        by its factor fitted over the profiled models (`class_scales`: what a network is made of, not which network
        it is), or, where fewer models carry their per-class predictions, the median factor."""
        cal = self.data.get("calibration") or []
        if not cal:
            return NetworkFit(source="none")
        st = structure(layers)
        for c in cal:
            if c["structure"] == st:
                if c.get("b_ms") is not None and self.data.get("context"):
                    return NetworkFit(kernel_factor=c["kernel_factor"], b_ms=c["b_ms"],
                                      source=f"model {c['model']}: in-network kernels x{c['kernel_factor']:.3f}, "
                                             f"{c['b_ms'] * 1e3:+.2f} us per layer")
                return NetworkFit(scale=c["factor"], source=f"model {c['model']}")
        med = statistics.median(c["factor"] for c in cal)
        rows = [c for c in cal if c.get("predicted_by_class_ms")]
        if len(rows) < len(FIT_CLASSES):
            return NetworkFit(scale=med, source=f"median of {len(cal)} profiled models")
        k = class_scales(rows, med)
        parts = self.by_class_ms(layers)
        eff = sum(k[c] * v for c, v in parts.items()) / max(sum(parts.values()), 1e-12)
        return NetworkFit(scale=round(eff, 4), class_scale=k, source=f"per-class fit over {len(rows)} profiled models ("
                          + ", ".join(f"{c} x{k[c]:.2f}" for c in FIT_CLASSES) + ")")

    def by_class_ms(self, layers) -> dict[str, float]:
        """The uncalibrated prediction of `layers` split by FIT_CLASSES (the per-inference overhead in "other")."""
        out = dict.fromkeys(FIT_CLASSES, 0.0)
        out["other"] += self.overhead_ms(None, len(layers))
        for sig in layers:
            out[fit_class(sig)] += self.layer_ms(sig, None)
        return out

    def calibration(self, layers) -> tuple[float, str]:
        """(factor, source) of `fit` for tools that report one number: the whole-network scale, or 1
        with the in-network fit named in the source."""
        f = self.fit(layers)
        return f.scale, f.source

    def overhead_ms(self, fit: "NetworkFit | None" = None, layers: int = 0) -> float:
        """Fixed cost of one inference over `layers` costed layers: the per-inference overhead, plus
        per_op_ms a layer for a profile without a context line (scaled by the fit's whole-network scale)."""
        o = self.data["overhead"]["per_inference_ms"] + self.per_op_ms() * layers
        if fit is None or fit.b_ms is not None:
            return o
        return o * (fit.class_scale["other"] if fit.class_scale else fit.scale)

    def sparse_factor(self, sig: LayerSig, block: int, density: float) -> tuple[float, str] | None:
        """(block-sparse time / dense time, source) of a Linear / 1x1 conv at `block` and `density` (fraction
        of blocks kept), from the profile's sparse entries measured with the kernel that ships (on a CPU
        profile: sparse_bench.RUNTIME): the nearest measured shape of the same kind, interpolated linearly in
        density between measured densities (clamped to the measured range). None without such entries."""
        from compress.hardware_profiles.sparse_bench import RUNTIME

        sp = self.data.get("sparse") or {}
        if self.data["device"]["kind"] == "cpu" and sp.get("runtime") != RUNTIME:
            return None
        kind = "linear" if sig.op == LINEAR else "conv1x1"
        entries = sp.get("entries") or []
        cands = [e for e in entries if e.get("format") == f"bsr{block}x{block}"]
        if not cands:
            return None
        same = [e for e in cands if e["layer"] == kind] or cands
        want = sig.cin * sig.cout
        best = min(same, key=lambda e: (abs(math.log(e["in"] * e["out"] / want)), e["in"], e["out"]))
        key = (best["layer"], best["in"], best["out"], best["rows"])
        pts = sorted((float(e["density"]), e["ms"]) for e in same if (e["layer"], e["in"], e["out"], e["rows"]) == key)
        dense = [e["ms"] for e in entries if e.get("format") == "dense"
                 and (e["layer"], e["in"], e["out"], e["rows"]) == key]
        if not pts or not dense:
            return None
        d = min(max(density, pts[0][0]), pts[-1][0])
        ms = pts[0][1]
        for (d0, m0), (d1, m1) in zip(pts, pts[1:]):
            if d0 <= d <= d1:
                ms = m0 + (m1 - m0) * (d - d0) / (d1 - d0) if d1 > d0 else m0
                break
        else:
            ms = pts[-1][1] if d >= pts[-1][0] else pts[0][1]
        return ms / dense[0], (f"measured ({sp.get('runtime')}): {best['layer']} {best['in']}x{best['out']} rows "
                               f"{best['rows']}, block {block}, density {d:.2f}")

    def sparse_context_ms(self, sig: LayerSig) -> float:
        """What running `sig` through the CPU block-sparse kernel costs inside its network beyond the one-op
        timing that `sparse_factor` reads: for a 1x1 conv, the profile's in-network `ms_per_layer` plus
        `ms_per_melem` times its activation elements (measured by `compress profile --sparse FILE --model M`,
        sparse_bench.conv_context); 0 for Linear layers, other devices, or a profile without that measurement."""
        from compress.hardware_profiles.sparse_bench import melems

        if sig.op != CONV or self.data["device"]["kind"] != "cpu":
            return 0.0
        ctx = ((self.data.get("sparse") or {}).get("context") or {}).get("conv1x1") or {}
        per_layer, rate = float(ctx.get("ms_per_layer") or 0.0), float(ctx.get("ms_per_melem") or 0.0)
        return per_layer + rate * melems(sig, self.batch)

    def total_ms(self, layers, fit: "NetworkFit | None" = None, sparse: dict | None = None) -> float:
        """`sparse`: {module name: (block, density)} of block-sparse layers, each costed at its dense time
        times `sparse_factor` (dense when the profile has no factor for it)."""
        layers = list(layers)
        fit = fit if fit is not None else self.fit(layers)
        total = self.overhead_ms(fit, len(layers))
        for s in layers:
            ms = self.layer_ms(s, fit)
            if sparse and s.module in sparse and s.op in (LINEAR, CONV):
                f = self.sparse_factor(s, *sparse[s.module])
                ms = ms * f[0] + self.sparse_context_ms(s) if f else ms
            total += ms
        return total


@dataclass(frozen=True)
class NetworkFit:
    """How one network's layers add up on a profile: a whole-network `scale` (the calibration factor of
    the profiled dense model, or the median), its own in-network line (`kernel_factor`, `b_ms`), or, for a
    network the profile never timed, a factor per class of layer (`class_scale`; `scale` is then what they
    come to on this network, for reports)."""
    scale: float = 1.0
    kernel_factor: float = 1.0
    b_ms: float | None = None
    source: str = ""
    class_scale: dict | None = None


# classes of layer whose in-network cost a profile's calibration fits apart (predictor.class_scales)
FIT_CLASSES = ("conv", "dwconv", "memory", "other")
CLASS_FIT_RIDGE = 0.05      # pull of each class factor towards the median factor (relative-error units)


def fit_class(sig: LayerSig) -> str:
    return {CONV: "conv", DWCONV: "dwconv", MEMORY: "memory"}.get(sig.op, "other")


def class_scales(rows: list[dict], median: float) -> dict[str, float]:
    """Per-class factors k minimising sum over the profiled models of (sum_c k_c predicted_c / measured - 1)^2
    + CLASS_FIT_RIDGE x sum_c (k_c - median)^2: a host whose convs run slower than the profile's tables
    but whose depthwise convs do not is told apart from one uniformly slower; a class few models exercise
    keeps about the median factor. Each within [median / 4, median x 4]."""
    import numpy as np

    a = np.array([[r["predicted_by_class_ms"].get(c, 0.0) / r["measured_ms"] for c in FIT_CLASSES] for r in rows])
    lhs = a.T @ a + CLASS_FIT_RIDGE * np.eye(len(FIT_CLASSES))
    rhs = a.T @ np.ones(len(rows)) + CLASS_FIT_RIDGE * median
    k = np.clip(np.linalg.solve(lhs, rhs), median / 4, median * 4)
    return {c: round(float(v), 4) for c, v in zip(FIT_CLASSES, k)}


def fit_network(prof: dict, layers, wall_ms: float, node_ms: float) -> tuple[float, float]:
    """(kernel_factor, b_ms) of a dense network timed on this profile's device: kernel_factor = the sum
    of its nodes' kernel times inside the network / the sum of its layers' table times; b_ms solves
    overhead + sum max(kf x t + b, floor x kf x t) = wall_ms (bisection; the sum rises with b)."""
    p = DeviceProfile({k: v for k, v in prof.items() if k != "calibration"})
    ts = [p.table_ms(s) for s in layers]
    kf = node_ms / max(sum(ts), 1e-12)
    floor = prof["context"]["floor"]
    over = prof["overhead"]["per_inference_ms"]

    def total(b):
        return over + sum(max(kf * t + b, floor * kf * t) for t in ts)

    lo, hi = -kf * max(ts, default=0.0) - 1.0, wall_ms
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < wall_ms else (lo, mid)
    return round(kf, 4), round(hi, 6)


# ---------------------------------------------------------------------------- loading

# how commands name a precision -> a profile's `dtype`
DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "int8": "int8"}


def profile_dtype(dtype: str) -> str:
    """A profile's dtype for a precision as the commands name it (fp32 -> float32, int8 -> int8)."""
    d = DTYPES.get(str(dtype).lower())
    if d is None:
        raise CompressError(f"unknown dtype {dtype!r}; choose fp32 or int8")
    return d


def dtype_name(name: str, dtype: str | None) -> str:
    """The shipped name of `name`'s profile for `dtype`: int8 profiles are NAME-int8[-TAG]-bN.json
    (e.g. cpu-x86-2core-ort-int8-amd-avx512-b8.json), the others NAME[-TAG]-bN.json. A name that already says
    int8 is kept; a tagged or batched one (what plan and predict print, e.g. cpu-x86-2core-ort-amd-avx512-b1) gets
    -int8 before its tag."""
    if dtype != "int8" or re.search(r"-int8(-|$)", name):
        return name
    m = re.fullmatch(r"(.*?)(-b\d+)?", name)
    base, batch = m.group(1), m.group(2) or ""
    stem = _untagged(base)
    return f"{stem}-int8{base[len(stem):]}{batch}"


def howto_int8(batch) -> str:
    b = f" --batch {batch}" if batch else " --batch N"
    return (f"measure one on this machine with `compress profile --target cpu --dtype int8{b} --model MODEL "
            "--out FILE` and pass --profile FILE")


def _untagged(name: str) -> str:
    for tag in ("-amd-avx512", "-amd-avx2", "-intel-avx512", "-intel-avx2", "-avx512", "-avx2"):
        name = name.removesuffix(tag)
    return name


# JSON files of this package that are data, not device profiles (two_four_published.json: the published
# 2:4 measurements the planner prices 2:4 with on a GPU/Jetson profile without measured entries)
NOT_PROFILES = ("defaults.json", "two_four_published.json")


def shipped() -> list[str]:
    """Names of the profiles shipped in this package (files *.json other than NOT_PROFILES)."""
    return sorted(p.stem for p in HERE.glob("*.json") if p.name not in NOT_PROFILES)


def _cpuinfo_field(key: str) -> str:
    return machine.cpuinfo().field(key)


def host_isa() -> str:
    """The x86 vector ISA of this machine as the shipped CPU profiles name it: avx512 or avx2."""
    return machine.isa_of(_cpuinfo_field("flags"))


def host_vendor() -> str:
    """amd, intel, or '' (not an x86 CPU)."""
    return machine.vendor_of(_cpuinfo_field("vendor_id"))


def host_tags() -> list[str]:
    """File-name tags of shipped CPU profiles that fit this machine, most specific first:
    VENDOR-ISA (e.g. amd-avx512: an AMD EPYC with AVX-512), then ISA alone. Two CPUs with the same
    ISA still differ (caches, memory, vector units), so a vendor's own file wins when shipped."""
    isa, vendor = host_isa(), host_vendor()
    return ([f"{vendor}-{isa}"] if vendor else []) + [isa]


def _candidates(name: str, batch) -> list[Path]:
    """Files for a shipped name: one measured on a CPU like this machine first
    (NAME-amd-avx512-bN.json, then NAME-avx512-bN.json), then NAME-bN.json, NAME.json, any NAME-b*.json."""
    out = []
    tags = host_tags()
    if batch is not None:
        out += [HERE / f"{name}-{t}-b{batch}.json" for t in tags] + [HERE / f"{name}-b{batch}.json"]
    out.append(HERE / f"{name}.json")
    for t in tags:
        out += sorted(HERE.glob(f"{name}-{t}-b*.json"))
    out += sorted(HERE.glob(f"{name}-b*.json"))
    return out


def load_profile(name_or_path, runtime: str | None = None, dtype: str | None = None,
                 batch: int | None = None) -> DeviceProfile:
    """A validated profile: a file path, or a shipped name (e.g. cpu-x86-2core-ort; with `batch`,
    the file measured at that batch). Asked-for runtime / dtype / batch must match the file;
    an analytic profile is batch-agnostic (its roofline scales with batch) and takes any batch."""
    s = str(name_or_path)
    p = Path(s)
    dtype = profile_dtype(dtype) if dtype is not None else None
    if not (p.suffix == ".json" or p.exists() or "/" in s):
        s = dtype_name(s, dtype)
        cands = [c for c in _candidates(s, batch) if c.is_file()]
        if not cands and dtype == "int8":
            raise CompressError(f"no int8 profile {s!r} ships for this host (CPU tags {', '.join(host_tags())}"
                                + (f", batch {batch}" if batch else "") + f"); {howto_int8(batch)}")
        if not cands:
            have = ", ".join(sorted({_untagged(n.rsplit("-b", 1)[0])
                                     if n.rsplit("-b", 1)[-1].isdigit() else n for n in shipped()}))
            raise CompressError(f"no profile named {s!r} (shipped: {have}); {schema.HOWTO}")
        p = cands[0]
    d = schema.read(p)
    if runtime is not None and d["runtime"]["name"] != runtime:
        raise CompressError(f"profile {p}: measured with runtime {d['runtime']['name']!r}, not {runtime!r}; "
                            f"{schema.HOWTO.replace('--target cpu', '--target cpu --runtime ' + runtime)}")
    if dtype is not None and d["dtype"] != dtype:
        raise CompressError(f"profile {p}: dtype {d['dtype']!r}, not {dtype!r}; "
                            + (howto_int8(batch) if dtype == "int8" else schema.HOWTO))
    if batch is not None and d["batch"] != batch:
        if d["source"] != "analytic":
            raise CompressError(f"profile {p}: measured at batch {d['batch']}, not {batch}; "
                                + (howto_int8(batch) if d["dtype"] == "int8" else
                                   schema.HOWTO.replace('--out', f'--batch {batch} --out')))
        d = {**d, "batch": int(batch)}
    return DeviceProfile(d, str(p))


def block_sparse_layers(model) -> dict[str, tuple[int, float]]:
    """{module name: (block, density)} of the block-sparse modules (compress.lower's BlockSparseLinear) in `model`."""
    return {n: (int(m.block), float(m.density)) for n, m in model.named_modules()
            if str(getattr(m, "format", "")).startswith("block:") and hasattr(m, "col_indices")}


def predict_ms(model, example_inputs, profile: DeviceProfile, sparse: bool = False) -> float:
    """Predicted end-to-end latency (ms) of `model` at the profile's batch size. `sparse`: its block-sparse
    layers run the deployed sparse kernel (model.bsr.onnx), priced from the profile's sparse entries;
    otherwise they run dense (model.onnx: the zeros in place)."""
    from compress.hardware_profiles.layers import extract_layers

    layers = extract_layers(model, example_inputs)
    return profile.total_ms(layers, sparse=block_sparse_layers(model) if sparse else None)


def expected_latency_ms(model, example_inputs, target: str, batch: int, sparse: bool = False,
                        dtype: str | None = None) -> float | None:
    """Predicted latency on `target` (cpu, jetson or a profile name) at `batch`; None without a profile.
    `dtype` int8: of the int8 artifact, from the target's int8 profile (NAME-int8[-TAG]-bN.json)."""
    name = TARGETS.get(target, target)
    try:
        prof = load_profile(name, batch=batch, dtype=dtype)
    except CompressError:
        return None
    return predict_ms(model, example_inputs, prof, sparse)
