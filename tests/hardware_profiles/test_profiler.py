"""The profiler on a tiny grid: real onnxruntime measurements, the grid, and resume after interruption."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from compress.hardware_profiles import LayerSig, load_profile
from compress.hardware_profiles.predictor import table_key
from compress.hardware_profiles.profiler import ProfileConfig, grid, plan_tables, run

REPO = Path(__file__).resolve().parents[2]

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


# ---------------------------------------------------------------------------------------- int8 tables

def _optimized_ops(model) -> list[tuple[str, str]]:
    """(op type, name) of the graph onnxruntime runs for `model` (ORT_ENABLE_ALL, CPU)."""
    import os
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        import onnx

        return [(n.op_type, n.name) for n in onnx.load(so.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("sig,fused", [
    (LayerSig("conv", 16, 32, (3, 3), (1, 1), (1, 1), 1, 8, 8), "QLinearConv"),
    (LayerSig("dwconv", 32, 32, (3, 3), (1, 1), (1, 1), 32, 8, 8), "QLinearConv"),
    (LayerSig("linear", 32, 10), "QGemm")])
def test_int8_points_time_the_fused_int8_kernels(sig, fused):
    # an int8 table times every point as the int8 artifact runs it: export/quantize.py's QDQ graph, each op
    # fused by onnxruntime into its int8 kernel; no fp32 Conv/Gemm (with dequantized weights) is left to time
    import numpy as np
    from onnx import helper

    from compress.hardware_profiles import ort_bench

    rng = np.random.default_rng(0)
    if sig.op == "linear":
        pts = [(32, 8), (32, 16)]
        feeds = {f"x{i}": rng.standard_normal((2, 32), dtype=np.float32) for i in range(2)}
        nodes = [helper.make_node("Gemm", [n, f"P{i}_w"], [f"P{i}_y"], name=f"P{i}_gemm", transB=1)
                 for i, n in enumerate(feeds)]
        inits = [ort_bench._init(f"P{i}_w", rng.standard_normal((o, 32), dtype=np.float32))
                 for i, (_, o) in enumerate(pts)]
        built = ort_bench._model(nodes, [(n, [2, 32]) for n in feeds], [f"P{i}_y" for i in range(2)], inits)
    else:
        pts = [(16, 16), (16, 32)] if sig.op == "conv" else [(16, 16), (32, 32)]
        built = ort_bench._conv_model(sig, 16, [16, 32] if sig.op == "conv" else [16, 16], 2, rng, split=True)
        feeds = {f"x{i}": rng.standard_normal((2, 16, 8, 8), dtype=np.float32) for i in range(2)}
    m, _ = ort_bench._as_run(built, feeds, "int8")
    ops = _optimized_ops(m)
    timed = [t for t, n in ops if n.startswith(("P0_", "P1_")) and t not in ort_bench.INT8_GLUE]
    assert timed == [fused, fused], ops
    be = ort_bench.linear_points if sig.op == "linear" else ort_bench.conv_points
    ms = be(sig, pts, 2, 1, 2, threads=1, max_seconds=0.5, dtype="int8")
    assert set(ms) == set(pts) and all(v > 0 for v in ms.values())


def test_the_int8_channel_block_is_read_off_the_scan():
    from compress.hardware_profiles.profiler import out_block

    ch = list(range(48, 81))
    for b in (4, 8, 16):
        stair = [1.0 + 0.1 * (-(-c // b)) for c in ch]     # a count costs what the next multiple of b costs
        assert out_block(ch, stair) == b
    assert out_block(ch, [0.01 * c for c in ch]) == 1       # cost linear in the count: no block
    assert out_block(ch, [1.0] * len(ch)) == 16             # flat: any count up to the largest block costs the same


def test_int8_staircase_gives_the_profile_its_measured_step():
    from dataclasses import replace

    from compress.hardware_profiles import ort_bench
    from compress.hardware_profiles.profiler import staircase, steps_from

    cfg = replace(TINY, rounds=1, dtype="int8")
    sc = staircase(ort_bench, LAYERS, cfg)
    assert sc["channels"] == list(range(48, 81)) and all(v > 0 for v in sc["cout_ms_at_cin64"] + sc["cin_ms_at_cout64"])
    steps = steps_from(sc, "ort", "int8")
    assert steps["conv"]["block"] in (1, 2, 4, 8, 16) and "int8" in steps["conv"]["note"]
    from compress.hardware_profiles.profiler import out_block

    assert steps["conv"]["block"] == out_block(sc["channels"], sc["cout_ms_at_cin64"])


def test_int8_is_measured_with_onnxruntime_only(tmp_path):
    from compress.errors import CompressError

    with pytest.raises(CompressError, match="--dtype int8 is measured with onnxruntime"):
        run(LAYERS, ProfileConfig(runtime="torch", dtype="int8"), str(tmp_path / "p.json"), "x", progress=False)
    assert not (tmp_path / "p.json").exists()


def test_an_extension_measures_only_the_missing_tables_within_its_budget(tmp_path):
    """run(base=...) measures only the tables the base profile lacks (its overheads, peaks and context are
    copied, not measured); with a table budget spent, a table is measured at the ends of its grid only."""
    import copy

    from compress.hardware_profiles.profiler import missing

    base = json.loads((REPO / "hardware_profiles" / "cpu-x86-2core-ort-amd-avx512-b1.json").read_text())
    cfg = replace(TINY, rounds=1, max_points=4)
    planned = plan_tables(LAYERS, cfg)
    drop = "conv k3x3 s1x1 p1x1 g1 8x8"
    base["tables"] = [t for t in base["tables"] if t["key"] != drop]
    base["tables"].append(copy.deepcopy({"key": table_key(LAYERS[3]), "op": "linear", "cin": [8, 32],
                                         "cout": [10], "ms": [[0.001], [0.002]]}))
    tables, kinds, models = missing(base, LAYERS, cfg, {})
    assert drop in tables and table_key(LAYERS[3]) not in tables and not models
    prof = run(LAYERS, cfg, str(tmp_path / "p.json"), "x", progress=False, base=base, table_seconds=0)
    got = {t["key"]: t for t in prof["tables"]}
    assert set(got) == set(tables) and table_key(LAYERS[3]) not in got
    full = planned[drop]
    assert (full[1], full[2]) == ([3, 8, 16], [8, 16, 24, 32])
    assert (got[drop]["cin"], got[drop]["cout"]) == ([3, 16], [8, 32])     # the ends of each axis
    assert drop in prof["measurement"]["reduced_tables"] and prof["overhead"]["per_inference_ms"] == \
        base["overhead"]["per_inference_ms"] and prof["peak"] == base["peak"]
    prof = run(LAYERS, cfg, str(tmp_path / "q.json"), "x", progress=False, base=base)   # no budget: the full grid
    assert {t["key"]: t["cout"] for t in prof["tables"]}[drop] == full[2]


@pytest.mark.parametrize("kind,ops", [
    ("binary", ["QLinearAdd"]),
    ("silu", ["QLinearSigmoid", "QLinearMul"]),
    ("hardswish", ["DequantizeLinear", "HardSigmoid", "QuantizeLinear", "QLinearMul"]),
    ("unary", ["DequantizeLinear", "HardSigmoid", "QuantizeLinear"]),
    ("gap", ["QLinearGlobalAveragePool"])])
def test_int8_memory_ops_time_what_the_int8_network_runs(kind, ops):
    # in an int8 network a memory-bound op sits between int8 convs: it runs its int8 kernel where onnxruntime
    # has one, else dequantize -> fp32 op -> quantize; what is timed (nodes named P<i>_) is exactly that, and
    # the convs around it and the graph's own input quantization are not timed
    from compress.hardware_profiles import ort_bench

    m, _ = ort_bench.memory_model(kind, [(16, 8, 8)], 2, "int8")
    timed = sorted(t for t, n in _optimized_ops(m) if n.startswith("P0_"))
    assert timed == sorted(ops), _optimized_ops(m)
    ms = ort_bench.memory_points(kind, [(16, 8, 8), (32, 8, 8)], 2, 1, 2, threads=1, max_seconds=0.5, dtype="int8")
    assert all(v > 0 for v in ms.values())


def test_an_int8_profile_with_fp32_timed_memory_ops_gets_them_all_measured_again():
    from compress.hardware_profiles.profiler import merge_into, missing

    base = json.loads((REPO / "hardware_profiles" / "cpu-x86-2core-ort-int8-amd-avx512-b8.json").read_text())
    base.pop("memory_ops_dtype", None)          # timed before memory ops were timed as the int8 graph runs them
    cfg = replace(TINY, dtype="int8")
    _, kinds, _ = missing(base, LAYERS, cfg, {})
    assert set(kinds) == set(base["memory_ops"]) | {s.kind for s in LAYERS if s.op == "memory"}
    new = {**base, "memory_ops": {"binary": {"ms": 0.001, "ms_per_melem": 0.1}}, "memory_ops_dtype": "int8",
           "calibration": [], "tables": []}
    merged, _ = merge_into(base, new)
    assert merged["memory_ops"] == new["memory_ops"] and merged["memory_ops_dtype"] == "int8"
    _, kinds, _ = missing(merged, LAYERS, cfg, {})          # measured the int8 way: only what is lacking
    assert set(kinds) == {s.kind for s in LAYERS if s.op == "memory"} - {"binary"}
