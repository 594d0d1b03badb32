"""--reconstruct: least-squares refit of the consumers of pruned groups, BatchNorm re-estimation,
the never-worse guard, and the prune verb's summary."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.prune import reconstruct as R
from compress.prune.apply import prune
from compress.prune.plan import PruneConfig
from compress.prune.structured import apply_keep

EXACT = R.ReconstructConfig(damps=(1e-10,))


def _batches(shape, n=60, seed=0, batch=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n,) + tuple(shape), generator=g)
    return [(x[i:i + batch],) for i in range(0, n, batch)]


def _rel(a, b):
    return float((a - b).pow(2).sum() / b.pow(2).sum())


def _out(model, batches):
    with torch.no_grad():
        return torch.cat([model(*b) for b in batches])


class TwoLinear(nn.Module):
    """Hidden unit 5 is an exact copy of unit 0: removing it loses nothing a refit cannot restore."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 3)
        with torch.no_grad():
            self.l1.weight[5] = self.l1.weight[0]
            self.l1.bias[5] = self.l1.bias[0]

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


def test_linear_exactly_redundant_channel_is_recovered_exactly():
    dense = TwoLinear().eval()
    kept = [1, 2, 3, 4, 5]                         # unit 0 goes; its copy (5) stays
    keep = {"l1.weight": {0: kept}, "l1.bias": {0: kept}, "l2.weight": {1: kept}}
    pruned = apply_keep(copy.deepcopy(dense), keep).eval()
    calib = _batches((4,))
    test = _batches((4,), n=40, seed=5)
    assert _rel(_out(pruned, test), _out(dense, test)) > 1e-2
    rep = R.reconstruct(dense, pruned, keep, calib, EXACT)
    assert rep.kept and rep.refit == 1
    (layer,) = rep.layers
    assert layer["layer"] == "l2" and layer["refit"] and layer["error_after"] < 1e-9 < layer["error_before"]
    assert _rel(_out(pruned, test), _out(dense, test)) < 1e-9     # exact on unseen inputs too
    # the solution is the paper's: the removed column folded into its copy's
    w = dense.l2.weight.detach()
    want = torch.cat([w[:, 1:5], (w[:, 5] + w[:, 0])[:, None]], 1)
    assert torch.allclose(pruned.l2.weight.detach(), want, atol=1e-4)


class TwoConv(nn.Module):
    def __init__(self, groups: int = 1):
        super().__init__()
        torch.manual_seed(1)
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 4, 3, padding=1, stride=2, bias=False)
        with torch.no_grad():
            self.c1.weight[4] = self.c1.weight[1]
            self.c1.bias[4] = self.c1.bias[1]

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def test_conv_redundant_channel_recovered_exactly():
    dense = TwoConv().eval()
    kept = [0, 2, 3, 4, 5]
    keep = {"c1.weight": {0: kept}, "c1.bias": {0: kept}, "c2.weight": {1: kept}}
    pruned = apply_keep(copy.deepcopy(dense), keep).eval()
    rep = R.reconstruct(dense, pruned, keep, _batches((3, 8, 8)), EXACT)
    test = _batches((3, 8, 8), n=16, seed=3)
    assert rep.layers[0]["refit"] and rep.layers[0]["type"] == "conv 3x3"
    assert _rel(_out(pruned, test), _out(dense, test)) < 1e-8


