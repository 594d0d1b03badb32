"""DeviceProfile: per-layer latency from a profile's tables, and whole-model latency prediction.

    predicted ms = overhead.per_inference_ms + sum over costed layers of (layer_ms + overhead.per_op_ms)

layer_ms interpolates the measured (cin, cout) grid of the layer's table bilinearly after rounding
channel counts up to the op's block (the staircase: a kernel processes whole blocks), multiplies by
the measured unaligned factor when input channels are off the block (onnxruntime's CPU convs then
leave the NCHWc layout), and falls back to a roofline (measured peak compute x the table's measured
efficiency, measured bandwidth) when the profile has no table for the layer's shape.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

from compress.errors import CompressError
from compress.hardware_profiles import schema
from compress.hardware_profiles.layers import CONV, DWCONV, LINEAR, MATMUL, MEMORY, LayerSig

HERE = Path(__file__).resolve().parent
# target (as in `compress prune --target`) -> shipped profile name
TARGETS = {"cpu": "cpu-x86-2core-ort", "jetson": "jetson-orin-nano"}


def table_key(sig: LayerSig) -> str:
    """The table a layer's cost comes from: everything but its channel counts."""
    if sig.op in (CONV, DWCONV):
        g = "dw" if sig.op == DWCONV else str(sig.groups)
        return (f"{sig.op} k{sig.kernel[0]}x{sig.kernel[1]} s{sig.stride[0]}x{sig.stride[1]} "
                f"p{sig.padding[0]}x{sig.padding[1]} g{g} {sig.h}x{sig.w}")
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
        """(index, weight) pairs along one axis: inside the grid, linear; below its smallest point,
        proportional to v (fewer channels, proportionally less work); above, linear extrapolation."""
        if len(grid) == 1 or v < grid[0]:
            return [(0, v / grid[0])]
        i, j, t = _bracket(grid, v)
        return [(i, 1.0 - t), (j, t)] if i != j else [(i, 1.0)]

    def at(self, cin: float, cout: float) -> float:
        out = 0.0
        for i, wi in self._axis(self.cin, cin):
            for j, wj in self._axis(self.cout, cout):
                out += wi * wj * self.ms[i][j]
        return max(out, 0.0)


@dataclass
class DeviceProfile:
    data: dict
    path: str = ""
    _tables: dict = field(default_factory=dict, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)
    fallbacks: set = field(default_factory=set, repr=False)   # table keys that used the roofline

    def __post_init__(self) -> None:
        for t in self.data["tables"]:
            self._tables[t["key"]] = _Table(tuple(t["cin"]), tuple(t["cout"]), tuple(tuple(r) for r in t["ms"]))
        self._eff = dict(self.data.get("roofline_efficiency") or {})

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

    def _memory_ms(self, sig: LayerSig) -> float:
        m = self.data["memory_ops"].get(sig.kind)
        if m is None:
            self.fallbacks.add(table_key(sig))
            return self.roofline_ms(sig)
        ms = m["ms"] + m["ms_per_melem"] * sig.elements() * self.batch / 1e6
        r = self.data["memory_ops"].get("reorder")
        if sig.kind == "broadcast" and sig.h * sig.w > 1 and r is not None:
            # onnxruntime's blocked (NCHWc) layout has no broadcast multiply (squeeze-excitation):
            # the tensor leaves the layout and comes back, one reorder round trip
            ms += r["ms"] + r["ms_per_melem"] * sig.elements() * self.batch / 1e6
        return ms

    def _step(self, op: str, v: int, fixed: bool, grid: tuple) -> int:
        """The staircase: a count between grid points costs what the next multiple of the block costs."""
        s = self.data["steps"].get(op)
        if s is None or fixed or v in grid:
            return v
        blk = s["block"]
        return -(-v // blk) * blk

    def layer_ms(self, sig: LayerSig) -> float:
        """Predicted ms of one layer at this profile's batch size (cached per signature)."""
        hit = self._cache.get(sig)
        if hit is not None:
            return hit
        if sig.op == MEMORY:
            ms = self._memory_ms(sig)
        else:
            key = table_key(sig)
            t = self._tables.get(key)
            if t is None:
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

    def fell_back(self, layers) -> list:
        """The layers whose cost came from the roofline rather than a measured table."""
        out = []
        for sig in layers:
            key = table_key(sig)
            if (sig.op == MEMORY and sig.kind not in self.data["memory_ops"]) or \
                    (sig.op != MEMORY and key not in self._tables):
                out.append(sig)
        return out

    def per_op_ms(self) -> float:
        return self.data["overhead"]["per_op_ms"]

    def total_ms(self, layers) -> float:
        return self.data["overhead"]["per_inference_ms"] + sum(self.layer_ms(s) + self.per_op_ms() for s in layers)


# ---------------------------------------------------------------------------- loading

def shipped() -> list[str]:
    """Names of the profiles shipped in this package (files *.json other than defaults.json)."""
    return sorted(p.stem for p in HERE.glob("*.json") if p.name != "defaults.json")


def _candidates(name: str, batch) -> list[Path]:
    out = []
    if batch is not None:
        out.append(HERE / f"{name}-b{batch}.json")
    out.append(HERE / f"{name}.json")
    out += sorted(HERE.glob(f"{name}-b*.json"))
    return out


def load_profile(name_or_path, runtime: str | None = None, dtype: str | None = None,
                 batch: int | None = None) -> DeviceProfile:
    """A validated profile: a file path, or a shipped name (e.g. cpu-x86-2core-ort; with `batch`,
    the file measured at that batch). Asked-for runtime / dtype / batch must match the file;
    an analytic profile is batch-agnostic (its roofline scales with batch) and takes any batch."""
    s = str(name_or_path)
    p = Path(s)
    if not (p.suffix == ".json" or p.exists() or "/" in s):
        cands = [c for c in _candidates(s, batch) if c.is_file()]
        if not cands:
            have = ", ".join(sorted({n.rsplit("-b", 1)[0] if n.rsplit("-b", 1)[-1].isdigit() else n
                                     for n in shipped()}))
            raise CompressError(f"no profile named {s!r} (shipped: {have}); {schema.HOWTO}")
        p = cands[0]
    d = schema.read(p)
    if runtime is not None and d["runtime"]["name"] != runtime:
        raise CompressError(f"profile {p}: measured with runtime {d['runtime']['name']!r}, not {runtime!r}; "
                            f"{schema.HOWTO.replace('--target cpu', '--target cpu --runtime ' + runtime)}")
    if dtype is not None and d["dtype"] != dtype:
        raise CompressError(f"profile {p}: dtype {d['dtype']!r}, not {dtype!r}; {schema.HOWTO}")
    if batch is not None and d["batch"] != batch:
        if d["source"] != "analytic":
            raise CompressError(f"profile {p}: measured at batch {d['batch']}, not {batch}; "
                                f"{schema.HOWTO.replace('--out', f'--batch {batch} --out')}")
        d = {**d, "batch": int(batch)}
    return DeviceProfile(d, str(p))


def predict_ms(model, example_inputs, profile: DeviceProfile) -> float:
    """Predicted end-to-end latency (ms) of `model` at the profile's batch size."""
    from compress.hardware_profiles.layers import extract_layers

    return profile.total_ms(extract_layers(model, example_inputs))


def expected_latency_ms(model, example_inputs, target: str, batch: int) -> float | None:
    """Predicted latency on `target` (cpu, jetson or a profile name) at `batch`; None without a profile."""
    name = TARGETS.get(target, target)
    try:
        prof = load_profile(name, batch=batch)
    except CompressError:
        return None
    return predict_ms(model, example_inputs, prof)
