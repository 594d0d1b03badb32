"""Structured vs unstructured per layer: which format a device profile says is faster.

Eligible layers are Linear and 1x1 convolutions (groups 1). For each, the profile gives the dense
latency (its tables) and, per sparse format, a factor. The planner prices only what ships:
- block-sparse (`block:B@D`): from the profile's measured sparse entries (dense vs BSR at block B and
  density D, nearest measured shape of the same layer kind). On a CPU profile only entries measured
  by the runtime the CPU artifact deploys, `SPARSE_RUNTIME` (compress's own BSR kernel inside
  onnxruntime), count: entries timed by anything else (torch's BSR, `"runtime": "torch"`) price a
  kernel nobody deploys and are never used;
- 2:4: from measured entries when the profile has them; on a GPU/Jetson profile without them, from a
  model fitted to published cuSPARSELt / CUTLASS measurements (`hardware_profiles/two_four_published.json`:
  speedup over dense as a function of M*N*K per GPU class), labelled "published, not measured here".
  CPU runtimes have no 2:4 kernel: never offered there.
Densities below `min_density` are not offered: without fine-tuning they lose too much.

The report compares, at one budget: structured-only (the planner), unstructured-only (no channel
removed; the layers that run faster sparse at the least sparsity that meets the budget) and mixed
(milder sparsity, and the planner re-solved with the sparse layers' costs scaled by their format's
factor, so channels are removed only for the rest of the budget), and says per format where its
costs come from (`cost_sources`). `candidate_plans` writes each as a plan of its own.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from compress.errors import CompressError

# the runtime the CPU artifact runs block-sparse layers with; a CPU profile's `sparse` section (or
# entry) names the runtime that measured it, and only this one prices block formats on a CPU
from compress.hardware_profiles.sparse_bench import RUNTIME as SPARSE_RUNTIME  # noqa: E402 - the deployed CPU kernel
PUBLISHED = "published, not measured here"
TWO_FOUR_FILE = "two_four_published.json"


@dataclass(frozen=True)
class FormatOption:
    layer: str
    op: str
    shape: str
    format: str           # "2:4" | "block:32" ...
    density: float
    dense_ms: float
    sparse_ms: float
    source: str

    @property
    def factor(self) -> float:
        return self.sparse_ms / self.dense_ms if self.dense_ms > 0 else 1.0


def eligible(sig) -> bool:
    return sig.op == "linear" or (sig.op == "conv" and sig.kernel == (1, 1) and sig.groups == 1)


# ---------------------------------------------------------------------------------------- measured entries
def _section(profile) -> dict:
    return profile.data.get("sparse") or {}


def entry_runtime(profile, e: dict) -> str:
    """The runtime that measured entry `e`: its own `runtime`, else its section's."""
    return str(e.get("runtime") or _section(profile).get("runtime") or "unknown")


def usable_entries(profile) -> list[dict]:
    """The sparse entries that may price a plan: on a CPU profile those measured by SPARSE_RUNTIME only."""
    entries = list(_section(profile).get("entries") or [])
    if profile.data["device"]["kind"] == "cpu":
        entries = [e for e in entries if entry_runtime(profile, e) == SPARSE_RUNTIME]
    return entries


def _block_formats(entries: list[dict]) -> list[str]:
    return sorted({str(e["format"]) for e in entries if str(e.get("format", "")).startswith("bsr")},
                  key=lambda f: int(f[3:].split("x")[0]))


def _when(profile, sparse: bool) -> str:
    """When the sparse table (its own `date`, else the profile's) or the dense tables were measured."""
    when = (_section(profile).get("date") if sparse else None) or (profile.data.get("measurement") or {}).get("date")
    return str(when or "date not recorded")


def measured_label(profile, runtime: str, sparse: bool = True) -> str:
    return f"measured (profile {profile.name}, runtime {runtime}, {_when(profile, sparse)})"


def _measured_factor(profile, entries: list[dict], kind: str, fmt: str, density: float, sig) -> tuple[float, str] | None:
    """sparse/dense from the nearest measured shape of the same layer kind (or any kind)."""
    dense = {(e["layer"], e["in"], e["out"], e["rows"]): e["ms"] for e in entries if e.get("format") == "dense"}
    cands = [e for e in entries if e.get("format") == fmt and abs(float(e.get("density", 1.0)) - density) < 1e-6]
    if not cands:
        return None
    same = [e for e in cands if e["layer"] == kind] or cands
    best = min(same, key=lambda e: abs(e["in"] * e["out"] - sig.cin * sig.cout))
    d = dense.get((best["layer"], best["in"], best["out"], best["rows"]))
    if not d:
        return None
    return best["ms"] / d, (f"{measured_label(profile, entry_runtime(profile, best))}: {best['layer']} "
                            f"{best['in']}x{best['out']} rows {best['rows']} ({fmt} @ {density})")


