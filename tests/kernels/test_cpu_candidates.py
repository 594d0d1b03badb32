"""bench/bsr_cpu_candidates.py: every CPU block-sparse candidate computes X @ W^T (checked against float64
numpy) on small problems, the checker catches a wrong one, a new candidate plugs in by name, and the
driver writes its JSON. Apache TVM's candidate is skipped, with the reason, when tvm is not importable.
No timing is asserted (the machine is shared)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TVM_NUM_THREADS", "1")            # read when TVM's thread pool starts

import bsr_cpu_candidates as B  # noqa: E402

NO_TVM = ("dense_torch", "torch_bsr_linear", "torch_bsr_mm", "ort_sparse_coo", "ort_sparse_csr", "ort_dense")


def _tvm_missing() -> str | None:
    try:
        import tvm  # noqa: F401
        from tvm.script import tirx  # noqa: F401
    except ImportError as e:
        return f"Apache TVM (0.27, tvm.script.tirx) is not importable: {e}"
    return None


def test_problem_has_exactly_the_asked_blocks_and_bsr_parts_round_trip():
    w, x = B.make_problem(64, 128, 5, 16, 0.75, seed=3)
    assert w.dtype == np.float32 and x.shape == (5, 128) and w.shape == (64, 128)
    blocks = np.abs(w.reshape(4, 16, 8, 16)).sum((1, 3)) != 0
    assert blocks.sum() == round(0.25 * 32)
    indptr, cols, vals = B.bsr_parts(w, 16)
    back = np.zeros_like(w)
    for i in range(4):
        for j in range(indptr[i], indptr[i + 1]):
            back[i * 16:(i + 1) * 16, cols[j] * 16:(cols[j] + 1) * 16] = vals[j]
    assert np.array_equal(back, w) and indptr[-1] == len(cols) == vals.shape[0]
    w1, _ = B.make_problem(32, 32, 1, 32, 0.99)
    assert np.count_nonzero(w1) == 32 * 32                    # at least one block is kept
    with pytest.raises(ValueError, match="multiple of block"):
        B.make_problem(40, 64, 1, 32, 0.5)


@pytest.mark.parametrize("name", NO_TVM)
@pytest.mark.parametrize("block,tokens,sparsity", [(16, 8, 0.75), (32, 3, 0.5)])
def test_candidate_matches_float64(name, block, tokens, sparsity, one_thread):
    w, x = B.make_problem(64, 128, tokens, block, sparsity, seed=block + tokens)
    fn = B.CANDIDATES[name](w, x, block, 1)
    res = B.check(fn, w, x)
    assert res["ok"] and res["max_rel_error"] < 1e-5, res
    assert B.check(fn, w, x) == res                        # callable again: prepared once, reusable


@pytest.mark.parametrize("block,tokens", [(16, 8), (32, 6), (64, 5), (32, 128)])
def test_tvm_candidate_matches_float64(block, tokens):
    why = _tvm_missing()
    if why:
        pytest.skip(why)
    w, x = B.make_problem(128, 192, tokens, block, 0.6, seed=block)
    fn = B.CANDIDATES["tvm_bsr"](w, x, block, 1)
    res = B.check(fn, w, x)
    assert res["ok"] and res["max_rel_error"] < 1e-5, res
    assert tokens % B.default_tile(tokens, block) == 0 and B.default_tile(tokens, block) * block <= 128


def test_tvm_target_names_this_host_cpu():
    why = _tvm_missing()
    if why:
        pytest.skip(why)
    t = B.tvm_target(2)
    assert t["kind"] == "llvm" and t["mcpu"] not in ("", "generic", "native") and t["num-cores"] == 2


def test_check_catches_a_wrong_candidate_and_a_new_one_plugs_in(one_thread):
    w, x = B.make_problem(64, 64, 4, 16, 0.5)
    assert not B.check(lambda: np.zeros((4, 64), np.float32), w, x)["ok"]
    assert not B.check(lambda: x @ w.T * 1.001, w, x)["ok"]
    assert B.check(lambda: np.zeros((64, 4)), w, x) == {"ok": False, "max_rel_error": None,
                                                        "error": "output shape (64, 4), expected (4, 64)"}

    @B.register("numpy_blocks")
    def numpy_blocks(w, x, block, threads):
        indptr, cols, vals = B.bsr_parts(w, block)
        out = np.zeros((x.shape[0], w.shape[0]), np.float32)

        def run():
            out[:] = 0
            for i in range(len(indptr) - 1):
                for j in range(indptr[i], indptr[i + 1]):
                    out[:, i * block:(i + 1) * block] += x[:, cols[j] * block:(cols[j] + 1) * block] @ vals[j].T
            return out
        return run

    @B.register("missing_here")
    def missing_here(w, x, block, threads):
        raise B.Unavailable("not built on this machine")

    try:
        fns, recs = B.prepare(["numpy_blocks", "missing_here", "dense_torch"], w, x, 16, 1)
        assert set(fns) == {"numpy_blocks", "dense_torch"} and recs["numpy_blocks"]["ok"]
        assert recs["missing_here"] == {"available": False, "why": "not built on this machine"}
        args = argparse.Namespace(block=16, seed=0, threads=1, rounds=2, runs=3, warmup=1, max_seconds=0.05)
        point = B.run_point(["numpy_blocks", "dense_torch", "missing_here"], "64x64", 4, 0.5, args)
        for name in ("numpy_blocks", "dense_torch"):
            r = point["candidates"][name]
            assert r["ok"] and len(r["rounds_ms"]) == 2 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert "n/a" in B.table([point]) and point["block_density"] == 0.5
    finally:
        B.CANDIDATES.pop("numpy_blocks", None)
        B.CANDIDATES.pop("missing_here", None)


def test_driver_writes_json_and_a_table(tmp_path):
    out = tmp_path / "c.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bsr_cpu_candidates.py"), "--shapes", "64x128",
                        "--tokens", "8", "--sparsities", "0.5", "--threads", "1", "--block", "16", "--rounds", "1",
                        "--runs", "3", "--warmup", "1", "--max-seconds", "0.05",
                        "--candidates", "dense_torch", "torch_bsr_mm", "ort_sparse_csr", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "dense_torch" in p.stdout and "ort_sparse_csr" in p.stdout
    d = json.loads(out.read_text())
    assert d["benchmark"] == "bsr_cpu_candidates" and d["machine"]["cores"] and "apache-tvm" in d["versions"]
    (pt,) = d["points"]
    assert pt["shape"] == "64x128" and set(pt["candidates"]) == {"dense_torch", "torch_bsr_mm", "ort_sparse_csr"}
    assert all(r["ok"] for r in pt["candidates"].values())
    assert d["protocol"]["workers"] == [{"threads": 1, "env": d["protocol"]["workers"][0]["env"]}]
    assert d["protocol"]["workers"][0]["env"]["TVM_NUM_THREADS"] == "1"
