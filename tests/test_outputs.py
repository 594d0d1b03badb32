"""Models returning dicts, tuples or Hugging Face output objects: one primary output, picked the same way by
verify, ONNX export, onnxruntime parity and eval (compress.models.outputs), and named in summary and manifest."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch

from compress.cli import main
from compress.models.outputs import describe, primary

pytestmark = pytest.mark.usefixtures("one_thread")
M = "tests.export.export_models:"


def test_primary_output_rules():
    a, b = torch.ones(1), torch.zeros(1)
    assert primary(a) == (a, "")
    assert primary(OrderedDict(aux=b, out=a)) == (a, "out")              # segmentation: 'out' wins
    assert primary({"logits": a, "x": b}) == (a, "logits")
    assert primary({"feat0": a, "feat1": b}) == (a, "feat0")              # else the first tensor entry
    assert primary((None, (a, b))) == (a, "[1][0]")
    assert primary([{"out": a}]) == (a, "[0].out")
    assert primary(("text", 3)) == (None, "")
    assert describe(OrderedDict(out=a, aux=b)) == "OrderedDict (out, aux): 'out'"
    assert describe((a, b)) == "tuple of 2: '[0]'"


def test_hf_output_object():
    mo = pytest.importorskip("transformers.modeling_outputs")
    a, h = torch.ones(2, 3), torch.zeros(2, 4)
    out = mo.SequenceClassifierOutput(logits=a, hidden_states=(h,))
    assert primary(out)[1] == "logits" and primary(out)[0] is a
    assert primary(mo.BaseModelOutput(last_hidden_state=h))[1] == "last_hidden_state"


@pytest.mark.parametrize("model,picked", [
    ("dict_output", "'out'"),
    ("tuple_output", "'[0]'"),
    ("hf_style_output", "'logits'"),
])
def test_prune_verify_and_onnx_parity_on_the_primary_output(tmp_path, capsys, model, picked):
    if model == "hf_style_output":
        pytest.importorskip("transformers")
    out = tmp_path / "p"
    code = main(["prune", M + model, "--ratio", "0.5", "--round-to", "1", "--out", str(out), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["onnx_parity"]["ok"] and res["max_rel_error_vs_masked"] <= 1e-4
    assert res["onnx_parity"]["output"].endswith(picked), res["onnx_parity"]
    assert res["macs_after"] < res["macs_before"]
    import onnx
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["output"]
    # the directory reloads and exports (onnxruntime only) with the same primary output
    art = tmp_path / "a"
    assert main(["export", str(out), "--target", "cpu", "--runtimes", "ort", "--out", str(art), "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["ok"] and man["onnx"]["output"]["from"].endswith(picked)


def test_verify_compares_every_output_not_only_the_primary():
    from compress.prune.apply import _flat, compare

    class Two(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, x):
            return {"out": x, "aux": x * self.k}

    x = (torch.randn(2, 3),)
    assert compare(Two(1.0), Two(1.0), x) == 0.0 and compare(Two(1.0), Two(2.0), x) > 0.1
    assert len(_flat({"out": x[0], "aux": (x[0], x[0])})) == 3


def test_dict_output_onnx_is_deterministic(tmp_path):
    from compress.export.onnx import export_onnx
    from tests.export.export_models import dict_output

    m = dict_output()
    x = (torch.randn(1, 3, 16, 16),)
    export_onnx(m, x, str(tmp_path / "a.onnx"))
    export_onnx(m, x, str(tmp_path / "b.onnx"))
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_onnx_export_of_a_dict_output_model_leaves_it_in_eval_mode(tmp_path):
    """Exporting wraps the model (PrimaryOutput); torch.onnx.export restores the wrapper's mode with a
    recursive train(): the model must come back in eval mode, not with its batch norms in training mode
    (which then update their running statistics, or refuse a 1x1 feature map at batch 1)."""
    from compress.export.onnx import export_onnx

    class DictOut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return {"out": self.bn(self.conv(x))}

    model = DictOut().eval()
    x = torch.randn(1, 3, 8, 8)
    before = model.bn.running_mean.clone()
    export_onnx(model, (x,), str(tmp_path / "m.onnx"))
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        model(x)
    assert torch.equal(model.bn.running_mean, before)
