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
    # int8 runs the multiply as an NHWC QLinearMul: no layout round trip
    assert DeviceProfile({**d, "dtype": "int8"}).layer_ms(LayerSig("memory", 64, 64, h=8, w=8, kind="broadcast")) == \
        pytest.approx(plain)


def test_hardswish_is_priced_as_unary_by_a_profile_that_never_measured_it():
    from compress.hardware_profiles.predictor import structure

    d = constructed()
    d["memory_ops"]["unary"] = {"ms": 0.002, "ms_per_melem": 0.1}
    hs, relu = (LayerSig("memory", 64, 64, h=8, w=8, kind=k) for k in ("hardswish", "unary"))
    old = DeviceProfile(d)
    assert old.layer_ms(hs) == pytest.approx(old.layer_ms(relu)) and not old.fell_back([hs])
    # the calibration fingerprint of a hardswish network is what it was before the kind existed
    assert structure([hs]) == structure([relu])
    d["memory_ops"]["hardswish"] = {"ms": 0.004, "ms_per_melem": 0.5}
    assert DeviceProfile(d).layer_ms(hs) == pytest.approx(0.004 + 0.5 * 4096 / 1e6)


def test_expected_latency_for_the_export_manifest(one_thread):
    from compress.hardware_profiles import expected_latency_ms

    model = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10)).eval()
    x = (torch.randn(1, 3, 8, 8),)
    assert expected_latency_ms(model, x, "gpu", 1) is None          # no profile: no number
    assert expected_latency_ms(model, x, "cpu", 3) is None          # not measured at batch 3
    cpu = expected_latency_ms(model, x, "cpu", 1)
    jet = expected_latency_ms(model, x, "jetson", 2)
    assert cpu > 0 and jet > 0
    # int8: from the target's int8 profile where one fits this host and batch, never the fp32 one
    from compress.errors import CompressError
    from compress.hardware_profiles.predictor import load_profile, predict_ms

    assert expected_latency_ms(model, x, "cpu", 3, dtype="int8") is None
    assert expected_latency_ms(model, x, "jetson", 2, dtype="int8") is None     # no int8 Jetson profile ships
    try:
        prof8 = load_profile("cpu-x86-2core-ort", dtype="int8", batch=1)
    except CompressError:                                                       # none for this host
        assert expected_latency_ms(model, x, "cpu", 1, dtype="int8") is None
    else:
        i8 = expected_latency_ms(model, x, "cpu", 1, dtype="int8")
        assert i8 == pytest.approx(predict_ms(model, x, prof8)) and i8 != pytest.approx(cpu)


def test_layer_ms_is_cached_and_pure(prof):
    a = ms(prof, 40, 56)
    prof.data["tables"] = []          # no file or table re-read after construction
    assert ms(prof, 40, 56) == a


def test_below_the_grid_keeps_the_fixed_cost():
    # a layer's cost has a fixed part; below the smallest measured count it stays (linear
    # extrapolation), where proportional scaling would under-predict small pruned layers
    d = constructed()
    d["tables"][0]["ms"] = [[0.05 + 0.001 * a * b for b in (16, 32, 64)] for a in (16, 32, 64)]
    p = DeviceProfile(d)
    assert ms(p, 8, 16) == pytest.approx(0.05 + 0.001 * 8 * 16)
    assert ms(p, 8, 16) > 0.5 * ms(p, 16, 16)


def test_memory_ops_interpolate_their_measured_points():
    d = constructed()
    d["memory_ops"]["unary"]["points"] = [[1000, 0.002], [4000, 0.003], [16000, 0.010]]
    p = DeviceProfile(d)

    def unary(elements):
        return p.layer_ms(LayerSig("memory", elements, elements, kind="unary"))   # c x 1 x 1

    assert unary(2500) == pytest.approx(0.0025)
    assert unary(500) == pytest.approx(0.002)                   # flat below the smallest size
    assert unary(32000) == pytest.approx(0.010 + 0.007 / 12000 * 16000)   # last slope above


