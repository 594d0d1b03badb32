"""Sparse kernels (Triton block-sparse matmul, CPU paths). Nothing here runs at import time."""
