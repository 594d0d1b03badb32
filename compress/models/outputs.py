"""A model's primary output, picked the same way everywhere (verify, ONNX export, parity, eval).

Models return a tensor, a tuple or list of outputs, a dict (torchvision segmentation models:
{"out": ..., "aux": ...}) or a Hugging Face output object (a dict subclass with attributes). The
primary output is:

- a tensor: itself (path "")
- a dict or output object: "out" if present (segmentation), else "logits", else its first tensor
  entry (e.g. "last_hidden_state"), searched recursively
- a tuple or list: its first element that holds a tensor ("[0]"), searched recursively

`primary(out)` returns (tensor, path); the path names what was picked for summaries and manifests
("" for a plain tensor). `PrimaryOutput` wraps a model so that it returns only that tensor (what
model.onnx holds as its one output "output").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

PREFERRED_KEYS = ("out", "logits")


def primary(out, path: str = "") -> tuple[torch.Tensor | None, str]:
    """(the primary output tensor or None when there is none, its path within `out`)."""
    if isinstance(out, torch.Tensor):
        return out, path
    if isinstance(out, Mapping) or hasattr(out, "keys") and hasattr(out, "__getitem__"):
        try:
            keys = list(out.keys())
        except Exception:
            keys = []
        for k in PREFERRED_KEYS:
            if k in keys and out[k] is not None:
                t, p = primary(out[k], _join(path, k))
                if t is not None:
                    return t, p
        for k in keys:
            t, p = primary(out[k], _join(path, str(k)))
            if t is not None:
                return t, p
        return None, path
    for k in PREFERRED_KEYS:                   # an output object that is not a mapping
        v = getattr(out, k, None)
        if v is not None and not callable(v):
            t, p = primary(v, _join(path, k))
            if t is not None:
                return t, p
    if isinstance(out, (tuple, list)):
        for i, v in enumerate(out):
            t, p = primary(v, f"{path}[{i}]")
            if t is not None:
                return t, p
    return None, path


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def primary_tensor(out) -> torch.Tensor:
    """The primary output; a TypeError naming what the model returned when it holds no tensor."""
    t, _ = primary(out)
    if t is None:
        raise TypeError(f"the model returns {type(out).__name__} holding no tensor")
    return t


def describe(out) -> str:
    """What the model returns and which output is primary, in words, e.g. "dict (out, aux): 'out'"."""
    _, path = primary(out)
    if isinstance(out, torch.Tensor):
        return "tensor"
    if hasattr(out, "keys"):
        try:
            keys = ", ".join(str(k) for k in out.keys())
        except Exception:
            keys = "?"
        return f"{type(out).__name__} ({keys}): {path!r}"
    if isinstance(out, (tuple, list)):
        return f"{type(out).__name__} of {len(out)}: {path!r}"
    return f"{type(out).__name__}: {path!r}"


class PrimaryOutput(nn.Module):
    """`model` returning only its primary output (for ONNX export: one output named "output")."""

    def __init__(self, model: nn.Module, path: str) -> None:
        super().__init__()
        self.model = model
        self.path = path
        # in the wrapped model's mode: torch.onnx.export restores the mode of the module it is given with
        # train(mode), which recurses, so a wrapper left in training mode would put `model` in training mode
        self.train(model.training)

    def forward(self, *inputs):
        return primary_tensor(self.model(*inputs))


@torch.no_grad()
def single_output(model: nn.Module, inputs: tuple) -> tuple[nn.Module, str | None]:
    """(`model` itself when it returns a plain tensor, else `PrimaryOutput(model)`; None or the
    description of what it returns and which output was picked)."""
    was = model.training
    out = model.eval()(*inputs)
    model.train(was)
    if isinstance(out, torch.Tensor):
        return model, None
    t, path = primary(out)
    if t is None:
        raise TypeError(f"the model returns {type(out).__name__} holding no tensor")
    return PrimaryOutput(model, path), describe(out)
