"""`compress plan --dtype`: an int8 plan prices the int8 artifact from an int8 profile; the wrong kind of
profile, or none for the host, is bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest

from compress.cli import main
from tests.test_planner import PROFILE

MODEL = "tests.models:tiny_cnn"


@pytest.fixture
def profiles(tmp_path):
    fp32, int8 = tmp_path / "fp32.json", tmp_path / "int8.json"
    fp32.write_text(json.dumps(PROFILE))
    # an int8 profile of the same device: faster compute, so the plan's dense prediction differs from fp32's
    q = dict(PROFILE, name="synthetic-int8", dtype="int8", peak={"gflops": 200.0, "gbps": 10.0, "source": "test"})
    int8.write_text(json.dumps(q))
    return fp32, int8


def _plan(capsys, tmp_path, *args) -> tuple[int, str, object]:
    out = tmp_path / "plan"
    code = main(["plan", MODEL, "--latency-budget", "0.7", "--out", str(out), *map(str, args)])
    err = capsys.readouterr().err.strip()
    return code, err, out


def test_int8_plan_is_priced_on_the_int8_profile(capsys, tmp_path, profiles, one_thread):
    fp32, int8 = profiles
    code, err, out = _plan(capsys, tmp_path, "--dtype", "int8", "--profile", int8)
    assert code == 0, err
    r = json.loads((out / "report.json").read_text())
    assert r["dtype"] == "int8" and r["profile"] == "synthetic-int8"
    assert r["predicted_ms"] <= r["target_ms"] + 1e-9
    code, err, out2 = _plan(capsys, tmp_path / "b", "--profile", fp32)   # fp32: its own profile, other numbers
    assert code == 0, err
    r32 = json.loads((out2 / "report.json").read_text())
    assert r32["dtype"] == "float32" and r32["dense_ms"] != r["dense_ms"]


@pytest.mark.parametrize("args,msg", [
    (["--profile", "INT8"], "is an int8 profile (it prices the int8 artifact); plan with --dtype int8"),
    (["--dtype", "int8", "--profile", "FP32"], "dtype 'float32', not 'int8'; measure one on this machine with "
                                               "`compress profile --target cpu --dtype int8"),
])
def test_wrong_kind_of_profile_is_bad_input(capsys, tmp_path, profiles, args, msg):
    fp32, int8 = profiles
    args = [{"INT8": int8, "FP32": fp32}.get(a, a) for a in args]
    code, err, out = _plan(capsys, tmp_path, *args)
    assert code == 2 and msg in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_int8_without_a_profile_for_the_host_says_how_to_make_one(capsys, tmp_path):
    from compress.hardware_profiles.predictor import _candidates, dtype_name

    # batch 3: the shipped int8 profiles are batch 1 and 8; where one ships for this host at another batch, the
    # refusal names that file and its batch, else it says none ships; either way it says how to measure one
    names = [c for c in _candidates(dtype_name("cpu-x86-2core-ort", "int8"), 3) if c.is_file()]
    if any(c.name.endswith("-b3.json") for c in names):
        pytest.skip("an int8 batch-3 profile ships for this host")
    code, err, out = _plan(capsys, tmp_path, "--dtype", "int8", "--batch", "3")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert (f"measured at batch {names[0].stem.rsplit('-b', 1)[1]}, not 3" in err) if names else \
        ("no int8 profile 'cpu-x86-2core-ort-int8' ships for this host" in err)
    assert "`compress profile --target cpu --dtype int8 --batch 3 --model MODEL --out FILE`" in err
    assert not out.exists()


def test_int8_plan_measure_times_int8_artifacts(capsys, tmp_path, profiles):
    """#22: `plan --dtype int8 --measure` times the dense model and each candidate as int8 artifacts (QDQ, as the
    export quantizes them) in onnxruntime and records it; the budget is a fraction of the dense int8 model."""
    fp32, int8 = profiles
    code, err, out = _plan(capsys, tmp_path, "--dtype", "int8", "--profile", int8, "--measure", "--input-shape",
                           "1,3,32,32", "--batch", "1")
    assert code in (0, 1), err                   # 1: measured, but no candidate met the budget
    m = json.loads((out / "report.json").read_text())["measured"]
    assert m["dtype"] == "int8" and m["candidates"] and m["dense_ms"] > 0 and m["target_ratio"] == 0.7
    assert "onnxruntime CPU, int8" in (out / "plan.json").read_text()
