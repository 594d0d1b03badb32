"""compress.measure, the one onnxruntime timing harness: its workers, lockstep, and the release gate's use of it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.measure import Block, block_ms, lockstep, worker_argv

QUICK = Block(runs=3, min_seconds=0.0, max_runs=3, warmup=1, warmup_seconds=0.0)


def _onnx(path, width: int = 4, dynamic: bool = True) -> str:
    from compress.export.onnx import export_onnx

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU()).eval()
    export_onnx(m, (torch.randn(1, 3, 16, 16),), str(path), dynamic_batch=dynamic)
    return str(path)


def _artifact(d, dynamic: bool, batch: int = 1):
    d.mkdir()
    _onnx(d / "model.onnx", dynamic=dynamic)
    (d / "manifest.json").write_text(json.dumps({"source": {"input_shape": [batch, 3, 16, 16]},
                                                 "onnx": {"dynamic_batch": dynamic}}))
    return str(d)


def test_worker_argv_is_a_module_run_with_the_block_as_json():
    argv = worker_argv("m.onnx", 4, QUICK)
    assert argv[1:4] == ["-m", "compress.measure", "m.onnx"] and argv[4] == "4"
    assert Block(**json.loads(argv[5])) == QUICK


def test_lockstep_times_passes_x_rounds_blocks_per_file(tmp_path):
    a, b = _onnx(tmp_path / "a.onnx"), _onnx(tmp_path / "b.onnx", 8)
    seen = []
    got = lockstep([("a", a, 2), ("b", b, 2)], QUICK, rounds=2, passes=2,
                   annotate=lambda m: seen.append(1) or m | {"tag": True})
    assert set(got) == {"a", "b"} and len(got["a"]) == len(got["b"]) == 4 and len(seen) == 8
    for m in got["a"] + got["b"]:
        assert m["runs"] == 3 and m["batch"] == 2 and m["warmup"] == 1 and m["tag"]
        assert 0 < m["min_ms"] <= m["median_ms"] <= m["max_ms"] and m["cpu_ms"] >= 0


def test_block_stops_at_min_seconds_and_caps(tmp_path):
    a = _onnx(tmp_path / "a.onnx")
    timed = lockstep([("a", a, 1)], Block(runs=1, min_seconds=0.05, warmup_seconds=0.0), 1, 1)["a"][0]
    assert timed["runs"] > 1                                   # runs on until min_seconds
    capped = lockstep([("a", a, 1)], Block(runs=1, min_seconds=5.0, max_runs=4, warmup_seconds=0.0), 1, 1)["a"][0]
    assert capped["runs"] == 4
    ms = block_ms([("a", a, 1)], QUICK, 3, 1)
    assert len(ms["a"]) == 3 and all(isinstance(x, float) and x > 0 for x in ms["a"])


def test_lockstep_names_the_file_it_cannot_time(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CompressError, match="broken one"):
        lockstep([("x", _onnx(tmp_path / "ok.onnx"), 1), ("y", str(bad), 1, "broken one")], QUICK, 1, 1)
    with pytest.raises(CompressError, match="rounds and passes"):
        lockstep([("x", str(bad), 1)], QUICK, 0, 1)


def test_release_measure_ms_is_per_directory_per_round(tmp_path):
    from compress.release.tools import measure_ms

    dense, pruned = _artifact(tmp_path / "dense", True), _artifact(tmp_path / "pruned", True)
    out = measure_ms([dense, pruned], runs=3, rounds=3, batch=2)
    assert len(out) == 2 and all(len(row) == 3 for row in out)
    assert all(isinstance(x, float) and x > 0 for row in out for x in row)
    assert [len(r) for r in measure_ms([dense, pruned], runs=2, rounds=1)] == [1, 1]   # exported batch


def test_release_measure_ms_refuses_another_batch_of_a_static_artifact(tmp_path):
    from compress.release.tools import measure_ms

    d = _artifact(tmp_path / "static", False)
    with pytest.raises(CompressError, match="static batch of 1"):
        measure_ms([d], runs=2, rounds=1, batch=4)