def no_block_entries(profile) -> str | None:
    """Why `block` cannot be priced on `profile` (None: it can): one line naming the profile and the fix."""
    if _block_formats(usable_entries(profile)):
        return None
    kind = profile.data["device"]["kind"]
    if kind != "cpu":
        return (f"--formats block: profile {profile.name} has no measured block-sparse entries, so block formats "
                f"cannot be priced on this {kind} (nothing in compress measures them there yet); drop block from --formats")
    others = sorted({entry_runtime(profile, e) for e in (_section(profile).get("entries") or [])
                     if str(e.get("format", "")).startswith("bsr")})
    why = (f"its block-sparse entries were measured with {', '.join(others)}, not the kernel the CPU artifact runs "
           f"({SPARSE_RUNTIME})" if others else "it has no block-sparse entries")
    from compress.hardware_profiles import predictor

    path = Path(profile.path) if profile.path else None
    shipped = path is None or path.resolve().parent == Path(predictor.__file__).resolve().parent
    target = "FILE" if shipped else str(path)
    copy = f" a copy of {path.name if path else 'the profile'} as " if shipped else " "
    return (f"--formats block: profile {profile.name} cannot price block formats: {why}; re-measure the sparse "
            f"table of{copy}{target} with the kernel that ships, `compress profile --sparse {target} "
            f"[--model MODEL]`, and plan with --profile {target}, or drop block from --formats")


def check_formats(profile, allowed) -> None:
    """Bad input before any work: a sparse format asked for that this profile cannot price."""
    if "block" in allowed:
        msg = no_block_entries(profile)
        if msg:
            raise CompressError(msg)


# ---------------------------------------------------------------------------------------- 2:4, published
@lru_cache(maxsize=1)
def published_two_four() -> dict:
    """The published 2:4 measurements and the fitted model (hardware_profiles/two_four_published.json)."""
    from compress.hardware_profiles import predictor

    return json.loads((Path(predictor.__file__).parent / TWO_FOUR_FILE).read_text())


def gpu_class(profile) -> tuple[str, str]:
    """(class in the published table, why): a100, h100 or orin, from the profile's device."""
    dev = profile.data["device"]
    if dev.get("kind") == "jetson":
        return "orin", f"{dev.get('name', 'Jetson')} (Jetson Orin)"
    name = " ".join(str(dev.get(k, "")) for k in ("name", "gpu", "module")).upper()
    cc = str(dev.get("compute_capability") or "")
    try:
        major = int(cc.split(".")[0]) if cc else None
    except ValueError:
        major = None
    if any(t in name for t in ("H100", "H200", "H800", "GH200", "B100", "B200", "GB200")) or (major is not None and major >= 9):
        return "h100", f"{dev.get('name', 'GPU')} (H100-class)"
    if "ORIN" in name or cc == "8.7":
        return "orin", f"{dev.get('name', 'GPU')} (Orin)"
    if "A100" in name or "A800" in name or cc == "8.0":
        return "a100", f"{dev.get('name', 'GPU')} (A100-class)"
    return "a100", f"{dev.get('name', 'GPU')} (no published points of its own: A100-class assumed)"


def two_four_speedup(m: int, n: int, k: int, cls: str, model: dict | None = None) -> float:
    """Published-fit speedup of a 2:4 GEMM over dense (dense ms / sparse ms) on GPU class `cls`;
    monotone non-decreasing in M*N*K."""
    model = model or published_two_four()["model"]
    c = model["classes"][cls]
    lw = math.log10(max(m * n * k, 1))
    z = max(min((lw - c["w0"]) / model["width"], 60.0), -60.0)
    return model["s_min"] + (c["s_max"] - model["s_min"]) / (1.0 + math.exp(-z))


def fit_two_four(points: list[dict], s_min: float, width: float) -> dict:
    """s_max and w0 that minimise the largest |log(model / published)| over `points` (grid search,
    s_max in 0.3..2 by 0.005, w0 in 7..12.5 decades by 0.01); max_error = exp of that."""
    import numpy as np

    lw = np.array([math.log10(p["m"] * p["n"] * p["k"]) for p in points])
    s = np.array([float(p["speedup"]) for p in points])
    smax = np.arange(0.3, 2.0 + 1e-9, 0.005)[:, None, None]
    w0 = np.arange(7.0, 12.5 + 1e-9, 0.01)[None, :, None]
    pred = s_min + (smax - s_min) / (1.0 + np.exp(-(lw[None, None, :] - w0) / width))
    err = np.abs(np.log(pred / s[None, None, :])).max(axis=2)
    i, j = np.unravel_index(int(np.argmin(err)), err.shape)
    return {"s_max": round(float(smax[i, 0, 0]), 3), "w0": round(float(w0[0, j, 0]), 2),
            "max_error": round(float(np.exp(err[i, j])), 3)}


