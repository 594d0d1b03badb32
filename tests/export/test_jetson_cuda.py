"""Issue #23, items 1-2: the Jetson library's CUDA major and the device's TVM runtime version.

JetPack 6's driver is CUDA 12 (12.2 / 12.6); CUDA 13 cubins need driver >= 580, so a Jetson build must come
from a CUDA 12 compiler (NVRTC's nvrtcVersion(), or nvcc's release) and refuse in one line otherwise. run_tvm.py
compares the device's apache-tvm / tvm-ffi with the manifest's before loading the library."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.export import run_tvm
from compress.export import tvm_relax as tvmx
from compress.export.package import export
from compress.export.targets import JETSON_DEVICES, ExportConfig

nvrtc = pytest.importorskip("cuda.bindings.nvrtc")


def _fake_nvrtc(monkeypatch, major: int, minor: int, nvcc=None):
    monkeypatch.setattr(nvrtc, "nvrtcVersion", lambda: (nvrtc.nvrtcResult.NVRTC_SUCCESS, major, minor))
    monkeypatch.setattr(tvmx, "nvcc_version", lambda: nvcc)


def test_jetson_devices_need_cuda_12():
    assert {d.cuda_major for d in JETSON_DEVICES.values()} == {12}


def test_nvrtc_13_is_refused_for_a_cuda_12_device_in_one_line(monkeypatch):
    _fake_nvrtc(monkeypatch, 13, 0)
    assert tvmx.cuda_compiler() == ("nvrtc", "13.0")  # any CUDA: fine for a GPU target
    with pytest.raises(CompressError) as e:
        tvmx.cuda_compiler(12)
    msg = str(e.value)
    assert "\n" not in msg and "needs a CUDA 12 compiler" in msg and "found NVRTC 13.0" in msg
    assert "'cuda-toolkit[nvrtc]==12.6.*'" in msg and "nvcc" in msg and tvmx.ANY_CUDA_ENV in msg


def test_a_cuda_12_compiler_is_taken_nvrtc_first_then_nvcc(monkeypatch):
    _fake_nvrtc(monkeypatch, 12, 6)
    assert tvmx.cuda_compiler(12) == ("nvrtc", "12.6")
    _fake_nvrtc(monkeypatch, 13, 0, nvcc=(12, 2))  # NVRTC 13 beside a CUDA 12.2 nvcc: nvcc it is
    assert tvmx.cuda_compiler(12) == ("nvcc", "12.2")


def test_jetson_export_with_nvrtc_13_refuses_and_writes_nothing(tmp_path, monkeypatch):
    _fake_nvrtc(monkeypatch, 13, 0)
    monkeypatch.delenv(tvmx.ANY_CUDA_ENV, raising=False)
    with pytest.raises(CompressError, match="needs a CUDA 12 compiler.*found NVRTC 13.0"):
        export("tests.models:tiny_cnn", ExportConfig("jetson", device="orin-nano"), str(tmp_path / "jet"))
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ run_tvm.py: the device's TVM runtime

BUILT = {"apache-tvm": "0.27.0.post1", "tvm-ffi": "0.1.15.post2"}


@pytest.mark.parametrize("here,bad", [
    ({"apache-tvm": "0.27.0", "tvm-ffi": "0.1.9"}, None),               # a source build of the same release
    ({"apache-tvm": "0.26.0", "tvm-ffi": "0.1.15"}, "apache-tvm 0.26.0"),
    ({"apache-tvm": "0.27.0", "tvm-ffi": "0.2.0"}, "tvm-ffi 0.2.0"),
    ({"apache-tvm": "0.27.0", "tvm-ffi": None}, "tvm-ffi None"),
])
def test_runtime_check(here, bad):
    why = run_tvm.check_runtime(BUILT, here)
    if bad is None:
        assert why is None
    else:
        assert bad in why and "pip install 'apache-tvm==0.27.0.post1'" in why and "\n" not in why
    assert run_tvm.check_runtime({}, here) is None  # an older manifest without the record: nothing to check


def test_run_tvm_refuses_a_library_built_for_another_tvm(tmp_path, capsys):
    """A real host library built here runs with its own manifest, and is refused (exit 2, one line, before
    loading it) when the manifest says it was built with another TVM."""
    from compress.export.onnx import export_onnx

    export_onnx(nn.Linear(4, 3).eval(), (torch.randn(1, 4),), str(tmp_path / "m.onnx"))
    info = tvmx.build(str(tmp_path / "m.onnx"), tvmx.host_target(), str(tmp_path / "m.so"))
    assert info["runtime"] == run_tvm._here()
    man = tmp_path / "manifest.json"
    argv = [str(tmp_path / "m.so"), "--shape", "2,4", "--runs", "2", "--warmup", "1"]
    man.write_text(json.dumps({"tvm": {"runtime": info["runtime"]}}))
    assert run_tvm.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == 2
    man.write_text(json.dumps({"tvm": {"runtime": {"apache-tvm": "0.26.0", "tvm-ffi": "0.1.15"}}}))
    assert run_tvm.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "built with apache-tvm 0.26.0" in err
    assert run_tvm.main(argv + ["--skip-version-check"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["median_ms"])
