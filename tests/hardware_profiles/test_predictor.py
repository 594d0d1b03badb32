"""layer_ms on a constructed table: exact at grid points, bilinear between them, the channel
staircase, the unaligned penalty, the roofline fallback, and whole-model sums."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from compress.hardware_profiles import DeviceProfile, LayerSig, extract_layers, predict_ms
from compress.hardware_profiles.predictor import table_key

from profile_fixtures import constructed

CONV = LayerSig("conv", 32, 32, (3, 3), (1, 1), (1, 1), 1, 8, 8)


@pytest.fixture
def prof():
    return DeviceProfile(constructed())


def ms(prof, cin, cout, **kw):
    return prof.layer_ms(dataclasses.replace(CONV, cin=cin, cout=cout, **kw))


def test_grid_points_are_exact(prof):
    assert table_key(CONV) == "conv k3x3 s1x1 p1x1 g1 8x8"
    for a in (16, 32, 64):
        for b in (16, 32, 64):
            assert ms(prof, a, b) == pytest.approx(0.001 * a * b)


def test_bilinear_between_points(prof):
    # 0.001 * cin * cout is bilinear, so interpolation at multiples of the block is exact
    assert ms(prof, 48, 24) == pytest.approx(0.001 * 48 * 24)
    assert ms(prof, 40, 56) == pytest.approx(0.001 * 40 * 56)


def test_staircase_rounds_up_to_the_block(prof):
    # cout between multiples of 8 costs what the next multiple costs: a flat step, then a jump
    assert ms(prof, 32, 17) == ms(prof, 32, 24) == pytest.approx(0.001 * 32 * 24)
    assert ms(prof, 32, 25) > ms(prof, 32, 24)
    steps = [ms(prof, 32, c) for c in range(17, 41)]
    assert len(set(round(s, 9) for s in steps)) == 3          # 17..24, 25..32, 33..40


def test_unaligned_input_channels_pay_the_measured_factor(prof):
    # cin off the block: costs the rounded-up count times unaligned_factor (2.0 here)
    assert ms(prof, 31, 32) == pytest.approx(2.0 * ms(prof, 32, 32))
    # ...but not for a fixed model input (3 RGB channels) below the grid: proportional
    assert ms(prof, 8, 16, fixed_in=True) == pytest.approx(0.001 * 8 * 16)


def test_outside_the_grid(prof):
    assert ms(prof, 8, 16) == pytest.approx(0.001 * 8 * 16)      # below: proportional
    assert ms(prof, 128, 64) == pytest.approx(0.001 * 128 * 64)   # above: linear extrapolation


def test_roofline_fallback_and_listing(prof):
    other = dataclasses.replace(CONV, h=16, w=16)                 # no table for 16x16
    flops = 2 * other.macs()
    expect = max(flops / (100e9 * 0.5), other.bytes() / 10e9) * 1e3
    assert prof.layer_ms(other) == pytest.approx(expect)
    assert prof.fell_back([CONV, other]) == [other]
    assert table_key(other) in prof.fallbacks
    mem = LayerSig("memory", 64, 64, h=8, w=8, kind="unary")
    assert prof.layer_ms(mem) == pytest.approx(0.002 + 0.1 * 64 * 64 / 1e6)
    assert prof.fell_back([mem]) == []
    soft = LayerSig("memory", 64, 64, h=8, w=8, kind="softmax")   # no fit: bytes / bandwidth
    assert prof.layer_ms(soft) == pytest.approx(soft.bytes() / 10e9 * 1e3)
    assert prof.fell_back([soft]) == [soft]


def test_batch_scales_the_roofline():
    d = constructed()
    d["batch"] = 4
    p4 = DeviceProfile(d)
    other = dataclasses.replace(CONV, h=16, w=16)
    assert p4.layer_ms(other) == pytest.approx(4 * DeviceProfile(constructed()).layer_ms(other))


def test_predict_ms_is_overhead_plus_layers(prof, one_thread):
    model = nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU()).eval()
    x = (torch.randn(1, 16, 8, 8),)
    layers = extract_layers(model, x)
    assert [s.fusion for s in layers] == ["conv+bn+relu", "conv+relu"]
    total = predict_ms(model, x, prof)
    assert total == pytest.approx(0.5 + 0.01 * 2 + 0.001 * 16 * 32 + 0.001 * 32 * 64)


def test_broadcast_multiply_pays_a_layout_round_trip():
    d = constructed()
    d["memory_ops"]["broadcast"] = {"ms": 0.001, "ms_per_melem": 0.2}
    plain = DeviceProfile(d).layer_ms(LayerSig("memory", 64, 64, h=8, w=8, kind="broadcast"))
    d["memory_ops"]["reorder"] = {"ms": 0.003, "ms_per_melem": 0.3}
    p = DeviceProfile(d)
    assert plain == pytest.approx(0.001 + 0.2 * 4096 / 1e6)
    assert p.layer_ms(LayerSig("memory", 64, 64, h=8, w=8, kind="broadcast")) == pytest.approx(
        plain + 0.003 + 0.3 * 4096 / 1e6)
    # on a 1x1 map (the excitation vector itself) there is nothing to reorder
    assert p.layer_ms(LayerSig("memory", 64, 64, kind="broadcast")) == pytest.approx(0.001 + 0.2 * 64 / 1e6)


def test_expected_latency_for_the_export_manifest(one_thread):
    from compress.hardware_profiles import expected_latency_ms

    model = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10)).eval()
    x = (torch.randn(1, 3, 8, 8),)
    assert expected_latency_ms(model, x, "gpu", 1) is None          # no profile: no number
    assert expected_latency_ms(model, x, "cpu", 3) is None          # not measured at batch 3
    cpu = expected_latency_ms(model, x, "cpu", 1)
    jet = expected_latency_ms(model, x, "jetson", 2)
    assert cpu > 0 and jet > 0


def test_layer_ms_is_cached_and_pure(prof):
    a = ms(prof, 40, 56)
    prof.data["tables"] = []          # no file or table re-read after construction
    assert ms(prof, 40, 56) == a
