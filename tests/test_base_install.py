"""The base install (`pip install compress-deploy`, no extras) runs prune, eval, export --target cpu and bench
on a torchvision model (issue #20).

A real virtual environment with torch is ~5 GB to download and install, too slow for CI, and one made with
--system-site-packages would see apache-tvm, transformers and the other extras, proving nothing. So this
test builds the base install's *exact* import environment instead: it resolves the dependency closure of
`[project] dependencies` in pyproject.toml from the installed distributions' metadata (markers evaluated,
extras not followed), links each of those distributions' top-level files into a temporary site directory,
and runs `python -S -m compress` (no site-packages at all) with only that directory and the checkout on
its path. Nothing outside the base closure is importable there: the test first checks that tvm,
transformers and tensorrt are not. A genuine venv install runs when COMPRESS_TEST_VENV=1 (slow, network).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("tvm", "transformers", "tensorrt", "onnxruntime_extensions", "efficientnet_lite_pytorch")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_closure() -> dict:
    """{normalised name: importlib.metadata.Distribution} of the base dependencies and theirs."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    seen, stack = {}, [Requirement(d) for d in deps]
    while stack:
        r = stack.pop()
        if r.marker is not None and not r.marker.evaluate({"extra": ""}):
            continue
        n = _norm(r.name)
        if n in seen:
            continue
        try:
            seen[n] = md.distribution(r.name)
        except md.PackageNotFoundError:
            pytest.skip(f"base dependency {r.name} is not installed here")
        stack += [Requirement(x) for x in (seen[n].requires or [])]
    return seen


def base_site(dest: Path) -> Path:
    """A directory holding links to every top-level file of the base closure's distributions."""
    dest.mkdir()
    for dist in base_closure().values():
        root = Path(dist.locate_file(""))
        for f in dist.files or []:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth") or (dest / top).exists():
                continue
            src = root / top
            if src.exists():
                (dest / top).symlink_to(src)
    return dest


@pytest.fixture(scope="module")
def base_env(tmp_path_factory):
    site = base_site(tmp_path_factory.mktemp("base") / "site-packages")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]), "OMP_NUM_THREADS": "1",
            "COMPRESS_CACHE": str(tmp_path_factory.mktemp("cache")), "HF_HUB_OFFLINE": "1"}
    return env


def _run(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-S", *args], env=env, cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=600)


def test_extras_are_not_importable_in_the_base_environment(base_env):
    code = ("import importlib.util, sys; "
            f"print([m for m in {EXTRAS_ONLY!r} if importlib.util.find_spec(m) is not None]); "
            "import torch, torchvision, onnxruntime, compress; print(compress.__file__)")
    r = _run(base_env, "-c", code)
    assert r.returncode == 0, r.stderr
    found, where = r.stdout.strip().splitlines()
    assert found == "[]" and where.startswith(str(ROOT))


def _image_folder(d: Path, classes: int = 1000) -> Path:
    """A flat class-per-subfolder directory (evaluation only) with one small RGB image per ImageNet class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (d / f"c{c:04d}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"c{c:04d}" / "0.png")
    return d


def test_base_install_prunes_evaluates_exports_and_benches(base_env, tmp_path):
    spec, shape = "torchvision:mobilenet_v3_small", "1,3,32,32"
    pruned, art = tmp_path / "pruned", tmp_path / "art"
    r = _run(base_env, "-m", "compress", "prune", spec, "--ratio", "0.3", "--input-shape", shape,
             "--out", str(pruned), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["onnx_parity"]["ok"]

    data = _image_folder(tmp_path / "images")
    r = _run(base_env, "-m", "compress", "eval", str(pruned), "--data", str(data), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["pruned"] and res["samples"] == 1000 and res["dense_source"] == "recovered"

    r = _run(base_env, "-m", "compress", "export", str(pruned), "--target", "cpu", "--out", str(art), "--json")
    assert r.returncode == 0, r.stderr
    man = json.loads(r.stdout)
    assert man["ok"] and man["tvm"] == {"built": False, "reason": "not built: install compress-deploy[tvm]"}
    assert {c["runtime"] for c in man["parity"]} == {"onnxruntime (model.onnx)", "onnxruntime (model.ort.onnx)"}

    r = _run(base_env, "-m", "compress", "bench", str(art), "--runs", "3", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert [x["runtime"] for x in json.loads(r.stdout)["results"]] == ["onnxruntime"]

    # asking for TVM explicitly without it: one line, exit 2, nothing written
    r = _run(base_env, "-m", "compress", "export", str(pruned), "--target", "cpu", "--runtimes", "ort,tvm",
             "--out", str(tmp_path / "x"), "--json")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "compress-deploy[tvm]" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not os.environ.get("COMPRESS_TEST_VENV"), reason="a real venv install downloads ~5 GB: "
                    "set COMPRESS_TEST_VENV=1")
def test_real_venv_install_without_extras(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], check=True, timeout=3600)
    r = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('tvm'))"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.strip() == "None"
    out = tmp_path / "art"
    r = subprocess.run([str(venv / "bin" / "compress"), "export", "torchvision:mobilenet_v3_small", "--target", "cpu",
                        "--input-shape", "1,3,32,32", "--out", str(out), "--json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tvm"]["reason"] == "not built: install compress-deploy[tvm]"
