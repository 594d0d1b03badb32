"""Models for the export tests (MODEL specs `tests.export.export_models:NAME`, from the repository root).

Until `compress sparsify` exists, a 2:4 model is built here directly: in every Conv/Linear weight whose
reduction (input-channel) dim is a multiple of 4, the 2 smallest-magnitude of each 4 consecutive input
channels are zeroed, per output channel and kernel tap (TensorRT's structured-sparsity pattern)."""

from __future__ import annotations

import json

import torch
from torch import nn

from tests.models import tiny_cnn


def mask_24(model: nn.Module) -> dict[str, dict]:
    """Zero 2 of every 4 weights along the input-channel dim of each eligible Conv/Linear (grouped convs
    with one input channel per group are left dense). Returns the per-layer formats."""
    formats = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            w = m.weight
            if w.shape[1] % 4:
                formats[name] = {"format": "dense", "density": 1.0}
                continue
            g = w.movedim(1, -1)
            shape = g.shape
            g = g.reshape(-1, 4)
            drop = g.abs().argsort(dim=1)[:, :2]
            g = g.scatter(1, drop, 0.0)
            w.copy_(g.reshape(shape).movedim(-1, 1))
            formats[name] = {"format": "2:4", "density": 0.5}
    return formats


def tiny_cnn_24() -> nn.Module:
    model = tiny_cnn()
    mask_24(model)
    return model


def write_plan(path, formats: dict) -> None:
    with open(path, "w") as f:
        json.dump({"schema_version": 1, "layers": formats}, f, indent=1, sort_keys=True)


class NotInOnnx(nn.Module):
    """A Linear followed by an op the ONNX exporter has no symbolic for (torch.special.zeta)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.odd = Zeta()
        self.compress_input_shape = (1, 8)

    def forward(self, x):
        return self.odd(self.proj(x))


class Zeta(nn.Module):
    def forward(self, x):
        return torch.special.zeta(x.abs() + 2.0, torch.full_like(x, 1.5))


def not_in_onnx() -> nn.Module:
    torch.manual_seed(0)
    return NotInOnnx().eval()


class NotInTvm(nn.Module):
    """Linear + CELU: ONNX has Celu (opset 12), TVM's Relax ONNX frontend does not."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.act = nn.CELU()
        self.compress_input_shape = (1, 8)

    def forward(self, x):
        return self.act(self.proj(x))


def not_in_tvm() -> nn.Module:
    torch.manual_seed(0)
    return NotInTvm().eval()


class TinyFmnist(nn.Module):
    """A 1x28x28 classifier (Fashion-MNIST's input), so parity also runs on real test images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 2, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.fc = nn.Linear(16, 10)
        self.compress_input_shape = (1, 1, 28, 28)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def tiny_fmnist() -> nn.Module:
    torch.manual_seed(0)
    m = TinyFmnist()
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.2, 0.2)
        m.bn1.running_var.uniform_(0.5, 1.5)
    return m.eval()


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    m.compress_input_shape = (1, 16)
    return m


def tiny_mlp_lowered_24() -> nn.Module:
    """tiny_mlp lowered by compress.lower (Sparse24Linear modules holding 2:4 weights)."""
    from compress.lower.pipeline import SparsifyConfig, sparsify

    m = tiny_mlp()
    res = sparsify(m, (torch.randn(1, 16),), SparsifyConfig(pattern="2:4"), {"model": "tests.export.export_models:tiny_mlp"})
    res.model.compress_input_shape = (1, 16)
    return res.model.eval()


class DictOutput(nn.Module):
    """A segmentation-style model returning {"out": ..., "aux": ...} like torchvision's segmentation models."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, 5, 1)
        self.aux = nn.Conv2d(16, 5, 1)
        self.compress_input_shape = (1, 3, 16, 16)

    def forward(self, x):
        f = self.body(x)
        return {"out": self.head(f), "aux": self.aux(f)}


def dict_output() -> nn.Module:
    torch.manual_seed(0)
    return DictOutput().eval()


class TupleOutput(nn.Module):
    """Returns (logits, auxiliary logits): the first tensor is the primary output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 4)
        self.aux = nn.Linear(16, 2)
        self.compress_input_shape = (1, 3, 8, 8)

    def forward(self, x):
        f = self.conv(x).mean((2, 3))
        return self.fc(f), self.aux(f)


def tuple_output() -> nn.Module:
    torch.manual_seed(0)
    return TupleOutput().eval()


class HFStyleOutput(TupleOutput):
    """Returns a Hugging Face output object (a dict subclass with attributes): logits is the primary output."""

    def forward(self, x):
        from transformers.modeling_outputs import SequenceClassifierOutput

        f = self.conv(x).mean((2, 3))
        return SequenceClassifierOutput(logits=self.fc(f), hidden_states=(self.aux(f),))


def hf_style_output() -> nn.Module:
    torch.manual_seed(0)
    return HFStyleOutput().eval()


class TwoFloatInputs(nn.Module):
    """An MLP over two float feature vectors (issue #20: a model with several inputs, none of them token ids
    or a mask), each of its own width."""

    compress_inputs = (("left", (1, 8), "float32"), ("right", (1, 4), "float32"))

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 16), nn.Linear(4, 16), nn.Linear(16, 3)

    def forward(self, left, right):
        return self.head(torch.relu(self.a(left) + self.b(right)))


def two_float_inputs() -> nn.Module:
    torch.manual_seed(0)
    return TwoFloatInputs().eval()
