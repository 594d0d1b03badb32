"""Shared fixtures: deterministic seeding and non-trivial normalisation statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def randomize_norms(model: nn.Module, gen: torch.Generator | None = None) -> nn.Module:
    """Random affine parameters and running statistics, so a norm layer is not the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.5 + 1.0)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.5)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
    return model


@pytest.fixture
def randomize():
    return randomize_norms


@pytest.fixture
def one_thread():
    """Tiny models: one thread is fastest and immune to OpenMP stalls on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
