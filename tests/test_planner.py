"""The latency-aware planner: exact knapsack, budgets met under the profile, plans that apply."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compress.hardware_profiles.layers import extract_layers
from compress.hardware_profiles.predictor import DeviceProfile
from compress.planner.solve import BudgetUnreachable, PlanConfig, knapsack, plan_model
from compress.prune.apply import apply_plan

PROFILE = {
    "schema": "compress.hardware_profile", "schema_version": 1, "name": "synthetic-test", "source": "analytic",
    "source_detail": "roofline-only profile for tests", "device": {"kind": "cpu", "name": "test"},
    "runtime": {"name": "ort", "version": "0"}, "dtype": "float32", "batch": 1, "measurement": {},
    "peak": {"gflops": 50.0, "gbps": 10.0, "source": "test"},
    "overhead": {"per_inference_ms": 0.05, "per_op_ms": 0.001},
    "steps": {"conv": {"block": 8, "unaligned_factor": 1.2}}, "memory_ops": {}, "tables": [],
}


def _profile() -> DeviceProfile:
    return DeviceProfile(copy.deepcopy(PROFILE))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(32, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
                               nn.Conv2d(48, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.a(x))
        return self.head(self.down(x).mean((2, 3)))


def _inputs():
    return (torch.randn(1, 3, 16, 16),)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 20)), min_size=1, max_size=4),
                min_size=1, max_size=4), st.integers(0, 25))
def test_knapsack_matches_brute_force(items, cap):
    costs = [np.array([float(c) for c, _ in it]) for it in items]
    values = [np.array([float(v) for _, v in it]) for it in items]
    for c in costs:          # every item needs a zero-cost choice (the planner shifts costs so)
        c -= c.min()
    picks = knapsack(costs, values, float(cap), bins=max(cap, 1))
    assert sum(c[p] for c, p in zip(costs, picks)) <= cap + 1e-9
    best = max(sum(v[j] for v, j in zip(values, js)) for js in itertools.product(*[range(len(c)) for c in costs])
               if sum(c[j] for c, j in zip(costs, js)) <= cap)
    assert sum(v[p] for v, p in zip(values, picks)) == pytest.approx(best)


def test_plan_meets_budget_and_prediction_matches_the_pruned_model(one_thread):
    torch.manual_seed(0)
    m = Net().eval()
    prof = _profile()
    plan, res, _ = plan_model(m, _inputs(), prof, PlanConfig(latency_budget=0.6), {"model": "test"})
    assert res.predicted_ms <= res.target_ms + 1e-9
    assert res.predicted_ms < res.dense_ms * 0.65
    assert res.target_ms == pytest.approx(0.6 * res.dense_ms)
    out = apply_plan(copy.deepcopy(m), _inputs(), plan)
    # the planner's layer model, re-extracted from the physically pruned network, agrees exactly
    again = _profile().total_ms(extract_layers(out.model, _inputs()))
    assert again == pytest.approx(res.predicted_ms, rel=1e-9)
    # channels sit on the profile's step (8) unless a group is kept whole
    for g in plan.groups:
        assert g.channels_after == g.channels_before or g.channels_after % 8 == 0
    # the depthwise conv follows its producer
    dw = out.model.down[3]
    assert dw.groups == dw.in_channels == dw.out_channels == out.model.down[0].out_channels


def test_plan_is_deterministic(one_thread):
    m = Net().eval()
    a, _, _ = plan_model(copy.deepcopy(m), _inputs(), _profile(), PlanConfig(latency_budget=0.5), {"model": "t"})
    b, _, _ = plan_model(copy.deepcopy(m), _inputs(), _profile(), PlanConfig(latency_budget=0.5), {"model": "t"})
    assert a.to_json() == b.to_json()


def test_budget_above_dense_is_nothing_to_do(one_thread):
    plan, res, _ = plan_model(Net().eval(), _inputs(), _profile(), PlanConfig(latency_budget=1.2), {"model": "t"})
    assert plan is None and res.predicted_ms == res.dense_ms


def test_unreachable_budget_says_the_best_latency(one_thread):
    with pytest.raises(BudgetUnreachable) as e:
        plan_model(Net().eval(), _inputs(), _profile(), PlanConfig(latency_ms=1e-6), {"model": "t"})
    assert e.value.best_ms > 0 and "smallest allowed network" in str(e.value)


def test_plan_and_prune_cli(tmp_path, one_thread):
    from compress.cli import main

    prof = tmp_path / "prof.json"
    prof.write_text(json.dumps(PROFILE))
    out = tmp_path / "plan"
    rc = main(["plan", "tests.models:tiny_cnn", "--profile", str(prof), "--latency-budget", "0.6",
               "--out", str(out), "--json"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["predicted_ms"] <= report["target_ms"] + 1e-9
    rc = main(["prune", "tests.models:tiny_cnn", "--plan", str(out / "plan.json"), "--out", str(tmp_path / "p")])
    assert rc == 0
    assert (tmp_path / "p" / "model.onnx").is_file()
    # an unreachable budget: exit 1, no output
    assert main(["plan", "tests.models:tiny_cnn", "--profile", str(prof), "--latency-ms", "0.000001",
                 "--out", str(tmp_path / "never")]) == 1
    assert not (tmp_path / "never").exists()
    # a truncated profile: exit 2
    bad = tmp_path / "bad.json"
    bad.write_text(prof.read_text()[:50])
    assert main(["plan", "tests.models:tiny_cnn", "--profile", str(bad), "--latency-budget", "0.5",
                 "--out", str(tmp_path / "x")]) == 2


def test_formats_report_prices_2_4_on_a_gpu_profile_and_never_on_cpu(one_thread):
    """2:4 on a GPU: measured entries price it (a constructed profile where 2:4 halves a layer's time: it
    wins, and the mixed plan keeps at least as much importance); without them the model fitted to published
    measurements prices it (these 4-row GEMMs are far below the size where cuSPARSELt pays: priced, labelled
    published, never chosen); never on a CPU, measured entries or not."""
    from compress.planner import formats as planner_formats
    from compress.planner.solve import finish, prepare
    from tests.hardware_profiles.profile_fixtures import sparse_section

    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = (torch.randn(4, 64),)
    for kind, measured in (("gpu", True), ("gpu", False), ("cpu", True)):
        d = copy.deepcopy(PROFILE)
        d["device"]["kind"] = kind
        d["peak"]["gbps"] = 1e4          # compute-bound, so halving the math pays
        d["peak"]["gflops"] = 0.1
        d["overhead"] = {"per_inference_ms": 0.0, "per_op_ms": 0.0}
        if measured:
            d["sparse"] = sparse_section("constructed GPU runtime" if kind == "gpu" else planner_formats.SPARSE_RUNTIME,
                                         {"2:4": 0.5})
        prof = DeviceProfile(d)
        cfg = PlanConfig(latency_budget=0.8)
        prep = prepare(copy.deepcopy(mlp), x, prof, cfg)
        plan, res, _ = finish(prep, cfg, {"model": "mlp"})
        rep, mixed = planner_formats.report(prep, cfg, {"model": "mlp"}, res, ("2:4",))
        formats = {o["format"] for layer in rep["layers"] for o in layer["options"]}
        sources = {o["source"].split(" ")[0] for layer in rep["layers"] for o in layer["options"]}
        if kind == "cpu":
            assert rep["layers"] == [] and rep["winner"] == "structured"
        elif measured:
            assert formats == {"2:4"} and sources == {"measured"}
            assert rep["summary"].get("2:4", 0) >= 1
            assert rep["unstructured"]["speedup"] > 1.0
            assert rep["mixed"]["meets_budget"] and mixed is not None
            # the mixed plan keeps at least as much importance as structured-only at the same budget
            assert rep["mixed"]["importance_kept"] >= rep["mixed"]["structured_importance_kept"] - 1e-9
        else:
            assert formats == {"2:4"} and sources == {"published,"}
            assert rep["summary"] == {"dense": len(rep["layers"])} and rep["winner"] == "structured" and mixed is None


class Stream(nn.Module):
    """A residual stream of `width` channels, produced and read by every one of `blocks` blocks."""

    def __init__(self, width=32, hidden=32, blocks=4):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(width, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, width, 1))
                                    for _ in range(blocks))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x.mean((2, 3)))


def test_latency_weight_is_the_latency_of_the_layers_a_group_sizes(one_thread):
    from compress.planner.solve import prepare

    m = Net().eval()
    old = prepare(copy.deepcopy(m), _inputs(), _profile(), PlanConfig(latency_budget=0.5, objective="log"))
    new = prepare(copy.deepcopy(m), _inputs(), _profile(), PlanConfig(latency_budget=0.5, objective="log-latency"))
    cost, dense = new.cost, new.dense
    weights = {}
    for g in new.graph.groups:
        # every layer this group sizes has all its channels in it, so what it carries is exactly the
        # latency that vanishes when the group is removed
        weights[g.id] = cost.total(dense) - cost.total({**dense, g.id: 0})
        assert weights[g.id] > 0
        assert cost.carried(g.id, dense) == pytest.approx(weights[g.id], rel=1e-9)
        # the value of a candidate is that latency times log(importance fraction kept); "log": channels times it
        assert np.array_equal(new.cands[g.id], old.cands[g.id])
        np.testing.assert_allclose(new.values[g.id] * g.channels, old.values[g.id] * weights[g.id], rtol=1e-9)
    stream = next(g.id for g in new.graph.groups if len(g.producers) > 1)
    # the residual stream is read and written by more layers than the block's hidden channels
    hidden = next(g.id for g in new.graph.groups if g.producers == [("a.0.weight", 0)])
    assert weights[stream] > weights[hidden]


def test_latency_weighting_prunes_a_residual_stream_less(one_thread):
    from compress.planner.solve import finish, prepare

    m = Stream(width=64, hidden=64, blocks=4).eval()
    x = (torch.randn(1, 3, 16, 16),)
    d = copy.deepcopy(PROFILE)
    d["overhead"] = {"per_inference_ms": 0.0, "per_op_ms": 0.0}   # all latency in the layers the plan sizes
    kept = {}
    for obj in ("log", "log-latency"):
        cfg = PlanConfig(latency_budget=0.5, objective=obj)
        prep = prepare(copy.deepcopy(m), x, DeviceProfile(copy.deepcopy(d)), cfg)
        plan, res, graph = finish(prep, cfg, {"model": "stream"})
        assert res.predicted_ms <= res.target_ms + 1e-9
        stream = next(g for g in graph.groups if len(g.producers) > 1)
        assert stream.size == 64 and len(stream.producers) == 5     # the stem and every block's last conv
        hidden = [res.keep_counts[g.id] for g in graph.groups if g.id != stream.id]
        kept[obj] = (res.keep_counts[stream.id], sum(hidden))
    # weighting by channels alone starves the stream that 9 layers share (and keeps the blocks' hidden
    # channels); weighting by the latency each group carries keeps more of the stream, less hidden
    assert kept["log-latency"][0] > kept["log"][0], kept
    assert kept["log-latency"][1] < kept["log"][1], kept


def test_unknown_objective_is_refused():
    from compress.errors import CompressError

    with pytest.raises(CompressError, match="log-latency"):
        PlanConfig(latency_budget=0.5, objective="nope").validate()
