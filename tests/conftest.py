"""Shared fixtures: deterministic seeding and non-trivial normalisation statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from compress.models.zoo import randomize_norms  # noqa: F401 - tests import it from here

# `tests.*` modules (shared test models, `tests.models:...` model specs) import from the repository root,
# under `pytest` as under `python -m pytest`
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


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
