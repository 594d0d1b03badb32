"""Fixtures for `compress release`: a reduced Fashion-MNIST (real images, fewer of them)."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

FMNIST = "/usr/share/datasets/fashion-mnist"


def _read(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _write(path: str, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(arr).tobytes())


def write_subset(d: str, n_train: int, n_test: int) -> str:
    """The first n images of each split of the installed Fashion-MNIST, as raw IDX files."""
    os.makedirs(d, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind in ("images-idx3", "labels-idx1"):
            arr = _read(os.path.join(FMNIST, f"{split}-{kind}-ubyte.gz"))[:n]
            _write(os.path.join(d, f"{split}-{kind}-ubyte"), arr)
    return d


@pytest.fixture(scope="session")
def small_fmnist(tmp_path_factory) -> str:
    if not os.path.isdir(FMNIST):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return write_subset(str(tmp_path_factory.mktemp("fmnist-small")), 2000, 1000)

