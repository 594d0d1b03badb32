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


def _jetson_without_cuda12() -> None:
    """This machine (and CI's) has only a CUDA 13 compiler, and Jetson builds refuse anything but CUDA 12 (the
    JetPack 6 driver). Tests that build the Jetson artifact's structure then build with CUDA 13, which the
    manifest and README record as "cannot load on JetPack 6" (COMPRESS_JETSON_ANY_CUDA); the refusal itself
    is tested in tests/export/test_jetson_cuda.py. Set for subprocesses too."""
    import os

    try:
        from compress.export import tvm_relax
    except ImportError:
        return
    try:
        tvm_relax.cuda_compiler(12)
    except Exception:
        os.environ.setdefault(tvm_relax.ANY_CUDA_ENV, "1")


_jetson_without_cuda12()


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
