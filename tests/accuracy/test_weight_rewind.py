"""Weight rewinding (`compress prune --schedule iterative --rewind weights:K`): after every pruning step the
surviving weights are the epoch-K weights of the model's own training run, restricted to the kept channels
(Frankle & Carbin 2019; Renda et al. 2020), and the zoo keeps those epoch checkpoints."""

from __future__ import annotations

import json
import re

import pytest
import torch

from compress.accuracy import data, schedules
from compress.accuracy.schedules import PruneSchedule, parse_rewind, rewind_lr
from compress.accuracy.train import Schedule, deterministic, fit
from compress.errors import CompressError
from compress.models import zoo
from compress.prune.plan import PruneConfig
from tests.test_evaluate import _main, make_learnable_idx, tiny_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return make_learnable_idx(tmp_path_factory.mktemp("idx") / "quadrants")


@pytest.fixture(scope="module")
def history(idx_dir):
    """A tiny CNN trained 2 epochs, with its weights at the start of epoch 1 (a constructed training run)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    kept = {}
    try:
        m = tiny_cnn()
        with deterministic(0):
            fit(m, data.load(str(idx_dir), "train"), Schedule(lr=0.05, epochs=2, batch_size=32),
                after_epoch=lambda mod, ep: kept.setdefault(ep, {k: v.clone() for k, v in mod.state_dict().items()}))
    finally:
        torch.set_num_threads(n)
    return m.eval(), kept[1]


def test_rewound_weights_are_the_epoch_k_weights_of_the_kept_channels(idx_dir, history):
    trained, epoch1 = history
    tr = data.load(str(idx_dir), "train")
    inputs = (torch.rand(1, 1, 8, 8),)
    calib = [(x,) for x, _ in data.calibration_subset(tr, 64, 0).batches(8)]
    # an original schedule whose LR is ~0, so what the steps' training leaves is what rewinding set
    original = Schedule(schedule="constant", lr=1e-12, epochs=2, batch_size=32)
    sr = schedules.run(trained, inputs, PruneConfig(ratio=0.5, criterion="l1"), 1, {"model": "tiny"},
                       PruneSchedule("iterative", 2), tr, 2, calib=calib, rewind=original, batch_size=32,
                       rewind_state=epoch1, rewind_epoch=1)
    keep = sr.result.plan.param_keep()
    pruned = dict(sr.result.model.named_parameters())
    assert any(keep.values())
    for name, p in pruned.items():
        ref = epoch1[name]
        for dim, idx in keep.get(name, {}).items():
            ref = ref.index_select(int(dim), torch.as_tensor(idx))
        assert p.shape == ref.shape, name
        assert torch.allclose(p, ref, atol=1e-9, rtol=0), name     # epoch-1 values, sliced to the kept channels
        trained_w = dict(trained.named_parameters())[name]
        if trained_w.dim() > 1:                                     # not the trained weights
            assert not torch.allclose(p, _slice(trained_w, keep.get(name, {})), atol=1e-4)


def _slice(t, dims):
    for dim, idx in dims.items():
        t = t.index_select(int(dim), torch.as_tensor(idx))
    return t


def test_rewind_replays_the_schedule_from_epoch_k():
    s = Schedule(lr=0.1, epochs=4)
    lr = rewind_lr(s, 1, 3.0)                  # a step of 3 epochs replays epochs 1..4 exactly
    assert [lr(t) for t in (0.0, 1.5, 3.0)] == pytest.approx([s.lr_at(1), s.lr_at(2.5), s.lr_at(4)])
    half = rewind_lr(s, 1, 1.5)                # half the share: the same curve compressed
    assert half(0.75) == pytest.approx(s.lr_at(2.5))


@pytest.mark.parametrize("spec", ["weights", "weights:", "weights:-1", "weights:x", "lr:1", "1"])
def test_malformed_rewind_spec(spec):
    with pytest.raises(CompressError, match="weights:EPOCH"):
        parse_rewind(spec)
    assert parse_rewind("weights:3") == 3


# ---------------------------------------------------------------- the zoo keeps its history; the CLI

@pytest.fixture
def tiny_zoo(idx_dir, tmp_path, monkeypatch):
    """A real zoo entry sized for a test: a narrow compress CNN trained 2 epochs on the quadrant images."""
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(zoo.ZOO, "tiny-rewind", {
        "arch": {"widths": [8, 16, 16], "strides": [2, 2, 2], "num_classes": 4},
        "train": {"optimizer": "sgd", "lr": 0.05, "schedule": "onecycle", "epochs": 2.0, "warmup": 0.15,
                  "weight_decay": 5e-4, "batch_size": 64, "label_smoothing": 0.0},
        "seed": 0, "threads": 1, "data": str(idx_dir)})
    return "tiny-rewind"


def test_zoo_keeps_epoch_checkpoints_and_replays_missing_ones(tiny_zoo):
    model, path = zoo.pretrained(tiny_zoo)
    assert zoo.rewind_epochs(tiny_zoo) == [0, 1]
    for k in (0, 1):
        assert zoo.epoch_path(path, k).is_file()
    assert zoo.checkpoint_path(tiny_zoo) == path                  # the cache file is still the trained weights
    e1, where = zoo.epoch_weights(tiny_zoo, 1)
    assert where == zoo.epoch_path(path, 1) and set(e1) == set(model.state_dict())
    assert not torch.equal(e1["fc.weight"], model.state_dict()["fc.weight"])
    # a cache from before checkpoints were kept: the deterministic replay gives the same epoch-1 weights
    for k in (0, 1):
        zoo.epoch_path(path, k).unlink()
    again, _ = zoo.epoch_weights(tiny_zoo, 1)
    assert all(torch.equal(again[k], v) for k, v in e1.items())
    with pytest.raises(CompressError, match=r"0\.\.1"):
        zoo.epoch_weights(tiny_zoo, 2)


def test_prune_cli_rewind_weights(tiny_zoo, idx_dir, tmp_path, capsys):
    out = tmp_path / "rewound"
    code, stdout, err = _main(capsys, "prune", f"compress:{tiny_zoo}", "--ratio", "0.5", "--round-to", "1",
                              "--criterion", "l1", "--schedule", "iterative", "--steps", "2", "--rewind", "weights:1",
                              "--data", str(idx_dir), "--finetune", "2", "--input-shape", "1,1,8,8", "--out", str(out))
    assert code == 0, err
    assert "rewound to epoch 1" in stdout
    ft = json.loads((out / "summary.json").read_text())["finetune"]
    w = ft["weight_rewind"]
    assert w["epoch"] == 1 and w["lr_from_epoch"] == 1 and w["replayed_epochs"] == 1 and w["exact_replay"]
    assert w["checkpoint"].endswith(".epoch-1.safetensors") and "/" not in w["checkpoint"]
    assert ft["lr_rewind"] is None and ft["lr"] is None and len(ft["history"]) == 2


@pytest.mark.parametrize("argv,message", [
    (["torchvision:resnet18"], "training history"),
    (["compress:tiny-rewind", "--rewind", "weights:2"], r"0\.\.1"),
    (["compress:tiny-rewind", "--rewind", "weights:one"], "weights:EPOCH"),
    (["compress:tiny-rewind", "--lr-rewind"], "exclude"),
    (["compress:tiny-rewind", "--schedule", "gradual"], "iterative"),
])
def test_rewind_bad_input(tiny_zoo, idx_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    args = ["prune", argv[0], "--ratio", "0.5", "--schedule", "iterative", "--rewind", "weights:1",
            "--data", str(idx_dir), "--finetune", "2", "--out", str(out)] + argv[1:]
    code, stdout, err = _main(capsys, *args)
    assert code == 2 and re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
