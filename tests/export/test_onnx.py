"""export_onnx + ort_parity on pruned models: dynamic batch, parity, failures."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress import models
from compress.errors import CompressError
from compress.export.onnx import export_onnx, ort_parity
from compress.prune.plan import PruneConfig
from compress.prune.apply import prune

SPECS = ["tests.models:tiny_cnn", "tests.models:tiny_gqa", "tests.models:tiny_gqa_sdpa"]


def _pruned(spec: str, ratio: float = 0.5):
    lm = models.load(spec)
    inputs = models.example_inputs(lm)
    res = prune(lm.model, inputs, PruneConfig(ratio=ratio), 16, {"model": spec})
    return lm, inputs, res


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("spec", SPECS)
def test_pruned_model_parity_at_batch_1_and_3(spec, tmp_path):
    lm, inputs, res = _pruned(spec)
    assert any(g.channels_after < g.channels_before for g in res.plan.groups)
    path = tmp_path / "model.onnx"
    export_onnx(res.model, inputs, str(path))
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert _dims(m.graph.input[0])[0] == "batch" and _dims(m.graph.output[0])[0] == "batch"
    for batch in (1, 3):
        x = models.example_inputs(lm, (batch,) + tuple(inputs[0].shape[1:]), seed=batch)
        parity = ort_parity(str(path), res.model, x)
        assert parity["ok"] and parity["max_rel_error"] <= 1e-4, (batch, parity)


def test_static_batch_export(tmp_path):
    lm, inputs, res = _pruned("tests.models:tiny_cnn")
    path = tmp_path / "static.onnx"
    export_onnx(res.model, inputs, str(path), dynamic_batch=False)
    m = onnx.load(str(path))
    assert _dims(m.graph.input[0]) == list(inputs[0].shape)
    assert ort_parity(str(path), res.model, inputs)["ok"]


def test_parity_fails_for_a_different_model(tmp_path):
    lm, inputs, res = _pruned("tests.models:tiny_cnn")
    path = tmp_path / "model.onnx"
    export_onnx(res.model, inputs, str(path))
    other = copy.deepcopy(res.model)
    with torch.no_grad():
        other.head.bias.add_(1.0)
    parity = ort_parity(str(path), other, inputs)
    assert not parity["ok"] and parity["max_rel_error"] > 1e-4
    # a model with another output shape is a failure too, not an exception
    wider = nn.Sequential(res.model, nn.Linear(10, 11))
    parity = ort_parity(str(path), wider, inputs)
    assert not parity["ok"] and parity["max_rel_error"] == float("inf")


def test_export_is_deterministic(tmp_path):
    lm, inputs, res = _pruned("tests.models:tiny_gqa_sdpa")
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(res.model, inputs, str(a))
    export_onnx(res.model, inputs, str(b))
    assert a.read_bytes() == b.read_bytes()


class _Unexportable(nn.Module):
    def forward(self, x):  # output size 3 does not divide 5: no ONNX conversion
        return F.adaptive_avg_pool2d(x, 3)


def test_export_failure_is_one_line_and_prints_nothing(tmp_path, capfd):
    with pytest.raises(CompressError) as e:
        export_onnx(_Unexportable(), (torch.randn(1, 3, 5, 5),), str(tmp_path / "bad.onnx"))
    assert "ONNX export failed" in str(e.value) and "adaptive_avg_pool2d" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    out, err = capfd.readouterr()
    # the TorchScript exporter dumps its IR graph from C++ on failure; none of it may leak
    assert out == "" and err == "", (out[:200], err[:200])


def test_a_model_with_two_inputs_keeps_both_in_onnx(tmp_path, capsys):
    """issue #20: a BERT classifier whose forward needs token ids and an attention mask, pruned by
    `compress prune`: model.onnx has both as graph inputs, each with its own shape, and onnxruntime agrees
    with the pruned torch model on a padded batch; `compress export` of the pruned directory keeps both too."""
    import numpy as np

    from compress.cli import main
    from compress.export.onnx import ort_session

    pytest.importorskip("transformers")
    spec, out = "tests.models:bert_two_inputs", tmp_path / "p"
    lm = models.load(spec)
    ids, mask = models.example_inputs(lm, (3, 12))
    assert ids.dtype == mask.dtype == torch.int64 and mask.shape == (3, 12) and bool((mask == 1).all())
    assert main(["prune", spec, "--ratio", "0.5", "--out", str(out)]) == 0
    g = onnx.load(str(out / "model.onnx")).graph
    assert [(i.name, _dims(i)) for i in g.input] == [("input_ids", ["batch", 12]), ("attention_mask", ["batch", 12])]
    pruned = models.load(str(out))
    assert pruned.plan is not None and models.input_names(pruned) == ["input_ids", "attention_mask"]
    assert any(gr.channels_after < gr.channels_before for gr in pruned.plan.groups)
    mask = mask.clone()
    mask[1, 7:] = 0                                  # padding: the mask changes the logits, so it must be fed
    mask[2, 3:] = 0
    got = ort_session(str(out / "model.onnx")).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = pruned.model(ids, mask).numpy()
        unmasked = pruned.model(ids, torch.ones_like(mask)).numpy()
    err = np.abs(got - want).max()
    assert err <= 1e-4 * np.abs(want).max() and np.abs(want - unmasked).max() > 1000 * max(err, 1e-9)
    capsys.readouterr()
    assert main(["export", str(out), "--target", "cpu", "--runtimes", "ort", "--out", str(tmp_path / "a")]) == 0
    text = capsys.readouterr().out
    assert "inputs: input_ids int64 [1, 12], attention_mask int64 [1, 12]" in text
    assert "parity onnxruntime (model.ort.onnx) on random batch 1, attention_mask padded (seed 2): ok" in text
