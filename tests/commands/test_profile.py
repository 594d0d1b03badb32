"""`compress profile` end to end on a tiny grid, and its bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "tests.models:tiny_cnn", "--input-shape", "1,3,16,16", "--rounds", "1", "--reps", "2",
        "--warmup", "1", "--grid-points", "2", "--threads", "1", "--max-seconds", "0.5", "--no-staircase", "--no-sparse"]


def main(capsys, *args) -> tuple[int, str, str]:
    """In-process `compress ...` (no interpreter start-up): exit code, stderr, stdout."""
    from compress.cli import main as cli_main

    try:
        code = cli_main([str(a) for a in args])
    except SystemExit as e:          # argparse's refusal (one line, exit 2)
        code = e.code
    cap = capsys.readouterr()
    return code, cap.err, cap.out


def cli(*args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "compress", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("prof") / "tiny.json"
    p = cli("profile", "--target", "cpu", *TINY, "--out", out, "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    return out, json.loads(p.stdout)


def test_profile_writes_a_valid_profile(tiny_profile):
    out, js = tiny_profile
    from compress.hardware_profiles import load_profile

    prof = load_profile(out, runtime="ort", dtype="float32", batch=1)
    assert js["tables"] == len(prof.data["tables"]) > 0 and js["points"] > 0
    assert prof.data["source"] == "measured" and prof.data["device"]["kind"] == "cpu"
    assert prof.data["measurement"]["repetitions"] == 2
    assert not out.with_name(out.name + ".partial.json").exists()
    # the profiled model was also timed end to end, against the tables' prediction of it
    (cal,) = prof.data["calibration"]
    assert cal["model"] == "tests.models:tiny_cnn" and cal["measured_ms"] > 0 and cal["predicted_ms"] > 0
    assert cal["factor"] == pytest.approx(cal["measured_ms"] / cal["predicted_ms"], rel=1e-3)
    # and profiled in the same process: its nodes' kernel sum against its wall time gives the
    # context line's in-network b, which the predictor charges every layer
    ctx = prof.data["context"]
    (row,) = ctx["network"]
    assert row["model"] == cal["model"] and row["wall_ms"] == cal["measured_ms"] and row["node_ms"] > 0
    assert row["nodes"] >= 2 and row["layers"] >= 2
    per_inf = prof.data["overhead"]["per_inference_ms"]
    assert row["b_ms"] == pytest.approx((row["wall_ms"] - per_inf - row["node_ms"]) / row["layers"], abs=2e-5)
    assert ctx["b_network"] == row["b_ms"]


def test_predict_with_the_profile(tiny_profile):
    out, _ = tiny_profile
    p = cli("predict", "tests.models:tiny_cnn", "--input-shape", "1,3,16,16", "--profile", out, "--json", "--layers")
    assert p.returncode == 0, p.stderr[-2000:]
    js = json.loads(p.stdout)
    assert js["predicted_ms"] > 0 and js["batch"] == 1 and js["roofline_layers"] == 0
    # the profiled model itself (a small network): its own in-network line, kernels x kernel_factor
    # plus b_ms per layer, which reproduces its measured dense latency
    cal = js["calibration"]
    assert cal["source"].startswith("model tests.models:tiny_cnn: in-network kernels x")
    assert cal["factor"] == 1.0 and cal["b_ms"] is not None and cal["kernel_factor"] > 0
    assert abs(sum(r["ms"] for r in js["per_layer"]) + js["overhead_ms"] - js["predicted_ms"]) < 1e-3
    from compress.hardware_profiles import load_profile

    (entry,) = load_profile(out).data["calibration"]
    assert entry["b_ms"] == cal["b_ms"] and js["predicted_ms"] == pytest.approx(entry["measured_ms"], rel=1e-3, abs=1e-4)


def test_refit_recomputes_the_calibration_in_place(tiny_profile, tmp_path):
    import shutil

    out, _ = tiny_profile
    copy = tmp_path / "p.json"
    shutil.copy(out, copy)
    d = json.loads(copy.read_text())
    want = json.loads(json.dumps(d["calibration"]))
    for c in d["calibration"]:
        c.pop("kernel_factor", None), c.pop("b_ms", None)
    copy.write_text(json.dumps(d))
    p = cli("profile", "--refit", str(copy), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(copy.read_text())["calibration"]
    assert got == want and "in-network" in cli("profile", "--refit", str(copy)).stdout
    bad = cli("profile", "--refit", str(tmp_path / "missing.json"))
    assert bad.returncode == 2 and "no such profile file" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("args, words", [
    (["--target", "cpu", "--runtime", "tvm"], "argument --runtime: invalid choice: 'tvm'"),   # not offered
    (["--target", "gpu"], "argument --target: invalid choice: 'gpu'"),
    (["--target", "cpu", "--batch", "0"], "--batch"),
    (["--target", "cpu", "--dtype", "int8", "--runtime", "torch"], "--dtype int8 is measured with onnxruntime"),
    (["--target", "cpu", "--dtype", "int4"], "argument --dtype: invalid choice: 'int4'"),
])
def test_profile_bad_input(tmp_path, capsys, args, words):
    out = tmp_path / "x.json"
    code, err, _ = main(capsys, "profile", *args, "--out", out)
    assert code == 2 and words in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_extend_keeps_the_profiles_precision(tmp_path, capsys):
    # an int8 measurement never lands in an fp32 profile (nor the reverse): refused before anything is timed
    from tests.test_planner import PROFILE

    f = tmp_path / "fp32.json"
    f.write_text(json.dumps(PROFILE))
    before = f.read_text()
    code, err, _ = main(capsys, "profile", "--target", "cpu", "--dtype", "int8", "--model", "tests.models:tiny_cnn",
                        "--extend", f)
    assert code == 2 and "that profile is float32; pass --dtype fp32" in err and len(err.strip().splitlines()) == 1
    assert f.read_text() == before


def test_profile_out_dir_missing(tmp_path, capsys):
    code, err, _ = main(capsys, "profile", "--target", "cpu", "--out", tmp_path / "no" / "x.json")
    assert code == 2 and "does not exist" in err


def test_extend_adds_another_models_tables_and_calibration(tiny_profile, tmp_path):
    import shutil

    out, _ = tiny_profile
    copy = tmp_path / "p.json"
    shutil.copy(out, copy)
    before = json.loads(copy.read_text())
    ext = ["--model", "tests.models:tiny_grouped_cnn", "--input-shape", "1,3,16,16", *TINY[4:]]
    p = cli("profile", "--target", "cpu", *ext, "--extend", copy, "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    js, after = json.loads(p.stdout), json.loads(copy.read_text())
    old = {t["key"]: t for t in before["tables"]}
    new = {t["key"]: t for t in after["tables"]}
    assert all(new[k] == t for k, t in old.items())          # what the profile had stays as it was measured
    assert after["memory_ops"] == before["memory_ops"] and after["overhead"] == before["overhead"]
    # the grouped conv got its own table, its channel counts splitting into its 3 groups
    grouped = [t for k, t in new.items() if k not in old and " g3 " in k]
    assert grouped and all(c % 3 == 0 for t in grouped for c in t["cin"] + t["cout"])
    assert js["added"]["tables"] == len(new) - len(old) > 0
    assert js["added"]["models"] == ["tests.models:tiny_grouped_cnn"]
    cal = {c["model"]: c for c in after["calibration"]}
    assert cal["tests.models:tiny_cnn"] == before["calibration"][0]
    g = cal["tests.models:tiny_grouped_cnn"]
    assert g["measured_ms"] > 0 and g["factor"] == pytest.approx(g["measured_ms"] / g["predicted_ms"], rel=1e-3)
    assert [e["models"] for e in after["measurement"]["extensions"]] == [["tests.models:tiny_grouped_cnn"]]
    # bad input: one line, exit 2, the file untouched
    for args, words in ((["--batch", "8"], "pass --batch 1"), (["--out", tmp_path / "x.json"], "not both")):
        b = cli("profile", "--target", "cpu", *ext, "--extend", copy, *args)
        assert b.returncode == 2 and words in b.stderr and "Traceback" not in b.stderr
    missing = cli("profile", "--target", "cpu", *ext, "--extend", tmp_path / "none.json")
    assert missing.returncode == 2 and "no such profile file" in missing.stderr
    assert json.loads(copy.read_text()) == after and not list(tmp_path.glob("compress-extend-*"))


def test_profile_python_api(tiny_profile, tmp_path):
    """The library entry point: the command's checks and --refit, without argparse."""
    import dataclasses
    import shutil

    from compress.api.profile import ProfileRun, profile
    from compress.errors import CompressError
    from compress.hardware_profiles.profiler import ProfileConfig

    new = str(tmp_path / "x.json")
    with pytest.raises(CompressError, match="--grid-points must be >= 1"):
        profile(ProfileRun(ProfileConfig(max_points=0), out=new))
    with pytest.raises(CompressError, match="needs --target"):
        profile(ProfileRun(ProfileConfig(target=None), out=new))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ProfileRun().out = new
    out, _ = tiny_profile
    copy = tmp_path / "p.json"
    shutil.copy(out, copy)
    r = profile(ProfileRun(refit=str(copy)))
    assert r["text"].startswith(f"refitted {copy}: ") and set(r) == {"text", "json"}
    assert r["json"] == {"out": str(copy), "calibration": json.loads(copy.read_text())["calibration"]}
    assert not Path(new).exists()