def gemm_shape(sig, batch: int) -> tuple[int, int, int]:
    """(M rows, N out, K in) of a Linear / 1x1 conv at `batch`."""
    rows = sig.tokens if sig.op == "linear" else sig.out_hw[0] * sig.out_hw[1]
    return max(1, rows * batch), sig.cout, sig.cin


def _published_source(cls: str, why: str, m: int, n: int, k: int, s: float) -> str:
    data = published_two_four()
    c = data["model"]["classes"][cls]
    pts = [p for p in data["points"] if p["class"] == cls and p.get("used_in_fit")]
    err = (f"fit to {len(pts)} published points, within x{c['max_error']:.2f} of each" if c.get("max_error")
           else "no published speedup; users report none (GPU or DLA)")
    return (f"{PUBLISHED}: cuSPARSELt/CUTLASS 2:4 on {why}, GEMM M={m} N={n} K={k}: {s:.2f}x dense "
            f"({err}; hardware_profiles/{TWO_FOUR_FILE})")


def options(profile, costed, allowed: tuple[str, ...], min_density: float = 0.5,
            only: str | None = None, layers=None) -> dict[int, list[FormatOption]]:
    """Per eligible costed-layer index, the sparse formats the profile can price; `only`: a regular
    expression that a layer's module name must match (re.search) to be offered a sparse format; `layers`: the
    module names that can be lowered at all (None: any), so that no plan marks a layer `compress prune --plan`
    cannot lower (Hugging Face's Conv1D, a weight tied to an embedding)."""
    import re

    pattern = re.compile(only) if only else None
    entries = usable_entries(profile)
    kind = profile.data["device"]["kind"]
    blocks = [int(f[3:].split("x")[0]) for f in _block_formats(entries)]
    cls = gpu_class(profile) if kind in ("gpu", "jetson") else None
    out: dict[int, list[FormatOption]] = {}
    for i, cl in enumerate(costed):
        sig = cl.sig
        if not eligible(sig) or (pattern is not None and not pattern.search(sig.module)):
            continue
        if layers is not None and sig.module not in layers:
            continue
        lk = "linear" if sig.op == "linear" else "conv1x1"
        dense_ms = profile.layer_ms(sig)
        shape = f"{sig.cin}->{sig.cout}" + (f" @{sig.h}x{sig.w}" if sig.op == "conv" else f" x{sig.tokens}")
        opts = []
        if "2:4" in allowed and sig.cin % 4 == 0 and kind != "cpu":
            m = _measured_factor(profile, entries, lk, "2:4", 0.5, sig)
            if m is not None:
                opts.append(FormatOption(sig.module, sig.op, shape, "2:4", 0.5, dense_ms, dense_ms * m[0], m[1]))
            elif cls is not None:
                gm, gn, gk = gemm_shape(sig, profile.batch)
                sp = two_four_speedup(gm, gn, gk, cls[0])
                opts.append(FormatOption(sig.module, sig.op, shape, "2:4", 0.5, dense_ms, dense_ms / sp,
                                         _published_source(cls[0], cls[1], gm, gn, gk, sp)))
        if "block" in allowed:
            for b in blocks:
                if sig.cin % b or sig.cout % b:
                    continue
                for dens in sorted({float(e["density"]) for e in entries if e.get("format") == f"bsr{b}x{b}"}):
                    if dens < min_density:
                        continue
                    m = _measured_factor(profile, entries, lk, f"bsr{b}x{b}", dens, sig)
                    if m is not None:
                        ctx = profile.sparse_context_ms(sig) if kind == "cpu" else 0.0
                        src = m[1] + (f" + {ctx:.4f} ms in-network layout cost (measured)" if ctx else "")
                        opts.append(FormatOption(sig.module, sig.op, shape, f"block:{b}", dens, dense_ms,
                                                 dense_ms * m[0] + ctx, src))
        if opts:
            out[i] = opts
    return out


