"""Per-layer formats (from a sparsify plan) and verification that 2:4 layers carry 2:4-patterned
weights in the exported ONNX tensors (TensorRT's structured-sparsity pattern: along the reduction
(input-channel) dimension, every group of 4 holds at most 2 non-zeros, per output channel and kernel tap)."""

from __future__ import annotations

import json
import os

import numpy as np

from compress.errors import CompressError

SPARSE_PLAN_FILE = "sparse_plan.json"
FORMATS = ("2:4", "unstructured", "dense")


def _check_format(name: str, fmt: str) -> None:
    if fmt in FORMATS or (fmt.startswith("block:") and fmt[6:].isdigit()):
        return
    raise CompressError(f"sparse plan: layer {name} has unknown format {fmt!r} (2:4, block:N, unstructured or dense)")


def read_plan(path: str) -> dict[str, dict]:
    """layer name -> {"format", "density"} from a sparse_plan.json (a {"layers": {...}} map, a {"layers": [...]}
    list with "name" entries, or a bare name -> entry map)."""
    try:
        data = json.loads(open(path).read())
    except (OSError, ValueError) as e:
        raise CompressError(f"cannot read sparse plan {path}: {e}") from None
    layers = data.get("layers", data) if isinstance(data, dict) else data
    if isinstance(layers, list):
        try:
            layers = {e.get("name") or e["layer"]: e for e in layers}
        except (KeyError, AttributeError, TypeError):
            raise CompressError(f"sparse plan {path}: 'layers' entries need a 'name'") from None
    if not isinstance(layers, dict):
        raise CompressError(f"sparse plan {path}: expected per-layer entries under 'layers'")
    out = {}
    for name, e in layers.items():
        if not isinstance(e, dict) or "format" not in e:
            continue  # metadata keys (schema_version, config, ...)
        _check_format(name, str(e["format"]))
        out[name] = {"format": str(e["format"]), "density": e.get("density")}
    return out


def plan_path(model_or_dir: str) -> str | None:
    p = os.path.join(model_or_dir, SPARSE_PLAN_FILE)
    return p if os.path.isdir(model_or_dir) and os.path.isfile(p) else None


def dense_formats(model) -> dict[str, dict]:
    """Every Linear/Conv layer as dense (structured pruning leaves dense, smaller layers); lowered sparse
    modules (compress.lower: Sparse24Linear, BlockSparseLinear) with their own format."""
    from torch import nn

    out = {}
    for n, m in model.named_modules():
        fmt = getattr(m, "format", None)
        if isinstance(fmt, str) and hasattr(m, "dense_weight") and fmt != "dense":
            out[n] = {"format": fmt, "density": getattr(m, "density", 0.5 if fmt == "2:4" else None)}
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            out[n] = {"format": "dense", "density": 1.0}
    return out


def is_24(w: np.ndarray) -> tuple[bool, str]:
    """w laid out (out, in, *kernel): along `in`, each aligned group of 4 has at most 2 non-zeros."""
    if w.ndim < 2:
        return False, f"weight has {w.ndim} dims"
    cin = w.shape[1]
    if cin % 4:
        return False, f"reduction dim {cin} is not a multiple of 4"
    g = np.moveaxis(w, 1, -1).reshape(-1, cin // 4, 4)
    nnz = (g != 0).sum(-1)
    bad = int((nnz > 2).sum())
    return bad == 0, f"{bad} of {nnz.size} groups of 4 have more than 2 non-zeros" if bad else f"{nnz.size} groups of 4 checked"


def verify_24(onnx_path: str, model, formats: dict[str, dict], inputs: tuple | None = None) -> dict[str, dict]:
    """For each 2:4 layer: find its weight among the ONNX initializers (by name, else by shape and
    zero pattern, allowing the transposed layout of MatMul and per-channel scaling from folded
    BatchNorm) and check the 2:4 pattern on the exported tensor itself. A layer whose weight is not
    there and whose output the model's output does not depend on (checked on `inputs`, e.g. BERT's
    pooler when the model returns the last hidden state) is dead code the exporter dropped: it is
    reported with "in_graph": false instead of failing (no runtime will ever execute it)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(onnx_path).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:  # weights the exporter kept as Constant nodes (e.g. non-persistent buffers)
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    inits[f"{n.output[0]} (Constant {n.name})"] = numpy_helper.to_array(a.t)
    mods = dict(model.named_modules())
    out = {}
    for name, e in sorted(formats.items()):
        if e["format"] != "2:4":
            continue
        m = mods.get(name)
        w = None if m is None else getattr(m, "weight", None)
        if w is None and hasattr(m, "dense_weight"):   # lowered module: its decoded (out, in) weight
            w = m.dense_weight()
        if w is None:
            out[name] = {"ok": False, "reason": f"no layer {name} with a weight in the model"}
            continue
        w = w.detach().cpu().numpy()
        torch_ok, _ = is_24(w)
        found = _find(inits, name, w)
        if found is None:
            if inputs is not None and unused(model, name, inputs):
                out[name] = {"ok": True, "in_graph": False, "torch_2_4": torch_ok,
                             "reason": "not in the exported graph: the model's output does not depend on this layer"}
            else:
                out[name] = {"ok": False, "reason": "weight not found among the ONNX initializers", "torch_2_4": torch_ok}
            continue
        init_name, arr, transposed = found
        ok, detail = is_24(_orient(arr, transposed, w.shape))
        out[name] = {"ok": ok, "initializer": init_name, "shape": list(arr.shape), "transposed": transposed,
                     "detail": detail, "torch_2_4": torch_ok}
    return out


def unused(model, name: str, inputs: tuple) -> bool:
    """Whether the model's output on `inputs` stays bit-identical when layer `name`'s output is replaced
    by large random values, i.e. nothing downstream of the output reads the layer."""
    import torch

    from compress.export.inputs import torch_output

    g = torch.Generator().manual_seed(0)

    def perturb(mod, args, out):
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return None
        noise = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
        return out + noise * (1.0 + float(out.detach().abs().max()))

    ref = torch_output(model, inputs)
    handle = model.get_submodule(name).register_forward_hook(perturb)
    try:
        got = torch_output(model, inputs)
    finally:
        handle.remove()
    return bool(np.array_equal(got, ref))


def _orient(arr: np.ndarray, transposed: bool, shape) -> np.ndarray | None:
    """The ONNX tensor in torch's (out, in, *kernel) layout: MatMul keeps (in, out); a 1x1 conv that
    replaced a Linear keeps (out, in, 1, 1)."""
    if transposed:
        return arr.T if arr.ndim == 2 and arr.T.shape == tuple(shape) else None
    if arr.shape == tuple(shape):
        return arr
    if arr.size == int(np.prod(shape)) and arr.ndim > len(shape) and all(d == 1 for d in arr.shape[len(shape):]):
        return arr.reshape(shape)
    return None


def _find(inits: dict, name: str, w: np.ndarray):
    for key in (f"{name}.weight", f"{name}.weight_dense"):
        arr = inits.get(key)
        if arr is not None and _orient(arr, False, w.shape) is not None:
            return key, arr, False
    zeros = w == 0
    for iname, arr in sorted(inits.items()):
        for transposed in (False, True):
            a = _orient(arr, transposed, w.shape)
            if a is not None and np.all((a == 0)[zeros]) and zeros.sum() == (a == 0).sum():
                return iname, arr, transposed
    return None
