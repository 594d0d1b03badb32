"""A squeeze-excitation block (pool -> 1x1 conv -> gate -> multiply the feature map, as in MobileNetV3 and
EfficientNet) makes TVM 0.27's dlight Matmul rule assert during the CUDA build ("consumers of the
cache-write stage that are not properly inlined"), which failed `compress export --target jetson` for
mobilenet_v3_small and efficientnet_b0. The build must fall through to the next schedule rule and still
produce the aarch64 library. The manifest and README say which CUDA made its kernels and that they are
generic dlight schedules (issue #23, items 1 and 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.export import tvm_relax as tvmx
from compress.export.package import export
from compress.export.targets import ExportConfig


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(16, 16, 1)
        self.gate = nn.Hardsigmoid()
        self.compress_input_shape = (1, 3, 16, 16)

    def forward(self, x):
        h = self.conv(x)
        return h * self.gate(self.fc(self.pool(h)))


def squeeze_excite() -> nn.Module:
    torch.manual_seed(0)
    return SqueezeExcite().eval()


def jetson_cuda(monkeypatch) -> str:
    """The CUDA version the Jetson build will use here: a CUDA 12 compiler, else (this machine has CUDA 13
    only) whatever is here under COMPRESS_JETSON_ANY_CUDA=1, which the manifest then records as a mismatch."""
    try:
        return tvmx.cuda_compiler(12)[1]
    except CompressError:
        pass
    try:
        version = tvmx.cuda_compiler()[1]
    except CompressError as e:
        pytest.skip(f"no CUDA compiler for TVM here: {e}")
    monkeypatch.setenv(tvmx.ANY_CUDA_ENV, "1")
    return version


def test_jetson_build_of_a_squeeze_excitation_block(tmp_path, monkeypatch):
    cuda = jetson_cuda(monkeypatch)
    man = export("tests.export.test_tvm_cuda_schedule:squeeze_excite", ExportConfig("jetson", device="orin-nano"),
                 str(tmp_path / "jet"))
    assert man["ok"]
    assert tvmx.elf_machine(str(tmp_path / "jet" / "model_orin-nano_aarch64.so")) == tvmx.EM_AARCH64
    tv = man["tvm"]
    assert "cuda" in tv["device_modules"]
    # the function dlight's Matmul rule rejected was scheduled by a later rule
    assert any("Matmul (AssertionError)" in f for f in tv["schedule_fallbacks"]), tv
    # item 1: the CUDA that made the cubins is recorded, and a major other than the driver's is flagged
    assert tv["cuda_version"] == cuda and tv["cuda_compiler"] in ("nvrtc", "nvcc") and "CUDA 12" in tv["device_cuda"]
    assert ("cuda_mismatch" in tv) == (not cuda.startswith("12."))
    if "cuda_mismatch" in tv:
        assert any(tv["cuda_mismatch"] in nv for nv in man["not_verified_here"])
    # items 2 and 3: the runtime it needs, and what its schedules are, in the manifest and the README
    assert tv["runtime"]["apache-tvm"] and tv["runtime"]["tvm-ffi"]
    assert tv["schedule"]["tuned"] is False and "cuBLAS" in tv["schedule"]["library_dispatch"]
    readme = (tmp_path / "jet" / "README.md").read_text()
    assert "dlight" in readme and "no MetaSchedule" in readme and "TensorRT engine" in readme
    assert f"CUDA {cuda}" in readme and "run_tvm.py` checks" in readme
