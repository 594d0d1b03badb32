"""Embedded models with real weights, trained here on first use and cached (MODEL spec `compress:NAME`).

`compress:fmnist-cnn` is a small ResNet-style CNN for Fashion-MNIST (input (1, 1, 28, 28), pixels
in [0, 1]; it normalises internally): a 3x3 stem of 32 channels, three stages of one residual
basic block each (widths 32/64/128, each halving the resolution: 14, 7, 4), BatchNorm + ReLU,
global average pooling and a Linear(128, 10).

It is trained on the Fashion-MNIST training split (Debian package `dataset-fashion-mnist`)
with a fixed seed, deterministic algorithms and one thread (about 4 minutes of one CPU core; one
thread because OpenMP with 2 threads ran 6x slower on a 2-core machine shared with other work,
and the result does not depend on the machine's core count), then cached as safetensors in
`$COMPRESS_CACHE` (default `~/.cache/compress/`). The file name carries a content hash of the
training code version, the hyperparameters and the sha256 of the dataset files, so changing
any of them retrains; the file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError

TRAIN_CODE_VERSION = "fmnist-cnn/1"
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class FashionCNN(nn.Module):
    compress_input_shape = (1, 1, 28, 28)

    def __init__(self, widths=(32, 64, 128), strides=(2, 2, 2), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for w, s in zip(widths, strides):
            blocks.append(BasicBlock(cin, w, s))
            cin = w
        self.stages = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = (x - FMNIST_MEAN) / FMNIST_STD
        x = self.stages(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


# name -> (constructor kwargs, training hyperparameters, dataset)
ZOO = {
    "fmnist-cnn": {
        "arch": {"widths": [32, 64, 128], "strides": [2, 2, 2], "num_classes": 10},
        "train": {"optimizer": "sgd", "lr": 0.1, "schedule": "onecycle", "epochs": 2.0, "warmup": 0.15,
                  "weight_decay": 5e-4, "batch_size": 128, "label_smoothing": 0.0},
        "seed": 0,
        "threads": 1,
        "data": "fashion-mnist",
    },
}


def names() -> list[str]:
    return sorted(ZOO)


def _entry(name: str) -> dict:
    if name not in ZOO:
        raise CompressError(f"unknown embedded model compress:{name}; available: "
                            + ", ".join(f"compress:{n}" for n in names()))
    return ZOO[name]


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESS_CACHE") or Path.home() / ".cache" / "compress")


def _config_hash(name: str) -> str:
    e = _entry(name)
    blob = json.dumps({"version": TRAIN_CODE_VERSION, "name": name, **e}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_path(name: str) -> Path:
    """The cache file for `name`: <name>-<config hash>-<dataset hash>.safetensors. Without the
    dataset installed, an already cached checkpoint of the same config is still used."""
    from compress import data

    e = _entry(name)
    prefix = f"{name}-{_config_hash(name)}-"
    try:
        d = data.resolve(e["data"])[1]
    except CompressError:
        cached = sorted(cache_dir().glob(prefix + "*.safetensors"))
        if cached:
            return cached[-1]
        raise
    files = sorted(str(p) for s in ("train", "test") for k in ("images", "labels")
                   for p in [data._find(Path(d), s, k)] if p is not None)
    data_hash = hashlib.sha256("".join(data.file_sha256(files)).encode()).hexdigest()[:16]
    return cache_dir() / f"{prefix}{data_hash}.safetensors"


def construct(name: str) -> nn.Module:
    from compress.train import Schedule

    e = _entry(name)
    model = FashionCNN(**{k: tuple(v) if isinstance(v, list) else v for k, v in e["arch"].items()})
    model.compress_train_schedule = Schedule.from_dict(e["train"]).to_dict()
    model.compress_dataset = e["data"]
    return model


def train(name: str) -> tuple[nn.Module, dict]:
    """Train `name` from scratch (deterministic given the seed); returns the model and its metadata."""
    from compress import data
    from compress.evaluate import accuracy, predict
    from compress.train import Schedule, deterministic, fit

    e = _entry(name)
    tr, te = data.load(e["data"], "train"), data.load(e["data"], "test")
    sched = Schedule.from_dict(e["train"])
    t0 = time.perf_counter()
    with deterministic(e["seed"], e["threads"]):
        model = construct(name)
        history = fit(model, tr, sched, seed=e["seed"], desc=f"training compress:{name}")
        acc = accuracy(predict(model, te, desc="test"), te.labels)
    meta = {"name": name, "train_code_version": TRAIN_CODE_VERSION, "test_accuracy": acc,
            "train_seconds": round(time.perf_counter() - t0, 1), "history": history, "config": e}
    return model, meta


def _save_atomic(model: nn.Module, path: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp, metadata={"compress": json.dumps(meta, sort_keys=True)})
        os.chmod(tmp, 0o644)                      # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("compress", "{}"))


def pretrained(name: str) -> tuple[nn.Module, Path]:
    """The trained model: from the cache, or trained now and cached."""
    from safetensors.torch import load_file

    path = checkpoint_path(name)
    model = construct(name)
    if not path.is_file():
        sys.stderr.write(f"compress: training compress:{name} on {_entry(name)['data']} "
                         f"(once; about 4 minutes), cache {path}\n")
        trained, meta = train(name)
        _save_atomic(trained, path, meta)
        sys.stderr.write(f"compress: compress:{name} test accuracy {meta['test_accuracy']:.4f} "
                         f"after {meta['train_seconds']:.0f}s of training\n")
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except Exception as e:
        raise CompressError(f"cached checkpoint {path} is unreadable ({type(e).__name__}); delete it to retrain") from None
    return model.eval(), path


def build(name: str, pretrained_weights: bool = True) -> nn.Module:
    if not pretrained_weights:
        return construct(name).eval()
    return pretrained(name)[0]
