"""The profiler on a tiny grid: real onnxruntime measurements, the grid, and resume after interruption."""

from __future__ import annotations

import json

import pytest

from compress.hardware_profiles import LayerSig, load_profile
from compress.hardware_profiles.profiler import ProfileConfig, grid, plan_tables, run

LAYERS = [LayerSig("conv", 3, 16, (3, 3), (1, 1), (1, 1), 1, 8, 8, fixed_in=True),
          LayerSig("conv", 16, 32, (3, 3), (1, 1), (1, 1), 1, 8, 8),
          LayerSig("dwconv", 32, 32, (3, 3), (1, 1), (1, 1), 32, 8, 8),
          LayerSig("linear", 32, 10, fixed_out=True),
          LayerSig("memory", 32, 32, h=8, w=8, kind="unary")]
TINY = ProfileConfig(batch=1, grid_step=8, max_points=3, rounds=2, warmup=1, reps=2, threads=1, max_seconds=0.5,
                     staircase=False, sparse=False)


def test_grid():
    # the step itself joins the fractions of the width: pruned layers reach it
    assert grid(512, 16, 10, False) == [16, 32, 64, 96, 128, 192, 256, 320, 384, 448, 512]
    assert grid(3, 16, 10, False) == [3]
    assert grid(1000, 16, 10, True) == [1000]
    g = grid(96, 16, 4, False)
    assert len(g) <= 5 and g[0] == 16 and g[-1] == 96 and all(v % 16 == 0 for v in g)
    t = plan_tables(LAYERS, TINY)
    conv = t["conv k3x3 s1x1 p1x1 g1 8x8"]                      # the stem and the next conv share a shape
    assert conv[1] == [3] + grid(16, 8, 3, False) and conv[2] == grid(32, 8, 3, False)  # fixed counts join
    assert t["linear t1"][1:] == (grid(32, 8, 3, False), [10])   # the classifier outputs stay fixed


def test_resume_after_interruption(tmp_path):
    out = tmp_path / "p.json"
    partial = tmp_path / "p.json.partial.json"
    with pytest.raises(KeyboardInterrupt):
        run(LAYERS, TINY, str(out), "tiny", progress=False, stop_after=2)
    assert partial.is_file() and not out.exists()
    done = json.loads(partial.read_text())["points"]
    assert len(done) > 0
    prof = run(LAYERS, TINY, str(out), "tiny", progress=False)
    assert prof["measurement"]["resumed_measurements"] == len(done)
    assert not partial.exists()
    p = load_profile(out, runtime="ort", batch=1)
    assert {t["op"] for t in p.data["tables"]} == {"conv", "dwconv", "linear"}
    assert "unary" in p.data["memory_ops"]
    for t in p.data["tables"]:
        assert all(v > 0 for row in t["ms"] for v in row)
    # a measured table entry, less the profiler's per-node bookkeeping (the context line, fitted on
    # chained ops measured in the same run), is what layer_ms returns at that grid point
    ctx = p.data["context"]
    assert ctx["a"] == 1.0 and ctx["b"] <= 0 and len(ctx["pairs"]) >= 3
    assert all(q["profiled_ms"] > 0 for q in ctx["pairs"])
    t = next(t for t in p.data["tables"] if t["op"] == "conv" and t["cin"] != [3])
    sig = LayerSig("conv", t["cin"][-1], t["cout"][-1], (3, 3), (1, 1), (1, 1), 1, 8, 8)
    v = t["ms"][-1][-1]
    b = ctx["b_by_class"].get("compute", ctx["b"])
    assert p.layer_ms(sig) == pytest.approx(max(v + b, ctx["floor"] * v))
    assert p.per_op_ms() == 0.0                                  # b carries the per-node dispatch


def test_partial_from_another_config_is_not_reused(tmp_path):
    out = tmp_path / "p.json"
    (tmp_path / "p.json.partial.json").write_text(json.dumps({"config": {"batch": 99}, "points": {"x": 1}, "extra": {}}))
    prof = run(LAYERS[:2], TINY, str(out), "tiny", progress=False)
    assert prof["measurement"]["resumed_measurements"] == 0


def test_torch_runtime_profile(tmp_path, one_thread):
    from dataclasses import replace

    out = tmp_path / "torch.json"
    prof = run(LAYERS, replace(TINY, runtime="torch", rounds=1), str(out), "tiny-torch", progress=False)
    p = load_profile(out, runtime="torch")
    assert prof["runtime"]["name"] == "torch" and p.data["tables"]
    assert "reorder" not in p.data["memory_ops"]                 # an onnxruntime layout cost only


def test_unsupported_runtime():
    from dataclasses import replace

    from compress.errors import CompressError

    with pytest.raises(CompressError, match="not supported by this profiler yet"):
        run(LAYERS, replace(TINY, runtime="tensorrt"), "/tmp/never.json", "x", progress=False)


def test_grouped_conv_is_measured_with_its_groups():
    import numpy as np

    from compress.hardware_profiles import ort_bench, table_key, torch_bench

    sig = LayerSig("conv", 64, 64, (3, 3), (1, 1), (1, 1), 4, 8, 8)   # 4 groups of 16 channels
    _, cins, couts = plan_tables([sig], ProfileConfig(batch=1, grid_step=6, max_points=4))[table_key(sig)]
    assert cins[-1] == couts[-1] == 64 and all(v % 4 == 0 for v in cins + couts)   # counts split into the groups
    m = ort_bench._conv_model(sig, 64, [32, 64], 1, np.random.default_rng(0))
    groups = [a.i for n in m.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert groups == [4, 4]
    assert {i.name: list(i.dims) for i in m.graph.initializer}["P0_w"] == [32, 16, 3, 3]
    # both backends run the grouped layer (onnxruntime rejects a weight that does not match `group`)
    for be in (ort_bench, torch_bench):
        ms = be.conv_points(sig, [(64, 32), (64, 64)], 1, 1, 2, threads=1, max_seconds=0.5)
        assert set(ms) == {(64, 32), (64, 64)} and all(v > 0 for v in ms.values())
    with pytest.raises(ValueError, match="do not split into 4 groups"):
        sig.conv_groups(64, 30)
