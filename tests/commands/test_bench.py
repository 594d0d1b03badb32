"""`compress bench DIR`: times each runtime of an artifact in its own process."""

from __future__ import annotations

import json

from compress.cli import main


def test_bench_cpu_artifact(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["export", "tests.export.export_models:tiny_mlp", "--target", "cpu", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["bench", str(out), "--runs", "5", "--warmup", "1", "--threads", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    by = {r["runtime"]: r for r in res["results"]}
    assert set(by) == {"onnxruntime", "tvm"}
    for r in by.values():
        assert r["runs"] == 5 and 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"], r
    assert res["shape"] == [1, 16] and len(res["loadavg"]) == 3
    assert res["expected_ms"] is not None or res["expected_reason"]
    assert main(["bench", str(out), "--runs", "3"]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime" in text and "tvm" in text and "median" in text


def test_bench_at_another_batch_of_a_dynamic_artifact(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["export", "tests.export.export_models:tiny_mlp", "--target", "cpu", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["bench", str(out), "--runs", "3", "--warmup", "1", "--threads", "1", "--batch", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["shape"] == [4, 16] and res["expected_ms"] is None and "batch 1, not 4" in res["expected_reason"]
    for r in res["results"]:
        assert r["shape"] == [4, 16] and "--shape 4,16 " in r["command"] and r["median_ms"] > 0, r


def test_bench_static_artifact_at_another_batch_exit_2(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["export", "tests.export.export_models:tiny_mlp", "--target", "cpu", "--batch", "2",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["bench", str(out), "--batch", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "static batch of 2" in err[0] and "--batch dynamic" in err[0], err
    assert main(["bench", str(out), "--runs", "2", "--batch", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == [2, 16]


def test_bench_not_an_artifact_exit_2(tmp_path, capsys):
    assert main(["bench", str(tmp_path)]) == 2
    assert "has no manifest.json" in capsys.readouterr().err


def test_bench_artifact_with_two_inputs(tmp_path, capsys):
    """issue #20: an artifact of a model with several inputs is timed with every input generated from the
    manifest's input specs, at the exported batch or another one."""
    out = tmp_path / "art"
    assert main(["export", "tests.export.export_models:two_float_inputs", "--target", "cpu", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["bench", str(out), "--runs", "3", "--warmup", "1", "--threads", "1", "--batch", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["shape"]) for s in res["inputs"]] == [("left", [5, 8]), ("right", [5, 4])]
    assert {r["runtime"] for r in res["results"]} == {"onnxruntime", "tvm"}
    for r in res["results"]:
        assert r["median_ms"] > 0 and r["inputs"] == {"left": [5, 8], "right": [5, 4]}, r
        assert "--input left:5,8:float32:normal --input right:5,4:float32:normal" in r["command"]
    assert main(["bench", str(out), "--runs", "2", "--warmup", "0"]) == 0
    text = capsys.readouterr().out
    assert "inputs left [1, 8] float32, right [1, 4] float32" in text and "median" in text
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "run_ort.py", "model.onnx", "--input", "left:1,8:float32"], cwd=out,
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "run_ort.py: model.onnx takes inputs left, right; --input gave left"]


def test_runner_inputs_token_ids_and_padded_masks():
    import numpy as np

    from compress.export import run_ort

    name, shape, dtype, values = run_ort.parse_input("attention_mask:6,10:int64:mask")
    mask = run_ort.make_input(np.random.default_rng(0), shape, dtype, values)
    assert (name, mask.shape, mask.dtype) == ("attention_mask", (6, 10), np.int64)
    for row in mask:                       # 1s then 0s, at least one token
        n = int(row.sum())
        assert n >= 1 and (row[:n] == 1).all() and (row[n:] == 0).all()
    assert (mask.sum(1) < 10).any()        # some padding
    ids = run_ort.make_input(np.random.default_rng(0), *run_ort.parse_input("input_ids:6,10:int64:high=7")[1:])
    assert ids.min() >= 0 and ids.max() < 7
