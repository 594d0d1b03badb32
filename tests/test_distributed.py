"""compress.accuracy.distributed: fine-tuning under torchrun with DistributedDataParallel (2 CPU processes, gloo).

This file is also the worker: `torchrun ... tests/test_distributed.py OUT` fine-tunes a tiny CNN on
synthetic data on every rank and writes that rank's final weights to OUT/rank<R>.safetensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COMPRESS_DDP_BACKEND="gloo")


def _torchrun(*args, timeout=120):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _synthetic(n=512, classes=4, seed=0):
    import torch

    from compress.accuracy import data

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.4
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, r * 4:(r + 1) * 4, q * 4:(q + 1) * 4] += 0.6
    return data.Dataset(x, y, tuple(map(str, range(classes))), "synthetic")


def worker(out: str) -> None:
    import torch
    from safetensors.torch import save_model

    from compress.accuracy import distributed, train
    from tests.test_evaluate import tiny_cnn

    torch.set_num_threads(1)
    ctx = distributed.active()
    assert ctx is not None and ctx.world_size == 2 and ctx.backend == "gloo"
    torch.manual_seed(100 + ctx.rank)                 # different starting weights per rank: DDP must broadcast
    model = tiny_cnn() if ctx.rank == 0 else type(tiny_cnn())()
    teacher = tiny_cnn()
    history = train.finetune(model, _synthetic(), 1, teacher=teacher, lr=0.05, batch_size=32, seed=3)
    save_model(model, os.path.join(out, f"rank{ctx.rank}.safetensors"))
    with open(os.path.join(out, f"rank{ctx.rank}.json"), "w") as f:
        json.dump({"history": history, "rank": ctx.rank, "world": ctx.world_size}, f)
    distributed.finish()


def test_ddp_two_ranks_end_with_identical_weights(tmp_path):
    from safetensors.torch import load_file

    from tests.test_evaluate import tiny_cnn

    r = _torchrun(str(Path(__file__)), str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert a[k].shape == b[k].shape and bool((a[k] == b[k]).all()), f"{k} differs between ranks"
    init = tiny_cnn().state_dict()
    assert not all(bool((a[k] == init[k]).all()) for k in a if k.endswith("weight")), "training changed nothing"
    h0, h1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    # global batch 32 = 2 ranks x 16: 512 samples -> 16 steps; each rank saw its own half of the data
    assert h0["world"] == 2 and len(h0["history"]) == 1 and h1["history"][0]["epoch"] == 1
    assert h0["history"][0]["loss"] != h1["history"][0]["loss"]


def test_prune_cli_under_torchrun_writes_once(tmp_path):
    from tests.test_evaluate import make_learnable_idx

    idx = make_learnable_idx(tmp_path / "idx", n_train=256, n_test=64)
    out = tmp_path / "pruned"
    r = _torchrun("-m", "compress", "prune", "tests.test_evaluate:tiny_cnn", "--ratio", "0.5", "--round-to", "1",
                  "--data", str(idx), "--finetune", "1", "--distill", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finetune"]["epochs"] == 1 and summary["onnx_parity"]["ok"]
    assert (out / "model.onnx").is_file() and (out / "plan.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pruned")] == []   # no temp dirs left
    docs = _json_docs(r.stdout)
    assert sum("accuracy" in d for d in docs) == 1                                        # rank 0 reports


def _json_docs(text: str) -> list[dict]:
    dec, docs, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i] in " \n\t":
            i += 1
            continue
        d, i = dec.raw_decode(text, i)
        docs.append(d)
    return docs


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    worker(sys.argv[1])
