"""compress.toml validation: every problem at once, with its key path, exit 2 before any work."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from compress.errors import CompressError
from compress.release import config

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "fmnist-cpu", "compress.toml")


def _write(tmp_path, text: str) -> str:
    p = tmp_path / "compress.toml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def _problems(path: str, only=None) -> list[str]:
    with pytest.raises(CompressError) as e:
        config.load(path, only)
    lines = str(e.value).splitlines()
    assert lines[0].endswith(f"{len(lines) - 1} problem{'s' if len(lines) > 2 else ''}:")
    return [ln.strip() for ln in lines[1:]]


def test_example_config_is_valid():
    cfg = config.load(EXAMPLE)
    assert cfg.model == "compress:fmnist-cnn" and cfg.data == "fashion-mnist"
    (cpu,) = cfg.targets
    assert cpu.name == "cpu" and cpu.ratios == (0.5,) and cpu.finetune > 0
    assert dict(cpu.budgets.items()).keys() == set(config.BUDGETS)


def test_all_problems_reported_together_with_key_paths(tmp_path):
    path = _write(tmp_path, """\
        colour = "blue"
        [model]
        spec = "compress:fmnist-cnn"
        wieghts = "w.safetensors"
        [data]
        spec = "fashion-mnist"
        [measure]
        runs = "many"
        [targets.cpu]
        ratio = 1.5
        finetune = "1"
        [targets.gpu]
        ratio = 0.5
        [targets.jetson]
        latency_budget = 0.6
        profile = "missing-profile.json"
        [budgets.cpu]
        max_accuracy_drop = 120
        min_speed = 2
        [budgets.tpu]
        max_latency_ms = 3
        """)
    got = _problems(path)
    expected_starts = [
        "colour: unknown key",
        "model.wieghts: unknown key",
        "measure.runs: expected an integer, got a string 'many'",
        "targets.cpu.finetune: expected a number, got a string '1'",
        "targets.cpu.ratio: must be in (0, 1), got 1.5",
        "budgets.cpu.min_speed: unknown key",
        "budgets.cpu.max_accuracy_drop: must be in [0, 100] percentage points, got 120.0",
        "targets.gpu.profile: required: gpu latency cannot be measured on this machine",
        "targets.jetson.device: required: the Jetson to export for (orin-nano or agx-orin)",
        "targets.jetson.profile: file",
        "budgets.tpu: a budget without a target: there is no [targets.tpu]",
    ]
    for start in expected_starts:
        assert sum(g.startswith(start) for g in got) == 1, (start, got)
    assert len(got) == len(expected_starts), got


def test_measure_batch(tmp_path):
    body = """\
        [model]
        spec = "compress:fmnist-cnn"
        [data]
        spec = "fashion-mnist"
        [measure]
        batch = {}
        [targets.cpu]
        ratio = 0.5
        """
    assert config.load(_write(tmp_path, body.format(8))).batch == 8
    assert _problems(_write(tmp_path, body.format(0))) == ["measure.batch: must be >= 1, got 0"]
    assert config.load(_write(tmp_path, body.replace("batch = {}", "runs = 9"))).batch is None


def test_latency_budget_plan_needs_a_profile(tmp_path):
    path = _write(tmp_path, """\
        [model]
        spec = "compress:fmnist-cnn"
        [data]
        spec = "fashion-mnist"
        [targets.cpu]
        latency_budget = 0.6
        """)
    assert _problems(path) == ["targets.cpu.profile: required: a latency_budget plan is made against a device "
                               "profile (compress profile --target cpu --out FILE)"]


def test_measure_plan_is_for_a_cpu_latency_budget(tmp_path):
    head = """\
        [model]
        spec = "compress:fmnist-cnn"
        [data]
        spec = "fashion-mnist"
        """
    ok = _write(tmp_path, head + """\
        [targets.cpu]
        latency_budget = 0.6
        profile = "cpu-x86-2core-ort"
        measure_plan = true
        """)
    (t,) = config.load(ok).targets
    assert t.measure_plan and t.latency_budget == 0.6
    bad = _write(tmp_path, head + """\
        [targets.cpu]
        ratio = 0.5
        measure_plan = true
        [targets.jetson]
        device = "orin-nano"
        latency_budget = 0.6
        measure_plan = true
        """)
    probs = _problems(bad)
    assert [q.split(":")[0] for q in probs] == ["targets.cpu.measure_plan", "targets.jetson.measure_plan"]
    assert all("only for the cpu target with a latency_budget" in q for q in probs)


def test_profiles_by_shipped_name_or_device(tmp_path):
    path = _write(tmp_path, """\
        [model]
        spec = "compress:fmnist-cnn"
        [data]
        spec = "fashion-mnist"
        [targets.cpu]
        latency_budget = 0.6
        profile = "cpu-x86-2core-ort"
        [targets.jetson]
        ratio = 0.5
        device = "agx-orin"
        require_measured = true
        """)
    cfg = config.load(path)
    from compress.hardware_profiles import load_profile

    assert cfg.target("cpu").profile == load_profile("cpu-x86-2core-ort", batch=1).path  # as compress plan resolves it
    jet = cfg.target("jetson")
    assert os.path.basename(jet.profile) == "jetson-agx-orin.json" and jet.device == "agx-orin"
    assert jet.require_measured and not jet.measured_here and cfg.target("cpu").measured_here


def test_devices_and_profile_names_are_checked(tmp_path):
    path = _write(tmp_path, """\
        [model]
        spec = "compress:fmnist-cnn"
        [data]
        spec = "fashion-mnist"
        [targets.cpu]
        latency_budget = 0.6
        profile = "cpu-arm-8core"
        device = "orin-nano"
        [targets.jetson]
        ratio = 0.5
        device = "xavier"
        require_measured = "yes"
        """)
    got = _problems(path)
    assert got[1].startswith("targets.cpu.profile: no profile named 'cpu-arm-8core' (shipped: ")
    assert got[:1] + got[2:] == [
        "targets.cpu.device: the cpu target builds for this machine; drop device = 'orin-nano'",
        "targets.jetson.require_measured: expected true or false, got a string 'yes'",
        "targets.jetson.device: unknown Jetson device 'xavier' (choose orin-nano or agx-orin)",
        "targets.jetson.profile: required: jetson latency cannot be measured on this machine and is "
        "predicted from a device profile (compress profile --target jetson --out FILE)"]


def test_plan_choice_and_required_tables(tmp_path):
    path = _write(tmp_path, """\
        [targets.cpu]
        ratio = 0.5
        ratios = [0.3, "x"]
        distill = true
        """)
    got = _problems(path)
    assert "model.spec: required (e.g. compress:fmnist-cnn, torchvision:resnet18, hf:DIR)" in got
    assert any(g.startswith("data.spec: required") for g in got)
    assert "targets.cpu.ratios[1]: expected a number, got a string 'x'" in got
    assert "targets.cpu: give one plan, not ratio and ratios" in got
    assert "targets.cpu.distill: needs finetune > 0 (distillation happens during fine-tuning)" in got


def test_only_names_a_configured_target(tmp_path):
    assert _problems(EXAMPLE, only="gpu") == ["--only: target 'gpu' is not configured (configured: cpu)"]


def test_cli_bad_config_exits_2_before_any_work(tmp_path):
    path = _write(tmp_path, """\
        [model]
        spec = "compress:fmnist-cnn"
        [data]
        spec = "fashion-mnist"
        [targets.cpu]
        ratio = "half"
        [budgets.gpu]
        min_speedup = 2
        """)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "compress", "release", "--config", path, "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "targets.cpu.ratio: expected a number, got a string 'half'" in r.stderr
    assert "budgets.gpu: a budget without a target" in r.stderr
    assert not out.exists()


def test_not_toml(tmp_path):
    p = tmp_path / "compress.toml"
    p.write_text("[model\nspec = 1\n")
    with pytest.raises(CompressError, match="not valid TOML"):
        config.load(str(p))


def test_example_workflow_runs_the_example_config():
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load(open(os.path.join(os.path.dirname(EXAMPLE), "release.yml")))
    steps = wf["jobs"]["release"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "./scripts/install-system.sh" in runs and "./scripts/setup.sh" in runs
    assert "compress release --config examples/fmnist-cpu/compress.toml" in " ".join(runs.split())
    assert '>> "$GITHUB_STEP_SUMMARY"' in runs and "release-out/report.md" in runs
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and all(f in uploads[0]["with"]["path"] for f in ("report.md", "report.json", "junit.xml"))


INT8_HEAD = """\
    [model]
    spec = "compress:fmnist-cnn"
    [data]
    spec = "fashion-mnist"
    [measure]
    batch = 8
    """


def test_int8_target_carries_its_precision_and_calibration(tmp_path):
    import numpy as np

    np.save(tmp_path / "calib.npy", np.zeros((8, 1, 28, 28), np.float32))
    cfg = config.load(_write(tmp_path, INT8_HEAD + """\
    [targets.cpu]
    ratio = 0.5
    dtype = "int8"
    calib = "calib.npy"
    calib_method = "minmax"
    [budgets.cpu]
    max_accuracy_drop = 2.0
    min_speedup = 1.2
    """))
    (t,) = cfg.targets
    assert t.int8 and t.calib == str(tmp_path / "calib.npy")      # relative to the config file
    assert t.export_args() == ["--dtype", "int8", "--calib", str(tmp_path / "calib.npy"), "--calib-method", "minmax"]
    assert t.quant_key()["calib_sha256"]                            # the calibration file keys the exports
    fp32 = config.load(_write(tmp_path, INT8_HEAD + "[targets.cpu]\nratio = 0.5\n")).targets[0]
    assert fp32.dtype == "fp32" and fp32.export_args() == [] and fp32.quant_key() == {}


def test_int8_problems_are_reported_with_their_key_paths(tmp_path):
    from tests.test_planner import PROFILE
    import json

    (tmp_path / "fp32.json").write_text(json.dumps(PROFILE))
    (tmp_path / "int8.json").write_text(json.dumps(dict(PROFILE, dtype="int8")))
    got = _problems(_write(tmp_path, INT8_HEAD + """\
    [targets.cpu]
    latency_budget = 0.6
    profile = "fp32.json"
    dtype = "int8"
    [targets.jetson]
    ratio = 0.5
    device = "orin-nano"
    dtype = "int8"
    calib = "random:8"
    [targets.gpu]
    latency_budget = 0.6
    profile = "int8.json"
    calib = "random:8"
    """))
    expected = [
        'targets.cpu.calib: required with dtype = "int8": static quantization needs calibration data',
        "targets.cpu.profile: profile ",                           # an fp32 profile for an int8 plan
        "targets.jetson.dtype: int8 releases are measured and judged on this machine's CPU: only cpu so far",
        'targets.gpu.calib: calibrates an int8 artifact: set dtype = "int8" or drop it',
        "targets.gpu.profile: profile ",                           # an int8 profile for an fp32 plan
    ]
    for start in expected:
        assert sum(g.startswith(start) for g in got) == 1, (start, got)
    assert len(got) == len(expected), got
    assert any("dtype 'float32', not 'int8'" in g and "compress profile --target cpu --dtype int8" in g for g in got)
    assert any('is an int8 profile; set dtype = "int8"' in g for g in got)
    bad = _problems(_write(tmp_path, INT8_HEAD + """\
    [targets.cpu]
    ratio = 0.5
    dtype = "int4"
    """))
    assert bad == ["targets.cpu.dtype: unknown dtype 'int4' (choose fp32 or int8)"]
    bad = _problems(_write(tmp_path, INT8_HEAD + """\
    [targets.cpu]
    ratio = 0.5
    dtype = "int8"
    calib = "missing.npy"
    calib_method = "kl"
    """))
    assert [b.split(" (choose")[0] for b in bad] == [
        f"targets.cpu.calib: file {tmp_path / 'missing.npy'} does not exist",
        "targets.cpu.calib_method: unknown method 'kl'"]


def test_int8_latency_budget_without_a_shipped_int8_profile_says_how_to_make_one(tmp_path):
    # measured at batch 3: no int8 profile ships at that batch (b1 and b8 do for this host)
    got = _problems(_write(tmp_path, INT8_HEAD.replace("batch = 8", "batch = 3") + """\
    [targets.cpu]
    latency_budget = 0.6
    profile = "cpu-x86-2core-ort"
    dtype = "int8"
    calib = "data:128"
    """))
    assert len(got) == 1 and got[0].startswith("targets.cpu.profile: ") and "not 3" in got[0], got
    assert "compress profile --target cpu --dtype int8 --batch 3" in got[0]
