"""Movement pruning while fine-tuning (Sanh et al. 2020): the scores are -sum_t W_t * dL/dW_t over real
updates, the sparsity rises on the cubic schedule with the masks applied in training, and
`compress sparsify --criterion movement --finetune E` writes the fine-tuned sparse model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.accuracy.data import Dataset
from compress.errors import CompressError
from compress.sparse import movement
from compress.sparse.layout import topk_mask
from compress.sparse.schedule import cubic_sparsity
from tests.test_evaluate import _main, make_learnable_idx

pytestmark = pytest.mark.usefixtures("one_thread")


def _toy():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 4, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    w0 = torch.randn(3, 4, generator=g)
    return Dataset(x, y, ("a", "b", "c"), "toy"), w0


def test_scores_are_minus_w_times_grad_summed_over_real_updates():
    ds, w0 = _toy()
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w0)
    lr, wd, mom, final = 0.1, 5e-4, 0.9, 0.5
    cfg = movement.MovementConfig(epochs=3, lr=lr, batch_size=8, warmup=0.0, cooldown=0.0)
    res = movement.finetune(model, ds, {"0": model[0]}, "unstructured", None, final, cfg)

    # by hand: 3 full-batch steps of SGD (Nesterov, momentum 0.9, weight decay) on W, forward with W * M,
    # S -= W_t * dL/dW'_t, the masks from S at the cubic schedule's sparsity after every step
    w, buf = w0.double().clone(), None
    s, m = torch.zeros(3, 4, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64)
    x, y = ds.images.double(), ds.labels
    sparsities = []
    for t in range(3):
        weff = (w * m).requires_grad_(True)
        F.cross_entropy(x @ weff.T, y).backward()
        g_eff = weff.grad
        s -= w * g_eff
        d = g_eff * m + wd * w
        buf = d if buf is None else mom * buf + d
        w = w - lr * (d + mom * buf)
        sparsities.append(cubic_sparsity(final, t, 3))
        m = topk_mask(s, 1 - cubic_sparsity(final, t + 1, 3)).double()
    assert res.steps == 3 and res.sparsity_trace == pytest.approx(sparsities)
    assert torch.allclose(res.scores["0"], s, rtol=1e-4, atol=1e-6)
    assert float(s.abs().sum()) > 0                                   # something accumulated
    # the weights were really updated (dense W kept in the model), and the final mask is the hand mask
    assert torch.allclose(model[0].weight.double(), w, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(model[0].weight, w0)
    assert torch.equal(res.masks["0"], m.bool()) and int(m.sum()) == 6
    # one-shot movement on frozen weights would be just the first term
    assert not torch.allclose(res.scores["0"], -(w0.double() * _grad(w0, ds)), atol=1e-4)


def _grad(w0, ds):
    w = w0.double().clone().requires_grad_(True)
    F.cross_entropy(ds.images.double() @ w.T, ds.labels).backward()
    return w.grad


def test_block_masks_are_whole_blocks_and_the_model_is_plain_after():
    ds, _ = _toy()
    lin = nn.Linear(4, 32, bias=False)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(32, 3))
    data = Dataset(ds.images.repeat(4, 1), ds.labels.repeat(4), ds.classes, "toy")
    cfg = movement.MovementConfig(epochs=2, lr=0.05, batch_size=8)
    res = movement.finetune(model, data, {"2": model[2]}, "block", 16, 0.5, cfg)
    mk = res.masks["2"]                                               # (3, 32): two 16-column blocks
    assert mk.shape == (3, 32) and int(mk.sum()) == 3 * 16
    assert mk[:, :16].all() != mk[:, 16:].all()
    assert type(model[2]).__name__ == "Linear"                        # the parametrization is gone
    assert set(dict(model.named_parameters())) == {"0.weight", "2.weight", "2.bias"}
    assert res.sparsity_trace[0] == 0 and res.sparsity_trace[-1] == pytest.approx(0.5)
    with pytest.raises(CompressError, match="unstructured or block"):
        movement.finetune(model, data, {"2": model[2]}, "2:4", None, 0.5, cfg)


# ---------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return make_learnable_idx(tmp_path_factory.mktemp("idx") / "quadrants")


def test_sparsify_cli_movement_finetune(idx_dir, tmp_path, capsys):
    from compress import models

    out = tmp_path / "mv"
    code, stdout, err = _main(capsys, "sparsify", "tests.test_evaluate:undeclared_mlp", "--input-shape", "1,1,8,8",
                              "--pattern", "unstructured", "--sparsity", "0.75", "--criterion", "movement",
                              "--data", str(idx_dir), "--finetune", "3", "--lr", "0.05", "--out", str(out))
    assert code == 0, err
    assert "movement pruning while fine-tuning" in stdout
    summary = json.loads((out / "summary.json").read_text())
    f = summary["finetune"]
    assert f["criterion"] == "movement" and f["schedule"] == "cubic" and f["final_sparsity"] == 0.75 and f["steps"] > 0
    assert summary["density"] == pytest.approx(0.25, abs=0.01)
    assert summary["accuracy"] >= 0.9                   # random init, trained while pruned to 75% on an easy task
    # the directory holds the fine-tuned weights, masked, and reloads as such
    lm = models.load(str(out))
    w = dict(lm.model.named_parameters())["1.weight"]
    assert float((w == 0).float().mean()) == pytest.approx(0.75, abs=0.01)
    src = models.load("tests.test_evaluate:undeclared_mlp").model
    kept = w != 0
    assert not torch.allclose(w[kept], dict(src.named_parameters())["1.weight"][kept])


def test_sparsify_cli_movement_finetune_block(idx_dir, tmp_path, capsys):
    out = tmp_path / "mvb"
    code, stdout, err = _main(capsys, "sparsify", "tests.test_evaluate:undeclared_mlp", "--input-shape", "1,1,8,8",
                              "--pattern", "block:16", "--sparsity", "0.5", "--criterion", "movement",
                              "--data", str(idx_dir), "--finetune", "1", "--out", str(out))
    assert code == 0, err
    layers = json.loads((out / "summary.json").read_text())["layers"]
    assert layers["1"]["module"] == "BlockSparseLinear" and layers["1"]["density"] == pytest.approx(0.5)


@pytest.mark.parametrize("extra,message", [
    (["--criterion", "magnitude", "--finetune", "1"], "--criterion movement"),
    (["--criterion", "movement", "--pattern", "2:4", "--finetune", "1"], "unstructured or block"),
    (["--criterion", "movement", "--finetune", "0"], "positive"),
    (["--criterion", "movement", "--finetune", "1", "--no-data"], "needs --data"),
    (["--criterion", "movement"], "give both"),
])
def test_movement_finetune_bad_input(idx_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    args = ["sparsify", "tests.test_evaluate:undeclared_mlp", "--input-shape", "1,1,8,8", "--sparsity", "0.5",
            "--out", str(out)]
    if "--pattern" not in extra:
        args += ["--pattern", "unstructured"]
    if "--no-data" in extra:
        extra = [a for a in extra if a != "--no-data"]
    else:
        args += ["--data", str(idx_dir)]
    code, stdout, err = _main(capsys, *(args + extra))
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
