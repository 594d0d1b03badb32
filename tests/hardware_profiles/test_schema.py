"""Profile files: validation on load, clear one-line errors, and the shipped profiles."""

from __future__ import annotations

import json

import pytest

from compress.errors import CompressError
from compress.hardware_profiles import load_profile, shipped
from compress.hardware_profiles.schema import validate

from profile_fixtures import constructed


def write(tmp_path, d, name="p.json"):
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def test_constructed_profile_is_valid(tmp_path):
    prof = load_profile(write(tmp_path, constructed()))
    assert prof.name == "test-cpu" and prof.batch == 1 and prof.runtime == "ort"


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.pop("tables"), "tables"),
    (lambda d: d.update(schema_version=99), "schema_version"),
    (lambda d: d.update(schema="other"), "schema"),
    (lambda d: d.update(source="guessed"), "source"),
    (lambda d: d["runtime"].update(name="onnx"), "runtime.name"),
    (lambda d: d["peak"].update(gflops=-1), "peak.gflops"),
    (lambda d: d["overhead"].pop("per_op_ms"), "overhead.per_op_ms"),
    (lambda d: d["tables"][0]["ms"].pop(), "grid"),
    (lambda d: d["tables"][0].update(cin=[32, 16, 64]), "increasing"),
    (lambda d: d["tables"][0]["ms"][0].__setitem__(0, "fast"), "grid"),
    (lambda d: d["steps"]["conv"].pop("block"), "steps.conv"),
    (lambda d: d["memory_ops"]["unary"].pop("ms"), "memory_ops.unary"),
    (lambda d: d.update(calibration=[{"model": "m", "structure": "ab", "factor": 1.0, "b_ms": "fast"}]), "calibration"),
    (lambda d: d.update(calibration=[{"model": "m", "factor": 1.0}]), "calibration"),
])
def test_schema_errors_name_file_and_problem(tmp_path, mutate, words):
    d = constructed()
    mutate(d)
    p = write(tmp_path, d)
    with pytest.raises(CompressError) as e:
        load_profile(p)
    msg = str(e.value)
    assert str(p) in msg and words in msg and "compress profile" in msg and "\n" not in msg


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(CompressError, match="no such file"):
        load_profile(tmp_path / "nope.json")
    p = tmp_path / "t.json"
    p.write_text(json.dumps(constructed())[:200])
    with pytest.raises(CompressError, match="not valid JSON"):
        load_profile(p)
    with pytest.raises(CompressError, match="no profile named 'no-such-device'"):
        load_profile("no-such-device")


def test_runtime_dtype_batch_must_match(tmp_path):
    p = write(tmp_path, constructed())
    with pytest.raises(CompressError, match="runtime 'ort', not 'tensorrt'"):
        load_profile(p, runtime="tensorrt")
    with pytest.raises(CompressError, match="dtype 'float32', not 'float16'"):
        load_profile(p, dtype="float16")
    with pytest.raises(CompressError, match="batch 1, not 8"):
        load_profile(p, batch=8)
    assert load_profile(p, runtime="ort", dtype="float32", batch=1).batch == 1


def test_shipped_profiles_load_and_say_where_they_come_from():
    names = shipped()
    assert "jetson-orin-nano" in names and "jetson-agx-orin" in names
    assert any(n.startswith("cpu-x86-2core-ort") for n in names)
    assert not any(n.startswith("h100") for n in names)   # not shipped until measured
    for n in names:
        prof = load_profile(n)
        validate(prof.data, n)
        if n.startswith("jetson"):
            assert prof.analytic and "published" in prof.data["peak"]["source"]
            assert "analytic" in prof.data["source_detail"]
        else:
            assert prof.data["source"] == "measured" and prof.data["tables"]
    cpu1 = load_profile("cpu-x86-2core-ort", batch=1)
    assert cpu1.batch == 1 and cpu1.runtime == "ort"
    # analytic profiles scale to any batch
    assert load_profile("jetson-orin-nano", batch=4).batch == 4


def test_shipped_calibrations_match_the_models_layer_structure_today():
    """A calibration row applies to a network only while its layer-structure fingerprint matches; a change to layer
    extraction that alters a profiled model's fingerprint silently drops that model's own calibration (hf:minilm's
    row in the amd-avx512 b1 file went stale that way and predicted its plans 10-17% off): re-time the row with
    `compress profile --extend FILE --recalibrate --model M` (or `--refit` when only the fit changed)."""
    from compress.api.profile import layers_of
    from compress.hardware_profiles.predictor import HERE, NOT_PROFILES, structure

    seen: dict = {}
    stale = []
    for f in sorted(HERE.glob("*.json")):
        if f.name in NOT_PROFILES:
            continue
        for row in json.loads(f.read_text()).get("calibration") or []:
            key = (row["model"], tuple(row.get("input_shape") or ()))
            if key not in seen:
                seen[key] = structure(layers_of(row["model"], row.get("input_shape")))
            if seen[key] != row["structure"]:
                stale.append(f"{f.name}: {row['model']}")
    assert seen and not stale, stale
