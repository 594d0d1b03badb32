"""Issue #23, item 13: bench/gpu_suite.py's default run fits one 10-minute device call (its plan, from its own
dry run, adds up to at most 8 minutes), writes where the caller asks, checks for pytest up front, and keeps a
longer --full."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_suite  # noqa: E402


def _dry_run(*args) -> dict:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--dry-run", *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_default_plan_fits_eight_minutes_and_full_is_longer():
    default, full = _dry_run(), _dry_run("--full")
    assert default["mode"] == "default" and default["deadline_s"] == gpu_suite.DEFAULT_BUDGET_S == 480
    assert default["fits"] and default["total_budget_s"] <= 480
    assert [s["name"] for s in default["steps"]] == [s.name for s in gpu_suite.STEPS]
    assert full["total_budget_s"] > 2 * default["total_budget_s"]
    by = {s["name"]: s for s in full["steps"]}
    assert by["tests_gpu"]["env"] == {"COMPRESS_GPU_FULL": "1"} and "--quick" not in by["bsr_gpu"]["argv"]
    assert "--quick" in {s["name"]: s for s in default["steps"]}["bsr_gpu"]["argv"]
    # issue #19 item 5: the GPU profile and the plans on it are part of the default run, after the kernels
    names = [s["name"] for s in default["steps"]]
    assert names[-2:] == ["gpu_profile", "gpu_plans"]
    assert "--full-grid" in by["gpu_profile"]["argv"] and "--full-grid" not in default["steps"][-2]["argv"]


def test_a_missing_pytest_is_reported_up_front_and_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_suite, "STEPS", [gpu_suite.Step("tests_gpu", "t", ("-m", "pytest"), "t.json", 60,
                                                            needs=("no_such_module_for_gpu_suite",))])
    plan = gpu_suite.plan(gpu_suite.STEPS, full=False)
    assert plan["steps"][0]["missing"] == ["no_such_module_for_gpu_suite"] and plan["total_budget_s"] == 0
    rec = gpu_suite.run_step(plan["steps"][0], tmp_path, 60)
    assert not rec["ok"] and rec["seconds"] == 0.0 and "not installed here" in rec["error"]


def test_results_go_where_the_caller_asks(tmp_path):
    """The plumbing without a GPU: one step (it exits 2 without CUDA), suite.json in --results."""
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--allow-no-gpu", "--only",
                        "semi_structured_24", "--results", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr  # the step fails here: no CUDA
    doc = json.loads((out / "suite.json").read_text())
    assert doc["plan"]["mode"] == "default" and [s["name"] for s in doc["steps"]] == ["semi_structured_24"]
    assert doc["steps"][0]["budget_s"] == 40 and "needs a CUDA device" in doc["steps"][0]["output_tail"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA skip")
def test_gpu_steps_skip_with_a_reason_without_cuda(tmp_path):
    out = tmp_path / "results"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--allow-no-gpu", "--only", "gpu_profile",
                        "gpu_plans", "--results", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    steps = json.loads((out / "suite.json").read_text())["steps"]
    assert [s["name"] for s in steps] == ["gpu_profile", "gpu_plans"] and all(s["ok"] for s in steps)
    for s in steps:
        assert "skipped: no CUDA device" in s["output_tail"] and s["result"]["skipped"].startswith("skipped: no CUDA")
    assert not (out / gpu_suite.PROFILE_FILE).exists()


def test_profile_plan_prune_and_time_on_the_cpu(tmp_path):
    """The two GPU steps' code on the CPU (tiny model and grid, float32): a profile, a plan on it, the plan applied
    by `compress prune --plan`, planned vs dense timed; predicted vs measured recorded. The numbers mean nothing."""
    import torch

    n = torch.get_num_threads()
    try:
        assert gpu_suite.measure_gpu_profile(tmp_path / "gpu_profile_run.json", "cpu", ["tests.models:tiny_cnn"],
                                             "tiny") == 0
        rec = json.loads((tmp_path / "gpu_profile_run.json").read_text())
        assert rec["device"]["kind"] == "cpu" and rec["two_four"].startswith("skipped")
        assert (tmp_path / gpu_suite.PROFILE_FILE).is_file() and rec["sparse"]
        rc = gpu_suite.gpu_plans(tmp_path / "gpu_plans.json", "cpu", ["tests.models:tiny_cnn", "hf:no_such_dir"],
                                 "structured", 0.3, None)   # below what the tiny model can reach: planned again
    finally:
        torch.set_num_threads(n)
    doc = json.loads((tmp_path / "gpu_plans.json").read_text())
    ok, bad = doc["models"]
    assert rc == 1 and "error" in bad and bad["plan"]["exit_code"] == 2        # a model that cannot load: recorded
    assert ok["plan"]["exit_code"] == 0 and ok["prune"]["exit_code"] == 0, ok
    assert ok["budget_unreachable"]["exit_code"] == 1 and 0.3 < ok["latency_budget_used"] <= 0.95
    pvm = ok["predicted_vs_measured"]
    assert pvm["ratio_predicted"] < 1 and pvm["planned_ms_measured"] > 0 and pvm["dense_ms_measured"] > 0
    assert ok["measured"]["device"] == "cpu" and ok["measured"]["sparse_modules"] == []
