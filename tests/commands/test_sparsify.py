"""`compress sparsify` end to end (one subprocess run), determinism, and bad input (in process):
one line naming the problem, exit 2, no output directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compress import cli

REPO = Path(__file__).resolve().parents[2]
BERT = "tests.lower.lowering_models:tiny_bert"


def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "compress", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_sparsify_end_to_end(tmp_path, one_thread, monkeypatch):
    out = tmp_path / "bert24"
    p = run("sparsify", BERT, "--pattern", "2:4", "--update", "obs", "--calib", "random:16", "--json", "--out", out)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert sorted(os.listdir(out)) == ["model.onnx", "sparse_model.safetensors", "sparse_plan.json", "summary.json"]
    assert [q.name for q in tmp_path.iterdir()] == ["bert24"], "temporary directories were left behind"
    s = json.loads((out / "summary.json").read_text())
    assert json.loads(p.stdout) == s | {"out": str(out)}
    assert s["pattern"] == "2:4" and s["update"] == "obs" and s["onnx_parity"]["ok"] is True
    assert s["max_rel_error_lowered_vs_masked"] <= 1e-5 and s["density"] == 0.5
    assert len(s["layers"]) == 12                                   # 2 encoder layers x 6 linears
    for name, layer in s["layers"].items():
        assert layer["format"] == "2:4" and layer["density"] == 0.5 and layer["module"] == "Sparse24Linear"
        assert 0 <= layer["error_after"] <= layer["error_before"] and layer["error_magnitude"] > 0, name
    plan = json.loads((out / "sparse_plan.json").read_text())
    assert plan["schema_version"] == 1 and plan["source"]["model"] == BERT

    from safetensors import safe_open
    with safe_open(str(out / "sparse_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("layers.0.query.values").shape == (64, 32)
    assert "layers.0.query.indices" in keys and "layers.0.query.weight" not in keys   # stored once, sparse

    # the directory is a MODEL: rebuilt without pickle, equal to onnxruntime on model.onnx
    import onnxruntime as ort

    from compress import models
    from compress.lower.modules import Sparse24Linear
    lm = models.load(str(out))
    assert isinstance(lm.model.layers[0].query, Sparse24Linear)
    ids = torch.randint(0, 100, (3, 12), generator=torch.Generator().manual_seed(5))
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": ids.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(lm.model(ids).numpy(), got, rtol=1e-4, atol=1e-5)

    # same inputs and seed: byte-identical plan and ONNX (in process, to save an interpreter start)
    monkeypatch.chdir(REPO)
    again = tmp_path / "again"
    assert cli.main(["sparsify", BERT, "--pattern", "2:4", "--update", "obs", "--calib", "random:16",
                     "--out", str(again)]) == 0
    for f in ("sparse_plan.json", "model.onnx", "sparse_model.safetensors"):
        assert (again / f).read_bytes() == (out / f).read_bytes(), f


BAD = [
    (["--pattern", "block:32", "--sparsity", "1.0"], r"--sparsity must be in \[0, 1\), got 1.0"),
    (["--pattern", "unstructured", "--sparsity", "-0.1"], r"--sparsity must be in \[0, 1\)"),
    (["--pattern", "block:24", "--sparsity", "0.5"], "block size 24 is not a power of two >= 16"),
    (["--pattern", "block:8", "--sparsity", "0.5"], "block size 8 is not a power of two >= 16"),
    (["--pattern", "block:32"], "--sparsity is required"),
    (["--pattern", "2:4", "--sparsity", "0.7"], "2:4 keeps 2 of every 4"),
    (["--pattern", "block:16", "--sparsity", "0.5", "--update", "obs"], "--update obs applies to --pattern 2:4"),
    (["--pattern", "4:8", "--sparsity", "0.5"], "--pattern '4:8'"),
    (["--pattern", "block:N", "--sparsity", "0.5"], "--pattern 'block:N': use block:16, block:32 or block:64"),
    (["--pattern", "block:", "--sparsity", "0.5"], "--pattern 'block:': use block:16"),
    (["--pattern", "block:32.0", "--sparsity", "0.5"], "--pattern 'block:32.0': use block:16"),
    (["--pattern", "block:0", "--sparsity", "0.5"], "block size 0 is not a power of two >= 16"),
    (["--pattern", "block:-16", "--sparsity", "0.5"], "block size -16 is not a power of two >= 16"),
    (["--pattern", "block:48", "--sparsity", "0.5"], "block size 48 is not a power of two >= 16"),
]


@pytest.mark.parametrize("args,msg", BAD)
def test_bad_input_is_one_line_exit_2_and_no_output(args, msg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    code = cli.main(["sparsify", "tests.lower.lowering_models:vit_mlp", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert msg in err or __import__("re").search(msg, err), err
    assert not os.listdir(tmp_path)


def test_24_strict_on_a_layer_with_reduction_dim_not_multiple_of_4_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = cli.main(["sparsify", "tests.lower.lowering_models:odd_linear", "--pattern", "2:4", "--strict",
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "layer bad: 2:4 needs a reduction dimension that is a multiple of 4, it has 10" in err
    assert not os.listdir(tmp_path)


def test_24_keeps_layers_it_cannot_take_dense_and_names_them(tmp_path, capsys, monkeypatch):
    """Without --strict a layer 2:4 cannot take stays dense: named with the reason in sparse_plan.json,
    summary.json and the printed summary; a model none of whose layers fits is still refused."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    assert cli.main(["sparsify", "tests.lower.lowering_models:odd_linear", "--pattern", "2:4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    why = "2:4 needs a reduction dimension that is a multiple of 4, it has 10"
    assert "3 layers to 2:4 (magnitude), 1 kept dense" in text
    assert f"skipped: layer bad stays dense: {why}" in text and "--strict" in text
    plan = json.loads((out / "sparse_plan.json").read_text())
    layers = {e["name"]: e for e in plan["layers"]}
    assert layers["bad"]["format"] == "dense" and layers["bad"]["skipped"] == why and layers["bad"]["density"] == 1.0
    assert all("skipped" not in e and e["format"] == "2:4" for n, e in layers.items() if n != "bad")
    s = json.loads((out / "summary.json").read_text())
    assert s["skipped"] == {"bad": why} and s["layers"]["bad"]["skipped"] == why and s["onnx_parity"]["ok"]

    from compress import models
    from compress.export.sparsity import read_plan
    assert read_plan(str(out / "sparse_plan.json"))["bad"] == {"format": "dense", "density": 1.0}
    assert isinstance(models.load(str(out)).model.bad, torch.nn.Linear)

    code = cli.main(["sparsify", "tests.lower.lowering_models:all_odd", "--pattern", "2:4",
                     "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no layer of the model can take 2:4" in err
    assert not (tmp_path / "x").exists()
