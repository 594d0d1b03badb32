"""Runtime of the CPU block-sparse kernel (libcompress_bsr.so, built from bsr_cpu.cpp): a ctypes binding of
the kernel, and onnxruntime session options that load the same library as a custom op library, which runs the
`ai.compress::BlockSparseLinear` nodes of an exported model on onnxruntime's intra-op threads.

Standalone on purpose: an exported artifact ships this file beside the library and its ONNX model, and it
needs only numpy and onnxruntime (>= 1.17), never compress or a compiler.

    import bsr_cpu_runtime as bsr
    sess = onnxruntime.InferenceSession("model.bsr.onnx", bsr.session_options(threads=2))

The op: inputs X (..., K) float; values (nnzb, b, b) float, each block stored transposed (W[r*b+i, c*b+k] at
values[p, k, i]); rowptr (nbr + 1) int64; cols (nnzb) int64; bias (nbr * b) float (the last four are the
model's initializers, read in place); attributes block (b), out_features (N); output (..., N) = X @ W^T + bias.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

OP_TYPE = "BlockSparseLinear"
DOMAIN = "ai.compress"
LIB_NAME = "libcompress_bsr.so"
ABI_VERSION = 1
BLOCKS = (16, 32, 64)

def _ptr(a) -> int:
    return a.__array_interface__["data"][0]


class Kernel:
    """The compiled kernel in `path`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = ctypes.CDLL(os.path.abspath(path))
        abi = self.lib.compress_bsr_abi_version()
        if abi != ABI_VERSION:
            raise RuntimeError(f"{path} has kernel ABI {abi}, this runtime expects {ABI_VERSION}: "
                               "re-export the model with the same compress version")
        fn = self.lib.compress_bsr_linear_f32
        fn.restype = ctypes.c_int
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        fn.argtypes = [p, i64, i64, p, p, p, i64, i64, p, p, i64, ctypes.c_int]
        self._fn = fn

    def linear(self, x, values, rowptr, cols, block: int, out_features: int, bias=None, threads: int = 0):
        """X (..., K) @ W^T (+ bias) -> (..., out_features), float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        values = np.ascontiguousarray(values, dtype=np.float32)
        rowptr = np.ascontiguousarray(rowptr, dtype=np.int64)
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        lead, k = x.shape[:-1], x.shape[-1]
        t = x.size // k if k else 0
        nbr = rowptr.shape[0] - 1
        if nbr * block < out_features or (cols.size and int(cols.max()) * block >= k) or \
                values.shape[0] != cols.shape[0]:
            raise ValueError(f"block-sparse weight ({nbr} block rows of {block}) does not fit out_features "
                             f"{out_features} and an input of width {k}")
        y = np.empty((*lead, out_features), dtype=np.float32)
        if bias is not None:
            bias = np.ascontiguousarray(bias, dtype=np.float32)
            if bias.size < nbr * block:
                bias = np.concatenate([bias, np.zeros(nbr * block - bias.size, np.float32)])
        rc = self._fn(_ptr(x), t, k, _ptr(values), _ptr(rowptr), _ptr(cols), nbr, block,
                      None if bias is None else _ptr(bias), _ptr(y), out_features, int(threads))
        if rc != 0:
            raise ValueError(f"block size {block} is not supported by {self.path} (use one of {BLOCKS})")
        return y


def session_options(lib: str | None = None, threads: int = 0):
    """onnxruntime SessionOptions that run BlockSparseLinear nodes with the kernel library `lib` (default: the
    one beside this file, or $COMPRESS_BSR_LIB). `threads`: onnxruntime's intra-op threads, which the kernel's
    work runs on too (0: onnxruntime's default)."""
    import onnxruntime as ort

    lib = lib or os.environ.get("COMPRESS_BSR_LIB") or os.path.join(os.path.dirname(os.path.abspath(__file__)), LIB_NAME)
    Kernel(lib)                                       # the ABI check, with a readable error
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.register_custom_ops_library(os.path.abspath(lib))
    return so


def register_beside(so, model_path: str) -> bool:
    """Register the kernel library lying beside `model_path` (an exported artifact's model.bsr.onnx) with the
    SessionOptions `so`; False when there is none (any other ONNX file)."""
    lib = os.path.join(os.path.dirname(os.path.abspath(model_path)), LIB_NAME)
    if not os.path.isfile(lib):
        return False
    so.register_custom_ops_library(lib)
    return True