def test_context_line_charges_each_op_class_its_own_b(one_thread):
    d = constructed()
    d["context"] = {"a": 1.0, "b": -0.003, "b_by_class": {"compute": -0.005}, "floor": 0.15}
    p = DeviceProfile(d)
    assert ms(p, 32, 32) == pytest.approx(0.001 * 32 * 32 - 0.005)          # compute: its class's b
    mem = LayerSig("memory", 32000, 32000, kind="unary")
    raw = DeviceProfile(constructed()).layer_ms(mem)
    assert raw - 0.003 > 0.15 * raw
    assert p.layer_ms(mem) == pytest.approx(raw - 0.003)                     # memory: no class b, so b
    d["context"]["b_network"] = -0.004                                          # measured in networks: every layer
    p = DeviceProfile(d)
    assert ms(p, 32, 32) == pytest.approx(0.001 * 32 * 32 - 0.004) and p.layer_ms(mem) == pytest.approx(raw - 0.004)


def test_context_fit_per_class():
    from compress.hardware_profiles.profiler import context_fit

    def pair(op, prof, marg):
        return {"op": op, "kind": "", "c": 16, "h": 14, "w": 14, "kernel": [3, 3], "profiled_ms": prof, "marginal_ms": marg}

    fit = context_fit([pair("conv", 0.040, 0.034), pair("conv", 0.020, 0.013), pair("dwconv", 0.017, 0.011),
                       pair("memory", 0.0055, 0.0028), pair("memory", 0.011, 0.0095), pair("conv", 5.0, 5.4)])
    assert fit["b_by_class"]["compute"] == pytest.approx(-0.006)             # median of 6, 7, 6 us
    assert fit["b_by_class"]["memory"] == pytest.approx(-0.00210)            # median of 2.7, 1.5 us
    assert fit["b"] == pytest.approx(-0.006)                                  # all five small ops
    one_mem = context_fit([pair("conv", 0.040, 0.034), pair("conv", 0.020, 0.013), pair("memory", 0.0055, 0.0028)])
    assert "memory" not in one_mem["b_by_class"]


def test_context_line_replaces_the_per_op_overhead(one_thread):
    d = constructed()
    d["context"] = {"a": 1.0, "b": -0.003, "floor": 0.15}
    p = DeviceProfile(d)
    assert p.per_op_ms() == 0.0
    assert ms(p, 32, 32) == pytest.approx(0.001 * 32 * 32 - 0.003)
    assert ms(p, 1, 1, fixed_in=True, fixed_out=True) == pytest.approx(0.15 * 0.001)   # the floor
    model = nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 1, 1)).eval()
    x = (torch.randn(1, 16, 8, 8),)
    assert predict_ms(model, x, p) == pytest.approx(0.5 + 0.001 * 16 * 32 - 0.003 + 0.001 * 32 * 64 - 0.003)


def test_shipped_cpu_profile_follows_the_host_isa(monkeypatch):
    from compress.hardware_profiles import load_profile, predictor

    monkeypatch.setattr(predictor, "host_tags", lambda: ["intel-avx512", "avx512"])
    p = load_profile("cpu-x86-2core-ort", batch=1)
    assert p.path.endswith("cpu-x86-2core-ort-avx512-b1.json") and "avx512f" in p.data["device"]["isa"]
    monkeypatch.setattr(predictor, "host_tags", lambda: ["intel-avx2", "avx2"])
    p = load_profile("cpu-x86-2core-ort", batch=8)
    assert p.path.endswith("cpu-x86-2core-ort-b8.json") and "avx512f" not in p.data["device"]["isa"]
    monkeypatch.setattr(predictor, "host_tags", lambda: ["amd-avx2", "avx2"])
    for batch in (1, 8):
        p = load_profile("cpu-x86-2core-ort", batch=batch)
        assert p.path.endswith(f"cpu-x86-2core-ort-amd-avx2-b{batch}.json") and p.batch == batch
        assert "AMD" in p.data["device"]["name"] and "avx512f" not in p.data["device"]["isa"]
        # the Lite0 was profiled on that CPU: its calibration is its own, not the median factor
        assert any(c["model"] == "compress:efficientnet-lite0-fmnist" for c in p.data["calibration"])


