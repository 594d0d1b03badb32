"""Exporters (ONNX now; TensorRT, TVM and per-target packaging later). Backends import lazily."""
