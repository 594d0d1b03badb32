"""Quantization-aware fine-tuning: train under the rounding the int8 artifact will apply, so that post-training
quantization of the result loses less (Jacob et al. 2018; the fake-quant scheme of torch.ao's QAT, written out).

Inside `fake_quantized(model, calib)`:
- every Conv / Linear weight is seen by the forward pass as export/quantize.py's int8 export stores it:
  per output channel, symmetric, int8 in [-127, 127] (scale = max |w| of the channel / 127); the gradient
  passes straight through the rounding (torch.fake_quantize_per_channel_affine) to the fp32 weight;
- every Conv / Linear input is seen as an 8-bit activation, asymmetric uint8 over a range that starts from the
  calibration batches' min / max (the MinMax ranges the export calibrates) and follows the training batches'
  min / max by exponential averaging (momentum 0.01), straight-through gradient too.
On leaving, the parametrizations and hooks are removed: the model is an ordinary fp32 model again, with the
same state-dict keys, whose weights were trained to survive the int8 export (`compress export --dtype int8`
quantizes it as any other model: ranges calibrated again, QDQ, per-channel int8 weights).

Per-channel symmetric weight quantization is unchanged by a per-output-channel scale, so quantizing a conv's
weight before its BatchNorm is folded (as here) or after (as the export does) rounds to the same grid."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

MOMENTUM = 0.01
QUANTIZED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 fake quantization of a weight (channel axis 0)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        amax = w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12)
        scale = (amax / 127.0).float()
        zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class _ActObserver:
    """A layer input's range: calibrated min / max, then followed by exponential averaging while training."""

    def __init__(self) -> None:
        self.lo: float | None = None
        self.hi: float | None = None
        self.calibrating = True

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if self.lo is None:
            self.lo, self.hi = lo, hi
        elif self.calibrating:
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        else:
            self.lo += MOMENTUM * (lo - self.lo)
            self.hi += MOMENTUM * (hi - self.hi)

    def __call__(self, module, args):
        x = args[0]
        if not torch.is_floating_point(x):
            return None
        if self.calibrating or module.training or self.lo is None:
            self.observe(x)
        if self.calibrating:
            return None
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)          # the range holds zero, as the quantizer's does
        scale = max((hi - lo) / 255.0, 1e-8)
        zero = int(min(max(round(-lo / scale), 0), 255))
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255),) + tuple(args[1:])


@contextmanager
def fake_quantized(model: nn.Module, calib: list[tuple]):
    """`model` (in place) with int8 fake quantization of its Conv / Linear weights and inputs, activation
    ranges calibrated on `calib` (a list of input tuples) first; everything removed again on exit.
    Yields the names of the quantized layers."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QUANTIZED)}
    observers, hooks = {}, []
    try:
        for n, m in layers.items():
            ob = _ActObserver()
            observers[n] = ob
            hooks.append(m.register_forward_pre_hook(ob))
        was = model.training
        model.eval()
        with torch.no_grad():
            for xs in calib:
                model(*xs)
        model.train(was)
        for n, m in layers.items():
            observers[n].calibrating = False
            parametrize.register_parametrization(m, "weight", WeightFakeQuant())
        yield list(layers)
    finally:
        for h in hooks:
            h.remove()
        for m in layers.values():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