def cost_sources(profile, allowed, fallback_layers=()) -> dict[str, str]:
    """Per format asked for (and the structured/dense tables, always): where its costs come from --
    "measured (profile X, runtime Y, date)", "published, not measured here: ..." or "analytic: ..."."""
    rt = profile.data.get("runtime") or {}
    rt_name = " ".join(str(x) for x in (rt.get("name"), rt.get("version")) if x)
    if profile.data.get("source") == "analytic":
        dense = (f"analytic (profile {profile.name}: a roofline from published figures and stated assumptions, "
                 f"no measured tables)")
    else:
        dense = measured_label(profile, rt_name, sparse=False)
        if fallback_layers:
            dense += f"; analytic (roofline) for {len(fallback_layers)} layer kind(s) without a table"
    out = {"structured": dense}
    kind = profile.data["device"]["kind"]
    entries = usable_entries(profile)
    if "block" in allowed:
        rts = sorted({entry_runtime(profile, e) for e in entries if str(e.get("format", "")).startswith("bsr")})
        out["block"] = (measured_label(profile, ", ".join(rts)) if rts
                        else "not priced: " + (no_block_entries(profile) or "no block-sparse entries"))
    if "2:4" in allowed:
        m24 = sorted({entry_runtime(profile, e) for e in entries if e.get("format") == "2:4"})
        if kind == "cpu":
            out["2:4"] = "not offered: CPU runtimes have no 2:4 kernel"
        elif m24:
            out["2:4"] = measured_label(profile, ", ".join(m24))
        else:
            cls, why = gpu_class(profile)
            n = sum(1 for p in published_two_four()["points"] if p["class"] == cls and p.get("used_in_fit"))
            out["2:4"] = (f"{PUBLISHED}: cuSPARSELt/CUTLASS 2:4 speedup over dense modelled from "
                          + (f"{n} published measurements" if n else "published reports of no speedup")
                          + f" for {why} (hardware_profiles/{TWO_FOUR_FILE}, docs/profiles.md)")
    return out


def best(opts: list[FormatOption]) -> FormatOption:
    return min(opts, key=lambda o: (o.sparse_ms, -o.density))


def _wins_at(opts: dict[int, list[FormatOption]], density: float | None) -> dict[int, FormatOption]:
    """Per layer, its fastest option (at `density` only, None: at any density) when that beats dense by 2%."""
    out = {}
    for i, os_ in opts.items():
        cand = [o for o in os_ if density is None or abs(o.density - density) < 1e-9]
        if cand:
            b = best(cand)
            if b.sparse_ms < b.dense_ms * 0.98:
                out[i] = b
    return out


def _sparse_ms(dense_ms: float, wins: dict[int, FormatOption]) -> float:
    return dense_ms - sum(o.dense_ms - o.sparse_ms for o in wins.values())


