"""PrunePlan: what to keep, as plain JSON. Applying a plan needs no tracing and no pickle."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from compress.errors import CompressError
from compress.graph.groups import ChannelGraph

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PruneConfig:
    """How to choose channels. `ratio` is the fraction of channels removed per group
    (or of all prunable channels with `global_ranking`)."""
    ratio: float
    criterion: str = "l1"
    global_ranking: bool = False
    round_to: int | None = None          # None: the target device's channel step
    ignore: tuple[str, ...] = ()
    max_group_ratio: float = 0.9         # global ranking never removes more from one group
    seed: int = 0

    def validate(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and 0.0 < self.ratio < 1.0):
            raise CompressError(f"--ratio must be in (0, 1), got {self.ratio}")
        if self.round_to is not None and self.round_to < 1:
            raise CompressError(f"--round-to must be a positive integer, got {self.round_to}")


@dataclass
class GroupPlan:
    id: int
    producers: list[str]
    channels_before: int
    channels_after: int
    classes_before: int
    keep: list[int]                      # kept class positions within the group


@dataclass
class PrunePlan:
    source: dict                         # {"model": spec, "sha256": weights hash, "input_shape": [...],
                                         #  "weights": {"path", "sha256"} of --weights, absent without it}
    config: dict
    round_to: int
    groups: list[GroupPlan]
    keep: dict[str, dict[str, list[int]]]   # parameter -> dim -> kept indices
    schema_version: int = SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)
    formats: dict[str, dict] = field(default_factory=dict)  # module -> {"format": "2:4"|"block:N", "density"}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, path: str = "plan.json") -> "PrunePlan":
        try:
            d = json.loads(text)
            if d.get("schema_version") != SCHEMA_VERSION:
                raise CompressError(f"{path}: schema_version {d.get('schema_version')} is not {SCHEMA_VERSION}")
            d["groups"] = [GroupPlan(**g) for g in d["groups"]]
            return cls(**d)
        except CompressError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise CompressError(f"{path} is not a valid prune plan ({type(e).__name__}: {e})") from None

    def param_keep(self) -> dict[str, dict[int, list[int]]]:
        return {p: {int(d): idx for d, idx in dims.items()} for p, dims in self.keep.items()}


def weights_source(path: str | None) -> dict | None:
    """What `source["weights"]` records for `--weights FILE`: its absolute path and the sha256 of the
    file's bytes (the source's `sha256` is of the loaded tensors). None without --weights. Plans
    written before this field existed simply lack the key; readers use `source.get("weights")`."""
    if not path:
        return None
    import hashlib
    import os

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": os.path.abspath(path), "sha256": h.hexdigest()}


def round_keep(n: int, target: float, step: int) -> int:
    """Kept classes: nearest multiple of `step`, at least one step, never all removed."""
    if n <= step:
        return n
    k = int(math.floor(target / step + 0.5)) * step
    return int(min(n, max(step, k)))


def class_step(width: np.ndarray, round_to: int, spread: bool = False) -> int:
    """Classes per channel step: a head of 64 channels already satisfies round_to=16. A spread group
    (one channel per conv group in each class, see Group.spread) steps by round_to classes, so every
    conv group keeps a multiple of round_to channels (the runtime's blocked layout needs it per group)."""
    w = np.unique(width)
    if len(w) != 1 or round_to <= 1:
        return 1
    if spread:
        return round_to
    return round_to // math.gcd(round_to, int(w[0]))


def select(graph: ChannelGraph, scores: dict[int, np.ndarray], config: PruneConfig, round_to: int,
           ignored_groups: set[int]) -> dict[int, np.ndarray]:
    """Return kept class positions per group (sorted)."""
    keep: dict[int, np.ndarray] = {}
    groups = [g for g in graph.groups if g.id not in ignored_groups]
    for g in graph.groups:
        keep[g.id] = np.arange(g.size)
    if config.global_ranking:
        # scores normalised per group so groups of different fan-in compare
        pool = []
        for g in groups:
            s = scores[g.id]
            mean = float(np.mean(np.abs(s))) or 1.0
            for i in range(g.size):
                pool.append((s[i] / mean, g.id, i))
        pool.sort(key=lambda t: (t[0], t[1], t[2]))
        total = sum(g.channels for g in groups)
        budget = config.ratio * total
        removed_ch = 0.0
        removed: dict[int, int] = {g.id: 0 for g in groups}
        by_id = {g.id: g for g in groups}
        for _s, gid, i in pool:
            if removed_ch >= budget:
                break
            g = by_id[gid]
            if removed[gid] + 1 > config.max_group_ratio * g.size:
                continue
            removed[gid] += 1
            removed_ch += float(g.width[i])
        targets = {g.id: g.size - removed[g.id] for g in groups}
    else:
        targets = {g.id: g.size * (1.0 - config.ratio) for g in groups}
    needs = layer_needs(graph, groups)
    for g in groups:
        step = class_step(g.width, round_to, g.spread)
        k = round_keep(g.size, targets[g.id], step)
        order = np.lexsort((np.arange(g.size), -scores[g.id]))  # stable: by score desc, then position
        keep[g.id] = cover(order, k, needs[g.id])
    return keep


def layer_needs(graph: ChannelGraph, groups) -> dict[int, list[frozenset[int]]]:
    """Per group: the class positions of every parameter dimension that holds only this group's
    classes but not all of them (a conv whose outputs are one part of a concat that a residual,
    a squeeze-excite or a GroupNorm ties to other layers). Each must keep one class, or the
    layer would be left with no channels."""
    where = {int(c): (g.id, i) for g in groups for i, c in enumerate(g.classes)}
    needs: dict[int, set[frozenset[int]]] = {g.id: set() for g in groups}
    sizes = {g.id: g.size for g in groups}
    for roots in graph.dims.values():
        hit = {where.get(int(r)) for r in np.unique(roots).tolist()}
        gids = {h[0] for h in hit if h is not None}
        if None in hit or len(gids) != 1:
            continue
        (gid,) = gids
        members = frozenset(h[1] for h in hit)
        if len(members) < sizes[gid]:
            needs[gid].add(members)
    return {gid: sorted(n, key=sorted) for gid, n in needs.items()}


def cover(order: np.ndarray, k: int, needs: list[frozenset[int]]) -> np.ndarray:
    """The best `k` classes of `order`, swapping in the best class of any layer that would lose
    all of them for the worst kept class no other layer depends on (k grows only if none can go)."""
    kept = set(order[:k].tolist())
    rank = {int(c): r for r, c in enumerate(order.tolist())}
    for need in needs:
        if need & kept:
            continue
        kept.add(min(need, key=rank.__getitem__))
        for c in sorted(kept, key=rank.__getitem__, reverse=True):
            if all((n & kept) - {c} for n in needs if n & kept):
                kept.remove(c)
                break
    return np.array(sorted(kept), dtype=np.int64)


def build_plan(graph: ChannelGraph, keep: dict[int, np.ndarray], config: PruneConfig, round_to: int,
               source: dict) -> PrunePlan:
    removed: set[int] = set()
    gplans = []
    for g in graph.groups:
        kept = keep[g.id]
        mask = np.ones(g.size, dtype=bool)
        mask[kept] = False
        removed.update(g.classes[mask].tolist())
        gplans.append(GroupPlan(
            id=g.id, producers=[f"{n}:{d}" for n, d in g.producers],
            channels_before=g.channels, channels_after=int(g.width[kept].sum()),
            classes_before=g.size, keep=[int(i) for i in kept],
        ))
    param_keep = graph.keep_indices(removed)
    keep_json = {p: {str(d): idx for d, idx in dims.items()} for p, dims in param_keep.items()}
    cfg = asdict(config)
    cfg["ignore"] = list(config.ignore)
    return PrunePlan(source=source, config=cfg, round_to=round_to, groups=gplans, keep=keep_json)


def removed_classes(graph: ChannelGraph, plan: PrunePlan) -> set[int]:
    removed: set[int] = set()
    for gp, g in zip(plan.groups, graph.groups):
        mask = np.ones(g.size, dtype=bool)
        mask[gp.keep] = False
        removed.update(g.classes[mask].tolist())
    return removed
