"""Issue #23, items 4-8: the TensorRT side of `--target gpu`, checked here without TensorRT or a GPU.

- the generated trtexec lines against the documented flags of both majors (10.x: weak typing, --fp16;
  11+: strongly typed, --fp16 removed, the precision is the fp16 ONNX file's), run through the generated
  build_engine.sh with a stand-in trtexec that prints TensorRT's banner, so the script's own version
  dispatch and trtexec search ($TRTEXEC, PATH, /usr/src/tensorrt/bin) run for real;
- every input its own shape in the profile flags (input_ids + attention_mask style models);
- `tensorrt` importing on a machine without a GPU, simulated by a Builder that raises as the real one does
  ('pybind11::init(): factory function returned nullptr'): the export marks the engine not verified;
- build_trt.build's calls for both majors, against a stand-in module holding only the API each major has
  (no BuilderFlag.FP16 on 11). No engine is built or verified by any of this."""

from __future__ import annotations

import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from compress.export import build_trt as bt
from compress.export import manifest as mf
from compress.export.onnx import export_onnx
from compress.export.package import _trt, export
from compress.export.targets import ExportConfig

# trtexec flags as documented: TensorRT 10.x `trtexec --help`, and the 10.x -> 11.x migration guide (11 removes
# every precision flag, strong typing is always on, --stronglyTyped is no longer needed)
TRT10_FLAGS = {"--onnx", "--saveEngine", "--loadEngine", "--fp16", "--sparsity", "--minShapes", "--optShapes",
               "--maxShapes", "--shapes", "--memPoolSize", "--skipInference", "--stronglyTyped"}
REMOVED_IN_11 = {"--fp16", "--int8", "--bf16", "--fp8", "--int4", "--best"}
TRT11_FLAGS = TRT10_FLAGS - REMOVED_IN_11


