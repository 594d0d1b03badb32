"""Latency-aware planning: meet a latency budget on a device profile, keeping the most importance.

The unit of choice is a channel group (compress.graph): how many of its classes to keep, on the
profile's channel steps (the staircase), never below `min_keep` of the group. Every costed layer of
the profile's layer model (compress.hardware_profiles.layers) is tied to the groups that set its
input channels, output channels or heads, through the channel labels of the traced graph, so the
predicted latency of any candidate is exact under the profile without re-tracing.

The solver is a multiple-choice knapsack solved by dynamic programming over latency cost (in the
manner of HALP, Shen et al. 2022): maximise the importance kept subject to predicted latency <= budget.
A layer's cost depends on two groups (its input and its output), so the knapsack is linearised
around the current solution and re-solved, with the inner budget corrected by the exact prediction,
until the exact predicted latency sits at the budget; the best feasible solution is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from compress.errors import CompressError


class BudgetUnreachable(Exception):
    """The budget is below the predicted latency of the smallest allowed network."""

    def __init__(self, msg: str, best_ms: float) -> None:
        super().__init__(msg)
        self.best_ms = best_ms


OBJECTIVES = {
    "log": "sum_g channels_g * log(importance fraction kept) (balanced)",
    "log-latency": "sum_g latency_g * log(importance fraction kept): latency_g = the dense predicted "
                   "latency of every layer the group sizes (CostModel.carried)",
    "linear": "total normalised importance kept (HALP's)",
}


@dataclass(frozen=True)
class PlanConfig:
    """What to plan for: a budget (fraction of the dense prediction, or milliseconds) on a profile."""
    latency_budget: float | None = None
    latency_ms: float | None = None
    criterion: str = "l1"
    ignore: tuple[str, ...] = ()
    min_keep: float = 0.1          # a group keeps at least this fraction of its classes
    bins: int = 3000               # latency resolution of the dynamic programme
    iterations: int = 14
    objective: str = "log-latency" # see OBJECTIVES
    seed: int = 0

    def validate(self) -> None:
        if (self.latency_budget is None) == (self.latency_ms is None):
            raise CompressError("give exactly one of --latency-budget (a fraction of dense latency) or --latency-ms")
        if self.latency_budget is not None and not self.latency_budget > 0:
            raise CompressError(f"--latency-budget must be a positive fraction of dense latency, got {self.latency_budget}")
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise CompressError(f"--latency-ms must be positive, got {self.latency_ms}")
        if self.objective not in OBJECTIVES:
            raise CompressError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not 0 < self.min_keep <= 1:
            raise CompressError(f"min_keep must be in (0, 1], got {self.min_keep}")


@dataclass
class DimMap:
    """Channels along one tensor dimension as a function of the kept class counts:
    fixed + sum over groups of cum[g][k_g] (cum[k] = indices owned by the group's k best classes)."""
    fixed: int
    parts: list[tuple[int, np.ndarray]] = field(default_factory=list)

    def count(self, k: dict[int, int]) -> int:
        return self.fixed + sum(int(cum[k[g]]) for g, cum in self.parts)

    @property
    def groups(self) -> list[int]:
        return [g for g, _ in self.parts]


@dataclass
class CostedLayer:
    sig: object                    # LayerSig of the dense model
    cin: DimMap | None = None
    cout: DimMap | None = None
    heads: DimMap | None = None    # attention: sized by its heads (x head_fold)
    head_fold: int = 1             # what one head counts for: a product's groups per head (a window attention's
                                   # windows), an attention softmax's rows per head (queries x windows)
    per_group: int = 0             # grouped convs that lose whole groups: channels per group
    last_dim: bool = False         # memory ops on a channels-last map (N, H, W, C): cin sizes the sig's w (C)

    @property
    def groups(self) -> set[int]:
        return {g for m in (self.cin, self.cout, self.heads) if m is not None for g in m.groups}


def _channel_dim(ndim: int, op: str) -> int:
    if op in ("conv", "dwconv"):
        return 1
    if op == "linear":      # features are the last dim at any rank: (N, C), (N, T, C), channels-last (N, H, W, C)
        return ndim - 1
    return 1 if ndim in (2, 4) else ndim - 1


def _dimmap(labels: np.ndarray, ctx, where: dict[int, tuple[int, int]], rank: dict[int, np.ndarray],
            sizes: dict[int, int]) -> DimMap:
    roots = ctx.ls.roots(labels)
    fixed = 0
    per: dict[int, list[int]] = {}
    for r in roots.tolist():
        hit = where.get(int(r))
        if hit is None:
            fixed += 1
        else:
            per.setdefault(hit[0], []).append(int(rank[hit[0]][hit[1]]))
    parts = []
    for g, ranks in sorted(per.items()):
        cum = np.concatenate([[0], np.cumsum(np.bincount(ranks, minlength=sizes[g]))]).astype(np.int64)
        parts.append((g, cum))
    return DimMap(fixed, parts)


def _labels_of(ctx, node, dim: int) -> np.ndarray | None:
    lab = ctx.labels.get(node)
    if not isinstance(lab, list) or not lab or not isinstance(lab[0], np.ndarray):
        return None
    return lab[dim % len(lab)]


def costed_layers(layers: list, ep, ctx, graph, order: dict[int, np.ndarray], active: set[int]) -> list[CostedLayer]:
    """Tie each LayerSig (which names its graph node) to the groups that size it."""
    nodes = {n.name: n for n in ep.graph.nodes}
    where = {int(c): (g.id, i) for g in graph.groups if g.id in active for i, c in enumerate(g.classes)}
    rank = {}
    for g in graph.groups:
        r = np.empty(g.size, dtype=np.int64)
        r[order[g.id]] = np.arange(g.size)
        rank[g.id] = r
    sizes = {g.id: g.size for g in graph.groups}
    out = []
    for sig in layers:
        cl = CostedLayer(sig)
        node = nodes.get(getattr(sig, "node", ""))
        if node is None:
            out.append(cl)
            continue
        val = node.meta.get("val")
        ndim = val.dim() if hasattr(val, "dim") else 0
        if sig.op in ("conv", "dwconv", "linear"):
            x = node.args[1] if getattr(node.target, "__name__", "").startswith("addmm") else node.args[0]
            xv = x.meta.get("val") if hasattr(x, "meta") else None
            if xv is not None and hasattr(xv, "dim"):
                lx = _labels_of(ctx, x, _channel_dim(xv.dim(), sig.op))
                if lx is not None and len(lx) == sig.cin:
                    cl.cin = _dimmap(lx, ctx, where, rank, sizes)
            lo = _labels_of(ctx, node, _channel_dim(ndim, sig.op))
            if lo is not None and len(lo) == sig.cout:
                cl.cout = _dimmap(lo, ctx, where, rank, sizes)
            if sig.op == "conv" and sig.groups >= 4:
                cl.per_group = sig.cin // sig.groups
        elif sig.op == "matmul":
            if ndim == 4:
                lh = _labels_of(ctx, node, 1)
                if lh is not None and len(lh) and sig.groups % len(lh) == 0:   # (B x windows, heads, L, d)
                    cl.heads, cl.head_fold = _dimmap(lh, ctx, where, rank, sizes), sig.groups // len(lh)
        elif sig.fusion == "attention.softmax":   # over (B x windows, heads, L, S): rows = L x heads x windows
            lh = _labels_of(ctx, node, 1) if ndim == 4 else None
            if lh is not None and len(lh) and sig.tokens % len(lh) == 0:
                cl.heads, cl.head_fold = _dimmap(lh, ctx, where, rank, sizes), sig.tokens // len(lh)
        else:  # memory-bound: its channels are the output's channel dim
            lo = _labels_of(ctx, node, _channel_dim(ndim, sig.op)) if ndim >= 2 else None
            if lo is not None and len(lo) == sig.cin:
                cl.cin = _dimmap(lo, ctx, where, rank, sizes)
            if ndim == 4 and (cl.cin is None or not cl.cin.parts):
                # channels-last (N, H, W, C), as ConvNeXt and Swin run their norms and MLPs: the channels are the
                # last dim, which LayerSig holds as w (c, h, w = the dims after the batch)
                lw = _labels_of(ctx, node, 3)
                m = _dimmap(lw, ctx, where, rank, sizes) if lw is not None and len(lw) == sig.w else None
                if m is not None and m.parts:
                    cl.cin, cl.last_dim = m, True
        out.append(cl)
    return out


class CostModel:
    """Predicted latency of any assignment of kept class counts, from the profile's tables."""

    def __init__(self, costed: list[CostedLayer], profile, fit=None) -> None:
        self.costed = costed
        self.profile = profile
        self.fit = fit          # how this network's layers add up on the profile (DeviceProfile.fit)
        self.by_group: dict[int, list[int]] = {}
        for i, cl in enumerate(costed):
            for g in cl.groups:
                self.by_group.setdefault(g, []).append(i)
        self._cache: dict[tuple, float] = {}
        self.factors: dict[int, float] = {}     # layer index -> latency factor of its sparse format
        self.overhead = profile.overhead_ms(fit, len(costed))

    def sig_at(self, i: int, k: dict[int, int]):
        cl = self.costed[i]
        s = cl.sig
        if s.op == "memory" and cl.heads is not None:
            t = cl.heads.count(k) * cl.head_fold
            return replace(s, tokens=t) if t != s.tokens else s
        if s.op == "memory" and cl.last_dim:
            w = cl.cin.count(k)
            return replace(s, w=w) if w != s.w else s
        cin = cl.cin.count(k) if cl.cin is not None else s.cin
        if s.op == "memory":
            return replace(s, cin=cin, cout=cin) if cin != s.cin else s
        cout = cl.cout.count(k) if cl.cout is not None else s.cout
        groups = s.groups
        if s.op == "dwconv":
            groups = cin
        elif cl.per_group:
            groups = max(1, cin // cl.per_group)
        elif s.op == "matmul" and cl.heads is not None:
            groups = cl.heads.count(k) * cl.head_fold
        if (cin, cout, groups) == (s.cin, s.cout, s.groups):
            return s
        return replace(s, cin=cin, cout=cout, groups=groups)

    def layer_ms(self, i: int, k: dict[int, int]) -> float:
        cl = self.costed[i]
        key = (i,) + tuple(m.count(k) if m is not None else -1 for m in (cl.cin, cl.cout, cl.heads))
        ms = self._cache.get(key)
        if ms is None:
            sig = self.sig_at(i, k)
            ms = 0.0 if min(sig.cin, sig.cout, sig.groups) <= 0 else self.profile.layer_ms(sig, self.fit)
            self._cache[key] = ms
        return ms * self.factors.get(i, 1.0) if self.factors else ms

    def total(self, k: dict[int, int]) -> float:
        return self.overhead + sum(self.layer_ms(i, k) for i in range(len(self.costed)))

    def carried(self, g: int, k: dict[int, int]) -> float:
        """Predicted latency of every layer group g sizes (its input, output channels or heads), at k."""
        return sum(self.layer_ms(i, k) for i in self.by_group.get(g, []))

    def group_costs(self, g: int, cands: np.ndarray, k: dict[int, int]) -> np.ndarray:
        """Latency of the layers group g sizes, for each candidate count (the others held at k)."""
        idx = self.by_group.get(g, [])
        out = np.empty(len(cands))
        trial = dict(k)
        for j, c in enumerate(cands.tolist()):
            trial[g] = c
            out[j] = sum(self.layer_ms(i, trial) for i in idx)
        return out


def knapsack(costs: list[np.ndarray], values: list[np.ndarray], capacity: float, bins: int) -> list[int]:
    """Multiple-choice knapsack by dynamic programming over discretised cost: one choice per item,
    total cost <= capacity, maximum total value. Costs >= 0; each item has a zero-cost choice
    after the caller's shift. Costs are rounded up, so the result never exceeds the capacity."""
    if capacity <= 0:  # only the cheapest choices fit: the most valuable of them
        return [int(np.flatnonzero(c == c.min())[np.argmax(v[c == c.min()])]) for c, v in zip(costs, values)]
    unit = capacity / bins
    neg = -np.inf
    dp = np.full(bins + 1, neg)
    dp[0] = 0.0
    choice = np.zeros((len(costs), bins + 1), dtype=np.int32)
    for it, (c, v) in enumerate(zip(costs, values)):
        w = np.ceil(c / unit - 1e-9).astype(np.int64)
        new = np.full(bins + 1, neg)
        arg = np.zeros(bins + 1, dtype=np.int32)
        for j in range(len(c)):
            if w[j] > bins:
                continue
            cand = np.full(bins + 1, neg)
            cand[w[j]:] = dp[:bins + 1 - w[j]] + v[j]
            better = cand > new
            new[better] = cand[better]
            arg[better] = j
        dp, choice[it] = new, arg
    b = int(np.argmax(dp))
    picks = [0] * len(costs)
    for it in range(len(costs) - 1, -1, -1):
        j = int(choice[it, b])
        picks[it] = j
        b -= int(np.ceil(costs[it][j] / unit - 1e-9))
    return picks


@dataclass
class PlanResult:
    keep_counts: dict[int, int]
    dense_ms: float
    target_ms: float
    predicted_ms: float
    min_ms: float
    value_kept: float
    iterations: list[dict]
    fallback_layers: list[str]


def candidates(size: int, step: int, min_keep: float) -> np.ndarray:
    if size <= step:
        return np.array([size])
    lo = max(step, int(math.ceil(min_keep * size / step)) * step)
    c = list(range(lo, size + 1, step))
    if not c or c[-1] != size:
        c.append(size)
    return np.array(sorted(set(c)), dtype=np.int64)


def solve(model: CostModel, cands: dict[int, np.ndarray], values: dict[int, np.ndarray], target_ms: float,
          config: PlanConfig, dense: dict[int, int], log=None) -> PlanResult:
    gids = sorted(cands)
    cur = dict(dense)
    dense_ms = model.total(cur)
    smallest = {**dense, **{g: int(cands[g][0]) for g in gids}}
    min_ms = model.total(smallest)
    if min_ms > target_ms:
        raise BudgetUnreachable(
            f"the budget {target_ms:.3f} ms cannot be met: the smallest allowed network is predicted at "
            f"{min_ms:.3f} ms ({min_ms / dense_ms:.2f} of dense {dense_ms:.3f} ms)", min_ms)

    def value(k):
        return float(sum(values[g][int(np.searchsorted(cands[g], k[g]))] for g in gids))

    inner = target_ms
    best, best_v, hist = None, -np.inf, []
    for it in range(config.iterations):
        base = model.total(cur)
        costs, vals, shifts = [], [], 0.0
        for g in gids:
            c = model.group_costs(g, cands[g], cur)
            now = sum(model.layer_ms(i, cur) for i in model.by_group.get(g, []))
            d = c - now
            shifts += float(d.min())
            costs.append(d - d.min())
            vals.append(values[g])
        cap = inner - base - shifts
        picks = knapsack(costs, vals, cap, config.bins)
        new = {**cur, **{g: int(cands[g][p]) for g, p in zip(gids, picks)}}
        t = model.total(new)
        v = value(new)
        hist.append({"iteration": it, "inner_ms": round(inner, 4), "predicted_ms": round(t, 4), "value": round(v, 3)})
        if log:
            log(f"iteration {it}: predicted {t:.3f} ms (target {target_ms:.3f})")
        if t <= target_ms * (1 + 1e-9) and v > best_v:
            best, best_v = new, v
        inner += 0.8 * (target_ms - t)
        cur = new
        if best is not None and abs(t - target_ms) <= 0.005 * target_ms and t <= target_ms:
            break
    if best is None:
        best, best_v = smallest, value(smallest)
    fell = set(model.profile.fell_back([c.sig for c in model.costed]))
    names = sorted({f"{cl.sig.module or cl.sig.op} ({cl.sig.op} {cl.sig.kind})".replace(" )", ")")
                    for cl in model.costed if cl.sig in fell})
    return PlanResult(best, dense_ms, target_ms, model.total(best), min_ms, best_v, hist, names)


def channel_block(profile, target: str | None) -> int:
    """The channel step candidates sit on: the profile's conv block, else the target's default."""
    s = (profile.data.get("steps") or {}).get("conv") or {}
    if s.get("block"):
        return int(s["block"])
    from compress.hardware_profiles import channel_step

    return channel_step(target or "cpu")


def plan_model(model, example_inputs: tuple, profile, config: PlanConfig, source: dict, calib=None,
               target: str | None = None, log=None):
    """Plan a structured pruning of `model` that meets the budget on `profile`.

    Returns (PrunePlan | None, PlanResult | None, graph); None when the budget is at or above the
    dense prediction (nothing to do). Raises BudgetUnreachable when even the smallest network is slower."""
    prep = prepare(model, example_inputs, profile, config, calib=calib, target=target, log=log)
    return finish(prep, config, source, log=log)


@dataclass
class Prepared:
    graph: object
    cost: CostModel
    cands: dict
    values: dict
    order: dict
    active: set
    block: int
    dense: dict
    sparse_layers: frozenset | None = None   # modules a sparse format can be applied to (compress.lower lowers
                                             # Linear and Conv2d of groups 1 whose weight is not tied)


def prepare(model, example_inputs: tuple, profile, config: PlanConfig, calib=None, target: str | None = None,
            log=None) -> Prepared:
    """Trace, score and build the cost model: everything a solve needs."""
    from compress.graph.canonical import canonicalize
    from compress.graph.groups import build_graph_traced
    from compress.hardware_profiles.layers import extract_layers
    from compress.prune.importance import score
    from compress.prune.plan import class_step
    from compress.prune.apply import ignored_groups, trace_inputs

    config.validate()
    log = log or (lambda msg: None)
    canonicalize(model)
    log("tracing")
    graph, ep, ctx = build_graph_traced(model, trace_inputs(example_inputs))
    layers = extract_layers(model, example_inputs, ep=ep)
    ign = ignored_groups(model, graph, config.ignore)
    active = {g.id for g in graph.groups if g.id not in ign}
    log("scoring")
    scores = score(model, graph, config.criterion, calib=calib, seed=config.seed)
    order = {g.id: np.lexsort((np.arange(g.size), -scores[g.id])) for g in graph.groups}
    block = channel_block(profile, target)
    cands, values = {}, {}
    costed = costed_layers(layers, ep, ctx, graph, order, active)
    cost = CostModel(costed, profile, profile.fit(layers))
    dense = {g.id: g.size for g in graph.groups}
    # what a group's log fraction kept is weighted by: its channels, or the latency of the layers it sizes
    # (a residual stream sizes every block of its stage, an expansion one block); kept > 0 so that a
    # group that costs nothing is never cut for nothing
    weight = {g.id: max(cost.carried(g.id, dense), 1e-12) if config.objective == "log-latency" else float(g.channels)
              for g in graph.groups}
    for g in graph.groups:
        if g.id not in active:
            continue
        s = np.abs(scores[g.id])
        s = s / (float(s.mean()) or 1.0) * g.width          # per-group normalised, per channel
        cum = np.concatenate([[0.0], np.cumsum(s[order[g.id]])])
        cands[g.id] = candidates(g.size, class_step(g.width, block, g.spread), config.min_keep)
        if config.objective == "linear":
            values[g.id] = cum[cands[g.id]]
        else:
            frac = np.maximum(cum[cands[g.id]] / max(cum[-1], 1e-12), 1e-6)
            values[g.id] = weight[g.id] * np.log(frac)
    from compress.sparse.layout import target_layers, tied_layers

    tied = tied_layers(model)
    sparse_layers = frozenset(n for n in target_layers(model) if n not in tied)
    return Prepared(graph, cost, cands, values, order, active, block, dense, sparse_layers)


def finish(prep: Prepared, config: PlanConfig, source: dict, log=None, dense_ms: float | None = None):
    """Solve for the budget and turn the kept counts into a PrunePlan (see plan_model). `dense_ms`:
    the reference the budget fraction applies to (default: the cost model's dense prediction)."""
    from compress.prune.plan import build_plan, cover, layer_needs

    log = log or (lambda msg: None)
    graph, cost, cands, values, order, active, block, dense = (
        prep.graph, prep.cost, prep.cands, prep.values, prep.order, prep.active, prep.block, prep.dense)
    profile = cost.profile
    dense_ms = dense_ms if dense_ms is not None else cost.total(dense)
    target_ms = config.latency_ms if config.latency_ms is not None else config.latency_budget * dense_ms
    if target_ms >= dense_ms:
        return None, PlanResult(dense, dense_ms, target_ms, dense_ms, dense_ms, 0.0, [], []), graph
    log("solving")
    res = solve(cost, cands, values, target_ms, config, dense, log=log)
    res.dense_ms = dense_ms
    needs = layer_needs(graph, [g for g in graph.groups if g.id in active])
    keep = {}
    for g in graph.groups:
        k = res.keep_counts[g.id]
        keep[g.id] = np.arange(g.size) if k >= g.size else cover(order[g.id], k, needs.get(g.id, []))
    plan = build_plan(graph, keep, config, block, source)
    plan.notes.append(f"planned for {profile.name} (batch {profile.batch}): dense {res.dense_ms:.3f} ms -> "
                      f"predicted {res.predicted_ms:.3f} ms (target {target_ms:.3f} ms)")
    plan.notes.extend(f"kept channels through unsupported op {op} in {w}" for w, op in graph.unsupported)
    return plan, res, graph