def test_shipped_cpu_profile_prefers_the_hosts_vendor(monkeypatch):
    """An AMD EPYC with AVX-512 gets the file measured on one, not the Intel AVX-512 file."""
    from compress.hardware_profiles import load_profile, predictor

    monkeypatch.setattr(predictor, "host_tags", lambda: ["amd-avx512", "avx512"])
    for batch in (1, 8):
        p = load_profile("cpu-x86-2core-ort", batch=batch)
        assert p.path.endswith(f"cpu-x86-2core-ort-amd-avx512-b{batch}.json")
        assert "AMD" in p.data["device"]["name"] and "avx512f" in p.data["device"]["isa"] and p.batch == batch


def test_host_tags_read_vendor_and_isa(monkeypatch, tmp_path):
    from compress.hardware_profiles import predictor

    info = {"vendor_id": "AuthenticAMD", "flags": "fpu sse avx2 avx512f"}
    monkeypatch.setattr(predictor, "_cpuinfo_field", lambda key: info.get(key, ""))
    assert predictor.host_tags() == ["amd-avx512", "avx512"]
    info = {"vendor_id": "GenuineIntel", "flags": "fpu sse avx2"}
    assert predictor.host_tags() == ["intel-avx2", "avx2"]
    info = {}
    assert predictor.host_tags() == ["avx2"]


def test_network_calibration_scales_the_profiled_structure(one_thread):
    from compress.hardware_profiles.predictor import structure

    model = nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 1, 1)).eval()
    x = (torch.randn(1, 16, 8, 8),)
    layers = extract_layers(model, x)
    raw = DeviceProfile(constructed()).total_ms(layers)
    d = constructed()
    d["calibration"] = [{"model": "m", "structure": structure(layers), "factor": 1.5},
                        {"model": "other", "structure": "0" * 16, "factor": 1.1},
                        {"model": "third", "structure": "1" * 16, "factor": 1.2}]
    p = DeviceProfile(d)
    assert p.calibration(layers) == (1.5, "model m")
    assert p.total_ms(layers) == pytest.approx(1.5 * raw)
    # a pruned variant keeps the structure (channel counts are not part of it)
    pruned = extract_layers(nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 64, 3, 1, 1)).eval(), x)
    assert structure(pruned) == structure(layers) and p.calibration(pruned)[0] == 1.5
    # another network: the median factor over the profiled models
    deeper = extract_layers(nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.Conv2d(16, 16, 3, 2, 1)).eval(), x)
    assert p.calibration(deeper) == (1.2, "median of 3 profiled models")


def test_small_network_fit_keeps_its_per_layer_cost_when_pruned(one_thread):
    """A profiled small network carries its own in-network line: kernels x kernel_factor + b_ms per
    layer (the floor below). fit_network solves b so that the dense network is predicted at its
    measured time; a pruned variant keeps b per layer while its kernels shrink, where one
    whole-network factor would shrink the fixed cost with them."""
    from compress.hardware_profiles.predictor import fit_network, structure

    x = (torch.randn(1, 16, 8, 8),)
    dense = extract_layers(nn.Sequential(nn.Conv2d(16, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1)).eval(), x)
    pruned = extract_layers(nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 64, 3, 1, 1)).eval(), x)
    d = constructed()
    d["context"] = {"a": 1.0, "b": -0.001, "floor": 0.15}
    p0 = DeviceProfile(d)
    t_dense = [p0.table_ms(s) for s in dense]
    wall, node = 2.0, 1.2 * sum(t_dense)
    kf, b = fit_network(d, dense, wall, node)
    assert kf == pytest.approx(1.2, rel=1e-3)
    d["calibration"] = [{"model": "m", "structure": structure(dense), "factor": 1.1, "kernel_factor": kf, "b_ms": b}]
    p = DeviceProfile(d)
    fit = p.fit(dense)
    assert fit.b_ms == b and fit.scale == 1.0 and p.calibration(dense)[0] == 1.0
    assert p.total_ms(dense) == pytest.approx(wall, rel=1e-4)
    expect = d["overhead"]["per_inference_ms"] + sum(max(kf * p.table_ms(s) + b, 0.15 * kf * p.table_ms(s)) for s in pruned)
    assert p.total_ms(pruned) == pytest.approx(expect)
    # the planner's cost model sums the same costs
    from compress.planner.solve import CostModel
    assert CostModel([], p, fit).overhead == p.overhead_ms(fit, 0)


