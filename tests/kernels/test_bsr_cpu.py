"""The CPU block-sparse kernel (kernels/bsr_cpu.cpp through its ctypes runtime) against float64 numpy:
every block size, shapes that are not multiples of the block, token counts around the micro-kernel's
tile, empty block rows, bias or none, thread counts; and the errors a user can meet."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress.errors import CompressError
from compress.kernels import bsr_cpu, bsr_cpu_runtime


@pytest.fixture(scope="module")
def lib():
    return bsr_cpu.kernel()


def _case(n, k, block, sparsity, tokens, seed, bias=True):
    w = bsr_cpu.random_block_sparse(n, k, block, sparsity, seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return w, x, b


def _rel(got, ref):
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 150), k=st.integers(1, 150), block=st.sampled_from(bsr_cpu.BLOCKS),
       sparsity=st.sampled_from([0.0, 0.3, 0.7, 0.95]), tokens=st.integers(1, 200), bias=st.booleans(),
       threads=st.sampled_from([1, 2]), seed=st.integers(0, 2 ** 16))
def test_matches_float64(lib, n, k, block, sparsity, tokens, bias, threads, seed):
    w, x, b = _case(n, k, block, sparsity, tokens, seed, bias)
    y = bsr_cpu.linear(x, bsr_cpu.from_dense(w, block), n, b, threads, lib)
    assert y.shape == (tokens, n) and y.dtype == np.float32
    assert _rel(y, bsr_cpu.reference(x, w, b)) < 1e-5


@pytest.mark.parametrize("block", bsr_cpu.BLOCKS)
def test_bar_shapes_all_token_counts(lib, block):
    """The benchmark's shapes (N x K), at tokens 8, 128 and 512, 90% of the blocks zero."""
    for n, k in [(384, 1536), (1536, 384)]:
        for tokens in (8, 128, 512):
            w, x, b = _case(n, k, block, 0.9, tokens, seed=tokens)
            y = bsr_cpu.linear(x, bsr_cpu.from_dense(w, block), n, b, 2, lib)
            assert _rel(y, bsr_cpu.reference(x, w, b)) < 1e-5, (n, k, tokens)


def test_empty_rows_and_leading_dims(lib):
    w = np.zeros((64, 48), np.float32)
    w[32:48, 16:32] = 1.0                                 # one stored 16x16 block; other block rows empty
    x = np.random.default_rng(0).standard_normal((2, 3, 48)).astype(np.float32)
    p = bsr_cpu.from_dense(w, 16)
    assert p["cols"].tolist() == [1] and p["rowptr"].tolist() == [0, 0, 0, 1, 1]
    y = bsr_cpu.linear(x, p, 64, None, 2, lib)
    assert y.shape == (2, 3, 64)
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-5)


def test_all_blocks_pruned_gives_bias(lib):
    w = np.zeros((40, 40), np.float32)
    b = np.arange(40, dtype=np.float32)
    y = bsr_cpu.linear(np.ones((5, 40), np.float32), bsr_cpu.from_dense(w, 32), 40, b, 1, lib)
    np.testing.assert_array_equal(y, np.broadcast_to(b, (5, 40)))


def test_pack_transposes_each_block():
    w = bsr_cpu.random_block_sparse(32, 64, 32, 0.0, seed=3)
    p = bsr_cpu.from_dense(w, 32)
    np.testing.assert_array_equal(p["values"][1], w[:, 32:].T)


def test_unsupported_block_is_one_line():
    with pytest.raises(CompressError, match="square blocks of 16, 32, 64"):
        bsr_cpu.pack([0, 1], [0], np.zeros((1, 128, 128), np.float32))


def test_weight_that_does_not_fit_the_input(lib):
    p = bsr_cpu.from_dense(np.ones((32, 64), np.float32), 32)
    with pytest.raises(ValueError, match="does not fit"):
        bsr_cpu.linear(np.ones((2, 16), np.float32), p, 32, None, 1, lib)


def test_abi_version_is_checked(tmp_path):
    src = tmp_path / "old.c"
    src.write_text("int compress_bsr_abi_version(void) { return 0; }\n")
    so = tmp_path / "libold.so"
    import subprocess

    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    with pytest.raises(RuntimeError, match="kernel ABI 0"):
        bsr_cpu_runtime.Kernel(str(so))


def test_build_command_and_bad_march(tmp_path):
    cmd = bsr_cpu.build_command(str(tmp_path / "x.so"), "x86-64-v3")
    assert "-march=x86-64-v3" in cmd and "-fopenmp" in cmd and cmd[-1].endswith("bsr_cpu.cpp")
    with pytest.raises(CompressError, match="unknown --march"):
        bsr_cpu.build_command(str(tmp_path / "x.so"), "pentium")


def test_missing_compiler_is_one_line(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(CompressError, match=r"needs a C\+\+ compiler"):
        bsr_cpu.compiler()