def test_sparse_table_is_measured_with_the_kernel_that_ships(capsys, tmp_path):
    """`compress profile --sparse FILE` replaces a profile's torch-measured sparse table with one measured with
    compress's block-sparse op in onnxruntime and keeps earlier shapes of the same kernel; bad input is one
    line."""
    from compress.hardware_profiles.sparse_bench import RUNTIME as SPARSE_RUNTIME

    prof = tmp_path / "p.json"
    d = json.loads((REPO / "hardware_profiles" / "cpu-x86-2core-ort-amd-avx512-b1.json").read_text())
    d["sparse"] = {"runtime": "torch", "note": "an old table, measured with torch's BSR", "entries": [
        {"layer": "linear", "in": 4096, "out": 4096, "rows": 1, "format": "dense", "ms": 1.0}]}
    prof.write_text(json.dumps(d))
    code, err, out = main(capsys, "profile", "--sparse", prof, "--model", "tests.lower.lowering_models:tiny_bert",
                          "--reps", "1", "--threads", "1", "--json")
    assert code == 0, err
    sp = json.loads(prof.read_text())["sparse"]
    assert sp["runtime"] == SPARSE_RUNTIME and sp["threads"] == 1 and sp["kernel"]["march"] == "native"
    shapes = {(e["layer"], e["in"], e["out"]) for e in sp["entries"]}
    assert ("linear", 64, 128) in shapes and ("linear", 128, 64) in shapes
    assert ("linear", 4096, 4096) not in shapes                        # the torch-measured entry is gone
    fmts = {e["format"] for e in sp["entries"]}
    assert {"dense", "bsr16x16", "bsr32x32", "bsr64x64"} <= fmts
    assert all(e["ms"] > 0 for e in sp["entries"])
    n = len(sp["entries"])
    code, err, _ = main(capsys, "profile", "--sparse", prof, "--model", "tests.lower.lowering_models:bottleneck",
                        "--reps", "1", "--threads", "1")
    assert code == 0, err
    sp2 = json.loads(prof.read_text())["sparse"]
    assert len(sp2["entries"]) > n and ("linear", 64, 128) in {(e["layer"], e["in"], e["out"]) for e in sp2["entries"]}

    code, err, _ = main(capsys, "profile", "--sparse", tmp_path / "missing.json")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no such profile file" in err