def test_each_jetson_device_has_its_own_expected_latency(one_thread):
    # the export manifest asks for jetson-<device>: AGX Orin (more compute and bandwidth) is faster
    from compress.hardware_profiles import expected_latency_ms

    model = nn.Sequential(nn.Conv2d(16, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1)).eval()
    x = (torch.randn(1, 16, 32, 32),)
    nano = expected_latency_ms(model, x, "jetson-orin-nano", 1)
    agx = expected_latency_ms(model, x, "jetson-agx-orin", 1)
    assert nano is not None and agx is not None and agx < nano
    assert expected_latency_ms(model, x, "jetson", 1) == pytest.approx(nano)


DW = LayerSig("dwconv", 64, 64, (3, 3), (1, 1), (1, 1), 64, 56, 56)


def _dw_profile(ms_row, cout=(16, 32, 48, 64, 96, 128, 144)):
    d = constructed()
    d["tables"].append({"key": table_key(DW), "op": "dwconv", "cin": [1], "cout": list(cout), "ms": [list(ms_row)]})
    return DeviceProfile(d)


def test_depthwise_tables_are_read_as_linear_in_channels():
    # a cache cliff as one shipped table has it (x5 between 64 and 96 channels at 56x56, batch 8): read as
    # measured, the planner would cut 144 -> 64 for a 8.5x saving that the network does not show
    cliff = [0.049, 0.098, 0.211, 0.239, 1.196, 1.758, 2.047]
    p = _dw_profile(cliff)
    got = {c: p.layer_ms(dataclasses.replace(DW, cin=c, cout=c, groups=c)) for c in (16, 32, 48, 64, 96, 128, 144)}
    steps = [got[b] - got[a] for a, b in zip(list(got), list(got)[1:])]
    per_ch = [s / (b - a) for s, (a, b) in zip(steps, zip(list(got), list(got)[1:]))]
    assert all(x == pytest.approx(per_ch[0]) for x in per_ch)            # one slope: linear in channels
    assert 2.0 < got[144] / got[64] <= 144 / 64 + 1e-9                     # no x8.5 cliff, never super-linear
    assert cliff[0] < got[64] < cliff[-1] and 0.5 * cliff[-1] < got[144] < cliff[-1]
    # a table that is already linear is read as measured
    lin = [0.01 + 0.008 * c for c in (16, 32, 48, 64, 96, 128, 144)]
    q = _dw_profile(lin)
    for c, m in zip((16, 32, 48, 64, 96, 128, 144), lin):
        assert q.layer_ms(dataclasses.replace(DW, cin=c, cout=c, groups=c)) == pytest.approx(m)


def test_a_depthwise_cost_never_falls_as_channels_grow():
    p = _dw_profile([0.5, 0.3, 0.2, 0.25, 0.4, 0.6, 0.8])   # noisy, even decreasing at first
    costs = [p.layer_ms(dataclasses.replace(DW, cin=c, cout=c, groups=c)) for c in range(16, 145, 16)]
    assert all(b >= a for a, b in zip(costs, costs[1:])) and min(costs) > 0


def _sparse_profile(runtime):
    from compress.hardware_profiles.predictor import DeviceProfile
    from profile_fixtures import constructed, sparse_section

    d = constructed()
    lo, hi = sparse_section(runtime, {"bsr32x32": 0.6}, density=0.5), sparse_section(runtime, {"bsr32x32": 0.2},
                                                                                       density=0.1)
    d["sparse"] = lo | {"entries": lo["entries"] + [e for e in hi["entries"] if e["format"] != "dense"]}
    return DeviceProfile(d)


