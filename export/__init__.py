"""Exporters and per-target packaging (`compress export`, `compress bench`; see docs/export.md).

onnx.py: deterministic ONNX export and onnxruntime parity; ort.py: onnxruntime's optimised model;
tvm_relax.py: Apache TVM Relax builds (host llvm, Jetson aarch64 + CUDA); build_trt.py: TensorRT engine
build (standalone script); aoti.py: AOTInductor packages; sparsity.py: per-layer formats and 2:4
verification; package.py: the artifact directory; manifest.py, readme.py; run_ort.py / run_tvm.py:
standalone runners copied into artifacts; bench.py: timing an artifact. Backends import lazily."""
