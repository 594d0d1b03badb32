"""Lowering masks to formats hardware accelerates (2:4, block-sparse) and the modules that run them."""
