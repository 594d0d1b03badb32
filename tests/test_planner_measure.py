"""Planning by measurement: the budget correction loop, the paired onnxruntime timing, `plan --measure`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from compress.measure import MeasureConfig, Paired, paired_ratio
from compress.planner.solve import PlanConfig, prepare
from compress.planner.measured import refine

from test_planner import Net, _inputs, _profile


def _prep(budget):
    model = Net().eval()
    cfg = PlanConfig(latency_budget=budget)
    return model, cfg, prepare(model, _inputs(), _profile(), cfg)


def test_refine_corrects_a_model_that_is_20_percent_optimistic():
    """A stand-in device where every plan runs 1.2x slower, relative to dense, than predicted:
    the loop re-plans lower until the 'measured' ratio meets the target, and keeps that plan."""
    model, cfg, prep = _prep(0.6)
    seen = []

    def device(path, dense_path, batch, mcfg):
        pred = seen[-1]          # the planner's predicted ratio of the candidate just exported
        return Paired(ratio=1.2 * pred, per_round=[1.2 * pred], candidate_ms=1.2 * pred, dense_ms=1.0)

    import compress.planner.measured as pm

    orig_finish = pm.finish

    def spy(prep_, config, source, **kw):
        plan, res, g = orig_finish(prep_, config, source, **kw)
        if plan is not None:
            seen.append(res.predicted_ms / res.dense_ms)
        return plan, res, g

    pm.finish = spy
    try:
        got = refine(model, _inputs(), prep, cfg, {"model": "net"}, 1, MeasureConfig(iterations=5), measure=device)
    finally:
        pm.finish = orig_finish
    assert len(got.candidates) >= 2
    first, last = got.candidates[0], got.candidates[-1]
    assert first["measured_ratio"] > 0.6 * 1.03                       # the first plan misses
    assert got.meets and got.measured_ratio <= 0.6 * 1.03             # a corrected one meets it
    assert last["planned_budget"] < first["planned_budget"]
    assert any("measured on this machine" in n for n in got.plan.notes)


def _onnx(tmp_path, width: int, name: str) -> str:
    from compress.export.onnx import export_onnx

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)).eval()
    path = str(tmp_path / name)
    export_onnx(m, (torch.randn(1, 3, 32, 32),), path)
    return path


def test_paired_ratio_times_both_files_in_onnxruntime(tmp_path):
    small, big = _onnx(tmp_path, 8, "small.onnx"), _onnx(tmp_path, 128, "big.onnx")
    cfg = MeasureConfig(rounds=3, passes=1, block_seconds=0.05)
    m = paired_ratio(small, big, 1, cfg)
    # 8 vs 128 channels: ~250x fewer MACs; however noisy the machine, the small one is faster
    assert len(m.per_round) == 3 and m.candidate_ms > 0 and m.dense_ms > 0 and m.ratio < 0.7


def test_paired_ratio_says_which_file_it_cannot_time(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    from compress.errors import CompressError

    with pytest.raises(CompressError, match="bad.onnx"):
        paired_ratio(str(bad), _onnx(tmp_path, 8, "ok.onnx"), 1, MeasureConfig(rounds=1, passes=1, block_seconds=0.02))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, timeout=600)


def test_plan_measure_end_to_end(tmp_path):
    out = tmp_path / "plan"
    p = cli("plan", "tests.models:tiny_cnn", "--input-shape", "1,3,32,32", "--target", "cpu", "--batch", "1",
            "--latency-budget", "0.6", "--measure", "--json", "--out", str(out))
    assert p.returncode in (0, 1), p.stderr[-2000:]     # 1: measured, but no candidate met the budget
    js = json.loads(p.stdout)
    m = js["measured"]
    assert m["target_ratio"] == 0.6 and m["candidates"] and m["dense_ms"] > 0
    assert m["meets_budget"] == (p.returncode == 0)
    assert m["measured_ratio"] == min(c["measured_ratio"] for c in m["candidates"]) or m["meets_budget"]
    report = json.loads((out / "report.json").read_text())
    assert report["measured"] == m and (out / "plan.json").is_file()
    assert "measured on this machine" in (out / "plan.json").read_text()


@pytest.mark.parametrize("args", [["--target", "jetson"], ["--target", "cpu", "--formats", "structured,2:4"]])
def test_plan_measure_refuses_what_it_cannot_time(tmp_path, args):
    p = cli("plan", "tests.models:tiny_cnn", "--input-shape", "1,3,32,32", "--latency-budget", "0.6", "--measure",
            *args, "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "--measure" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "x").exists()