def test_block_sparse_factor_from_the_kernel_that_ships():
    """A block-sparse layer costs its dense time x the measured ratio of the nearest shape, interpolated in
    density; entries measured by anything but the deployed kernel price nothing on a CPU."""
    from compress.hardware_profiles.layers import LINEAR, LayerSig
    from compress.hardware_profiles.sparse_bench import RUNTIME

    prof = _sparse_profile(RUNTIME)
    sig = LayerSig(op=LINEAR, cin=256, cout=256, tokens=4, module="fc")
    assert prof.sparse_factor(sig, 32, 0.5)[0] == pytest.approx(0.6, rel=1e-4)
    assert prof.sparse_factor(sig, 32, 0.1)[0] == pytest.approx(0.2, rel=1e-4)
    assert prof.sparse_factor(sig, 32, 0.3)[0] == pytest.approx(0.4, rel=1e-4)  # halfway between the densities
    assert prof.sparse_factor(sig, 32, 0.9)[0] == pytest.approx(0.6, rel=1e-4)        # clamped to the measured range
    assert prof.sparse_factor(sig, 16, 0.5) is None                          # no bsr16 entries
    dense = prof.total_ms([sig])
    assert prof.total_ms([sig], sparse={"fc": (32, 0.3)}) == pytest.approx(
        dense - prof.layer_ms(sig, prof.fit([sig])) * 0.6, rel=1e-4)
    assert _sparse_profile("torch").sparse_factor(sig, 32, 0.5) is None


def test_a_sparse_1x1_conv_pays_its_measured_in_network_layout_cost():
    """#19: a block-sparse 1x1 conv on a CPU profile costs its one-op factor x its dense time plus the profile's
    in-network rate (ms per million activation elements, input + output) from `compress profile --sparse`;
    Linear layers, and profiles without the measurement, pay nothing extra."""
    from compress.hardware_profiles.layers import CONV, LINEAR, LayerSig
    from compress.hardware_profiles.sparse_bench import RUNTIME

    prof = _sparse_profile(RUNTIME)
    conv = LayerSig(op=CONV, cin=256, cout=256, kernel=(1, 1), stride=(1, 1), h=14, w=14, module="c")
    lin = LayerSig(op=LINEAR, cin=256, cout=256, tokens=4, module="fc")
    assert prof.sparse_context_ms(conv) == 0.0 and prof.sparse_context_ms(lin) == 0.0
    base = prof.total_ms([conv, lin], sparse={"c": (32, 0.5), "fc": (32, 0.5)})
    prof.data["sparse"]["context"] = {"conv1x1": {"ms_per_melem": 0.2}}
    extra = 0.2 * prof.batch * 14 * 14 * 512 / 1e6
    assert prof.sparse_context_ms(conv) == pytest.approx(extra) and prof.sparse_context_ms(lin) == 0.0
    assert prof.total_ms([conv, lin], sparse={"c": (32, 0.5), "fc": (32, 0.5)}) == pytest.approx(base + extra)
    assert prof.total_ms([conv, lin]) == pytest.approx(prof.total_ms([conv, lin], sparse={}))  # dense: no cost


def test_int8_profiles_are_named_apart_from_fp32():
    # NAME-int8[-TAG]-bN.json: the fp32 lookup never finds an int8 file and the int8 lookup never an fp32 one
    from compress.hardware_profiles.predictor import _candidates, dtype_name, host_tags, profile_dtype

    assert dtype_name("cpu-x86-2core-ort", "int8") == "cpu-x86-2core-ort-int8"
    assert dtype_name("cpu-x86-2core-ort", "float32") == "cpu-x86-2core-ort"
    assert profile_dtype("fp32") == "float32" and profile_dtype("INT8") == "int8"
    names = [p.name for p in _candidates("cpu-x86-2core-ort-int8", 8)]
    assert names[0] == f"cpu-x86-2core-ort-int8-{host_tags()[0]}-b8.json"
    assert all("-int8" in n for n in names)
    assert not any("-int8" in p.name for p in _candidates("cpu-x86-2core-ort", 8))


def test_int8_lookup_of_a_tagged_or_batched_name():
    # the names plan and predict print (tagged, or the file's stem) find the int8 file, not NAME-TAG-int8
    from compress.hardware_profiles.predictor import dtype_name

    assert dtype_name("cpu-x86-2core-ort-amd-avx512", "int8") == "cpu-x86-2core-ort-int8-amd-avx512"
    assert dtype_name("cpu-x86-2core-ort-int8-amd-avx512", "int8") == "cpu-x86-2core-ort-int8-amd-avx512"
    assert dtype_name("cpu-x86-2core-ort-avx512-b1", "int8") == "cpu-x86-2core-ort-int8-avx512-b1"
    assert dtype_name("cpu-x86-2core-ort-int8-amd-avx512-b8", "int8") == "cpu-x86-2core-ort-int8-amd-avx512-b8"
    assert dtype_name("cpu-x86-2core-ort-amd-avx512-b1", "float32") == "cpu-x86-2core-ort-amd-avx512-b1"


