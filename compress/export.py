"""Exporters and per-target packaging (`compress export`, `compress bench`; see docs/export.md).

onnx.py: deterministic ONNX export and onnxruntime parity; ort.py: onnxruntime's optimised model;
tvm_relax.py: Apache TVM Relax builds (host llvm, Jetson aarch64 + CUDA); build_trt.py: TensorRT engine
build (standalone script); aoti.py: AOTInductor packages; sparsity.py: per-layer formats and 2:4
verification; package.py: the artifact directory; manifest.py, readme.py; run_ort.py / run_tvm.py:
standalone runners copied into artifacts; bench.py: timing an artifact. Backends import lazily."""

from __future__ import annotations

from compress._layout import package_path

# a package whose modules live in the top-level export/ folder (compress/export/ once installed): see compress/_layout.py
__path__ = package_path(__file__)
