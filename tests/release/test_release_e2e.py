"""`compress release` killed midway and re-run, on the example config (examples/fmnist-cpu/compress.toml) in a
reduced setting: a 2,000/1,000-image subset of Fashion-MNIST, 1 epoch of fine-tuning on it, fewer timing runs,
and a looser accuracy budget (a short fine-tune on 2,000 images does not recover what the example's does).
The example itself, unmodified, is run in test_release_example.py.

Bar tested: a run killed midway (right after pruning and fine-tuning) and re-run reuses what was done and
gives the same report (measured latencies aside) and byte-identical ONNX files as a run never interrupted.
Needs the compress:fmnist-cnn checkpoint (trained once, ~4 min, cached in ~/.cache/compress)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_release_report import validate_junit

EXAMPLE = Path(__file__).parents[2] / "examples" / "fmnist-cpu" / "compress.toml"
MEASURED = {"latency_ms", "latency_ms_dense", "speedup", "speedup_rounds"}  # measured again after a kill, so they may differ


def reduced(data_dir: str, **budget_overrides) -> str:
    text = EXAMPLE.read_text()
    subs = {r'spec = "fashion-mnist"': f'spec = "{data_dir}"', r"finetune = [0-9.]+": "finetune = 1.0",
            r"runs = \d+": "runs = 20", r"rounds = \d+": "rounds = 3",
            r"max_accuracy_drop = [0-9.]+": "max_accuracy_drop = 25.0"}
    subs |= {rf"{k} = [0-9.]+": f"{k} = {v}" for k, v in budget_overrides.items()}
    for pat, rep in subs.items():
        text, n = re.subn(pat, rep, text)
        assert n == 1, f"the example config no longer has {pat!r}"
    return text


def release(cfg: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "compress", "release", "--config", str(cfg), "--out", str(out), *extra],
                       capture_output=True, text=True, timeout=900)
    return r, time.perf_counter() - t0


@pytest.fixture(scope="module")
def first(tmp_path_factory, small_fmnist):
    d = tmp_path_factory.mktemp("release")
    cfg = d / "compress.toml"
    cfg.write_text(reduced(small_fmnist))
    r, seconds = release(cfg, d / "out")
    assert r.returncode == 0, r.stdout + r.stderr
    return {"dir": d, "cfg": cfg, "out": d / "out", "seconds": seconds, "stdout": r.stdout}


def _without_measured(rep: dict) -> dict:
    rep = json.loads(json.dumps(rep))
    for t in rep["targets"]:
        for c in t["candidates"]:
            for k in MEASURED:
                c.pop(k)
            c["checks"] = [b for b in c["checks"] if b["budget"] not in ("min_speedup", "max_latency_ms")]
    return rep


def test_reduced_example_passes(first):
    out = first["out"]
    assert first["stdout"].startswith("release PASSED: cpu (ratio 0.5) met 4 budget(s)")
    rep = json.loads((out / "report.json").read_text())
    assert rep["pass"] and rep["failures"] == []
    c = rep["targets"][0]["candidates"][0]
    assert 0 < c["accuracy"] <= 1 and c["eval_samples"] == 1000 and c["onnx_parity_ok"]
    assert c["macs"] < c["macs_dense"] / 3 and c["size_mb"] < c["size_mb_dense"] / 3
    validate_junit((out / "junit.xml").read_bytes())


def test_killed_run_resumes_to_the_same_report_and_onnx(first, small_fmnist):
    d = first["dir"] / "killed"
    d.mkdir()
    cfg = d / "compress.toml"
    cfg.write_text(reduced(small_fmnist))
    out = d / "out"
    proc = subprocess.Popen([sys.executable, "-m", "compress", "release", "--config", str(cfg), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not list((out / ".cache").glob("prune-*/result.json")):  # kill right after the expensive step
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "report.json").exists()
    r, _ = release(cfg, out)
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert any(s.startswith("prune-") for s in run["steps_reused"])
    for f in ("cpu/pruned/model.onnx", "cpu/pruned/plan.json", "cpu/artifact/model.onnx", "cpu/artifact/model.ort.onnx"):
        assert (out / f).read_bytes() == (first["out"] / f).read_bytes(), f
    assert _without_measured(json.loads((out / "report.json").read_text())) == \
        _without_measured(json.loads((first["out"] / "report.json").read_text()))
