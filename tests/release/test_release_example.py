"""The example CI gate as it ships: `compress release --config examples/fmnist-cpu/compress.toml --out DIR`
(the file unmodified, the full Fashion-MNIST, through the CLI in a subprocess, as examples/fmnist-cpu/release.yml
runs it). Bars: exit 0 with every budget met and every report written; a second run with nothing changed
reuses every step, writes byte-identical reports and takes under 10% of the first run's time; an impossible
budget fails with exit 1 naming the budget and target, re-checked without re-running anything.
Needs the compress:fmnist-cnn checkpoint (trained once, ~4 min, cached in ~/.cache/compress)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress.accuracy.data import FASHION_MNIST_DIR
from test_release_report import validate_junit

REPO = Path(__file__).parents[2]
EXAMPLE = "examples/fmnist-cpu/compress.toml"
REPORTS = ("report.json", "report.md", "junit.xml", "plots/cpu.png")


def release(cfg: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "compress", "release", "--config", cfg, "--out", str(out), *extra],
                       capture_output=True, text=True, timeout=1500, cwd=REPO)
    return r, time.perf_counter() - t0


def _timings(out: Path) -> str:
    """What a failed run measured (per-round latencies and the load), to tell a slow machine from a noisy one."""
    try:
        rep = json.loads((out / "report.json").read_text())
        c = rep["targets"][0]["candidates"][0]
        m = json.loads(next((out / ".cache").glob("measure-*/result.json")).read_text())
    except (OSError, ValueError, KeyError, IndexError, StopIteration) as e:
        return f"(no timings: {e})"
    return (f"\nmeasured: {c.get('latency_source')}; dense rounds {m.get('dense_rounds_ms')} ms, pruned rounds "
            f"{m.get('pruned_rounds_ms')} ms; load average {os.getloadavg()}; cpu {os.cpu_count()} cores")


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    d = tmp_path_factory.mktemp("example")
    r, seconds = release(EXAMPLE, d / "out")
    assert r.returncode == 0, r.stdout + r.stderr + _timings(d / "out")
    return {"dir": d, "out": d / "out", "seconds": seconds, "stdout": r.stdout}


def test_example_passes_every_budget(first):
    out = first["out"]
    assert first["stdout"].startswith("release PASSED: cpu (ratio 0.5) met 4 budget(s)\n")
    rep = json.loads((out / "report.json").read_text())
    assert rep["pass"] and rep["failures"] == [] and rep["data"] == "fashion-mnist"
    (t,) = rep["targets"]
    c = t["candidates"][t["selected"]]
    assert [b["budget"] for b in c["checks"]] == ["max_accuracy_drop", "min_speedup", "max_latency_ms", "max_size_mb"]
    assert all(b["status"] == "pass" and b["verified"] for b in c["checks"])
    assert c["eval_samples"] == 10000 and c["onnx_parity_ok"] and c["latency_measured"] and c["latency_batch"] == 8
    assert c["accuracy_drop_points"] <= 2.0 and c["speedup"] >= 1.3 and c["size_mb"] <= 0.5
    root = validate_junit((out / "junit.xml").read_bytes())
    assert [x.get("name") for x in root.iter("testcase")] == ["max_accuracy_drop", "min_speedup", "max_latency_ms",
                                                             "max_size_mb"]
    assert not list(root.iter("failure")) and not list(root.iter("skipped"))
    assert "### cpu: pass" in (out / "report.md").read_text()
    assert (out / "plots" / "cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "cpu" / "artifact" / "manifest.json").read_text())
    onnx = (out / "cpu" / "artifact" / "model.onnx").read_bytes()
    assert manifest["files"]["model.onnx"]["sha256"] == hashlib.sha256(onnx).hexdigest() == c["onnx_sha256"]
    assert manifest["ok"] and {"model.ort.onnx", "model_llvm.so", "run_ort.py"} <= set(manifest["files"])


def test_released_artifact_is_what_compress_bench_times(first):
    r = subprocess.run([sys.executable, "-m", "compress", "bench", str(first["out"] / "cpu" / "artifact"),
                        "--runs", "5", "--batch", "8", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ort = next(x for x in json.loads(r.stdout)["results"] if x["runtime"] == "onnxruntime")
    assert ort["median_ms"] > 0 and ort["shape"] == [8, 1, 28, 28]


def test_second_run_reuses_every_step_in_under_10_percent_of_the_time(first):
    out = first["out"]
    before = {f: (out / f).read_bytes() for f in REPORTS}
    r, seconds = release(EXAMPLE, out)
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["steps_run"] == [] and len(run["steps_reused"]) == 5
    assert before == {f: (out / f).read_bytes() for f in REPORTS}
    assert seconds < 0.1 * first["seconds"], (seconds, first["seconds"])


def test_impossible_budget_fails_naming_it(first):
    d = first["dir"]
    text, n = re.subn(r"min_speedup = [0-9.]+", "min_speedup = 1000", (REPO / EXAMPLE).read_text())
    assert n == 1
    (d / "impossible.toml").write_text(text)
    out = d / "impossible"
    r, _ = release(str(d / "impossible.toml"), out, "--cache", str(first["out"] / ".cache"))
    assert r.returncode == 1, r.stderr
    line = r.stdout.splitlines()[0]
    assert re.fullmatch(r"release FAILED: cpu: min_speedup \([0-9.]+ x, budget >= 1000; per round [0-9.]+-[0-9.]+x\)",
                        line), line
    root = validate_junit((out / "junit.xml").read_bytes())
    assert [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None] == ["min_speedup"]
    assert json.loads((out / "run.json").read_text())["steps_run"] == []  # budgets are in no step key
