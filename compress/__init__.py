"""compress: a deployment compiler for pruned neural networks.

Importing this package is cheap: it never initialises CUDA and imports torch lazily
in the submodules that need it.
"""

from compress.errors import CheckFailed, CompressError

__version__ = "0.1.0"
__all__ = ["CompressError", "CheckFailed", "__version__"]
