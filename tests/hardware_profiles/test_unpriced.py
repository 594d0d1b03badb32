"""Convolutions the latency model has no cost for (3-D: video models; transposed: decoders, upsamplers): layer
extraction refuses them, so `predict` and `plan` refuse in one line instead of a prediction that leaves their time
out, and `export` records no expected latency, with the reason, instead of a wrong one. Dilated convolutions are
priced with the span their taps cover."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compress.cli import main
from compress.errors import CompressError
from compress.hardware_profiles import extract_layers

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = "tests.hardware_profiles.test_unpriced:"


def tiny_video() -> nn.Module:
    """A video classifier: two 3-D convolutions, pooled, then a Linear (the only layer the model could price)."""
    m = nn.Sequential(nn.Conv3d(3, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(),
                      nn.Conv3d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                      nn.Linear(16, 4))
    m.compress_input_shape = (1, 3, 4, 16, 16)
    return m


def tiny_upsampler() -> nn.Module:
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(16, 8, 2, stride=2))
    m.compress_input_shape = (1, 3, 16, 16)
    return m


def test_unpriced_convolutions_are_refused_by_extraction():
    with pytest.raises(CompressError, match="3-D convolution"):
        extract_layers(tiny_video().eval(), (torch.randn(1, 3, 4, 16, 16),))
    with pytest.raises(CompressError, match="transposed convolution"):
        extract_layers(tiny_upsampler().eval(), (torch.randn(1, 3, 16, 16),))
    ok = extract_layers(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(2), nn.Conv1d(8, 8, 1)).eval(),
                        (torch.randn(1, 3, 8, 8),))
    assert [s.op for s in ok if s.op == "conv"] == ["conv", "conv"]      # 1-D and 2-D convolutions are priced


def test_dilated_convolutions_cover_their_span():
    """DeepLab's ASPP: a 3x3 conv with dilation 12 and padding 12 keeps an 8x8 map 8x8 (it was priced as 30x30)."""
    conv = nn.Conv2d(16, 16, 3, padding=12, dilation=12)
    sig = next(s for s in extract_layers(conv.eval(), (torch.randn(1, 16, 8, 8),)) if s.op == "conv")
    assert sig.dilation == (12, 12) and sig.out_hw == (8, 8) and sig.macs() == 8 * 8 * 16 * 16 * 9
    from compress.hardware_profiles import table_key

    plain = next(s for s in extract_layers(nn.Conv2d(16, 16, 3, padding=12).eval(), (torch.randn(1, 16, 8, 8),))
                 if s.op == "conv")
    assert plain.dilation == (1, 1) and plain.out_hw == (30, 30)
    assert table_key(sig) == table_key(plain) + " d12x12"        # its own table; undilated keys unchanged
    same = nn.Conv2d(16, 16, 3, padding="same", dilation=2)
    assert next(s for s in extract_layers(same.eval(), (torch.randn(1, 16, 8, 8),)) if s.op == "conv").out_hw == (8, 8)


@pytest.mark.parametrize("model,kind", [("tiny_video", "3-D convolution"),
                                        ("tiny_upsampler", "transposed convolution")])
def test_predict_and_plan_refuse_in_one_line(tmp_path, capsys, model, kind):
    assert main(["predict", HERE + model, "--profile", "cpu-x86-2core-ort", "--batch", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and kind in err and "Traceback" not in err
    out = tmp_path / "plan"
    assert main(["plan", HERE + model, "--target", "cpu", "--latency-budget", "0.7", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and kind in err
    assert not out.exists()


def test_export_records_no_expected_latency_for_a_3d_conv_model(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["export", HERE + "tiny_video", "--target", "cpu", "--runtimes", "ort", "--out", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    exp = man["expected_latency"]
    assert exp["ms"] is None and "3-D convolution" in exp["reason"]
