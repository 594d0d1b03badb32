"""Parameter and MAC counts (MACs from torch's FLOP counter: convs, matmuls, attention)."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: tuple) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(*example_inputs)
    return int(counter.get_total_flops() // 2)


def size_summary(model: nn.Module, example_inputs: tuple) -> dict:
    return {"params": count_params(model), "macs": count_macs(model, example_inputs)}
