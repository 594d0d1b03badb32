"""`compress release` with `dtype = "int8"` on cpu, on a 2,000/1,000-image subset of Fashion-MNIST (1 epoch of
fine-tuning): the int8 artifact is what is exported, judged and measured, so the budgets apply to it.
Needs the compress:fmnist-cnn checkpoint (trained once, ~4 min, cached in ~/.cache/compress); about 3 minutes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CONFIG = """\
[model]
spec = "compress:fmnist-cnn"

[data]
spec = "{data}"

[measure]
runs = 20
rounds = 3
batch = 8

[targets.cpu]
ratio = 0.5
finetune = 1.0
distill = true
dtype = "int8"
calib = "data:128"

[budgets.cpu]
max_accuracy_drop = 25.0
max_size_mb = {size}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_fmnist):
    d = tmp_path_factory.mktemp("release-int8")
    cfg = d / "compress.toml"
    cfg.write_text(CONFIG.format(data=small_fmnist, size=0.2))
    r = subprocess.run([sys.executable, "-m", "compress", "release", "--config", str(cfg), "--out", str(d / "out")],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((d / "out" / "report.json").read_text())
    return {"dir": d, "cfg": cfg, "out": d / "out", "report": rep, "stderr": r.stderr, "data": small_fmnist}


def test_int8_artifact_is_exported_judged_and_measured(run):
    out, (t,) = run["out"], run["report"]["targets"]
    assert t["dtype"] == "int8" and t["pass"]
    (c,) = t["candidates"]
    art = out / "cpu" / "artifact"
    man = json.loads((art / "manifest.json").read_text())
    assert man["int8"]["calibration"]["spec"] == "data:128"
    # the size budget is the int8 file's (about a quarter of the fp32 one)
    assert c["size_mb"] == pytest.approx((art / "model.int8.onnx").stat().st_size / 1e6)
    assert c["size_mb"] < 0.5 * (art / "model.onnx").stat().st_size / 1e6
    # the accuracy is the int8 artifact's in onnxruntime, the drop against the dense fp32 model
    ev = subprocess.run([sys.executable, "-m", "compress", "eval", str(art), "--data", run["data"], "--json"],
                        capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr
    got = json.loads(ev.stdout)
    assert got["onnx"].endswith("model.int8.onnx") and c["accuracy"] == got["accuracy"]
    assert c["agreement_int8_fp32"] == got["agreement_fp32"]
    assert c["accuracy_fp32"] == pytest.approx(got["accuracy_fp32"], abs=0.002)   # torch's fp32 vs onnxruntime's
    assert c["accuracy_drop_points"] == pytest.approx((c["accuracy_dense"] - c["accuracy"]) * 100)
    assert c["int8_parity"]["ok"] and c["int8_parity"]["metric"] == "top1_agreement"
    # latency: dense and pruned model.int8.onnx in lockstep, the dense fp32 model beside them
    assert "model.int8.onnx" in c["latency_source"] and c["latency_measured"]
    assert c["latency_ms_dense_fp32"] > 0
    assert c["speedup_vs_fp32"] == pytest.approx(c["latency_ms_dense_fp32"] / c["latency_ms"])
    assert "--dtype int8 --calib data:128" in run["stderr"]


def test_changing_the_calibration_re_exports_but_keeps_the_pruning(run):
    cfg = run["cfg"]
    cfg.write_text(cfg.read_text().replace('calib = "data:128"', 'calib = "data:64"'))
    r = subprocess.run([sys.executable, "-m", "compress", "release", "--config", str(cfg), "--out", str(run["out"])],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    steps = json.loads((run["out"] / "run.json").read_text())
    assert any(s.startswith("prune-") for s in steps["steps_reused"])
    assert any(s.startswith("export-") for s in steps["steps_run"])
    assert any(s.startswith("dense-") for s in steps["steps_run"])
