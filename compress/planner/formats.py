"""Structured vs unstructured per layer: which format a device profile says is faster.

Eligible layers are Linear and 1x1 convolutions (groups 1). For each, the profile gives the dense
latency (its tables) and, per sparse format, a factor:
- block-sparse (`block:B@D`): from the profile's measured sparse entries (dense vs BSR at block B and
  density D, nearest measured shape of the same layer kind);
- 2:4: from measured entries when the profile has them; on a GPU/Jetson profile without them,
  modelled as the same layer with half its reduction dimension (sparse tensor cores do 2x the math
  of dense at 2:4), labelled analytic. CPU runtimes have no 2:4 kernel: never offered there.
Densities below `min_density` are not offered: without fine-tuning they lose too much.

The report compares, at one budget: structured-only (the planner), unstructured-only (every layer
in its fastest sparse format, no channels removed) and mixed (the planner re-solved with the
sparse layers' costs scaled by their format's factor, so channels are kept where a format pays).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

TWO_FOUR_ANALYTIC = ("analytic: 2:4 modelled as the layer with half its reduction dimension "
                     "(sparse tensor cores: 2x dense math); no measured 2:4 entry in the profile")


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


def _entries(profile) -> list[dict]:
    return list(((profile.data.get("sparse") or {}).get("entries")) or [])


def _measured_factor(entries: list[dict], kind: str, fmt: str, density: float, sig) -> tuple[float, str] | None:
    """dense/sparse from the nearest measured shape of the same layer kind (or any kind)."""
    dense = {(e["layer"], e["in"], e["out"], e["rows"]): e["ms"] for e in entries if e.get("format") == "dense"}
    cands = [e for e in entries if e.get("format") == fmt and abs(float(e.get("density", 1.0)) - density) < 1e-6]
    if not cands:
        return None
    same = [e for e in cands if e["layer"] == kind] or cands
    best = min(same, key=lambda e: abs(e["in"] * e["out"] - sig.cin * sig.cout))
    d = dense.get((best["layer"], best["in"], best["out"], best["rows"]))
    if not d:
        return None
    return best["ms"] / d, f"measured: {best['layer']} {best['in']}x{best['out']} rows {best['rows']} ({fmt} @ {density})"


def options(profile, costed, allowed: tuple[str, ...], min_density: float = 0.5) -> dict[int, list[FormatOption]]:
    """Per eligible costed-layer index, the sparse formats the profile can price."""
    entries = _entries(profile)
    kind = profile.data["device"]["kind"]
    blocks = sorted({int(e["format"][3:].split("x")[0]) for e in entries if str(e.get("format", "")).startswith("bsr")})
    out: dict[int, list[FormatOption]] = {}
    for i, cl in enumerate(costed):
        sig = cl.sig
        if not eligible(sig):
            continue
        lk = "linear" if sig.op == "linear" else "conv1x1"
        dense_ms = profile.layer_ms(sig)
        shape = f"{sig.cin}->{sig.cout}" + (f" @{sig.h}x{sig.w}" if sig.op == "conv" else f" x{sig.tokens}")
        opts = []
        if "2:4" in allowed and sig.cin % 4 == 0:
            m = _measured_factor(entries, lk, "2:4", 0.5, sig)
            if m is not None:
                opts.append(FormatOption(sig.module, sig.op, shape, "2:4", 0.5, dense_ms, dense_ms * m[0], m[1]))
            elif kind in ("gpu", "jetson"):
                half = profile.layer_ms(replace(sig, cin=max(1, sig.cin // 2)))
                opts.append(FormatOption(sig.module, sig.op, shape, "2:4", 0.5, dense_ms, half, TWO_FOUR_ANALYTIC))
        if "block" in allowed:
            for b in blocks:
                if sig.cin % b or sig.cout % b:
                    continue
                for dens in sorted({float(e["density"]) for e in entries if e.get("format") == f"bsr{b}x{b}"}):
                    if dens < min_density:
                        continue
                    m = _measured_factor(entries, lk, f"bsr{b}x{b}", dens, sig)
                    if m is not None:
                        opts.append(FormatOption(sig.module, sig.op, shape, f"block:{b}", dens, dense_ms,
                                                 dense_ms * m[0], m[1]))
        if opts:
            out[i] = opts
    return out


def best(opts: list[FormatOption]) -> FormatOption:
    return min(opts, key=lambda o: (o.sparse_ms, -o.density))


def report(prep, config, source: dict, structured_res, allowed: tuple[str, ...], log=None) -> dict:
    """The structured / unstructured / mixed comparison at the structured plan's budget."""
    from compress.planner.solve import BudgetUnreachable, finish

    cost = prep.cost
    dense_ms = cost.total(prep.dense)
    opts = options(cost.profile, cost.costed, allowed)
    layers, wins = [], {}
    for i, os_ in opts.items():
        b = best(os_)
        winner = b.format if b.sparse_ms < b.dense_ms * 0.98 else "dense"
        if winner != "dense":
            wins[i] = b
        layers.append({"layer": b.layer, "op": b.op, "shape": b.shape, "dense_ms": round(b.dense_ms, 5),
                       "options": [{"format": o.format, "density": o.density, "ms": round(o.sparse_ms, 5),
                                    "source": o.source} for o in os_],
                       "winner": winner})
    unstructured_ms = dense_ms - sum(o.dense_ms - o.sparse_ms for o in wins.values())
    target = structured_res.target_ms
    out = {"dense_ms": round(dense_ms, 4), "target_ms": round(target, 4), "formats": list(allowed),
           "structured": {"predicted_ms": round(structured_res.predicted_ms, 4),
                          "speedup": round(dense_ms / structured_res.predicted_ms, 4), "meets_budget": True},
           "unstructured": {"predicted_ms": round(unstructured_ms, 4), "speedup": round(dense_ms / unstructured_ms, 4),
                            "meets_budget": unstructured_ms <= target,
                            "layers_sparse": len(wins)},
           "layers": layers,
           "summary": {f: sum(1 for x in layers if x["winner"] == f) for f in sorted({x["winner"] for x in layers})}}
    mixed = None
    if wins:
        cost.factors = {i: o.factor for i, o in wins.items()}
        try:
            plan, res, _ = finish(prep, config, source, log=log, dense_ms=dense_ms)
            mixed = (plan, res)
            out["mixed"] = {"predicted_ms": round(res.predicted_ms, 4), "speedup": round(dense_ms / res.predicted_ms, 4),
                            "meets_budget": res.predicted_ms <= target * (1 + 1e-9),
                            "importance_kept": round(res.value_kept, 3),
                            "structured_importance_kept": round(structured_res.value_kept, 3),
                            "sparse_layers": {o.layer: {"format": o.format, "density": o.density} for o in wins.values()}}
        except BudgetUnreachable as e:
            out["mixed"] = {"error": str(e)}
        finally:
            cost.factors = {}
    else:
        out["mixed"] = {"note": "no layer runs faster in a sparse format on this profile: mixed = structured"}
    out["winner"] = _winner(out)
    return out, mixed


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