class ConstantChannel(nn.Module):
    """Channel 3 of c1 is a constant 1, the others have mean 0: c2 (no bias) cannot absorb it when it
    goes, the BatchNorm's statistics can."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.c1, self.c2, self.bn = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1, bias=False), nn.BatchNorm2d(5)
        with torch.no_grad():
            self.c1.weight[3] = 0
            self.c1.bias[:3] = 0
            self.c1.bias[3] = 1.0
            self.bn.running_mean.copy_(torch.randn(5))
            self.bn.running_var.copy_(torch.rand(5) + 0.5)

    def forward(self, x):
        return self.bn(self.c2(self.c1(x)))


def test_batchnorm_reestimation_absorbs_a_removed_constant_channel():
    dense = ConstantChannel().eval()
    kept = [0, 1, 2]
    keep = {"c1.weight": {0: kept}, "c1.bias": {0: kept}, "c2.weight": {1: kept}}
    pruned = apply_keep(copy.deepcopy(dense), keep).eval()
    rep = R.reconstruct(dense, pruned, keep, _batches((3, 6, 6), n=80))
    (bn,) = rep.batchnorm
    assert bn["layer"] == "bn" and bn["reestimated"] and bn["error_after"] < 1e-3 * bn["error_before"]
    assert rep.output_error_after < 1e-3 * rep.output_error_before
    off = R.reconstruct(dense, apply_keep(copy.deepcopy(dense), keep).eval(), keep, _batches((3, 6, 6), n=80),
                        R.ReconstructConfig(batchnorm=False))
    assert off.batchnorm == [] and off.output_error_after > rep.output_error_after


def _tiny_cnn():
    from tests.models import tiny_cnn
    return tiny_cnn()


def test_cnn_with_depthwise_and_concat_consumers():
    model = _tiny_cnn()
    inputs = (torch.randn(2, 3, 32, 32),)
    res = prune(model, inputs, PruneConfig(ratio=0.5), 1, {"model": "t"})
    calib = _batches((3, 32, 32), n=80)
    before = copy.deepcopy(res.model)
    rep = R.reconstruct(model, res.model, res.plan.param_keep(), calib, graph=res.graph)
    names = {r["layer"]: r for r in rep.layers}
    assert names["dw.0"]["type"] == "depthwise conv 3x3" and "depthwise" in names["dw.0"]["note"]
    assert {"project.0", "fuse", "head"} <= set(names)
    assert rep.kept and rep.output_error_after < rep.output_error_before
    assert all(r["error_after"] <= r["error_before"] for r in rep.layers if "error_before" in r)
    assert rep.groups and all(g["error_after"] <= g["error_before"] for g in rep.groups)
    test = _batches((3, 32, 32), n=40, seed=9)
    assert _rel(_out(res.model, test), _out(model, test)) < _rel(_out(before, test), _out(model, test))
    json.dumps(rep.to_json())


def test_grouped_conv_consumer_refit_per_group():
    from tests.models import tiny_grouped_cnn

    model = tiny_grouped_cnn()
    res = prune(model, (torch.randn(2, 3, 16, 16),), PruneConfig(ratio=0.5), 1, {"model": "t"})
    rep = R.reconstruct(model, res.model, res.plan.param_keep(), _batches((3, 16, 16), n=80), graph=res.graph)
    grouped = [r for r in rep.layers if r["type"].startswith("grouped")]
    assert grouped and grouped[0]["refit"]
    assert rep.kept and rep.output_error_after < rep.output_error_before


def test_transformer_attention_output_and_mlp_down_projections():
    from tests.models import tiny_gqa

    model = tiny_gqa()
    ids = torch.randint(0, 256, (2, 12))
    res = prune(model, (ids,), PruneConfig(ratio=0.5), 1, {"model": "t"})
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randint(0, 256, (8, 12), generator=g),) for _ in range(8)]
    rep = R.reconstruct(model, res.model, res.plan.param_keep(), calib, graph=res.graph)
    names = {r["layer"] for r in rep.layers}
    assert {"layers.0.self_attn.o_proj", "layers.0.mlp.down_proj"} <= names
    assert rep.kept and rep.output_error_after < rep.output_error_before


def test_never_worse_reverts_everything(monkeypatch):
    model = _tiny_cnn()
    res = prune(model, (torch.randn(2, 3, 32, 32),), PruneConfig(ratio=0.5), 1, {"model": "t"})
    state = {k: v.clone() for k, v in res.model.state_dict().items()}

    def sabotage(layer, x, fit, check, cfg):          # a refit that makes every layer worse
        layer.module.weight.data.mul_(-3.0)
        layer.record.update({"refit": True, "error_before": 1.0, "error_after": 0.5})
    monkeypatch.setattr(R, "_refit_layer", sabotage)
    rep = R.reconstruct(model, res.model, res.plan.param_keep(), _batches((3, 32, 32), n=40))
    assert not rep.kept and rep.refit == 0 and any("reverted" in n for n in rep.notes)
    assert rep.output_error_after == rep.output_error_before
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_deterministic():
    model = _tiny_cnn()
    outs = []
    for _ in range(2):
        res = prune(model, (torch.randn(2, 3, 32, 32),), PruneConfig(ratio=0.5), 1, {"model": "t"})
        R.reconstruct(model, res.model, res.plan.param_keep(), _batches((3, 32, 32), n=40))
        outs.append({k: v.clone() for k, v in res.model.state_dict().items()})
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_bad_calibration_is_bad_input():
    dense = TwoLinear().eval()
    keep = {"l1.weight": {0: [0, 1, 2]}, "l1.bias": {0: [0, 1, 2]}, "l2.weight": {1: [0, 1, 2]}}
    pruned = apply_keep(copy.deepcopy(dense), keep).eval()
    with pytest.raises(CompressError, match="at least"):
        R.reconstruct(dense, pruned, keep, _batches((4,), n=6))
    with pytest.raises(CompressError, match="differ in shape"):
        R.reconstruct(dense, pruned, keep, [(torch.randn(8, 4),), (torch.randn(8, 5),)])
    with pytest.raises(CompressError, match="needs calibration"):
        R.reconstruct(dense, pruned, keep, [])


def test_unsupported_layer_is_named():
    class WithConv1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv1d(2, 6, 1), nn.Conv1d(6, 3, 1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    dense = WithConv1d().eval()
    kept = [0, 1, 2]
    keep = {"a.weight": {0: kept}, "a.bias": {0: kept}, "b.weight": {1: kept}}
    pruned = apply_keep(copy.deepcopy(dense), keep).eval()
    rep = R.reconstruct(dense, pruned, keep, _batches((2, 5), n=20))
    assert any("layer b not refit" in n and "Conv1d" in n for n in rep.notes)


def test_prune_api_reconstruct_summary(tmp_path):
    from compress.api.prune import PruneRun, prune as api_prune
    from compress.models.source import ModelSpec
    from tests.test_evaluate import make_learnable_idx

    d = make_learnable_idx(tmp_path / "data")
    out = tmp_path / "out"
    r = api_prune(PruneRun(ModelSpec("tests.test_evaluate:tiny_cnn"), str(out), PruneConfig(ratio=0.5, round_to=1),
                           data=str(d), reconstruct=R.ReconstructConfig()))
    assert r["code"] == 0
    s = json.loads((out / "summary.json").read_text())
    rc = s["reconstruct"]
    assert rc["samples"] == 400 and "data:1024" in rc["calib"]      # the 400 training samples there are
    for k in ("accuracy_before", "accuracy_after", "accuracy_dense", "layers", "groups", "output_error_before"):
        assert k in rc
    assert s["accuracy"] == rc["accuracy_after"]
    assert "reconstruction on" in r["text"]
    # what is written is the refit model
    from compress import models
    lm = models.load(str(out))
    x = torch.rand(4, 1, 8, 8)
    assert torch.isfinite(lm.model(x)).all()


def test_prune_api_reconstruct_needs_calibration(tmp_path):
    from compress.accuracy.schedules import PruneSchedule
    from compress.api.accuracy import FinetuneConfig
    from compress.api.prune import PruneRun, prune as api_prune
    from compress.models.source import ModelSpec

    spec = ModelSpec("tests.test_evaluate:tiny_cnn")
    with pytest.raises(CompressError, match="needs calibration data"):
        api_prune(PruneRun(spec, str(tmp_path / "o"), PruneConfig(ratio=0.5), reconstruct=R.ReconstructConfig()))
    with pytest.raises(CompressError, match="one-shot"):
        api_prune(PruneRun(spec, str(tmp_path / "o"), PruneConfig(ratio=0.5), data="x", finetune=FinetuneConfig(1),
                           schedule=PruneSchedule("gradual", 2), reconstruct=R.ReconstructConfig()))
    assert not (tmp_path / "o").exists()


def test_prune_api_reconstruct_with_npy_calib(tmp_path):
    from compress.api.prune import PruneRun, prune as api_prune
    from compress.models.source import ModelSpec

    x = np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    out = tmp_path / "out"
    r = api_prune(PruneRun(ModelSpec("tests.test_evaluate:tiny_cnn"), str(out), PruneConfig(ratio=0.5, round_to=1),
                           calib=str(tmp_path / "calib.npy"), reconstruct=R.ReconstructConfig()))
    s = json.loads((out / "summary.json").read_text())
    assert r["code"] == 0 and s["reconstruct"]["samples"] == 40 and "calib.npy" in s["reconstruct"]["calib"]
    assert "accuracy_before" not in s["reconstruct"]


def test_cli_reconstruct_without_calibration_exits_2(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "-m", "compress", "prune", "tests.test_evaluate:tiny_cnn", "--ratio", "0.5",
                        "--reconstruct", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "--reconstruct needs calibration data" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not out.exists()


def test_layers_that_cannot_be_refit_are_named_and_left_alone():
    class Doubling(nn.Linear):                     # not a plain matrix product of its input
        def forward(self, x):
            return super().forward(2 * x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b, self.c = nn.Linear(4, 6), Doubling(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.c(torch.relu(self.b(h)) + torch.relu(self.b(h * 0.5)))   # b shared: runs twice

    dense = Net().eval()
    kept = [0, 1, 2, 3]
    keep = {"a.weight": {0: kept}, "a.bias": {0: kept}, "b.weight": {1: kept}}
    pruned = apply_keep(copy.deepcopy(dense), keep).eval()
    w = pruned.b.weight.detach().clone()
    rep = R.reconstruct(dense, pruned, keep, _batches((4,), n=40))
    (b,) = [r for r in rep.layers if r["layer"] == "b"]
    assert not b["refit"] and "runs 2 times" in b["reason"]
    assert any(n.startswith("layer b not refit") for n in rep.notes)
    assert torch.equal(pruned.b.weight.detach(), w)


def test_subclass_with_other_forward_cannot_be_refit():
    class Doubling(nn.Linear):
        def forward(self, x):
            return super().forward(2 * x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = nn.Linear(4, 6), Doubling(6, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    dense = Net().eval()
    kept = [0, 1, 2, 3]
    keep = {"a.weight": {0: kept}, "a.bias": {0: kept}, "b.weight": {1: kept}}
    pruned = apply_keep(copy.deepcopy(dense), keep).eval()
    rep = R.reconstruct(dense, pruned, keep, _batches((4,), n=40))
    (b,) = rep.layers
    assert not b["refit"] and b["reason"].startswith("cannot be refit: its forward (Doubling)")
    assert any("layer b cannot be refit" in n for n in rep.notes)


def test_cli_matches_the_library(tmp_path, capsys):
    from compress.api.prune import PruneRun, prune as api_prune
    from compress.cli import main
    from compress.models.source import ModelSpec
    from tests.test_evaluate import make_learnable_idx

    d = make_learnable_idx(tmp_path / "data", n_train=60, n_test=20)
    assert main(["prune", "tests.test_evaluate:tiny_cnn", "--ratio", "0.5", "--round-to", "1", "--criterion", "thinet",
                 "--reconstruct", "--data", str(d), "--calib", "data:40", "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    r = api_prune(PruneRun(ModelSpec("tests.test_evaluate:tiny_cnn"), str(tmp_path / "api"),
                           PruneConfig(ratio=0.5, criterion="thinet", round_to=1), data=str(d), calib="data:40",
                           reconstruct=R.ReconstructConfig()))
    assert r["code"] == 0 and "without / with reconstruction" in r["text"]
    for f in ("plan.json", "model.safetensors"):
        assert (tmp_path / "api" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f


def test_grouped_conv_with_whole_groups_removed():
    """4 conv groups: the pruner removes whole groups (inputs and outputs); each kept group is refit."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=4),
                          nn.ReLU(), nn.Conv2d(32, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    res = prune(model, (torch.randn(2, 3, 12, 12),), PruneConfig(ratio=0.5), 1, {"model": "t"})
    g = res.model[2]
    assert g.groups < 4 or g.in_channels < 32
    rep = R.reconstruct(model, res.model, res.plan.param_keep(), _batches((3, 12, 12), n=60), graph=res.graph)
    (rec,) = [r for r in rep.layers if r["layer"] == "2"]
    assert rec["type"] == "grouped conv 3x3 (2 groups)"
    assert rec["error_before"] < 1e-9 and not rec["refit"]          # the kept groups lost nothing: left alone
    assert rep.kept and rep.output_error_after < rep.output_error_before


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("k,stride,pad,dil", [(3, 1, 1, 1), (3, 2, 1, 1), (7, 2, 3, 1), (1, 1, 0, 1), (3, 1, 2, 2),
                                              (5, 2, 0, 1)])
def test_im2col_at_sampled_positions_matches_unfold(k, stride, pad, dil, nhwc):
    """The conv's input rows at sampled output positions, zero padding included, without a padded copy."""
    torch.manual_seed(0)
    m = nn.Conv2d(4, 3, k, stride, pad, dil)
    x = torch.randn(5, 4, 13, 11)
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = m(x)
    S = y.shape[2] * y.shape[3]
    pos = torch.rand(5, S).argsort(1)[:, :7]
    X = R._im2col_at(m, x, pos, 2)
    cols = torch.nn.functional.unfold(x, k, dil, pad, stride).transpose(1, 2)        # (n, S, C*k*k)
    assert torch.equal(X, torch.gather(cols, 1, pos.unsqueeze(-1).expand(-1, -1, cols.shape[2])))


class ViewsActivation(nn.Module):
    """Its forward .view()s a conv output: that works on NCHW only, so the passes keep the given layout."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        y = self.c2(torch.relu(self.c1(x)))
        return y.view(y.shape[0], -1)


def test_channels_last_passes_match_the_given_layout(monkeypatch):
    """Image inputs run the passes in NHWC where the model takes it: the refit is what NCHW gives, up
    to float rounding; a model that cannot take NHWC runs as given."""
    assert R._layout(ViewsActivation().eval(), (torch.randn(4, 3, 8, 8),)) is not R._nhwc
    model = _tiny_cnn()
    assert R._layout(model.eval(), (torch.randn(4, 3, 32, 32),)) is R._nhwc
    states, reps = [], []
    for layout in (R._layout, lambda model, inputs: (lambda t: t)):
        monkeypatch.setattr(R, "_layout", layout)
        res = prune(model, (torch.randn(2, 3, 32, 32),), PruneConfig(ratio=0.5), 1, {"model": "t"})
        reps.append(R.reconstruct(model, res.model, res.plan.param_keep(), _batches((3, 32, 32), n=40)))
        states.append(res.model.state_dict())
    assert [r["refit"] for r in reps[0].layers] == [r["refit"] for r in reps[1].layers]
    assert reps[0].output_error_after == pytest.approx(reps[1].output_error_after, rel=1e-3)
    for k, v in states[0].items():
        if v.is_floating_point():
            assert torch.allclose(v, states[1][k], rtol=1e-3, atol=1e-4), k
    dense = ViewsActivation().eval()
    keep = {"c1.weight": {0: [0, 1, 2, 3, 4, 5]}, "c1.bias": {0: [0, 1, 2, 3, 4, 5]}, "c2.weight": {1: [0, 1, 2, 3, 4, 5]}}
    pruned = apply_keep(copy.deepcopy(dense), keep).eval()
    monkeypatch.undo()
    rep = R.reconstruct(dense, pruned, keep, _batches((3, 8, 8), n=40))
    assert rep.kept and rep.layers[0]["refit"]
