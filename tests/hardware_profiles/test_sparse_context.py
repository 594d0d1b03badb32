"""#19: a CPU profile prices a block-sparse 1x1 conv by what it costs inside its network, measured."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]


class OneByOnes(nn.Module):
    """3x3 stem, then two 1x1 convs the kernel may run (channels multiples of 32) and one it may not."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.a = nn.Conv2d(32, 64, 1)
        self.b = nn.Conv2d(64, 32, 1)
        self.c = nn.Conv2d(32, 48, 1)           # 48 is no multiple of 32: stays dense
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(self.b(torch.relu(self.a(y))) + y)
        return self.fc(self.c(y).mean((2, 3)))


def test_conv_context_measures_the_eligible_1x1_convs_in_their_network():
    from compress.hardware_profiles import schema, sparse_bench
    from compress.hardware_profiles.layers import extract_layers
    from compress.hardware_profiles.predictor import DeviceProfile

    torch.manual_seed(0)
    model = OneByOnes().eval()
    x = (torch.randn(1, 3, 16, 16),)
    layers = extract_layers(model, x)
    assert [s.module for s in sparse_bench.conv1x1_layers(layers)] == ["a", "b"]
    prof = schema.read(str(REPO / "hardware_profiles" / "cpu-x86-2core-ort-amd-avx512-b1.json"))
    prof["sparse"].pop("context", None)                # priced by the one-op factors alone
    r = sparse_bench.conv_context("test:one_by_ones", model, x, layers, DeviceProfile(prof), rounds=1, passes=1,
                                  threads=1)
    assert r["layers"] == 2 and r["block"] == 32
    assert r["activation_melems"] == pytest.approx(16 * 16 * (32 + 64 + 64 + 32) / 1e6, abs=1e-4)
    d0 = sparse_bench.CONTEXT_DENSITIES[0]
    assert [(p["layers"], p["n"], p["density"]) for p in r["points"]] == [
        ("small", 1, d0), ("large", 1, d0)] + [("all", 2, d) for d in sparse_bench.CONTEXT_DENSITIES]
    assert r["dense_measured_ms"] > 0 and all(p["measured_ms"] > 0 for p in r["points"])
    assert r["ms_per_melem"] >= 0.0 and r["ms_per_layer"] >= 0.0
    for p in r["points"]:                                             # the fit, written beside what it explains
        assert p["fitted_ms"] == pytest.approx(r["ms_per_layer"] * p["n"] + r["ms_per_melem"] * p["melems"], abs=1e-3)
    json.dumps(r)                                                       # goes into the profile file as is
    # the predictor charges that rate to every sparse 1x1 conv of a network priced on the profile
    prof["sparse"]["context"] = {"conv1x1": {"ms_per_melem": 0.5, "ms_per_layer": 0.01}}
    p = DeviceProfile(prof)
    sa = next(s for s in layers if s.module == "a")
    assert p.sparse_context_ms(sa) == pytest.approx(0.01 + 0.5 * 16 * 16 * 96 / 1e6)
    assert sparse_bench._fit_two([(1, 2.0, 1.2), (1, 1.0, 0.7)]) == pytest.approx((0.2, 0.5))
    assert sparse_bench._fit_two([(1, 2.0, -1.0), (1, 1.0, -1.0)]) == (0.0, 0.0)      # never a negative cost
    assert sparse_bench.conv_context("test:fc", nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), (torch.randn(1, 12),),
                                     extract_layers(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), (torch.randn(1, 12),)),
                                     DeviceProfile(prof)) is None      # nothing to measure
