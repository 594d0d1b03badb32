"""`python -m compress` end to end, through a subprocess: every verb once, and bad input.

Bad input exits 2 with exactly one line on stderr naming the problem, no traceback,
and leaves no output directory (and no temporary directory) behind.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RESNET = ["torchvision:resnet18", "--input-shape", "1,3,64,64"]


def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "compress", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_ok(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}"
    assert "Traceback" not in p.stderr


# ---------------------------------------------------------------- prune
@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> tuple[Path, dict]:
    """`compress prune torchvision:resnet18 ... --json` once; the directory and its JSON output."""
    parent = tmp_path_factory.mktemp("cli")
    out = parent / "r18"
    p = run("prune", *RESNET, "--ratio", "0.3", "--json", "--out", out)
    assert_ok(p)
    return out, json.loads(p.stdout)


def test_prune_writes_all_files_and_a_sane_summary(pruned_dir):
    out, printed = pruned_dir
    assert sorted(os.listdir(out)) == ["model.onnx", "model.safetensors", "plan.json", "summary.json"]
    assert [p.name for p in out.parent.iterdir()] == [out.name], "temporary directories were left behind"
    s = json.loads((out / "summary.json").read_text())
    assert printed == s | {"out": str(out)}
    assert s["model"] == "torchvision:resnet18" and s["ratio"] == 0.3 and s["criterion"] == "l1"
    assert s["global"] is False and s["round_to"] == 16
    assert 0 < s["params_after"] < s["params_before"] and 0 < s["macs_after"] < s["macs_before"]
    assert math.isclose(s["mac_reduction"], s["macs_before"] / s["macs_after"])
    assert 0 < s["groups_pruned"] <= s["groups"]
    assert 0 <= s["max_rel_error_vs_masked"] <= 1e-4
    assert s["onnx_parity"]["ok"] is True and s["onnx_parity"]["max_rel_error"] <= 1e-4
    assert s["prune_seconds"] > 0 and isinstance(s["notes"], list)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["source"]["model"] == "torchvision:resnet18" and plan["source"]["input_shape"] == [1, 3, 64, 64]
    assert len(plan["groups"]) == s["groups"] and plan["config"]["ratio"] == 0.3
    with open(out / "model.onnx", "rb") as f:
        assert len(f.read(16)) == 16


def test_prune_text_output_of_a_callable_spec(tmp_path):
    """`package.module:function` from the repository root: the GQA test model."""
    out = tmp_path / "gqa"
    p = run("prune", "tests.models:tiny_gqa", "--ratio", "0.5", "--out", out)
    assert_ok(p)
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("pruned tests.models:tiny_gqa: params ") and "parity ok" in lines[0]
    assert f"wrote {out}" in lines[0]
    s = json.loads((out / "summary.json").read_text())
    assert s["groups_pruned"] == s["groups"] == 4
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        q, k = f.get_slice("layers.0.self_attn.q_proj.weight"), f.get_slice("layers.0.self_attn.k_proj.weight")
        assert q.get_shape() == [32, 64] and k.get_shape() == [16, 64]   # 2 query heads, 1 kv head


def test_prune_replaces_an_existing_output_directory(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    p = run("prune", "tests.models:tiny_cnn", "--ratio", "0.5", "--out", out)
    assert_ok(p)
    assert sorted(os.listdir(out)) == ["model.onnx", "model.safetensors", "plan.json", "summary.json"]
    assert [x.name for x in tmp_path.iterdir()] == ["o"]


# ---------------------------------------------------------------- inspect
def test_inspect_model_json():
    p = run("inspect", *RESNET, "--json")
    assert_ok(p)
    info = json.loads(p.stdout)
    assert info["model"] == "torchvision:resnet18" and info["pruned"] is False
    assert info["params"] == 11_689_512 and info["macs"] > 0 and info["input_shape"] == [1, 3, 64, 64]
    assert len(info["groups"]) == 12
    for g in info["groups"]:
        assert g["channels"] > 0 and g["producers"] and g["modules"]
    assert any(b["producers"] == "fc" for b in info["blocked"])   # the classifier's outputs stay


def test_inspect_model_text():
    p = run("inspect", "tests.models:tiny_gqa")
    assert_ok(p)
    lines = p.stdout.splitlines()
    assert lines[0] == "tests.models:tiny_gqa"
    assert lines[1].startswith("params 90,432")
    assert any("layers.0.self_attn.q_proj" in line for line in lines)


def test_inspect_pruned_dir(pruned_dir):
    out, summary = pruned_dir
    p = run("inspect", out, "--json")
    assert_ok(p)
    info = json.loads(p.stdout)
    assert info["pruned"] is True and info["model"] == "torchvision:resnet18"
    assert info["params"] == summary["params_after"] and info["macs"] == summary["macs_after"]
    assert info["input_shape"] == [1, 3, 64, 64]
    assert info["plan"]["groups"] == summary["groups"]
    assert info["plan"]["channels_after"] < info["plan"]["channels_before"]
    p = run("inspect", out)
    assert_ok(p)
    assert f"(pruned: {out})" in p.stdout.splitlines()[0]


# ---------------------------------------------------------------- console script and help
def test_console_script_and_help_for_every_verb():
    script = Path(sys.executable).parent / "compress"
    assert script.is_file() and os.access(script, os.X_OK), f"{script} missing"
    p = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0 and "usage: compress" in p.stdout
    from compress.cli import build_parser
    verbs = [a for a in build_parser()._subparsers._group_actions[0].choices]
    assert {"prune", "inspect"} <= set(verbs)
    for verb in verbs:
        p = run(verb, "--help")
        assert p.returncode == 0 and p.stdout.startswith(f"usage: compress {verb}"), verb
        assert p.stderr == ""


# ---------------------------------------------------------------- bad input
def _garbage(path: Path) -> Path:
    path.write_bytes(b"\x00\x01not a weights file" * 7)
    return path


class _Evil:
    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _case_files(tmp: Path) -> dict[str, Path]:
    files = {"garbage_st": _garbage(tmp / "w.safetensors"), "garbage_pt": _garbage(tmp / "w.pt")}
    import torchvision
    from safetensors.torch import save_file

    sd = torchvision.models.resnet18().state_dict()
    sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "nan.safetensors"))
    files["nan"] = tmp / "nan.safetensors"
    np.save(tmp / "calib.npy", np.zeros((4, 3, 32, 32), dtype=np.float32))
    files["calib"] = tmp / "calib.npy"
    ev = _Evil()
    ev.marker = tmp / "PWNED"
    torch.save({"conv1.weight": ev}, str(tmp / "evil.pt"))
    files["evil"] = tmp / "evil.pt"
    return files


BAD = {
    # id: (args before --out, words the one stderr line must contain)
    "unknown-torchvision-model": (["prune", "torchvision:nope", "--ratio", "0.3"], ["torchvision", "'nope'"]),
    "unknown-spec-form": (["prune", "resnet18", "--ratio", "0.3"], ["unknown model", "resnet18"]),
    "unimportable-callable": (["prune", "no_such_pkg.mod:fn", "--ratio", "0.3"], ["cannot import", "no_such_pkg"]),
    "hf-dir-without-config": (["prune", "hf:/nonexistent/dir", "--ratio", "0.3"], ["config.json"]),
    "missing-weights-file": ([*RESNET[:1], "--weights", "/nonexistent/w.safetensors", "--ratio", "0.3"],
                             ["does not exist"]),
    "garbage-safetensors": ([*RESNET[:1], "--weights", "{garbage_st}", "--ratio", "0.3"],
                            ["cannot read weights", "w.safetensors"]),
    "garbage-pt": ([*RESNET[:1], "--weights", "{garbage_pt}", "--ratio", "0.3"], ["cannot read weights", "w.pt"]),
    "pickled-code-in-pt": ([*RESNET[:1], "--weights", "{evil}", "--ratio", "0.3"], ["cannot read weights", "evil.pt"]),
    "nan-weights": ([*RESNET[:1], "--weights", "{nan}", "--ratio", "0.3"], ["NaN", "layer1.0.conv1.weight"]),
    "wrong-input-shape": (["torchvision:resnet18", "--input-shape", "1,5,7", "--ratio", "0.3"],
                          ["(1, 5, 7)", "--input-shape"]),
    "non-numeric-input-shape": (["torchvision:resnet18", "--input-shape", "1,3,a", "--ratio", "0.3"],
                                ["--input-shape", "1,3,a"]),
    "ratio-0": ([*RESNET, "--ratio", "0"], ["--ratio", "(0, 1)"]),
    "ratio-1.5": ([*RESNET, "--ratio", "1.5"], ["--ratio", "1.5"]),
    "ignore-unknown-module": ([*RESNET, "--ratio", "0.3", "--ignore", "layer9.conv"], ["--ignore", "layer9.conv"]),
    "calib-wrong-shape": ([*RESNET, "--ratio", "0.3", "--criterion", "activation", "--calib", "{calib}"],
                          ["--calib", "(3, 32, 32)", "(3, 64, 64)"]),
    "calib-missing-file": ([*RESNET, "--ratio", "0.3", "--criterion", "activation", "--calib", "/nonexistent.npy"],
                           ["--calib", "does not exist"]),
    "unknown-criterion": ([*RESNET, "--ratio", "0.3", "--criterion", "magic"], ["--criterion", "magic"]),
    "missing-ratio": (list(RESNET), ["--ratio"]),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    return _case_files(tmp_path_factory.mktemp("bad_inputs"))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line(case, bad_files, tmp_path):
    args, words = BAD[case]
    args = [a.format(**bad_files) for a in args]
    if args[0] != "prune":
        args = ["prune", *args]
    parent = tmp_path / "outs"
    parent.mkdir()
    out = parent / "result"
    p = run(*args, "--out", out)
    assert p.returncode == 2, f"exit {p.returncode}\nstdout: {p.stdout[-1000:]}\nstderr: {p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{p.stderr[-3000:]}"
    assert "error" in lines[0]
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert p.stdout == ""
    assert not out.exists(), "an output directory was written"
    assert list(parent.iterdir()) == [], f"left behind: {list(parent.iterdir())}"
    if case == "pickled-code-in-pt":
        assert not (bad_files["evil"].parent / "PWNED").exists(), "a weights file executed code"


def test_prune_of_a_pruned_dir_is_bad_input(pruned_dir, tmp_path):
    out, _ = pruned_dir
    p = run("prune", out, "--ratio", "0.5", "--out", tmp_path / "again")
    assert p.returncode == 2 and "already pruned" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "again").exists()


def test_inspect_bad_input_exits_2():
    p = run("inspect", "torchvision:nope")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "'nope'" in p.stderr
