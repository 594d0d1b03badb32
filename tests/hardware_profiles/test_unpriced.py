"""Convolutions the latency model has no cost for (3-D: video models): layer extraction refuses them, so `predict`
and `plan` refuse in one line instead of a prediction that leaves their time out, and `export` records no expected
latency, with the reason, instead of a wrong one. Dilated convolutions are priced with the span their taps cover,
transposed ones (decoders, upsamplers) with a kernel per input pixel."""

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


class UNet(nn.Module):
    """An encoder-decoder in miniature: a strided conv down, a transposed conv up, a skip connection."""

    def __init__(self):
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
        self.e2 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.d1 = nn.Sequential(nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 2, 1))

    def forward(self, x):
        a = self.e1(x)
        return self.d1(torch.cat([a, self.up(self.e2(a))], 1))


def tiny_unet() -> nn.Module:
    m = UNet()
    m.compress_input_shape = (1, 3, 32, 32)
    return m


def test_unpriced_convolutions_are_refused_by_extraction():
    with pytest.raises(CompressError, match="3-D convolution"):
        extract_layers(tiny_video().eval(), (torch.randn(1, 3, 4, 16, 16),))
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


@pytest.mark.parametrize("model,kind", [("tiny_video", "3-D convolution")])
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


def test_transposed_convolutions_are_priced_and_planned(tmp_path, capsys):
    """A transposed conv counts a kernel per input pixel (as torch's flop counter does), its output is the upsampled
    map, and a decoder plans for a latency budget like any CNN: the plan's prediction is the pruned model's own."""
    import copy

    from compress.metrics import count_macs
    from compress.planner.solve import PlanConfig, plan_model
    from compress.prune.apply import apply_plan
    from tests.test_planner import _profile

    x = (torch.randn(1, 3, 32, 32),)
    up = nn.ConvTranspose2d(64, 32, 2, stride=2)
    sig = next(s for s in extract_layers(up.eval(), (torch.randn(1, 64, 16, 16),)) if s.op == "conv")
    assert sig.transposed and (sig.cin, sig.cout) == (64, 32) and sig.out_hw == (32, 32)
    assert sig.macs() == count_macs(up, (torch.randn(1, 64, 16, 16),))
    grouped = nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, groups=4)
    g = next(s for s in extract_layers(grouped.eval(), (torch.randn(1, 64, 8, 8),)) if s.op == "conv")
    assert (g.cin, g.cout, g.groups, g.out_hw) == (64, 32, 4, (15, 15))
    assert g.macs() == count_macs(grouped, (torch.randn(1, 64, 8, 8),))

    assert main(["predict", HERE + "tiny_unet", "--profile", "cpu-x86-2core-ort", "--batch", "1"]) == 0
    assert "predicted" in capsys.readouterr().out
    m = tiny_unet().eval()
    plan, res, _ = plan_model(copy.deepcopy(m), x, _profile(), PlanConfig(latency_budget=0.7), {"model": "t"})
    assert res.predicted_ms <= res.target_ms + 1e-9
    out = apply_plan(copy.deepcopy(m), x, plan)
    assert _profile().total_ms(extract_layers(out.model, x)) == pytest.approx(res.predicted_ms, rel=1e-9)


def test_transposed_convolution_tables_are_timed_by_every_backend():
    """The profiler plans a table for a transposed conv and times it as one (ConvTranspose in onnxruntime,
    conv_transpose2d in torch), grouped too."""
    import numpy as np

    from compress.hardware_profiles import ort_bench, table_key, torch_bench
    from compress.hardware_profiles.layers import LayerSig
    from compress.hardware_profiles.profiler import ProfileConfig, plan_tables

    sig = LayerSig("conv", 64, 32, (2, 2), (2, 2), (0, 0), 2, 8, 8, transposed=True)
    assert sig.weight_shape(64, 32) == (64, 16, 2, 2) and sig.out_hw == (16, 16)
    assert table_key(sig) in plan_tables([sig], ProfileConfig(batch=1, grid_step=16, max_points=3))
    m = ort_bench._conv_model(sig, 64, [16, 32], 1, np.random.default_rng(0))
    assert [n.op_type for n in m.graph.node if n.op_type.startswith("Conv")] == ["ConvTranspose"] * 2
    for be in (ort_bench, torch_bench):
        ms = be.conv_points(sig, [(64, 16), (64, 32)], 1, 1, 2, threads=1, max_seconds=0.5)
        assert set(ms) == {(64, 16), (64, 32)} and all(v > 0 for v in ms.values())
