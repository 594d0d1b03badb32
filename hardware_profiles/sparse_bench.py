"""Sparse-format timings for Linear / 1x1 layers (torch CPU: dense vs block-sparse BSR), and the
identity of the machine being profiled."""

from __future__ import annotations

import os
import platform
import warnings

BLOCKS = (16, 32, 64)
DENSITIES = (0.5, 0.25, 0.1)
NOTE = ("runtime: torch {ver} on CPU (torch.sparse BSR matmul, weight [out, in] in blocks, x [in, rows]); "
        "2:4 semi-structured sparsity needs a CUDA GPU (torch.sparse.to_sparse_semi_structured / TensorRT "
        "sparse tensor cores) and onnxruntime CPU has no sparse kernels, so this profile has no 2:4 entries")


def machine(target: str) -> dict:
    from compress.machine import cpuinfo

    info = cpuinfo()
    name, flags = info.model_name(platform.processor() or "unknown"), info.flags
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "neon", "asimd") if f in flags]
    return {"kind": target, "name": name, "cores": os.cpu_count(), "isa": isa, "arch": platform.machine()}


def _time(fn, reps: int) -> float:
    from compress.hardware_profiles.torch_bench import median_ms

    return median_ms(fn, 2, max(reps, 5))


def table(layers, batch: int, reps: int) -> dict:
    """Dense vs BSR (block size x density) for the model's largest Linear and 1x1 conv shapes."""
    import torch

    from compress.hardware_profiles.layers import CONV, LINEAR

    shapes = []
    lin = [s for s in layers if s.op == LINEAR]
    one = [s for s in layers if s.op == CONV and s.kernel == (1, 1) and s.groups == 1 and s.stride == (1, 1)]
    if lin:
        s = max(lin, key=lambda s: s.macs())
        shapes.append(("linear", s.cin, s.cout, s.tokens * batch))
    if one:
        s = max(one, key=lambda s: s.macs())
        shapes.append(("conv1x1", s.cin, s.cout, s.h * s.w * batch))
    if not shapes:
        shapes.append(("linear", 512, 512, batch))
    g = torch.Generator().manual_seed(0)
    entries = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, fin, fout, rows in shapes:
            x = torch.randn(fin, rows, generator=g)
            w = torch.randn(fout, fin, generator=g)
            dense = _time(lambda: w @ x, reps)
            entries.append({"layer": kind, "in": fin, "out": fout, "rows": rows, "format": "dense", "ms": round(dense, 5)})
            for b in BLOCKS:
                if fout % b or fin % b:
                    continue
                for dens in DENSITIES:
                    nb = (fout // b) * (fin // b)
                    keep = torch.randperm(nb, generator=g)[: max(1, int(round(dens * nb)))]
                    mask = torch.zeros(nb)
                    mask[keep] = 1
                    m = mask.view(fout // b, fin // b).repeat_interleave(b, 0).repeat_interleave(b, 1)
                    ws = (w * m).to_sparse_bsr((b, b))
                    ms = _time(lambda: ws @ x, reps)
                    entries.append({"layer": kind, "in": fin, "out": fout, "rows": rows, "format": f"bsr{b}x{b}",
                                    "density": dens, "ms": round(ms, 5), "speedup_vs_dense": round(dense / ms, 3)})
    return {"runtime": "torch", "note": NOTE.format(ver=torch.__version__), "two_four": "not runnable on this runtime",
            "entries": entries}
