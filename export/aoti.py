"""torch AOTInductor packages (.pt2) for models that call our block-sparse kernels
(custom ops in the `compress` namespace, e.g. torch.ops.compress.bsr_linear), so the kernels ship
with the model. Compiled here for the CPU when the ops have a CPU implementation; the CUDA/Triton
build needs a GPU and is marked "not verified on this machine"."""

from __future__ import annotations

import os

from compress.errors import first_line

NAMESPACE = "compress"


def custom_ops(ep) -> list[tuple[str, str]]:
    """(op, layer) for every call of an op in the `compress` namespace in an ExportedProgram."""
    found = []
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        ns = getattr(node.target, "namespace", None)
        if ns is None:
            name = getattr(node.target, "name", lambda: "")
            ns = (name() if callable(name) else str(name)).split("::")[0]
        if ns == NAMESPACE:
            stack = node.meta.get("nn_module_stack") or {}
            layer = (list(stack.values())[-1][0] if stack else "") or "(top level)"
            found.append((str(node.target), layer))
    return found


def trace(model, inputs):
    import torch

    with torch.no_grad():
        return torch.export.export(model, tuple(inputs), strict=False)


def package(ep, model, inputs, path: str) -> dict:
    """aoti_compile_and_package for the CPU, load it back and compare with torch."""
    import numpy as np
    import torch

    from compress.export.ort import compare

    try:
        torch._inductor.aoti_compile_and_package(ep, package_path=path)
        runner = torch._inductor.aoti_load_package(path)
        with torch.no_grad():
            got = runner(*inputs)
            ref = model(*inputs)
    except Exception as e:
        if os.path.exists(path):
            os.remove(path)
        return {"built": False, "verified": False,
                "reason": "not verified on this machine: AOTInductor CPU build failed "
                          f"({type(e).__name__}: {first_line(e, 200)})"}
    got = got[0] if isinstance(got, (tuple, list)) else got
    return {"built": True, "device": "cpu", "file": os.path.basename(path),
            "parity": compare(np.asarray(got.detach()), np.asarray(ref.detach()), 1e-4),
            "cuda": "not verified on this machine: no GPU here; the CUDA package (Triton kernels) must be "
                    "compiled on the GPU machine with the same call and device='cuda' inputs"}
