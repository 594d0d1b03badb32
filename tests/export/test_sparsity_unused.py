"""A 2:4 layer the model's output does not use (BERT's pooler when the model returns the last hidden
state, as `hf:minilm` does) is dropped by the ONNX exporter: `compress export` must report it as not in
the graph instead of failing the 2:4 check, and must still fail a used layer whose weight is missing."""

from __future__ import annotations

import torch
from torch import nn

from compress.export import sparsity
from compress.export.package import export
from compress.export.targets import ExportConfig
from tests.export.export_models import mask_24, write_plan


class WithDeadPooler(nn.Module):
    """Like a Hugging Face encoder: the pooler runs in forward, its output is discarded."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 8)
        self.pooler = nn.Linear(8, 8)
        self.compress_input_shape = (1, 8)

    def forward(self, x):
        h = torch.relu(self.enc(x))
        self.pooler(h.mean(0, keepdim=True))   # computed, never returned
        return h


def dead_pooler_24() -> nn.Module:
    torch.manual_seed(0)
    m = WithDeadPooler().eval()
    mask_24(m)
    return m


def test_gpu_export_passes_when_a_2_4_layer_is_not_in_the_graph(tmp_path):
    plan = tmp_path / "sparse_plan.json"
    write_plan(plan, {"enc": {"format": "2:4", "density": 0.5}, "pooler": {"format": "2:4", "density": 0.5}})
    man = export("tests.export.test_sparsity_unused:dead_pooler_24", ExportConfig("gpu"), str(tmp_path / "o"),
                 sparse_plan=str(plan))
    s = man["sparsity_2_4"]
    assert man["ok"] and s["ok"], s
    assert s["checked"] == 1 and s["not_in_graph"] == ["pooler"]
    assert s["layers"]["enc"]["ok"] and s["layers"]["enc"]["initializer"]
    assert s["layers"]["pooler"]["in_graph"] is False and "does not depend" in s["layers"]["pooler"]["reason"]


def test_a_used_layer_missing_from_the_onnx_still_fails(tmp_path):
    m = dead_pooler_24()
    x = (torch.randn(2, 8),)
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(nn.Identity(), x, str(onnx_path), dynamo=False)   # a graph without enc's weight
    res = sparsity.verify_24(str(onnx_path), m, {"enc": {"format": "2:4"}}, x)
    assert not res["enc"]["ok"] and res["enc"]["reason"] == "weight not found among the ONNX initializers"
    assert sparsity.unused(m, "pooler", x) and not sparsity.unused(m, "enc", x)
