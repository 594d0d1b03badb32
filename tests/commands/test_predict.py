"""`compress predict`: shipped profiles, JSON, and one-line errors for bad profiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = ["tests.models:tiny_cnn", "--input-shape", "1,3,16,16"]


def main(capsys, *args) -> tuple[int, str, str]:
    """In-process `compress ...` (no interpreter start-up): exit code, stderr, stdout."""
    from compress.cli import main as cli_main

    code = cli_main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.err, cap.out


def cli(*args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "compress", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_predict_shipped_analytic_profile():
    p = cli("predict", *MODEL, "--profile", "jetson-orin-nano", "--batch", "2", "--json")
    assert p.returncode == 0, p.stderr
    js = json.loads(p.stdout)
    assert js["predicted_ms"] > 0 and js["source"] == "analytic" and js["batch"] == 2 and js["runtime"] == "tensorrt"


def test_predict_shipped_cpu_profile_text(capsys, one_thread):
    code, err, out = main(capsys, "predict", *MODEL, "--profile", "cpu-x86-2core-ort", "--batch", "1")
    assert code == 0, err
    assert "predicted" in out and "ms at batch 1 on cpu-x86-2core-ort" in out



def _bad(tmp_path, kind):
    f = tmp_path / "p.json"
    if kind == "truncated":
        f.write_text('{"schema": "compress.hardware_profile", "schema_vers')
    elif kind == "invalid":
        f.write_text(json.dumps({"schema": "compress.hardware_profile", "schema_version": 1}))
    elif kind == "missing":
        f = tmp_path / "missing.json"
    return f


@pytest.mark.parametrize("kind, extra, words", [
    ("truncated", [], "not valid JSON"),
    ("invalid", [], "missing"),
    ("missing", [], "no such file"),
    (None, ["--runtime", "tensorrt"], "not 'tensorrt'"),
    (None, ["--dtype", "float16"], "not 'float16'"),
    (None, ["--batch", "3"], "not 3"),
])
def test_bad_profiles(tmp_path, capsys, kind, extra, words):
    f = _bad(tmp_path, kind) if kind else REPO / "hardware_profiles" / "cpu-x86-2core-ort-b1.json"
    code, err, _ = main(capsys, "predict", *MODEL, "--profile", f, *extra)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and str(f) in lines[0] and "compress profile" in lines[0]


def test_unknown_profile_name(capsys):
    code, err, _ = main(capsys, "predict", *MODEL, "--profile", "h100-torch")
    assert code == 2 and "no profile named 'h100-torch'" in err and "compress profile" in err


def test_predict_dtype_picks_and_checks_the_profiles_precision(capsys, tmp_path, one_thread):
    from tests.test_planner import PROFILE

    f = tmp_path / "int8.json"
    f.write_text(json.dumps(dict(PROFILE, dtype="int8")))
    code, err, out = main(capsys, "predict", *MODEL, "--profile", f, "--dtype", "int8", "--json")
    assert code == 0, err
    assert json.loads(out)["dtype"] == "int8"
    code, err, _ = main(capsys, "predict", *MODEL, "--profile", f, "--dtype", "fp32")
    assert code == 2 and "dtype 'int8', not 'float32'" in err and len(err.strip().splitlines()) == 1
    # a shipped name with --dtype int8 looks for NAME-int8[-TAG]-bN.json, and says how to measure one
    from compress.hardware_profiles.predictor import _candidates, dtype_name

    if not any(c.is_file() for c in _candidates(dtype_name("cpu-x86-2core-ort", "int8"), 8)):
        code, err, _ = main(capsys, "predict", *MODEL, "--profile", "cpu-x86-2core-ort", "--dtype", "int8",
                            "--batch", "8")
        assert code == 2 and "compress profile --target cpu --dtype int8 --batch 8" in err
