"""Where the modules of `compress.kernels`, `compress.export` and `compress.hardware_profiles` live.

Each of the three is a front-door module in this folder (compress/kernels.py, ...) that sets its
own `__path__`, which makes it a package whose modules are found in one folder:

- in an installed wheel: compress/<name>/ (pyproject.toml's package-dir mapping copies them there);
- in a checkout (editable install, or no install at all): the top-level <name>/ folder of the design card.

Those top-level folders have no `__init__.py` on purpose. With the repository root on `sys.path`
(`python -m compress` run from the root, `python -m pytest`, tests/conftest.py), a folder holding
an `__init__.py` would be a regular package named plain `kernels` and would win over Hugging
Face's `kernels` distribution, which transformers imports; a folder without one is at most a
namespace portion, which loses to any regular package anywhere on the path, and runs no code
of ours under the bare name.
"""

from __future__ import annotations

from pathlib import Path


def package_path(front_door: str) -> list[str]:
    """The `__path__` of the front-door module whose file is `front_door`."""
    here = Path(front_door).resolve()
    for folder in (here.with_suffix(""), here.parents[1] / here.stem):
        if folder.is_dir() and any(folder.glob("*.py")):
            return [str(folder)]
    raise ImportError(f"compress.{here.stem}: its modules are missing (looked for {here.with_suffix('')} "
                      f"and {here.parents[1] / here.stem}); reinstall the package")
