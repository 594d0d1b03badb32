"""Lowering masks to formats hardware accelerates (2:4, block-sparse) and the modules that run them.

A sparse directory is written by `lower.pipeline.save_sparse_dir` and read back by
`compress.models.load` / `compress.models.load_sparse_dir` (the loader of every directory kind)."""
