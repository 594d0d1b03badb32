from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from compress.errors import CompressError
from compress.lower.pipeline import SparsifyConfig, sparsify
from compress.lower.sparse_plan import LayerPlan, SparsePlan
from lowering_models import tiny_bert


def make_plan() -> SparsePlan:
    model = tiny_bert()
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(0, 100, (2, 12), generator=g),)
    calib = [(torch.randint(0, 100, (4, 12), generator=g),)]
    res = sparsify(model, x, SparsifyConfig(pattern="2:4", update="obs", calib="random:4", data_select=True),
                   {"model": "tests.lower.lowering_models:tiny_bert", "input_shape": [2, 12]}, calib)
    return res.plan


def test_json_round_trip_and_determinism(one_thread):
    plan = make_plan()
    text = plan.to_json()
    back = SparsePlan.from_json(text)
    assert back == plan and back.to_json() == text
    assert make_plan().to_json() == text                      # same inputs and seed: same bytes
    d = json.loads(text)
    assert d["schema_version"] == 1 and d["config"]["pattern"] == "2:4"
    assert '"skipped"' not in text and back.skipped == {}        # written only for layers kept dense
    lp = back.layer("layers.0.query")
    assert lp.format == "2:4" and lp.density == 0.5 and lp.kind == "linear" and lp.shape == (64, 64)
    assert lp.error_after <= lp.error_before and lp.error_magnitude is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        lp.density = 1.0


def test_bad_plans_are_clear_errors():
    with pytest.raises(CompressError, match="schema_version"):
        SparsePlan.from_json(json.dumps({"schema_version": 99, "layers": []}))
    with pytest.raises(CompressError, match="not a valid sparse plan"):
        SparsePlan.from_json("{not json")
    with pytest.raises(CompressError, match="unknown format"):
        LayerPlan(name="fc", kind="linear", shape=(4, 4), format="3:8", density=0.5, criterion="magnitude")
    with pytest.raises(CompressError, match="skipped .* but stored as 2:4"):
        LayerPlan(name="fc", kind="linear", shape=(4, 4), format="2:4", density=0.5, criterion="magnitude",
                  skipped="why")
