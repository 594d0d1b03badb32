"""Issue #23, item 13: bench/gpu_suite.py's default run fits one 10-minute device call (its plan, from its own
dry run, adds up to at most 8 minutes), writes where the caller asks, checks for pytest up front, and keeps a
longer --full."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert doc["steps"][0]["budget_s"] == 90 and "needs a CUDA device" in doc["steps"][0]["output_tail"]
