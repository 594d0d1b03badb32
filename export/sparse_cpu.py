"""The CPU sparse artifact: block-sparse layers (block 16/32/64, Linear and 1x1 conv) exported as the custom op
`ai.compress::BlockSparseLinear`, which onnxruntime runs with compress's compiled kernel (kernels/bsr_cpu.cpp,
loaded as a custom op library through kernels/bsr_cpu_runtime.py).

model.bsr.onnx is the ordinary ONNX of the model except for those nodes; each holds its stored blocks once
(transposed, as the kernel reads them), its row pointers, block columns and bias as initializers, which
onnxruntime hands to the kernel in place. The artifact ships the compiled library and the runtime module
beside it, so it runs with onnxruntime alone: no compress, no compiler."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError
from compress.kernels import bsr_cpu_runtime as runtime

MODEL_FILE = "model.bsr.onnx"
RUNTIME_FILE = "bsr_cpu_runtime.py"
LIB_FILE = runtime.LIB_NAME
NEEDS = "onnxruntime >= 1.17, numpy, libgomp (GCC's OpenMP runtime; every Linux with GCC's runtime has it)"


def missing_requirements() -> str | None:
    """Why model.bsr.onnx cannot be built here (no C++ compiler, or an onnxruntime without the C API entries
    the op uses), or None."""
    from importlib.metadata import version

    from compress.kernels import bsr_cpu

    try:
        bsr_cpu.compiler()
    except CompressError as e:
        return f"not built: the kernel is compiled at export; {e}"
    major, minor = (int(v) for v in version("onnxruntime").split(".")[:2])
    if (major, minor) < (1, 17):
        return f"not built: the kernel's custom op needs onnxruntime >= 1.17 (installed: {version('onnxruntime')})"
    return None


def _block(fmt: str) -> int | None:
    return int(fmt.split(":")[1]) if fmt.startswith("block:") else None


def cpu_sparse_layers(model: nn.Module, formats: dict) -> dict[str, int]:
    """{layer: block} of the layers a CPU artifact runs with the kernel: lowered block-sparse modules
    (Linear / 1x1 conv) with a block the kernel takes."""
    from compress.lower.modules import BlockSparseLinear

    mods = dict(model.named_modules())
    return {n: _block(e["format"]) for n, e in formats.items()
            if _block(e["format"]) in runtime.BLOCKS and isinstance(mods.get(n), BlockSparseLinear)}


def check_cpu(model: nn.Module, formats: dict, dense_fallback: bool) -> list[str]:
    """Refuse sparse formats that no CPU runtime we ship executes (2:4, blocks the kernel does not take), unless
    `dense_fallback`; return notes naming every sparse layer that runs as masked dense weights on the CPU
    (those, and block-sparse layers that are not Linear / 1x1 conv, e.g. a 3x3 conv masked in blocks)."""
    kernel = cpu_sparse_layers(model, formats)
    no_kernel = {n: e["format"] for n, e in formats.items()
                 if e["format"] == "2:4" or (_block(e["format"]) and _block(e["format"]) not in runtime.BLOCKS)}
    if no_kernel and not dense_fallback:
        name, fmt = sorted(no_kernel.items())[0]
        raise CompressError(
            f"layer {name} is {fmt}, which no CPU runtime we ship executes ({len(no_kernel)} such layers; the CPU "
            f"kernel takes block:16, block:32 and block:64): sparsify with --pattern block:32 for --target cpu, "
            "export for --target gpu, or pass --dense-fallback to ship those layers as masked dense weights")
    notes = [f"layer {n} ({f}) runs dense on the CPU: no CPU kernel for {f}" for n, f in sorted(no_kernel.items())]
    notes += [f"layer {n} ({e['format']}) runs dense on the CPU: the kernel takes Linear and 1x1 conv layers"
              for n, e in sorted(formats.items())
              if _block(e["format"]) in runtime.BLOCKS and n not in kernel]
    return notes


def check_jetson(formats: dict, dense_fallback: bool) -> list[str]:
    """Block-sparse layers on a Jetson: neither TensorRT nor the TVM library has a block-sparse kernel (2:4 runs on
    TensorRT's sparse tensor cores). Refused unless `dense_fallback`; then notes naming the layers."""
    blocks = {n: e["format"] for n, e in formats.items() if e["format"].startswith("block:")}
    if blocks and not dense_fallback:
        name, fmt = sorted(blocks.items())[0]
        raise CompressError(
            f"layer {name} is {fmt}, which no Jetson runtime we ship executes ({len(blocks)} such layers; TensorRT "
            "runs 2:4): sparsify with --pattern 2:4 for --target jetson, or pass --dense-fallback to ship those "
            "layers as masked dense weights")
    return [f"layer {n} ({f}) runs dense on the Jetson: no block-sparse kernel in TensorRT or TVM"
            for n, f in sorted(blocks.items())]


class _BsrFn(torch.autograd.Function):
    """x (..., K) -> (..., N); exported as one BlockSparseLinear node over the packed weights."""

    @staticmethod
    def forward(ctx, x, values, rowptr, cols, bias, dense, block: int, out_features: int):
        return F.linear(x, dense, bias[:out_features])

    @staticmethod
    def symbolic(g, x, values, rowptr, cols, bias, dense, block, out_features):
        y = g.op(f"{runtime.DOMAIN}::{runtime.OP_TYPE}", x, values, rowptr, cols, bias,
                 block_i=block, out_features_i=out_features)
        sizes = x.type().varyingSizes() if x.type().kind() == "TensorType" else None
        if sizes:
            y.setType(x.type().with_sizes(list(sizes[:-1]) + [out_features]))
        return y


class _OrtBlockSparse(nn.Module):
    """Export-time stand-in for a BlockSparseLinear (Linear or 1x1 conv): its packed weights as buffers, which
    the export writes as the node's initializers."""

    def __init__(self, m) -> None:
        super().__init__()
        from compress.kernels import bsr_cpu

        p = bsr_cpu.pack(m.crow_indices, m.col_indices, m.values.detach().float())
        self.block, self.out_features, self.conv_stride = p["block"], m.out_features, m.conv_stride
        self.register_buffer("values", torch.from_numpy(p["values"]))
        self.register_buffer("rowptr", torch.from_numpy(p["rowptr"]))
        self.register_buffer("cols", torch.from_numpy(p["cols"]))
        bias = torch.zeros(m.padded[0])
        if m.bias is not None:
            bias[:m.out_features] = m.bias.detach().float()
        self.register_buffer("bias", bias)
        self.register_buffer("dense", m.dense_weight().detach().float(), persistent=False)

    def _linear(self, x):
        return _BsrFn.apply(x, self.values, self.rowptr, self.cols, self.bias, self.dense, self.block,
                            self.out_features)

    def forward(self, x):
        if self.conv_stride is None:
            return self._linear(x)
        sh, sw = self.conv_stride
        if (sh, sw) != (1, 1):
            x = x[:, :, ::sh, ::sw]
        return self._linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def with_custom_ops(model: nn.Module, layers: dict[str, int]) -> nn.Module:
    """A copy of `model` whose block-sparse layers `layers` export as BlockSparseLinear nodes."""
    from compress.lower.modules import BlockSparseLinear, set_module

    out = copy.deepcopy(model).eval()
    mods = dict(out.named_modules())
    for name in layers:
        m = mods.get(name)
        if not isinstance(m, BlockSparseLinear):
            raise CompressError(f"layer {name} is planned block-sparse but the model holds it as "
                                f"{type(m).__name__}: export the sparse directory that `compress sparsify` wrote")
        set_module(out, name, _OrtBlockSparse(m))
    return out


def export(model: nn.Module, layers: dict[str, int], example: tuple, path: str, dynamic_batch: bool) -> None:
    from compress.export.onnx import export_onnx

    export_onnx(with_custom_ops(model, layers), example, path, dynamic_batch=dynamic_batch)


def run(path: str, lib: str, arrays, threads: int = 0):
    """First output of model.bsr.onnx in onnxruntime with the kernel library `lib`."""
    import onnxruntime as ort

    try:
        so = runtime.session_options(lib, threads)
    except RuntimeError as e:
        raise CompressError(str(e)) from None
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), arrays)})[0]