def test_extend_measures_only_what_the_profile_lacks(tiny_profile, tmp_path):
    """issue #20: `--extend` measures only the tables, memory-op kinds and dense timings FILE lacks; with
    nothing missing it measures nothing and leaves FILE as it was; `--quick` needs no --target."""
    import shutil

    out, _ = tiny_profile
    copy = tmp_path / "p.json"
    shutil.copy(out, copy)
    ext = ["--model", "tests.models:tiny_cnn", "--input-shape", "1,3,16,16", *TINY[4:]]
    same = copy.read_bytes()
    p = cli("profile", *ext, "--extend", copy, "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["added"] is None and copy.read_bytes() == same
    # take one table, one memory-op kind and the model's calibration away: --extend --quick puts back those
    d = json.loads(same)
    gone = d["tables"].pop(0)
    kind = sorted(k for k in d["memory_ops"] if k != "reorder")[0]
    del d["memory_ops"][kind]
    d["calibration"], d["context"]["network"] = [], []
    copy.write_text(json.dumps(d))
    p = cli("profile", *ext, "--extend", copy, "--quick", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    js, after = json.loads(p.stdout), json.loads(copy.read_text())
    assert js["added"]["tables"] == 1 and js["added"]["memory_ops"] == [kind] and js["added"]["quick"]
    new = {t["key"]: t for t in after["tables"]}
    assert set(new) == {t["key"] for t in json.loads(same)["tables"]}
    assert all(new[t["key"]] == t for t in d["tables"])                  # the others untouched
    assert (new[gone["key"]]["cin"], new[gone["key"]]["cout"]) == (gone["cin"], gone["cout"])   # the same grid
    assert after["memory_ops"][kind]["points"] and after["overhead"] == d["overhead"]
    (cal,) = after["calibration"]
    assert cal["model"] == "tests.models:tiny_cnn" and cal["measured_ms"] > 0
    assert cal["factor"] == pytest.approx(cal["measured_ms"] / cal["predicted_ms"], rel=1e-3)
    (row,) = after["context"]["network"]                                 # a small network: its kernel sum too
    assert row["model"] == cal["model"] and row["node_ms"] > 0 and cal["b_ms"] is not None
    assert after["measurement"]["extensions"][-1]["quick"] is True
    bad = cli("profile", *ext, "--out", tmp_path / "x.json", "--target", "cpu", "--quick")
    assert bad.returncode == 2 and "--quick applies to --extend" in bad.stderr


def test_extend_recalibrate_retimes_a_calibrated_model(tiny_profile, tmp_path):
    """`--extend --recalibrate`: a model FILE already calibrated is timed again here and its row replaced
    (the tables stay); without --recalibrate FILE is left as it was; --recalibrate without --extend is bad input."""
    import shutil

    out, _ = tiny_profile
    copy = tmp_path / "p.json"
    shutil.copy(out, copy)
    d = json.loads(copy.read_text())
    (old,) = d["calibration"]
    d["calibration"][0] = old | {"measured_ms": old["measured_ms"] * 50, "factor": old["factor"] * 50}   # another machine
    copy.write_text(json.dumps(d))
    ext = ["--model", "tests.models:tiny_cnn", "--input-shape", "1,3,16,16", *TINY[4:]]
    p = cli("profile", *ext, "--extend", copy, "--recalibrate", "--quick", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    after = json.loads(copy.read_text())
    (cal,) = after["calibration"]
    assert cal["model"] == old["model"] and cal["measured_ms"] < old["measured_ms"] * 10      # timed again, here
    assert cal["factor"] == pytest.approx(cal["measured_ms"] / cal["predicted_ms"], rel=1e-3)
    assert after["tables"] == d["tables"] and len(after["context"]["network"]) == len(d["context"]["network"])
    bad = cli("profile", *ext, "--out", tmp_path / "x.json", "--target", "cpu", "--recalibrate")
    assert bad.returncode == 2 and "--recalibrate applies to --extend" in bad.stderr


def test_int8_profile_end_to_end(tmp_path, capsys):
    # `--dtype int8`: the tables, the profiled model's timing and the profile's dtype are the int8 artifact's;
    # predict and plan take it as int8 and refuse it as fp32
    out = tmp_path / "int8.json"
    p = cli("profile", "--target", "cpu", "--dtype", "int8", *TINY, "--out", out, "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    js = json.loads(p.stdout)
    from compress.hardware_profiles import load_profile

    prof = load_profile(out, dtype="int8", batch=1)
    assert js["dtype"] == prof.dtype == "int8" and len(prof.data["tables"]) == js["tables"] > 0
    assert "QDQ int8" in prof.data["runtime"]["provider"] and prof.data.get("sparse") is None
    assert prof.data["steps"]["conv"]["block"] == 1          # --no-staircase: no measured step, no rounding
    (cal,) = prof.data["calibration"]
    assert cal["model"] == "tests.models:tiny_cnn" and cal["measured_ms"] > 0
    code, err, o = main(capsys, "predict", "tests.models:tiny_cnn", "--input-shape", "1,3,16,16", "--profile", out,
                        "--dtype", "int8", "--json")
    assert code == 0 and json.loads(o)["dtype"] == "int8", err
    code, err, _ = main(capsys, "plan", "tests.models:tiny_cnn", "--input-shape", "1,3,16,16", "--profile", out,
                        "--latency-budget", "0.8", "--out", tmp_path / "plan")
    assert code == 2 and "is an int8 profile" in err and not (tmp_path / "plan").exists()
    code, err, o = main(capsys, "plan", "tests.models:tiny_cnn", "--input-shape", "1,3,16,16", "--profile", out,
                        "--dtype", "int8", "--latency-budget", "0.9", "--min-keep", "0.05", "--out", tmp_path / "plan",
                        "--json")
    assert code == 0, err
    rep = json.loads(o)
    assert rep["dtype"] == "int8" and rep["predicted_ms"] <= rep["target_ms"] + 1e-9


def test_extend_takes_the_files_batch_and_precision_unless_given(tmp_path):
    """`--extend FILE` needs neither --batch nor --dtype: FILE says them (given ones are checked against it)."""
    import argparse

    from compress.commands.profile import _of_file

    f = tmp_path / "p.json"
    f.write_text(json.dumps({"batch": 8, "dtype": "int8"}))
    ns = lambda **kw: argparse.Namespace(**({"extend": None, "batch": None, "dtype": None} | kw))
    assert _of_file(ns(extend=str(f))) == (8, "int8")
    assert _of_file(ns(extend=str(f), batch=1, dtype="fp32")) == (1, "fp32")   # refused later, in one line
    assert _of_file(ns()) == (1, "fp32")
    assert _of_file(ns(extend=str(tmp_path / "missing.json"))) == (1, "fp32")  # "no such profile file", later
