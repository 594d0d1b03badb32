"""compress.accuracy.train (schedules, distillation, recovery fine-tuning) and compress.models.zoo (cached embedded model)."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from compress.accuracy import data, evaluate, train
from compress import models
from compress.models import zoo
from compress.errors import CompressError
from compress.prune.plan import PruneConfig
from compress.prune.apply import prune

FMNIST_INSTALLED = os.path.isfile(os.path.join(data.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))


pytestmark = pytest.mark.usefixtures("one_thread")


class SmallCNN(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x - 0.286)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


# ---------------------------------------------------------------- schedules and losses

def test_onecycle_schedule_shape():
    s = train.Schedule(lr=0.1, schedule="onecycle", epochs=4, warmup=0.25)
    assert s.lr_at(0) == pytest.approx(0.1 / 25)
    assert s.lr_at(1.0) == pytest.approx(0.1)                         # peak at the end of warm-up
    assert s.lr_at(4.0) < 1e-6
    lrs = [s.lr_at(t / 10) for t in range(10, 41)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))                  # monotone decay after the peak
    c = train.Schedule(lr=0.2, schedule="cosine", epochs=2)
    assert c.lr_at(0) == pytest.approx(0.2) and c.lr_at(1) == pytest.approx(0.1) and c.lr_at(2) == pytest.approx(0)
    assert train.Schedule(lr=0.3, schedule="constant", epochs=1).lr_at(0.7) == 0.3


def test_lr_rewinding_replays_the_end_of_the_schedule():
    s = train.Schedule(lr=0.1, schedule="onecycle", epochs=3)
    f = s.rewound(1)                                                  # last epoch of 3
    for t in (0.0, 0.3, 0.9, 1.0):
        assert f(t) == pytest.approx(s.lr_at(2 + t))
    g = s.rewound(6)                                                  # longer than the run: all of it, stretched
    assert g(0) == pytest.approx(s.lr_at(0)) and g(3) == pytest.approx(s.lr_at(1.5))


def test_schedule_validation():
    with pytest.raises(CompressError):
        train.Schedule(optimizer="lion")
    with pytest.raises(CompressError, match="unknown keys"):
        train.Schedule.from_dict({"lr": 0.1, "momentum": 0.9})
    assert train.Schedule.from_dict(train.Schedule().to_dict()) == train.Schedule()


def test_distill_loss():
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = torch.nn.functional.cross_entropy(s, y)
    assert train.distill_loss(s, t, y, alpha=0.0) == pytest.approx(float(ce))
    assert float(train.distill_loss(s, s, y, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(train.distill_loss(s, t, y, alpha=1.0)) > 0


def _synthetic(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, 12, 12, generator=g) * 0.3
    for i, c in enumerate(y.tolist()):
        x[i, 0, c, :] += 0.7                                          # class = bright row
    return data.Dataset(x, y, tuple(str(i) for i in range(10)), "synthetic")


def test_fit_is_deterministic():
    ds = _synthetic()
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        m = SmallCNN(8)
        torch.manual_seed(123)                                        # fit seeds its own shuffling
        with train.deterministic(7):
            h = train.fit(m, ds, train.Schedule(lr=0.05, epochs=2, batch_size=32), seed=7)
        states.append(m.state_dict())
    assert len(h) == 2 and not m.training
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


# ---------------------------------------------------------------- recovery fine-tuning on real data

@pytest.fixture(scope="module")
def fmnist_small():
    if not FMNIST_INSTALLED:
        pytest.skip("dataset-fashion-mnist is not installed")
    tr = data.calibration_subset(data.load("fashion-mnist", "train"), 2000, seed=0)
    te = data.calibration_subset(data.load("fashion-mnist", "test"), 1000, seed=0)
    return tr, te


@pytest.fixture(scope="module")
def trained_small(fmnist_small):
    tr, _ = fmnist_small
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        m = SmallCNN(16)
        m.compress_train_schedule = {"lr": 0.2, "epochs": 6.0, "batch_size": 64}
        with train.deterministic(0):
            train.fit(m, tr, train.model_schedule(m), seed=0)
    finally:
        torch.set_num_threads(n)
    return m


def _prune_half(m):
    inputs = (torch.rand(1, 1, 28, 28),)
    return prune(m, inputs, PruneConfig(ratio=0.5, criterion="l1"), 1, {"model": "test"}).model


@pytest.mark.parametrize("mode", ["plain", "distill", "rewind"])
def test_finetune_recovers_accuracy(fmnist_small, trained_small, mode):
    tr, te = fmnist_small
    dense = trained_small
    acc_dense = evaluate.accuracy(evaluate.predict(dense, te), te.labels)
    assert acc_dense > 0.6
    pruned = _prune_half(dense)
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * sum(p.numel() for p in dense.parameters())
    before = evaluate.accuracy(evaluate.predict(pruned, te), te.labels)
    hist = train.finetune(pruned, tr, 2, teacher=dense if mode == "distill" else None,
                          rewind=train.model_schedule(dense) if mode == "rewind" else None, batch_size=64)
    after = evaluate.accuracy(evaluate.predict(pruned, te), te.labels)
    assert len(hist) == 2 and not pruned.training
    assert after > before + 0.03, (before, after)
    assert after > acc_dense - 0.15


def test_finetune_leaves_teacher_alone(fmnist_small, trained_small):
    tr, _ = fmnist_small
    dense = trained_small
    snap = copy.deepcopy(dense.state_dict())
    pruned = _prune_half(dense)
    train.finetune(pruned, tr.subset(range(128)), 1, teacher=dense, batch_size=64)
    for k, v in dense.state_dict().items():
        assert torch.equal(v, snap[k]), k


# ---------------------------------------------------------------- the embedded model and its cache

def test_fmnist_cnn_prunes_to_a_quarter_of_the_macs():
    from compress.metrics import count_macs

    lm = models._build_source("compress:fmnist-cnn", pretrained=False)
    assert lm.input_shape == (1, 1, 28, 28) and lm.kind == "zoo"
    x = (torch.rand(1, 1, 28, 28),)
    assert lm.model(x[0]).shape == (1, 10)
    res = prune(lm.model, x, PruneConfig(ratio=0.5), 8, {"model": "compress:fmnist-cnn"})
    ratio = count_macs(lm.model, x) / count_macs(res.model, x)
    assert 3.0 < ratio < 4.5
    assert train.model_schedule(lm.model) is not None                # LR rewinding knows the schedule


def test_zoo_cache_trains_once_and_writes_atomically(tmp_path, monkeypatch):
    if not FMNIST_INSTALLED:
        pytest.skip("dataset-fashion-mnist is not installed")
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_train(name, checkpoints=None):                  # stands in for minutes of training (no epoch checkpoints)
        calls.append(name)
        torch.manual_seed(1)
        return zoo.construct(name), {"test_accuracy": 0.5, "train_seconds": 0.0}

    monkeypatch.setattr(zoo, "train", fake_train)
    p = zoo.checkpoint_path("fmnist-cnn")
    assert p.parent == tmp_path / "cache" and p.name.startswith("fmnist-cnn-") and p.suffix == ".safetensors"
    lm = models.load("compress:fmnist-cnn")
    assert calls == ["fmnist-cnn"] and p.is_file()
    assert zoo.metadata(p)["test_accuracy"] == 0.5
    assert [f.name for f in p.parent.iterdir()] == [p.name]           # no temporary file left behind
    lm2 = models.load("compress:fmnist-cnn")
    assert calls == ["fmnist-cnn"]                                     # cached: not retrained
    assert models.weights_sha256(lm.model) == models.weights_sha256(lm2.model)
    # without the dataset installed, the cached checkpoint of the same config is still found
    monkeypatch.setitem(data.NAMED, "fashion-mnist", (str(tmp_path / "absent"), data.FASHION_MNIST_CLASSES,
                                                      "dataset-fashion-mnist"))
    assert zoo.checkpoint_path("fmnist-cnn") == p
    # another config hash -> another file (and nothing to train it from)
    monkeypatch.setitem(zoo.ZOO["fmnist-cnn"], "seed", 1)
    with pytest.raises(CompressError, match="apt-get install dataset-fashion-mnist"):
        zoo.checkpoint_path("fmnist-cnn")


def test_zoo_unknown_name():
    with pytest.raises(CompressError, match="compress:fmnist-cnn"):
        models.load("compress:nope")