class TwoInputs(nn.Module):
    """input_ids-like (B, 8) and attention_mask-like (B, 4) inputs of different shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(4, 4)

    def forward(self, x, m):
        return self.a(x) + self.b(m)


@pytest.fixture
def two_input_dir(tmp_path):
    export_onnx(TwoInputs().eval(), (torch.randn(2, 8), torch.randn(2, 4)), str(tmp_path / "model.onnx"))
    return tmp_path


def _flags(cmd: str) -> list[str]:
    return [a.split("=")[0] for a in cmd.split()[1:]]


def test_version_dispatch():
    assert [bt.strongly_typed(v) for v in ("8.6.1", "10.3.0", "10.16.1.11", "11.0.0", "11.4.1")] == \
        [False, False, False, True, True]
    assert bt.major("10.16.1") == 10 and bt.STRONG_TYPING_MAJOR == 11


@pytest.mark.parametrize("fp16", [True, False])
@pytest.mark.parametrize("batches", [(1, 4, 32), None])
def test_trtexec_lines_use_the_documented_flags_of_each_major(fp16, batches):
    inputs = [("input", (3, 32, 32))]
    weak = bt.trtexec_args(10, fp16, True, inputs, batches)
    strong = bt.trtexec_args(11, fp16, True, inputs, batches)
    assert set(_flags("trtexec " + " ".join(weak))) <= TRT10_FLAGS
    assert set(_flags("trtexec " + " ".join(strong))) <= TRT11_FLAGS
    assert ("--fp16" in weak) == fp16 and "--fp16" not in strong
    assert weak[0] == "--onnx=model.onnx" and strong[0] == ("--onnx=model_fp16.onnx" if fp16 else "--onnx=model.onnx")
    for line in (weak, strong):  # build only, with the Python path's workspace
        assert "--skipInference" in line and f"--memPoolSize=workspace:{bt.WORKSPACE_MIB}" in line
        assert "--sparsity=enable" in line
        assert any(a.startswith("--minShapes=input:1x3x32x32") for a in line) == (batches is not None)


def test_every_input_gets_its_own_shape(two_input_dir):
    inputs = bt.onnx_inputs(str(two_input_dir / "model.onnx"))
    assert inputs == [("input", (8,)), ("input1", (4,))]
    info, _ = _trt(ExportConfig("gpu", opt_batch=4), str(two_input_dir), inputs, False)
    for line in (info["trtexec"], info["trtexec_strongly_typed"]):
        assert "--minShapes=input:1x8,input1:1x4" in line and "--optShapes=input:4x8,input1:4x4" in line
        assert "--maxShapes=input:32x8,input1:32x4" in line
    assert "--shapes=input:4x8,input1:4x4" in (two_input_dir / "run_engine.sh").read_text()
    assert info["inputs"] == {"input": [8], "input1": [4]}


def _fake_trtexec(bin_dir: Path, log: Path) -> Path:
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "trtexec"
    exe.write_text('#!/bin/sh\necho "&&&& RUNNING TensorRT.trtexec [TensorRT v$FAKE_TRT_VERSION] [b7] # trtexec $*"\n'
                   f'echo "$*" >> {log}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def _sh(script: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(script)], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                          timeout=60)


def test_build_engine_sh_picks_the_line_of_the_installed_trtexec(two_input_dir, tmp_path):
    d = two_input_dir
    _trt(ExportConfig("gpu"), str(d), bt.onnx_inputs(str(d / "model.onnx")), True)
    log = tmp_path / "calls.log"
    exe = _fake_trtexec(tmp_path / "bin", log)
    path = f"{exe.parent}:/usr/bin:/bin"
    for version, onnx_file, fp16 in (("100300", "model.onnx", True), ("110000", "model_fp16.onnx", False),
                                     ("8601", "model.onnx", True)):
        log.write_text("")
        p = _sh(d / "build_engine.sh", PATH=path, FAKE_TRT_VERSION=version)
        assert p.returncode == 0, p.stderr
        help_call, build_call = log.read_text().splitlines()
        assert help_call == "--help"
        assert f"--onnx={onnx_file} " in build_call and ("--fp16" in build_call) == fp16, (version, build_call)
        assert "--sparsity=enable" in build_call and "--skipInference" in build_call
    # $TRTEXEC wins over PATH; TRT_MAJOR skips reading the banner
    log.write_text("")
    p = _sh(d / "build_engine.sh", TRTEXEC=str(exe), TRT_MAJOR="11", FAKE_TRT_VERSION="100300")
    calls = log.read_text().splitlines()
    assert p.returncode == 0 and len(calls) == 1 and calls[0].startswith("--onnx=model_fp16.onnx ")
    # the run script finds it the same way
    log.write_text("")
    assert _sh(d / "run_engine.sh", PATH=path, FAKE_TRT_VERSION="100300").returncode == 0
    assert log.read_text().startswith("--loadEngine=model.engine --shapes=input:1x8,input1:1x4")


def test_build_engine_sh_says_where_it_looked_for_trtexec(two_input_dir):
    if Path(bt.TRTEXEC_DIR, "trtexec").exists():
        pytest.skip(f"{bt.TRTEXEC_DIR}/trtexec exists on this machine")
    d = two_input_dir
    _trt(ExportConfig("gpu"), str(d), bt.onnx_inputs(str(d / "model.onnx")), False)
    script = (d / "build_engine.sh").read_text()
    assert f"[ -x {bt.TRTEXEC_DIR}/trtexec ]" in script
    p = _sh(d / "build_engine.sh")
    assert p.returncode == 127 and "set TRTEXEC=" in p.stderr and bt.TRTEXEC_DIR in p.stderr
    p = _sh(d / "build_engine.sh", TRTEXEC="/nowhere/trtexec")
    assert p.returncode == 127 and "TRTEXEC=/nowhere/trtexec is not an executable" in p.stderr


# ------------------------------------------------------------------ tensorrt stand-ins

def _fake_tensorrt(version: str, builder_raises: bool = False, log: list | None = None):
    """A module with the API surface build_trt uses, as TensorRT `version` has it (11: no BuilderFlag.FP16)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    log = log if log is not None else []

    class Logger:
        WARNING, ERROR = 2, 1

        def __init__(self, level):
            pass

    flags = {"SPARSE_WEIGHTS": "SPARSE_WEIGHTS"} | ({} if bt.strongly_typed(version) else {"FP16": "FP16"})
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    inputs = [types.SimpleNamespace(name="input", shape=(-1, 8)), types.SimpleNamespace(name="input1", shape=(-1, 4))]

    class Network:
        num_inputs = len(inputs)

        def get_input(self, i):
            return inputs[i]

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            log.append(("profile", name, lo, opt, hi))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            log.append(("pool", pool, size))

        def set_flag(self, flag):
            log.append(("flag", flag))

        def add_optimization_profile(self, p):
            pass

    class Builder:
        def __init__(self, logger):
            if builder_raises:
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags):
            log.append(("network_flags", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"engine"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            log.append(("parse_from_file", path))
            return True

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt


def test_usable_gpu_reports_a_builder_that_raises():
    assert bt.usable_gpu(_fake_tensorrt("10.3.0")) is None
    why = bt.usable_gpu(_fake_tensorrt("10.3.0", builder_raises=True))
    assert "cannot create a Builder" in why and "no usable GPU" in why and "nullptr" in why


def test_gpu_export_without_a_gpu_marks_the_engine_not_verified(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.3.0", builder_raises=True))
    man = export("tests.models:tiny_cnn", ExportConfig("gpu"), str(tmp_path / "o"))
    t = man["tensorrt"]
    assert man["ok"] and t["engine"] is None and t["verified"] is False
    assert t["reason"].startswith(mf.NOT_VERIFIED) and "no usable GPU" in t["reason"]
    assert any("no usable GPU" in nv for nv in man["not_verified_here"])
    assert {"build_engine.sh", "run_engine.sh", "build_trt.py", "model.onnx", "model_fp16.onnx"} <= set(man["files"])


@pytest.mark.parametrize("version", ["10.3.0", "11.0.0"])
def test_python_api_build_per_major(tmp_path, version):
    log = []
    fake = _fake_tensorrt(version, log=log)
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "model_fp16.onnx").write_bytes(b"")
    old = sys.modules.get("tensorrt")
    sys.modules["tensorrt"] = fake
    try:
        info = bt.build(str(tmp_path / "model.onnx"), str(tmp_path / "e.engine"), fp16=True, sparsity=True,
                        min_batch=1, opt_batch=2, max_batch=8, fp16_onnx=str(tmp_path / "model_fp16.onnx"))
        if version.startswith("11"):
            with pytest.raises(RuntimeError, match="strongly typed: fp16 needs an fp16 ONNX file"):
                bt.build(str(tmp_path / "model.onnx"), str(tmp_path / "e.engine"), fp16=True)
    finally:
        sys.modules.pop("tensorrt")
        if old is not None:
            sys.modules["tensorrt"] = old
    strong = version.startswith("11")
    parsed = [e[1] for e in log if e[0] == "parse_from_file"]
    assert parsed == [str(tmp_path / ("model_fp16.onnx" if strong else "model.onnx"))]
    flags = [e[1] for e in log if e[0] == "flag"]
    assert flags == (["SPARSE_WEIGHTS"] if strong else ["FP16", "SPARSE_WEIGHTS"])
    assert ("network_flags", 1 << 1 if strong else 0) in log
    assert ("pool", "WORKSPACE", bt.WORKSPACE_MIB << 20) in log
    assert ("profile", "input1", (1, 4), (2, 4), (8, 4)) in log and ("profile", "input", (1, 8), (2, 8), (8, 8)) in log
    assert info["typing"] == ("strong" if strong else "weak") and (tmp_path / "e.engine").read_bytes() == b"engine"


def test_build_trt_script_refuses_in_one_line_without_a_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.3.0", builder_raises=True))
    assert bt.main([str(tmp_path / "m.onnx"), str(tmp_path / "m.engine")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no usable GPU" in err


def test_fp16_onnx_keeps_fp32_inputs_and_sorted_nodes(two_input_dir):
    import onnx

    bt.write_fp16_onnx(str(two_input_dir / "model.onnx"), str(two_input_dir / "m16.onnx"))
    m = onnx.load(str(two_input_dir / "m16.onnx"))
    onnx.checker.check_model(m)  # topologically sorted
    assert {i.type.tensor_type.elem_type for i in m.graph.input} == {onnx.TensorProto.FLOAT}
    assert {i.data_type for i in m.graph.initializer} == {onnx.TensorProto.FLOAT16}