def report(prep, config, source: dict, structured_res, allowed: tuple[str, ...], log=None,
           only: str | None = None) -> dict:
    """The structured / unstructured / mixed comparison at the structured plan's budget.

    The candidates meet the budget with as little sparsity as the profile's measured densities allow:
    - unstructured-only: every eligible layer at one density d, the highest measured density (the least
      sparsity) at which the layers that run faster sparse bring the model within the budget, each at its
      fastest block size; when no density does, the fastest configuration (it misses the budget);
    - mixed: the sparse layers one density level milder than the unstructured candidate's (less sparsity
      per layer), and channels removed by the structured solver for the rest of the budget; when the
      unstructured candidate misses the budget, the sparse layers at their fastest and channels for the rest.
    `only` (--sparse-layers): a regular expression; only layers whose module name it matches take a sparse format.
    """
    from compress.planner.solve import BudgetUnreachable, finish

    cost = prep.cost
    dense_ms = cost.total(prep.dense)
    target = structured_res.target_ms
    opts = options(cost.profile, cost.costed, allowed, only=only, layers=prep.sparse_layers)
    layers = []
    fastest = _wins_at(opts, None)
    for i, os_ in opts.items():
        b = best(os_)
        layers.append({"layer": b.layer, "op": b.op, "shape": b.shape, "dense_ms": round(b.dense_ms, 5),
                       "options": [{"format": o.format, "density": o.density, "ms": round(o.sparse_ms, 5),
                                    "source": o.source} for o in os_],
                       "winner": fastest[i].format if i in fastest else "dense"})
    levels = sorted({o.density for os_ in opts.values() for o in os_}, reverse=True)   # mildest first
    u_density, wins = None, fastest
    for d in levels:
        w = _wins_at(opts, d)
        if w and _sparse_ms(dense_ms, w) <= target * (1 + 1e-9):
            u_density, wins = d, w
            break
    unstructured_ms = _sparse_ms(dense_ms, wins)
    out = {"dense_ms": round(dense_ms, 4), "target_ms": round(target, 4), "formats": list(allowed),
           "costs": cost_sources(cost.profile, allowed, structured_res.fallback_layers),
           "densities": levels, "sparse_layers_pattern": only,
           "structured": {"predicted_ms": round(structured_res.predicted_ms, 4),
                          "speedup": round(dense_ms / structured_res.predicted_ms, 4), "meets_budget": True},
           "unstructured": {"predicted_ms": round(unstructured_ms, 4), "speedup": round(dense_ms / unstructured_ms, 4),
                            "meets_budget": unstructured_ms <= target * (1 + 1e-9),
                            "density": u_density if u_density is not None else "fastest per layer",
                            "layers_sparse": len(wins),
                            "sparse_layers": {o.layer: {"format": o.format, "density": o.density}
                                              for o in wins.values()}},
           "layers": layers,
           "summary": {f: sum(1 for x in layers if x["winner"] == f) for f in sorted({x["winner"] for x in layers})}}
    if u_density is None:
        m_wins, m_density = fastest, "fastest per layer"
    else:
        milder = [d for d in levels if d > u_density + 1e-9]
        m_density = min(milder) if milder else u_density
        m_wins = _wins_at(opts, m_density)
    mixed = None
    if m_wins:
        cost.factors = {i: o.factor for i, o in m_wins.items()}
        try:
            plan, res, _ = finish(prep, config, source, log=log, dense_ms=dense_ms)
            mixed = (plan, res)
            out["mixed"] = {"predicted_ms": round(res.predicted_ms, 4), "speedup": round(dense_ms / res.predicted_ms, 4),
                            "meets_budget": res.predicted_ms <= target * (1 + 1e-9), "density": m_density,
                            "importance_kept": round(res.value_kept, 3),
                            "structured_importance_kept": round(structured_res.value_kept, 3),
                            "sparse_layers": {o.layer: {"format": o.format, "density": o.density}
                                              for o in m_wins.values()}}
        except BudgetUnreachable as e:
            out["mixed"] = {"error": str(e)}
        finally:
            cost.factors = {}
    else:
        out["mixed"] = {"note": "no layer runs faster in a sparse format on this profile: mixed = structured"}
    out["winner"] = _winner(out)
    return out, mixed


def candidate_plans(structured, r: dict, mixed) -> dict:
    """Each candidate of the report `r` as a plan of its own (compress.prune.plan.PrunePlan), applied by
    `compress prune MODEL --plan FILE` like any plan:
    - structured: the structured-only plan (channels removed, every layer dense);
    - unstructured: no channel removed, the layers of the report's unstructured candidate in their formats
      (the least sparsity that meets the budget, or the fastest when none does: see `report`);
    - mixed: the mixed plan (milder sparsity, channels removed for the rest of the budget), when there is one
      that meets the budget."""
    import copy

    out = {"structured": copy.deepcopy(structured)}
    out["structured"].formats = {}
    sparse = r["unstructured"]["sparse_layers"]
    if sparse:
        u = copy.deepcopy(structured)
        u.groups, u.keep, u.formats = [], {}, dict(sorted(sparse.items()))
        u.notes = [f"unstructured-only candidate of the formats report: no channel removed; {len(sparse)} layer(s) "
                   f"in their fastest sparse format; predicted {r['unstructured']['predicted_ms']} ms "
                   f"({'meets' if r['unstructured']['meets_budget'] else 'misses'} the budget {r['target_ms']} ms)"]
        out["unstructured"] = u
    m = r.get("mixed") or {}
    if mixed is not None and m.get("meets_budget"):
        mp = copy.deepcopy(mixed[0])
        mp.formats = dict(sorted(m["sparse_layers"].items()))
        mp.notes = list(mp.notes) + [f"mixed candidate of the formats report: predicted {m['predicted_ms']} ms"]
        out["mixed"] = mp
    return out


def _winner(r: dict) -> str:
    cands = [("structured", r["structured"])]
    if r["unstructured"]["meets_budget"]:
        cands.append(("unstructured", r["unstructured"]))
    m = r.get("mixed") or {}
    if m.get("meets_budget"):
        # at the same budget the mixed plan wins when it keeps more importance than structured-only
        if m["importance_kept"] > m["structured_importance_kept"] + 1e-9:
            return "mixed"
    if len(cands) > 1 and r["unstructured"]["predicted_ms"] < r["structured"]["predicted_ms"]:
        return "unstructured"
    return "structured"


def as_json(o: FormatOption) -> dict:
    return asdict(o)
