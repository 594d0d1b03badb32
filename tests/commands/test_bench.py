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
