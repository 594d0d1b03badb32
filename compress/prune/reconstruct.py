"""Reconstruction after structured pruning, without fine-tuning (`compress prune --reconstruct`).

After the channels are chosen and removed, every layer that reads a pruned group (a *consumer*:
a Conv2d or Linear whose input width shrank) is refit by least squares so that, fed the pruned
model's own activations, it reproduces the dense model's output of that layer on calibration data
(ThiNet, Luo et al. 2017; the least-squares step of Chee et al. 2022), and BatchNorm running
statistics are re-estimated from the same data.

How (`reconstruct`):
- one *dense pass* (in chunks) records every consumer's and BatchNorm's dense output at sampled
  positions (`rows` per layer: spatial positions of a conv's output, tokens of a Linear's input,
  seeded), restricted to the output channels the pruned layer kept, and the dense model's output;
- one *sequential pass*: the pruned model runs on the whole calibration set as one batch; a forward
  pre-hook on each consumer builds its input rows (im2col at the sampled positions for a conv),
  accumulates the normal equations XᵀX, XᵀY (float32 products over row blocks summed in float64; all
  float64 for small layers: FLOAT64_FLOPS), solves the dampened system in float64
  (XᵀX + λ·mean(diag XᵀX)·I) Wᵀ = XᵀY and writes the new weights before the layer runs, so every
  later layer is fit on the already-reconstructed model's activations and errors do not compound.
  A layer with a bias gets its intercept refit too; a grouped conv is solved per conv group (a
  depthwise conv per channel: its removed channels went with its own filters, so it can only
  correct the drift of the channels it kept; what the removed channels carried is recovered by
  the next layer that reads them, usually a 1x1 projection);
- every 5th calibration sample is *held out*: it never enters a fit, and each refit (and each
  BatchNorm re-estimate) is kept only if it lowers the layer's output error on the held-out rows
  (λ is chosen among `DAMPS` by the same error). At the end, the whole model is kept only if its
  output error against the dense model on the held-out samples went down; otherwise every weight
  is restored ("never worse than without it"); a layer's held-out error is computed from its held-out
  rows directly (‖X Wᵀ − Y‖², not from their normal equations, which cancel);
- a 4-D image input runs every pass in channels-last (NHWC) layout when the model gives the same output
  that way (`_layout`): oneDNN's CPU convolutions are much faster in it.

`ReconstructReport.to_json()` is what summary.json records under "reconstruct".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from compress.errors import CompressError

MIN_SAMPLES = 10
DAMPS = (1e-3, 1e-2, 1e-1, 1.0)     # λ candidates, relative to the mean of diag(XᵀX); ridge towards the pruned weights
DEFAULT_SAMPLES = 1024              # --reconstruct with --data and no --calib: data:1024
MIN_GAIN = 1e-9                     # a refit must lower the held-out error by this fraction of ‖Y‖² to be kept
FLOAT64_FLOPS = 2e9                 # normal equations (held-out residuals) of up to this many multiply-adds are
                                    # formed in float64; beyond, float32 products over blocks of GRAM_STEP rows
                                    # summed in float64
GRAM_STEP = 2048


@dataclass(frozen=True)
class ReconstructConfig:
    """How to refit. `rows_per_column` x the layer's input width rows are sampled per layer, within
    [min_rows, max_rows]; every `holdout`-th sample is held out; `batchnorm`: re-estimate BatchNorm
    statistics; `downstream`: also refit every other Conv2d / Linear that runs after the first consumer
    (its input drifted; e.g. a transformer's q/k/v and MLP up projections), kept where it helps like any
    refit; `chunk`: samples per dense-pass forward and im2col step; `seed`: row sampling."""
    damps: tuple[float, ...] = DAMPS
    rows_per_column: int = 4
    min_rows: int = 4096
    max_rows: int = 16384
    holdout: int = 5
    batchnorm: bool = True
    downstream: bool = True
    chunk: int = 32
    seed: int = 0

    def validate(self) -> None:
        if not self.damps or any(not (d > 0) for d in self.damps):
            raise CompressError(f"reconstruction damping must be positive, got {self.damps}")
        if self.holdout < 2:
            raise CompressError(f"reconstruction holdout must be >= 2 (every N-th sample), got {self.holdout}")
        if not (1 <= self.min_rows <= self.max_rows):
            raise CompressError(f"reconstruction rows: need 1 <= min_rows <= max_rows, got {self.min_rows}, {self.max_rows}")


@dataclass
class ReconstructReport:
    samples: int
    fit_samples: int
    heldout_samples: int
    layers: list[dict]
    batchnorm: list[dict]
    output_error_before: float
    output_error_after: float
    agreement_before: float | None
    agreement_after: float | None
    kept: bool
    seconds: float
    groups: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def refit(self) -> int:
        return sum(1 for r in self.layers if r["refit"])

    def to_json(self) -> dict:
        return {
            "samples": self.samples, "fit_samples": self.fit_samples, "heldout_samples": self.heldout_samples,
            "kept": self.kept, "layers_refit": self.refit, "layers": self.layers,
            "batchnorm_reestimated": sum(1 for b in self.batchnorm if b["reestimated"]),
            "batchnorm": self.batchnorm, "groups": self.groups,
            "output_error_before": self.output_error_before, "output_error_after": self.output_error_after,
            "agreement_before": self.agreement_before, "agreement_after": self.agreement_after,
            "seconds": round(self.seconds, 3), "notes": self.notes}

    def text(self) -> str:
        cons = [r for r in self.layers if r.get("role", "consumer") == "consumer"]
        down = [r for r in self.layers if r.get("role") == "downstream"]
        s = (f"reconstruction on {self.fit_samples} calibration samples ({self.heldout_samples} held out): "
             f"{sum(r['refit'] for r in cons)}/{len(cons)} consumer layer(s) refit"
             + (f" and {sum(r['refit'] for r in down)}/{len(down)} downstream" if down else "") + ", "
             f"{sum(1 for b in self.batchnorm if b['reestimated'])}/{len(self.batchnorm)} BatchNorm re-estimated; "
             f"held-out output error vs dense {self.output_error_before:.4g} -> {self.output_error_after:.4g}")
        if self.agreement_before is not None:
            s += f" (top-1 agreement {self.agreement_before:.4f} -> {self.agreement_after:.4f})"
        if not self.kept:
            s += "; not kept (it did not lower the held-out output error), the pruned weights are unchanged"
        return s


# --------------------------------------------------------------------------- layers


@dataclass
class _Layer:
    name: str
    module: nn.Module                       # in the pruned model
    kind: str                               # conv | linear | bn
    out_keep: torch.Tensor | None           # dense output channels the pruned layer kept (None: all)
    rows_wanted: int
    order: int
    S: int = 0                              # positions per sample (conv: H*W of the output; linear: tokens)
    pos: torch.Tensor | None = None         # (N, P) sampled positions
    target: torch.Tensor | None = None      # (N, P, C) dense output at the positions
    calls: int = 0
    stats: list | None = None                # bn: [sum, sum of squares, count] of the dense input (fit samples)
    skip: str | None = None
    record: dict = field(default_factory=dict)

    @property
    def groups(self) -> int:
        return self.module.groups if self.kind == "conv" else 1


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Conv2d):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    return None


def _in_width(m: nn.Module) -> int:
    return m.in_channels if isinstance(m, nn.modules.conv._ConvNd) else m.weight.shape[-1]


def _conv_skip(m: nn.Conv2d) -> str | None:
    if isinstance(m.padding, str):
        return f"padding={m.padding!r} (only numeric padding is refit)"
    if m.padding_mode != "zeros":
        return f"padding_mode={m.padding_mode!r} (only zero padding is refit)"
    return None


def consumers(dense: nn.Module, pruned: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[dict]]:
    """The layers of `pruned` whose input width shrank: (name, module) of each Conv2d / Linear, and a
    record for each other module whose weight lost input columns (it cannot be refit)."""
    dmods = dict(dense.named_modules())
    out, cannot = [], []
    for name, m in pruned.named_modules():
        d = dmods.get(name)
        if d is None or type(d) is not type(m):
            continue
        w, dw = getattr(m, "weight", None), getattr(d, "weight", None)
        if not isinstance(w, torch.Tensor) or not isinstance(dw, torch.Tensor) or w.dim() < 2:
            continue
        k = _kind(m)
        if k is not None:
            if _in_width(m) != _in_width(d):
                out.append((name, m))
        elif tuple(w.shape[1:]) != tuple(dw.shape[1:]) and not isinstance(m, nn.Embedding):
            cannot.append({"layer": name, "type": type(m).__name__, "refit": False,
                           "reason": f"cannot be refit: {type(m).__name__} (only Conv2d and Linear layers are)"})
    return out, cannot


def _as_rows(t: torch.Tensor, kind: str) -> torch.Tensor:
    """A layer output (or a BatchNorm input) as (n, S, C)."""
    if kind == "linear":
        return t.reshape(t.shape[0], -1, t.shape[-1])
    if t.dim() == 2:
        return t.unsqueeze(1)
    return t.flatten(2).transpose(1, 2)


def _im2col_at(m: nn.Conv2d, x: torch.Tensor, pos: torch.Tensor, chunk: int, pad: tuple | None = None) -> torch.Tensor:
    """The conv's input patches at output positions `pos` (n, P) only: (n, P, Cin*kh*kw), in the column
    order of weight.flatten(1) (channel-major, then kernel row, column). `pad`: (left, right, top,
    bottom) zeros added before the conv's own padding (TensorFlow-style "same" padding done in a
    subclass's forward). Raises _Mismatch when the output grid does not have pos's positions."""
    n, C, H, W = x.shape
    kh, kw = m.kernel_size
    (sh, sw), (dh, dw), (ph, pw) = m.stride, m.dilation, m.padding
    left, right, top, bottom = pad or (0, 0, 0, 0)
    Ho = (H + top + bottom + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + left + right + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if Ho < 1 or Wo < 1 or int(pos.max()) >= Ho * Wo:
        raise _Mismatch()
    ky = torch.arange(kh) * dh
    kx = torch.arange(kw) * dw
    padded = (left, right, top, bottom, ph, pw) != (0,) * 6
    parts = []
    for i in range(0, n, chunk):
        xc = x[i:i + chunk]
        p = pos[i:i + chunk]
        rows = (p // Wo * sh)[..., None] + ky - (top + ph)               # (n, P, kh), in x's own rows
        cols = (p % Wo * sw)[..., None] + kx - (left + pw)               # (n, P, kw)
        b = torch.arange(len(p))[:, None, None, None]
        if padded:                # the zero padding, without a padded copy of x: clamp, then zero what is outside
            inside = (((rows >= 0) & (rows < H))[..., :, None] & ((cols >= 0) & (cols < W))[..., None, :])
            rows, cols = rows.clamp(0, H - 1), cols.clamp(0, W - 1)
        patch = xc[b, :, rows[..., :, None], cols[..., None, :]]         # (n, P, kh, kw, C)
        if padded:
            patch = torch.where(inside[..., None], patch, torch.zeros((), dtype=patch.dtype))
        parts.append(patch.permute(0, 1, 4, 2, 3).reshape(len(p), p.shape[1], -1).float())
    return torch.cat(parts, 0)


class _Mismatch(Exception):
    """The rebuilt input rows do not give the layer's output."""


def _same_pad(m: nn.Conv2d, x: torch.Tensor) -> tuple[int, int, int, int] | None:
    """TensorFlow "same" padding of `m` for input `x` (None when there is none to add)."""
    out = []
    for size, k, s, d in zip(x.shape[-2:], m.kernel_size, m.stride, m.dilation):
        o = math.ceil(size / s)
        p = max((o - 1) * s + (k - 1) * d + 1 - size, 0)
        out.append((p // 2, p - p // 2))
    (t, b), (l, r) = out
    return (l, r, t, b) if (l, r, t, b) != (0, 0, 0, 0) else None


def _rows_checked(layer: "_Layer", x: torch.Tensor, W0: torch.Tensor) -> torch.Tensor:
    """The layer's input rows at its sampled positions, checked against what its own forward computes
    on a few samples (a subclass may pad or transform its input); raises _Mismatch."""
    m = layer.module
    k = min(4, x.shape[0])
    with torch.no_grad():
        y = _as_rows(type(m).forward(m, x[:k]), layer.kind).float()
    y = torch.gather(y, 1, layer.pos[:k].unsqueeze(-1).expand(-1, -1, y.shape[2]))
    tries = [None]
    if layer.kind == "conv":
        same = _same_pad(m, x)
        if same is not None:
            tries.append(same)
    for pad in tries:
        try:
            if layer.kind == "conv":
                X = _im2col_at(m, x.detach(), layer.pos, _conv_chunk(m, x), pad)
            else:
                xr = x.detach().reshape(x.shape[0], -1, x.shape[-1])
                if int(layer.pos.max()) >= xr.shape[1]:
                    raise _Mismatch()
                X = torch.gather(xr, 1, layer.pos.unsqueeze(-1).expand(-1, -1, xr.shape[2])).float()
        except (_Mismatch, RuntimeError):        # no such rows (RuntimeError: unfold of a too small input)
            continue
        G = layer.groups
        Xg = X[:k].reshape(-1, G, X.shape[2] // G).permute(1, 0, 2).double()
        if W0.shape[1] != Xg.shape[2]:
            Xg = torch.cat([Xg, torch.ones(*Xg.shape[:2], 1, dtype=Xg.dtype)], 2)
        pred = torch.bmm(Xg, W0).permute(1, 0, 2).reshape(y.shape)
        scale = float(y.abs().max()) or 1.0
        if float((pred - y).abs().max()) <= 1e-3 * scale:
            return X
    raise _Mismatch()


def _conv_chunk(m: nn.Conv2d, x: torch.Tensor, budget: float = 2e8) -> int:
    return max(1, int(budget // max(x[0].numel() * 4 * 2, 1)))


# --------------------------------------------------------------------------- least squares


def _gram(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """XᵀX, XᵀY, per-group sum of Y² in float64 for X (G, R, d), Y (G, R, o), accumulated over row
    blocks (products in float64, or in float32 for all but the smallest layers: FLOAT64_FLOPS)."""
    G, R, d = X.shape
    A = torch.zeros(G, d, d, dtype=torch.float64)
    B = torch.zeros(G, d, Y.shape[2], dtype=torch.float64)
    yy = torch.zeros(G, dtype=torch.float64)
    wide = G * R * d * (d + Y.shape[2]) > FLOAT64_FLOPS   # products in float32 beyond this, summed in float64
    step = GRAM_STEP
    for i in range(0, R, step):
        x, y = X[:, i:i + step], Y[:, i:i + step]
        if not wide:
            x, y = x.double(), y.double()
        A += torch.bmm(x.transpose(1, 2), x).double()
        B += torch.bmm(x.transpose(1, 2), y).double()
        yy += y.double().pow(2).sum((1, 2))
    return A, B, yy


def _residual_error(X: torch.Tensor, Y: torch.Tensor, Wts: list[torch.Tensor]) -> list[float]:
    """Σ ||X Wt - Y||² for each Wt (G, d, o) of `Wts`, from the rows themselves (X (G, R, d), Y (G, R, o)):
    products in float64 for small layers, else float32 over row blocks, squares summed in float64."""
    G, R, d = X.shape
    o = Y.shape[2]
    exact = G * R * d * o * len(Wts) <= FLOAT64_FLOPS
    dt = torch.float64 if exact else torch.float32
    W = [w.to(dt) for w in Wts]
    out = [0.0] * len(Wts)
    for i in range(0, R, GRAM_STEP):
        x, y = X[:, i:i + GRAM_STEP].to(dt), Y[:, i:i + GRAM_STEP].to(dt)
        for j, w in enumerate(W):
            out[j] += float((torch.bmm(x, w) - y).double().pow(2).sum())
    return out


def solve(A: torch.Tensor, B: torch.Tensor, damp: float, free: int | None = None,
          prior: torch.Tensor | None = None) -> torch.Tensor:
    """Wt = (A + λI) \\ (B + λ·prior) per group, λ = damp·mean(diag A) (A: (G, d, d) float64): ridge
    regression towards `prior` (the pruned layer's own weights: with little data the refit stays near
    them; None: towards zero). The last `free` rows (an intercept) are not dampened."""
    d = A.shape[-1]
    n = d if free is None else d - free
    diag = torch.diagonal(A, dim1=1, dim2=2)[:, :n]
    lam = damp * diag.mean(1).clamp(min=1e-12)
    Ad = A.clone()
    idx = torch.arange(n)
    Ad[:, idx, idx] += lam[:, None]
    if free:
        Ad[:, n:, n:] += 1e-12 * torch.eye(free, dtype=A.dtype)
    if prior is not None:
        P = prior.clone()
        P[:, n:] = 0
        B = B + lam[:, None, None] * P
    try:
        L, info = torch.linalg.cholesky_ex(Ad)
        if int(info.max()) == 0:
            return torch.cholesky_solve(B, L)
    except RuntimeError:
        pass
    return torch.linalg.lstsq(Ad, B).solution


# --------------------------------------------------------------------------- passes


def _cat_batches(batches) -> tuple:
    if not batches:
        raise CompressError("--reconstruct needs calibration data: --calib FILE.npy|data:N (with --data)")
    k = len(batches[0])
    if any(len(b) != k for b in batches):
        raise CompressError("calibration batches have different numbers of inputs")
    out = []
    for j in range(k):
        shapes = {tuple(b[j].shape[1:]) for b in batches}
        if len(shapes) > 1:
            raise CompressError(f"calibration samples differ in shape ({sorted(shapes)[:2]}); --reconstruct "
                                "runs all of them as one batch")
        out.append(torch.cat([b[j] for b in batches], 0))
    return tuple(out)


def _flat(out) -> list[torch.Tensor]:
    from compress.prune.apply import _flat as flat
    return flat(out)


def _nhwc(t):
    return t.contiguous(memory_format=torch.channels_last) if (
        isinstance(t, torch.Tensor) and t.dim() == 4 and t.is_floating_point()) else t


@torch.no_grad()
def _layout(model: nn.Module, inputs: tuple):
    """How to lay out the model's inputs for the passes: channels-last for 4-D image inputs (the whole
    network then runs in NHWC, which oneDNN's CPU convolutions run much faster than NCHW) where the model
    takes it and computes the same thing on two samples (a forward that .view()s an activation may not);
    else as given. Returns a function of one input tensor."""
    if not any(_nhwc(t) is not t for t in inputs):
        return lambda t: t
    probe = tuple(t[:2] for t in inputs)
    try:
        a = _flat(model(*probe))
        b = _flat(model(*(_nhwc(t) for t in probe)))
    except Exception:           # noqa: BLE001 - any failure in NHWC: run as given
        return lambda t: t
    same = len(a) == len(b) and all(
        u.shape == v.shape and (float((u.double() - v.double()).abs().max()) <= 1e-3 * (float(u.abs().max()) or 1.0)
                                if u.is_floating_point() else torch.equal(u, v)) for u, v in zip(a, b))
    return _nhwc if same else (lambda t: t)


def _output_error(outs: list[list[torch.Tensor]], ref: list[list[torch.Tensor]]) -> tuple[float, float | None]:
    """Relative squared error Σ||o - r||² / Σ||r||² over every output, and top-1 agreement of 2-D outputs."""
    num = den = 0.0
    agree = total = 0
    for o, r in zip(outs, ref):
        for a, b in zip(o, r):
            a, b = a.double(), b.double()
            num += float((a - b).pow(2).sum())
            den += float(b.pow(2).sum())
            if b.dim() == 2 and b.shape[1] > 1:
                agree += int((a.argmax(1) == b.argmax(1)).sum())
                total += b.shape[0]
    return num / max(den, 1e-30), (agree / total) if total else None


def _keep_index(keep: dict, name: str, kind: str) -> torch.Tensor | None:
    for p in ("weight", "running_mean"):
        idx = keep.get(f"{name}.{p}" if name else p, {}).get(0)
        if idx is not None:
            return torch.as_tensor(idx, dtype=torch.long)
    return None


def _accumulate_stats(layer: _Layer, x: torch.Tensor, rows: torch.Tensor | None = None,
                      keep: torch.Tensor | None = None) -> None:
    """Add a BatchNorm input's per-channel sum, sum of squares and count (float64) to `layer.stats`,
    over the samples `rows` (bool mask; None: all) and the channels `keep` (None: all)."""
    n, C = x.shape[:2]
    per = x.reshape(n, C, -1)                                 # a view (NCHW or NHWC)
    s1 = per.sum(2)                                           # (n, C): float32 within one sample
    s2 = torch.empty_like(s1)
    step = max(1, (1 << 20) // max(per[0].numel(), 1))       # squares of a few samples at a time, in cache
    buf = torch.empty_like(per[:step])
    for i in range(0, n, step):
        q = buf[:min(step, n - i)]
        torch.mul(per[i:i + step], per[i:i + step], out=q)
        s2[i:i + step] = q.sum(2)
    if rows is not None:
        s1, s2 = s1[rows], s2[rows]
    if keep is not None:
        s1, s2 = s1.index_select(1, keep), s2.index_select(1, keep)
    if layer.stats is None:
        layer.stats = [torch.zeros(s1.shape[1], dtype=torch.float64), torch.zeros(s1.shape[1], dtype=torch.float64), 0]
    layer.stats[0] += s1.double().sum(0)
    layer.stats[1] += s2.double().sum(0)
    layer.stats[2] += s1.shape[0] * per.shape[2]


def _moments(stats) -> tuple[torch.Tensor, torch.Tensor, int]:
    s, ss, n = stats
    mean = s / max(n, 1)
    return mean, (ss / max(n, 1) - mean.pow(2)).clamp(min=0), n


@torch.no_grad()
def _dense_pass(dense: nn.Module, layers: dict[str, _Layer], inputs: tuple, check: torch.Tensor,
                cfg: ReconstructConfig, fmt=lambda t: t) -> list[list[torch.Tensor]]:
    """Record the dense outputs of every layer at sampled positions (and the input statistics of every
    BatchNorm over the fit samples); the dense model's output on the held-out samples."""
    N = inputs[0].shape[0]
    dmods = dict(dense.named_modules())
    fitmask = torch.ones(N, dtype=torch.bool)
    fitmask[check] = False
    state = {"i0": 0, "fit": fitmask}
    handles = []

    def hook(layer: _Layer):
        def fn(mod, args, out):
            layer.calls += 1
            if layer.calls > 1 and state["first"]:
                return
            y = out.detach()
            y = y.reshape(y.shape[0], -1, y.shape[-1]).transpose(1, 2) if layer.kind == "linear" else (
                y.reshape(y.shape[0], y.shape[1], -1))                       # (n, C, S)
            n, _, S = y.shape
            if layer.pos is None:
                layer.S = S
                P = min(S, max(1, math.ceil(layer.rows_wanted / N)))
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * layer.order + 17)
                layer.pos = torch.rand(N, S, generator=g).argsort(1)[:, :P].sort(1).values
            if S != layer.S:
                layer.skip = layer.skip or f"its output size changes between calls ({layer.S} vs {S} positions)"
                return
            p = layer.pos[state["i0"]:state["i0"] + n]
            sel = torch.gather(y, 2, p.unsqueeze(1).expand(-1, y.shape[1], -1)).transpose(1, 2)    # (n, P, C)
            if layer.out_keep is not None:
                sel = sel.index_select(2, layer.out_keep)
            if layer.target is None:
                layer.target = torch.empty(N, p.shape[1], sel.shape[2])
            layer.target[state["i0"]:state["i0"] + n] = sel.float()
            if layer.kind == "bn":
                _accumulate_stats(layer, args[0].detach(), state["fit"][state["i0"]:state["i0"] + n], layer.out_keep)
        return fn

    for layer in layers.values():
        handles.append(dmods[layer.name].register_forward_hook(hook(layer)))
    outs = []
    chk = set(check.tolist())
    try:
        for i in range(0, N, cfg.chunk):
            state["i0"], state["first"] = i, i == 0
            o = _flat(dense(*(fmt(t[i:i + cfg.chunk]) for t in inputs)))
            if i == 0:
                for layer in layers.values():
                    if layer.calls != 1 and not layer.skip:
                        layer.skip = (f"it runs {layer.calls} times per forward (weights shared between calls)"
                                      if layer.calls else "it does not run on the calibration data")
            rows = [j - i for j in range(i, min(i + cfg.chunk, N)) if j in chk]
            if rows:
                outs.append([t[rows].float() for t in o])
    finally:
        for h in handles:
            h.remove()
    return outs


@torch.no_grad()
def _outputs_on(model: nn.Module, inputs: tuple, idx: torch.Tensor, chunk: int,
                fmt=lambda t: t) -> list[list[torch.Tensor]]:
    sub = tuple(fmt(t[idx]) for t in inputs)
    return [[t.float() for t in _flat(model(*(s[i:i + chunk] for s in sub)))]
            for i in range(0, len(idx), chunk)]


def _refit_layer(layer: _Layer, x: torch.Tensor, fit: torch.Tensor, check: torch.Tensor,
                 cfg: ReconstructConfig) -> None:
    """Pre-hook body: fit `layer` on input `x` (the whole calibration batch) and write its weights
    if the held-out error goes down."""
    m = layer.module
    w = m.weight
    Y = layer.target
    G = layer.groups
    o = Y.shape[2] // G
    d = w[0].numel()
    bias = getattr(m, "bias", None)
    rec = layer.record
    W0 = w.detach().double().reshape(G, o, d).transpose(1, 2)          # (G, d, o)
    if bias is not None:
        W0 = torch.cat([W0, bias.detach().double().reshape(G, 1, o)], 1)
    try:
        X = _rows_checked(layer, x, W0)
    except _Mismatch:
        rec.update({"refit": False, "reason": f"cannot be refit: its forward ({type(m).__name__}) does not compute "
                    "a plain convolution / matrix product of its input"})
        return

    def grouped(T, width, rows_of):
        Tn = T[rows_of].reshape(-1, G, width)
        return Tn.permute(1, 0, 2).contiguous()

    Xf, Xc = grouped(X, d, fit), grouped(X, d, check)
    if bias is not None:
        Xf = torch.cat([Xf, torch.ones(*Xf.shape[:2], 1)], 2)
        Xc = torch.cat([Xc, torch.ones(*Xc.shape[:2], 1)], 2)
    Yf, Yc = grouped(Y, o, fit), grouped(Y, o, check)
    Af, Bf, _ = _gram(Xf, Yf)
    del Xf, Yf
    den = max(float(Yc.double().pow(2).sum()), 1e-30)
    cands = []
    for lam in cfg.damps:
        Wt = solve(Af, Bf, lam, 1 if bias is not None else None, prior=W0)
        if torch.isfinite(Wt).all():
            cands.append((lam, Wt))
    errs = _residual_error(Xc, Yc, [W0] + [Wt for _, Wt in cands])     # held-out error of each, one pass
    e0 = errs[0]
    best = None
    for e, (lam, Wt) in zip(errs[1:], cands):
        if best is None or e < best[0]:
            best = (e, lam, Wt)
    rec.update({"rows_fit": int(len(fit) * layer.pos.shape[1]), "rows_heldout": int(len(check) * layer.pos.shape[1]),
                "error_before": e0 / den})
    if best is None:
        rec.update({"error_after": e0 / den, "refit": False, "reason": "the least-squares system has no finite solution"})
        return
    e1, lam, Wt = best
    rec["damp"] = lam
    if not e1 < e0 - MIN_GAIN * den:          # nothing gained (an exact layer: leave its weights alone)
        rec.update({"error_after": e0 / den, "refit": False,
                    "reason": f"the refit did not lower the held-out error ({e1 / den:.4g})"})
        return
    Wn = Wt[:, :d, :].transpose(1, 2).reshape(w.shape)
    w.data.copy_(Wn.to(w.dtype))
    if bias is not None:
        bias.data.copy_(Wt[:, d, :].reshape(-1).to(bias.dtype))
    rec.update({"error_after": e1 / den, "refit": True})


def _reestimate_bn(layer: _Layer, x: torch.Tensor, fit: torch.Tensor, check: torch.Tensor) -> None:
    """Pre-hook body of a BatchNorm: the statistics of its input over the fit samples, against those
    the dense model's BatchNorm saw on the same samples. Candidates: the running mean moved by the
    shift of the mean, and also the running variance scaled by the ratio of variances (with running
    statistics that are the data's own, both are plain re-estimation); the one (or none) with the
    least error against the dense output on the held-out rows is kept."""
    m = layer.module
    rec = layer.record
    C = x.shape[1]
    if layer.stats is None or layer.stats[2] == 0:
        rec.update({"reestimated": False, "reason": "no dense statistics"})
        return
    fset = torch.zeros(x.shape[0], dtype=torch.bool)
    fset[fit] = True
    own = _Layer(layer.name, m, "bn", None, 0, 0)
    for i in range(0, x.shape[0], 64):
        _accumulate_stats(own, x[i:i + 64].detach(), fset[i:i + 64])
    mu_p, var_p, cnt = _moments(own.stats)
    mu_d, var_d, _ = _moments(layer.stats)
    rm, rv = m.running_mean.double(), m.running_var.double()
    ratio = torch.where(var_d > 1e-12, var_p / var_d.clamp(min=1e-12), torch.ones_like(var_p))
    cands = {"mean": (rm + (mu_p - mu_d), rv), "mean+var": (rm + (mu_p - mu_d), rv * ratio)}
    xf = x.detach().reshape(x.shape[0], C, -1)                          # a view, NCHW or NHWC
    xr = xf[check[:, None], :, layer.pos[check]].double()                # (held-out, P, C)
    tgt = layer.target[check].double()
    wgt = m.weight.detach().double() if m.weight is not None else torch.ones(C, dtype=torch.float64)
    b = m.bias.detach().double() if m.bias is not None else torch.zeros(C, dtype=torch.float64)

    def err(mu, v):
        return float(((xr - mu) / torch.sqrt(v + m.eps) * wgt + b - tgt).pow(2).sum())

    den = max(float(tgt.pow(2).sum()), 1e-30)
    e0 = err(rm, rv)
    best = min(((err(*mv), k) for k, mv in cands.items()), key=lambda t: t[0])
    better = best[0] < e0 - MIN_GAIN * den
    rec.update({"error_before": e0 / den, "error_after": (best[0] if better else e0) / den, "reestimated": better})
    if better:
        mu, v = cands[best[1]]
        rec["how"] = best[1]
        m.running_mean.copy_(mu.to(m.running_mean.dtype))
        m.running_var.copy_(v.to(m.running_var.dtype))


@torch.no_grad()
def _sequential_pass(pruned: nn.Module, layers: dict[str, _Layer], inputs: tuple, fit: torch.Tensor,
                     check: torch.Tensor, cfg: ReconstructConfig, log, fmt=lambda t: t) -> list[list[torch.Tensor]]:
    """The pruned model on the whole calibration set at once; each layer is refit (or its statistics
    re-estimated) in a pre-hook just before it runs. Returns the model's output on the held-out samples."""
    state = {"consumer_seen": False}
    handles = []

    def pre(layer: _Layer):
        def fn(mod, args):
            if layer.skip:
                return
            x = args[0]
            if layer.kind == "bn":
                if state["consumer_seen"]:
                    _reestimate_bn(layer, x, fit, check)
                else:
                    layer.record.update({"reestimated": False, "reason": "no refit or pruned input before it"})
                return
            if layer.record.get("role") == "downstream":
                if not state["consumer_seen"]:
                    layer.record["upstream"] = True      # runs before any change: nothing to correct
                    return
            else:
                state["consumer_seen"] = True
            log(f"refit {layer.name}")
            _refit_layer(layer, x, fit, check, cfg)
        return fn

    for layer in layers.values():
        handles.append(layer.module.register_forward_pre_hook(pre(layer)))
    try:
        out = _flat(pruned(*(fmt(t) for t in inputs)))
    finally:
        for h in handles:
            h.remove()
    return [[t[check].float() for t in out]]


def _group_table(graph, layers: list[dict]) -> list[dict]:
    """Per pruned group: the consumer layers reading it and their summed held-out error before/after."""
    if graph is None:
        return []
    by_class = {}
    for g in graph.groups:
        for c in g.classes.tolist():
            by_class[int(c)] = g.id
    table: dict[int, dict] = {}
    for rec in layers:
        if "error_before" not in rec or rec.get("role") != "consumer":
            continue
        gids = set()
        for dim in (1, 0):
            roots = graph.dims.get((f"{rec['layer']}.weight", dim))
            if roots is not None:
                gids |= {by_class[int(r)] for r in np.unique(roots) if int(r) in by_class}
            if gids:
                break
        for gid in sorted(gids):
            t = table.setdefault(gid, {"group": gid, "producers": sorted({p[0].rsplit(".", 1)[0] for p in
                                                                          graph.groups[gid].producers}),
                                       "layers": [], "_b": 0.0, "_a": 0.0})
            t["layers"].append(rec["layer"])
            t["_b"] += rec["error_before"]
            t["_a"] += rec["error_after"]
    out = []
    for gid in sorted(table):
        t = table[gid]
        n = len(t["layers"])
        out.append({"group": gid, "producers": t["producers"], "layers": t["layers"],
                    "error_before": t.pop("_b") / n, "error_after": t.pop("_a") / n})
    return out


def reconstruct(dense: nn.Module, pruned: nn.Module, keep: dict, batches, config: ReconstructConfig = ReconstructConfig(),
                graph=None, log=None) -> ReconstructReport:
    """Refit `pruned` (in place) towards `dense` on calibration `batches` (tuples of model inputs).
    `keep`: the plan's kept indices per parameter dimension (PrunePlan.param_keep()); `graph`: the
    ChannelGraph, for the per-group table (optional). Raises CompressError on unusable calibration data."""
    import time

    config.validate()
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    inputs = _cat_batches(batches)
    N = int(inputs[0].shape[0])
    if N < MIN_SAMPLES:
        raise CompressError(f"--reconstruct needs at least {MIN_SAMPLES} calibration samples, got {N}")
    idx = torch.arange(N)
    check = idx[idx % config.holdout == config.holdout - 1]
    fit = idx[idx % config.holdout != config.holdout - 1]
    dense.eval()
    pruned.eval()
    found, cannot = consumers(dense, pruned)
    layers: dict[str, _Layer] = {}
    order = 0
    for name, m in found:
        k = _kind(m)
        width = m.weight[0].numel() + (1 if getattr(m, "bias", None) is not None else 0)
        rows = min(config.max_rows, max(config.min_rows, config.rows_per_column * width))
        lay = _Layer(name, m, k, _keep_index(keep, name, k), rows, order)
        lay.record = {"layer": name, "role": "consumer", "type": _describe(m), "in_before": None,
                      "in_after": _in_width(m)}
        if k == "conv":
            lay.skip = _conv_skip(m)
        layers[name] = lay
        order += 1
    if config.downstream:
        for name, m in pruned.named_modules():
            k = _kind(m)
            if k is None or name in layers or (k == "conv" and _conv_skip(m)):
                continue
            width = m.weight[0].numel() + (1 if getattr(m, "bias", None) is not None else 0)
            rows = min(config.max_rows, max(config.min_rows, config.rows_per_column * width))
            lay = _Layer(name, m, k, _keep_index(keep, name, k), rows, order)
            lay.record = {"layer": name, "role": "downstream", "type": _describe(m), "in_before": None,
                          "in_after": _in_width(m)}
            layers[name] = lay
            order += 1
    if config.batchnorm:
        for name, m in pruned.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None:
                lay = _Layer(name, m, "bn", _keep_index(keep, name, "bn"), config.min_rows, order)
                lay.record = {"layer": name}
                layers[name] = lay
                order += 1
    dmods = dict(dense.named_modules())
    for lay in layers.values():
        if lay.kind != "bn":
            lay.record["in_before"] = _in_width(dmods[lay.name])
    notes = [] if found else ["nothing to refit: no Conv2d or Linear layer reads a pruned group"]
    snapshot = {k: v.detach().clone() for k, v in pruned.state_dict(keep_vars=False).items()}
    log("reconstruct: dense pass")
    fmt = _layout(dense, inputs)
    ref = _dense_pass(dense, layers, inputs, check, config, fmt)
    before = _outputs_on(pruned, inputs, check, config.chunk, fmt)
    e_before, a_before = _output_error(before, _regroup(ref, before))
    log("reconstruct: sequential refit")
    after = _sequential_pass(pruned, layers, inputs, fit, check, config, log, fmt)
    e_after, a_after = _output_error(after, _regroup(ref, after))
    kept = e_after < e_before
    if not kept:
        pruned.load_state_dict(snapshot)
        notes.append(f"reconstruction reverted: the held-out output error did not go down "
                     f"({e_before:.4g} -> {e_after:.4g})")
    recs = []
    for lay in layers.values():
        if lay.kind == "bn" or lay.record.get("upstream") or (lay.record.get("role") == "downstream" and (
                lay.skip or "error_before" not in lay.record)):
            continue
        r = lay.record
        if lay.skip:
            r.update({"refit": False, "reason": f"not refit: {lay.skip}"})
        r.setdefault("refit", False)
        if lay.module.groups > 1 if lay.kind == "conv" else False:
            if lay.module.groups == lay.module.in_channels:
                r["note"] = ("depthwise: its removed input channels went with its own filters; refit per kept "
                             "channel against upstream drift only, the next layer reading them recovers the rest")
        recs.append(r)
    for r in cannot:
        recs.append(r)
        notes.append(f"layer {r['layer']} not refit: {r['reason']}")
    for r in recs:                            # consumers that could not be refit, by name and reason
        why = r.get("reason", "")
        if r.get("role") == "consumer" and (why.startswith("not refit") or why.startswith("cannot be refit")):
            notes.append(f"layer {r['layer']} {why}")
    bns = [dict(l.record, reestimated=l.record.get("reestimated", False)) for l in layers.values() if l.kind == "bn"]
    if not kept:
        for r in recs:
            r["refit"] = False
        for b in bns:
            b["reestimated"] = False
    return ReconstructReport(
        samples=N, fit_samples=len(fit), heldout_samples=len(check), layers=recs, batchnorm=bns,
        output_error_before=e_before, output_error_after=e_after if kept else e_before,
        agreement_before=a_before, agreement_after=(a_after if kept else a_before), kept=kept,
        seconds=time.perf_counter() - t0, groups=_group_table(graph, recs), notes=notes)


def _regroup(ref: list[list[torch.Tensor]], like: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """The dense held-out outputs (recorded per dense chunk) cut like `like` (per chunk of another size)."""
    cat = [torch.cat([r[j] for r in ref], 0) for j in range(len(ref[0]))] if ref else []
    out, i = [], 0
    for o in like:
        n = o[0].shape[0]
        out.append([c[i:i + n] for c in cat])
        i += n
    return out


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        k = "x".join(str(v) for v in m.kernel_size)
        if m.groups == 1:
            return f"conv {k}"
        if m.groups == m.in_channels:
            return f"depthwise conv {k}"
        return f"grouped conv {k} ({m.groups} groups)"
    return "linear"