def test_an_unprofiled_network_is_scaled_per_class_of_layer(one_thread):
    # profiled models whose convs ran 2x their tables and whose depthwise convs ran 1x: a network the profile never
    # timed gets that per class of layer, not the median of whole-network factors
    from compress.hardware_profiles.predictor import FIT_CLASSES

    def row(name, conv, dw, memory=0.1, other=0.05):
        by = {"conv": conv, "dwconv": dw, "memory": memory, "other": other}
        pred = sum(by.values())
        meas = 2 * conv + dw + memory + other
        return {"model": name, "structure": name[0] * 16, "measured_ms": meas, "predicted_ms": pred,
                "factor": round(meas / pred, 4), "predicted_by_class_ms": by}

    d = constructed()
    d["calibration"] = [row("a", 10, 1), row("b", 8, 2), row("c", 2, 6), row("d", 1, 9), row("e", 5, 5)]
    p = DeviceProfile(d)
    dense = [LayerSig("conv", 16, 32, (3, 3), (1, 1), (1, 1), 1, 8, 8)]
    dw = [LayerSig("dwconv", 32, 32, (3, 3), (1, 1), (1, 1), 32, 8, 8)]
    fit = p.fit(dense)
    assert set(fit.class_scale) == set(FIT_CLASSES) and "per-class fit over 5" in fit.source
    assert fit.class_scale["conv"] == pytest.approx(2.0, rel=0.05) and fit.class_scale["dwconv"] == pytest.approx(1.0, rel=0.1)
    conv_only = p.total_ms(dense, fit) - p.overhead_ms(fit, 1)
    assert conv_only == pytest.approx(2.0 * p.layer_ms(dense[0]), rel=0.05)
    assert p.total_ms(dw) - p.overhead_ms(p.fit(dw), 1) == pytest.approx(p.layer_ms(dw[0]), rel=0.1)
    assert fit.scale == pytest.approx(p.total_ms(dense, fit) / sum(p.by_class_ms(dense).values()), rel=1e-3)
    # rows without the per-class split (profiles calibrated before it): the median factor, as before
    for r in d["calibration"]:
        del r["predicted_by_class_ms"]
    old = DeviceProfile(d).fit(dense)
    assert old.class_scale is None and old.scale == pytest.approx(sorted(r["factor"] for r in d["calibration"])[2])


def test_linear_at_a_token_count_without_a_table_scales_the_nearest_table():
    """A Linear at tokens the profile never timed (ViT's 197) is priced from the nearest token count's table, scaled
    by tokens, not by the roofline at the median efficiency of every point (which put ViT-B ~9x too high); 1-token
    layers (classifier heads, a GEMV) and the others do not stand in for each other."""
    d = constructed()
    d["tables"].append({"key": "linear t128", "op": "linear", "cin": [64, 128], "cout": [64, 128],
                        "ms": [[0.1, 0.2], [0.2, 0.4]]})
    d["tables"].append({"key": "linear t16", "op": "linear", "cin": [64, 128], "cout": [64, 128],
                        "ms": [[0.05, 0.1], [0.1, 0.2]]})
    p = DeviceProfile(d)
    lin = LayerSig("linear", 128, 128, tokens=128)
    assert p.table_ms(lin) == pytest.approx(0.4)
    assert p.table_ms(dataclasses.replace(lin, tokens=197)) == pytest.approx(0.4 * 197 / 128)   # nearest: 128
    assert p.table_ms(dataclasses.replace(lin, tokens=24)) == pytest.approx(0.2 * 24 / 16)     # nearest: 16
    assert not p.fell_back([dataclasses.replace(lin, tokens=197)])
    head = dataclasses.replace(lin, tokens=1)      # no 1-token table: the roofline, reported as a fallback
    assert p.table_ms(head) == pytest.approx(p.roofline_ms(head)) and p.fell_back([head])
