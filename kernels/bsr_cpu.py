"""The CPU block-sparse kernel: build (bsr_cpu.cpp -> libcompress_bsr.so), weight packing, a float64
reference, and the launcher over numpy arrays. The ctypes binding and the onnxruntime custom op live in
bsr_cpu_runtime.py, which artifacts ship without compress.

Build configurations are data: BUILD holds the compiler flags; `march` picks the instruction set
("native": this machine's, recorded in the manifest; "x86-64-v3": any AVX2 + FMA machine;
"x86-64-v4": AVX-512)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from compress.errors import CompressError
from compress.kernels import bsr_cpu_runtime as runtime

SOURCE = Path(__file__).with_name("bsr_cpu.cpp")
LIB_NAME = runtime.LIB_NAME
BLOCKS = runtime.BLOCKS
BUILD = {"cxx": "g++", "std": "c++17", "opt": "-O3", "flags": ["-fopenmp", "-shared", "-fPIC", "-fno-math-errno"]}
MARCHES = ("native", "x86-64-v3", "x86-64-v4")


def compiler(cxx: str | None = None) -> str:
    cxx = cxx or os.environ.get("CXX") or BUILD["cxx"]
    path = shutil.which(cxx)
    if path is None:
        raise CompressError(f"building the CPU block-sparse kernel needs a C++ compiler ({cxx} not found): "
                            "apt-get install g++, or set CXX")
    return path


def build_command(out: str, march: str = "native", cxx: str | None = None) -> list[str]:
    if march not in MARCHES:
        raise CompressError(f"unknown --march {march!r}; choose one of {', '.join(MARCHES)}")
    return [compiler(cxx), BUILD["opt"], f"-march={march}", f"-std={BUILD['std']}", *BUILD["flags"],
            "-o", out, str(SOURCE)]


def build(out: str, march: str = "native", cxx: str | None = None) -> dict:
    """Compile the kernel into `out`; return what was built (command, compiler version, source sha256)."""
    cmd = build_command(out, march, cxx)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise CompressError(f"compiling {SOURCE.name} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    ver = subprocess.run([cmd[0], "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return {"file": os.path.basename(out), "command": " ".join([os.path.basename(cmd[0]), *cmd[1:-3], "-o",
                                                                os.path.basename(out), SOURCE.name]),
            "compiler": ver[0] if ver else cmd[0], "march": march, "abi_version": runtime.ABI_VERSION,
            "source_sha256": hashlib.sha256(SOURCE.read_bytes()).hexdigest()}


def cached_library(march: str = "native") -> str:
    """The kernel built once per source, flags and machine, under $COMPRESS_CACHE (default ~/.cache/compress)."""
    from compress.machine import cpuinfo

    key = hashlib.sha256(SOURCE.read_bytes() + repr((BUILD, march, cpuinfo().model_name(""),
                                                     sorted(cpuinfo().flags))).encode()).hexdigest()[:16]
    root = Path(os.environ.get("COMPRESS_CACHE") or Path.home() / ".cache" / "compress") / "bsr_cpu" / key
    lib = root / LIB_NAME
    if not (lib.exists() and (root / "build.json").exists()):
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{LIB_NAME}.{os.getpid()}"
        info = build(str(tmp), march) | {"file": LIB_NAME}
        (root / "build.json").write_text(json.dumps(info, indent=1))
        os.replace(tmp, lib)
    return str(lib)


def build_info(lib: str) -> dict:
    """What `cached_library` built (compiler, flags, source sha256), or {} for a library built elsewhere."""
    p = Path(lib).with_name("build.json")
    return json.loads(p.read_text()) if p.is_file() else {}


def kernel(path: str | None = None) -> runtime.Kernel:
    return runtime.Kernel(path or cached_library())


# ------------------------------------------------------------------ weights

def pack(crow, col, values) -> dict[str, np.ndarray]:
    """BSR parts (values (nnzb, b, b) row-major blocks) -> the kernel's inputs (each block transposed)."""
    v = np.asarray(values, dtype=np.float32)
    if v.ndim != 3 or v.shape[1] != v.shape[2] or v.shape[1] not in BLOCKS:
        raise CompressError(f"the CPU block-sparse kernel takes square blocks of {', '.join(map(str, BLOCKS))}; "
                            f"got blocks of shape {tuple(v.shape[1:])}")
    return {"values": np.ascontiguousarray(v.transpose(0, 2, 1)), "rowptr": np.asarray(crow, dtype=np.int64),
            "cols": np.asarray(col, dtype=np.int64), "block": int(v.shape[1])}


def from_dense(w: np.ndarray, block: int) -> dict[str, np.ndarray]:
    """A dense (N, K) weight whose zero b x b blocks are not stored -> packed kernel inputs."""
    n, k = w.shape
    nbr, nbc = -(-n // block), -(-k // block)
    wp = np.zeros((nbr * block, nbc * block), dtype=np.float32)
    wp[:n, :k] = w
    blocks = wp.reshape(nbr, block, nbc, block).transpose(0, 2, 1, 3)        # (nbr, nbc, b, b)
    keep = np.abs(blocks).sum(axis=(2, 3)) != 0
    crow = np.concatenate([[0], np.cumsum(keep.sum(1))])
    rows, cols = np.nonzero(keep)
    return pack(crow, cols, blocks[rows, cols] if rows.size else np.zeros((0, block, block), np.float32))


def linear(x: np.ndarray, packed: dict, out_features: int, bias=None, threads: int = 0,
           lib: runtime.Kernel | None = None) -> np.ndarray:
    return (lib or kernel()).linear(x, packed["values"], packed["rowptr"], packed["cols"], packed["block"],
                                    out_features, bias, threads)


def reference(x: np.ndarray, w: np.ndarray, bias=None) -> np.ndarray:
    """float64 X @ W^T + bias."""
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    return y if bias is None else y + np.asarray(bias, np.float64)


def random_block_sparse(n: int, k: int, block: int, sparsity: float, seed: int = 0) -> np.ndarray:
    """A dense (n, k) fp32 weight with round(sparsity * blocks) of its b x b blocks zero (random, seeded)."""
    rng = np.random.default_rng(seed)
    nbr, nbc = -(-n // block), -(-k // block)
    nb = nbr * nbc
    zero = rng.permutation(nb)[:int(round(sparsity * nb))]
    mask = np.ones(nb, dtype=bool)
    mask[zero] = False
    full = np.kron(mask.reshape(nbr, nbc), np.ones((block, block), dtype=bool))[:n, :k]
    return (rng.standard_normal((n, k)).astype(np.float32) * full).astype(np.float32)
