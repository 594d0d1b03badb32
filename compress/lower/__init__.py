"""Lowering masks to formats hardware accelerates (2:4, block-sparse) and the modules that run them."""


def load_sparse_dir(d: str):
    """A directory written by `compress sparsify` -> the lowered nn.Module (no unpickling)."""
    from compress.models import load_sparse_dir as _load

    return _load(d)
