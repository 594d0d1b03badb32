"""`compress export --target cpu` of a block-sparse directory: model.bsr.onnx runs its block-sparse layers
(Linear, 1x1 conv, strided 1x1 conv) with the compiled kernel inside onnxruntime, checked against torch; the
artifact's own runner times it without compress; formats no CPU runtime executes are refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = "tests.lower.lowering_models:bottleneck"


def run(*args, timeout: float = 600, cwd=REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def block_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp") / "bottleneck-b16"
    p = run("-m", "compress", "sparsify", MODEL, "--pattern", "block:16", "--sparsity", "0.5", "--out", d)
    assert p.returncode == 0, p.stderr[-2000:]
    return d


def test_block_sparse_dir_exports_and_runs_the_kernel(block_dir, tmp_path):
    out = tmp_path / "art"
    p = run("-m", "compress", "export", block_dir, "--target", "cpu", "--runtimes", "ort", "--json", "--out", out)
    assert p.returncode == 0, p.stderr[-2000:]
    man = json.loads((out / "manifest.json").read_text())
    sc = man["sparse_cpu"]
    assert sorted(sc["layers"]) == ["conv1", "conv3", "down", "fc"] and set(sc["layers"].values()) == {16}
    assert man["runs_dense"] == ["layer conv2 (block:16) runs dense on the CPU: the kernel takes Linear and 1x1 "
                                 "conv layers"]
    assert sc["library"]["file"] == "libcompress_bsr.so" and "onnxruntime >= 1.17" in sc["needs"]
    for f in ("model.bsr.onnx", "libcompress_bsr.so", "bsr_cpu_runtime.py", "run_ort.py"):
        assert f in man["files"], f
    g = onnx.load(str(out / "model.bsr.onnx"))
    ops = [n.op_type for n in g.graph.node]
    assert ops.count("BlockSparseLinear") == 4 and "Conv" in ops      # the 3x3 conv stays an ordinary Conv
    kernel_checks = [c for c in man["parity"] if "BSR kernel" in c["runtime"]]
    assert len(kernel_checks) == 2 and all(c["ok"] for c in kernel_checks)      # random batches 1 and 3
    assert any(b["argv"][:3] == ["run_ort.py", "model.bsr.onnx", "--bsr-kernel"] for b in man["bench"])
    readme = (out / "README.md").read_text()
    assert "runs 4 block-sparse layers on compress's kernel" in readme and "dense fallback: layer conv2" in readme

    # the artifact's runner, from the artifact directory, without compress importable
    env_py = ("import runpy, sys; sys.argv = ['run_ort.py', 'model.bsr.onnx', '--bsr-kernel', '--shape', "
              "'2,32,12,12', '--runs', '3', '--warmup', '1']; runpy.run_path('run_ort.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['compress'] = None; " + env_py], cwd=out,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["median_ms"] > 0

    b = run("-m", "compress", "bench", out, "--runs", "3", "--warmup", "1", "--json")
    assert b.returncode == 0, b.stderr[-2000:]
    timed = {x["runtime"]: x for x in json.loads(b.stdout)["results"]}
    assert timed["onnxruntime + compress BSR kernel"]["median_ms"] > 0


def test_2_4_directory_for_cpu_is_refused_unless_dense_fallback(tmp_path):
    d = tmp_path / "b24"
    p = run("-m", "compress", "sparsify", MODEL, "--pattern", "2:4", "--out", d)
    assert p.returncode == 0, p.stderr[-2000:]
    out = tmp_path / "art"
    p = run("-m", "compress", "export", d, "--target", "cpu", "--runtimes", "ort", "--out", out)
    assert p.returncode == 2 and not out.exists()
    err = [line for line in p.stderr.strip().splitlines() if not line.startswith("[export]")]   # progress lines
    assert len(err) == 1 and "no CPU runtime we ship executes" in err[0] and "--dense-fallback" in err[0]
    p = run("-m", "compress", "export", d, "--target", "cpu", "--runtimes", "ort", "--dense-fallback", "--json",
            "--out", out)
    assert p.returncode == 0, p.stderr[-2000:]
    man = json.loads((out / "manifest.json").read_text())
    assert man["runs_dense"] and all("runs dense on the CPU" in n for n in man["runs_dense"])
    assert "sparse_cpu" not in man


@pytest.mark.parametrize("block,n,k,lead", [(16, 70, 100, (3, 5)), (32, 64, 96, (7,)), (64, 130, 200, (2, 1, 9)),
                                            (32, 33, 31, (1,))])
@pytest.mark.parametrize("threads", [1, 2])
def test_custom_op_in_onnxruntime_matches_torch(tmp_path, block, n, k, lead, threads):
    """The op through onnxruntime's custom-op ABI: shapes off the block grid, leading dims, its thread pool."""
    import torch

    from compress.export import sparse_cpu
    from compress.kernels import bsr_cpu
    from compress.lower import formats as fm
    from compress.lower.modules import BlockSparseLinear

    g = torch.Generator().manual_seed(block + n)
    w, bias = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    keep = fm.select_blocks(w.abs(), block, 0.5)
    t = fm.encode_bsr(w * fm.block_mask_full(keep, block, w.shape), keep, block)
    m = torch.nn.Sequential(BlockSparseLinear(k, n, block, t["crow_indices"], t["col_indices"], t["values"], bias))
    x = torch.randn(*lead, k, generator=g)
    path = str(tmp_path / "m.onnx")
    sparse_cpu.export(m, {"0": block}, (x,), path, dynamic_batch=True)
    got = sparse_cpu.run(path, bsr_cpu.cached_library(), [x.numpy()], threads=threads)
    ref = m(x).detach().numpy()
    assert got.shape == ref.shape
    assert float(abs(got - ref).max()) <= 1e-5 * max(1.0, float(abs(ref).max()))


def test_block_sparse_for_a_jetson_is_refused_unless_dense_fallback(block_dir, tmp_path):
    from compress.errors import CompressError
    from compress.export.sparse_cpu import check_jetson

    formats = {"fc": {"format": "block:16"}, "conv2": {"format": "dense"}, "a": {"format": "2:4"}}
    with pytest.raises(CompressError, match="layer fc is block:16, which no Jetson runtime we ship executes"):
        check_jetson(formats, dense_fallback=False)
    assert check_jetson(formats, dense_fallback=True) == [
        "layer fc (block:16) runs dense on the Jetson: no block-sparse kernel in TensorRT or TVM"]
    out = tmp_path / "j"
    p = run("-m", "compress", "export", block_dir, "--target", "jetson", "--device", "orin-nano", "--out", out)
    assert p.returncode == 2 and not out.exists() and "no Jetson runtime we ship executes" in p.stderr
