"""compress.export.package: artifact directories per target, checked with the real runtimes
(onnxruntime, TVM on llvm, the aarch64 cross toolchain). TensorRT cannot be installed here: its
test skips with the reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compress.errors import CompressError
from compress.export import manifest as mf
from compress.export import sparsity
from compress.export import tvm_relax as tvmx
from compress.export.package import export
from compress.export.targets import ExportConfig
from tests.export.export_models import mask_24, tiny_cnn, write_plan

M = "tests.export.export_models:"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def cpu_art(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu") / "art"
    man = export(M + "tiny_fmnist", ExportConfig("cpu"), str(out))
    return out, man


@pytest.fixture(scope="module")
def plan24(tmp_path_factory):
    p = tmp_path_factory.mktemp("plan") / "sparse_plan.json"
    write_plan(p, mask_24(tiny_cnn()))
    return p


def test_cpu_artifact_runs_in_onnxruntime_and_tvm(cpu_art):
    out, man = cpu_art
    assert man["ok"]
    assert {"model.onnx", "model.ort.onnx", "model_llvm.so", "run_ort.py", "run_tvm.py", "README.md"} <= set(man["files"])
    runtimes = {c["runtime"] for c in man["parity"]}
    assert runtimes == {"onnxruntime (model.onnx)", "onnxruntime (model.ort.onnx)", "tvm (model_llvm.so)"}
    for c in man["parity"]:
        assert c["ok"] and c["max_rel_error"] <= 1e-4 and c["max_abs_error"] is not None, c
    if FMNIST.is_dir():  # real Fashion-MNIST test images for a 1x28x28 model
        assert sum("Fashion-MNIST" in c["inputs"] for c in man["parity"]) == 3
    # opset >= 17, dynamic batch
    m = onnx.load(str(out / "model.onnx"))
    assert m.opset_import[0].version >= 17
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert tvmx.elf_machine(str(out / "model_llvm.so")) == tvmx.EM_X86_64 or os.uname().machine != "x86_64"


def test_manifest_records_files_hashes_and_commands(cpu_art):
    out, man = cpu_art
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["files"] == man["files"]
    for name, f in man["files"].items():
        assert mf.sha256_file(str(out / name)) == f["sha256"]
    assert len(man["source"]["weights_sha256"]) == 64
    assert man["target"] == {"name": "cpu", "device": None, "dtype": "fp32", "batch": "dynamic"}
    assert man["versions"]["onnxruntime"] and man["versions"]["apache-tvm"]
    assert "ms" in man["expected_latency"] and (man["expected_latency"]["ms"] is not None
                                                or man["expected_latency"]["reason"])
    assert man["accuracy_at_pruning"]["reason"]
    assert set(man["layer_formats"]) == {"conv1", "conv2", "fc"}
    cmds = " ".join(c["command"] for c in man["commands"])
    assert "run_ort.py model.ort.onnx --shape 1,1,28,28" in cmds and "run_tvm.py model_llvm.so --device cpu" in cmds
    assert not list(out.parent.glob(".art.tmp-*"))


def test_tvm_library_reproduces_onnxruntime_at_other_batch(cpu_art):
    out, _ = cpu_art
    from compress.export import ort
    x = np.random.default_rng(5).random((5, 1, 28, 28), dtype=np.float32)
    a = ort.run(str(out / "model.ort.onnx"), [x], optimized=True)
    b = tvmx.run(str(out / "model_llvm.so"), [x])
    assert a.shape == b.shape == (5, 10)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_jetson_artifact_has_aarch64_tvm_library_and_trt_script(tmp_path, plan24):
    out = tmp_path / "jet"
    man = export(M + "tiny_cnn_24", ExportConfig("jetson", device="agx-orin"), str(out), sparse_plan=str(plan24))
    lib = out / "model_agx-orin_aarch64.so"
    assert tvmx.elf_machine(str(lib)) == tvmx.EM_AARCH64
    assert "cuda" in man["tvm"]["device_modules"] and man["tvm"]["cuda_arch"] == "sm_87"
    assert man["tvm"]["tag"] == "nvidia/jetson-agx-orin-64gb" and man["tvm"]["host"]["mtriple"] == "aarch64-linux-gnu"
    script = (out / "build_engine.sh").read_text()
    for flag in ("--onnx=model.onnx", "--fp16", "--sparsity=enable", "--minShapes=input:1x3x32x32",
                 "--optShapes=input:1x3x32x32", "--maxShapes=input:32x3x32x32"):
        assert flag in script
    assert (out / "build_trt.py").is_file() and (out / "run_tvm.py").is_file() and (out / "README.md").is_file()
    assert "--device cuda" in (out / "README.md").read_text()
    assert any("model_agx-orin_aarch64.so" in nv and mf.NOT_VERIFIED in nv for nv in man["not_verified_here"])
    assert man["ok"] and man["sparsity_2_4"]["ok"]


def test_gpu_2_4_weights_are_verified_in_the_onnx_tensors(tmp_path, plan24):
    out = tmp_path / "gpu"
    man = export(M + "tiny_cnn_24", ExportConfig("gpu"), str(out), sparse_plan=str(plan24))
    s = man["sparsity_2_4"]
    assert s["ok"] and s["checked"] == 5
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    for layer, r in s["layers"].items():
        arr = inits[r["initializer"]]
        w = arr.T if r["transposed"] else arr.reshape(arr.shape[0], arr.shape[1], -1)
        groups = np.moveaxis(w, 1, -1).reshape(-1, 4)
        assert ((groups != 0).sum(1) <= 2).all(), layer
    assert "--sparsity" in man["tensorrt"]["python_api"] and "--sparsity=enable" in man["tensorrt"]["trtexec"]
    assert man["aoti"]["built"] is False and "no compress block-sparse kernel" in man["aoti"]["reason"]
    # the same plan on the dense model: the check must fail, naming the layers
    bad = export("tests.models:tiny_cnn", ExportConfig("gpu"), str(tmp_path / "bad"),
                 sparse_plan=str(plan24))
    assert not bad["ok"] and not bad["sparsity_2_4"]["ok"]
    assert all(not r["ok"] for r in bad["sparsity_2_4"]["layers"].values())


def test_is_24_counts_violations():
    w = np.zeros((2, 8, 1, 1), np.float32)
    w[:, [0, 1, 4, 6]] = 1
    assert sparsity.is_24(w)[0]
    w[0, 2] = 1
    ok, detail = sparsity.is_24(w)
    assert not ok and "1 of 4 groups" in detail
    assert not sparsity.is_24(np.ones((2, 6)))[0]


def test_onnx_is_byte_identical_across_exports(tmp_path, plan24):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        export(M + "tiny_cnn_24", ExportConfig("gpu"), str(d), sparse_plan=str(plan24))
    assert (a / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()
    from compress.export import ort
    ort.optimize(str(a / "model.onnx"), str(tmp_path / "o1.onnx"))
    ort.optimize(str(a / "model.onnx"), str(tmp_path / "o2.onnx"))
    assert (tmp_path / "o1.onnx").read_bytes() == (tmp_path / "o2.onnx").read_bytes()


@pytest.mark.parametrize("cfg,match", [
    (ExportConfig("tpu"), "unknown target 'tpu'"),
    (ExportConfig("jetson"), "--target jetson needs --device"),
    (ExportConfig("jetson", device="xavier-nx"), "unknown Jetson device 'xavier-nx'"),
    (ExportConfig("cpu", dtype="fp16"), "--target cpu runs fp32"),
])
def test_bad_config_is_rejected_before_anything_is_written(tmp_path, cfg, match):
    with pytest.raises(CompressError, match=match):
        export("tests.models:tiny_cnn", cfg, str(tmp_path / "x"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("spec,target,match", [
    ("not_in_onnx", "cpu", r"op aten::special_zeta in layer odd cannot be exported to ONNX opset 18"),
    ("not_in_tvm", "cpu-tvm", r"does not support op Celu in layer act \(ONNX node /act/Celu\)"),
    ("not_in_tvm", "jetson", r"does not support op Celu in layer act"),
])
def test_unsupported_op_names_op_and_layer_and_leaves_nothing(tmp_path, spec, target, match):
    # TVM fails the export only where it is the target's runtime (jetson) or was asked for (--runtimes ...,tvm)
    runtimes = ("ort", "tvm") if target == "cpu-tvm" else None
    target = target.split("-")[0]
    cfg = ExportConfig(target, device="orin-nano" if target == "jetson" else None, runtimes=runtimes)
    with pytest.raises(CompressError, match=match):
        export(M + spec, cfg, str(tmp_path / "x"))
    assert not list(tmp_path.iterdir())


def test_sparse_plan_naming_a_missing_layer_is_bad_input(tmp_path):
    p = tmp_path / "plan.json"
    write_plan(p, {"nope.0": {"format": "2:4", "density": 0.5}})
    with pytest.raises(CompressError, match="names layers the model does not have: nope.0"):
        export("tests.models:tiny_cnn", ExportConfig("gpu"), str(tmp_path / "x"), sparse_plan=str(p))
    assert not (tmp_path / "x").exists()


def test_gpu_export_of_a_model_lowered_by_compress_lower(tmp_path):
    man = export(M + "tiny_mlp_lowered_24", ExportConfig("gpu"), str(tmp_path / "o"))
    assert {n: e["format"] for n, e in man["layer_formats"].items()} == {"0": "2:4", "2": "2:4"}
    s = man["sparsity_2_4"]
    assert s["ok"] and s["checked"] == 2, s
    assert man["tensorrt"]["sparsity"] and man["ok"]


def test_tvm_that_cannot_import_the_model_is_recorded_and_onnxruntime_ships(tmp_path):
    man = export(M + "not_in_tvm", ExportConfig("cpu"), str(tmp_path / "o"))
    assert man["ok"] and not man["tvm"]["built"]
    assert "does not support op Celu in layer act" in man["tvm"]["reason"]
    assert {c["runtime"] for c in man["parity"]} == {"onnxruntime (model.onnx)", "onnxruntime (model.ort.onnx)"}
    assert [b["runtime"] for b in man["bench"]] == ["onnxruntime"] and "model_llvm.so" not in man["files"]


def test_tvm_not_installed_is_a_manifest_entry(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tvm" else real(name, *a))
    man = export(M + "tiny_mlp", ExportConfig("cpu"), str(tmp_path / "o"))
    assert man["ok"] and man["tvm"] == {"built": False, "reason": "not built: install compress-deploy[tvm]"}
    with pytest.raises(CompressError, match=r"--runtimes tvm needs Apache TVM: pip install 'compress-deploy\[tvm\]'"):
        export(M + "tiny_mlp", ExportConfig("cpu", runtimes=("ort", "tvm")), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("runtimes,match", [
    (("ort", "tensorrt"), "unknown runtime 'tensorrt' in --runtimes"),
    ((), "unknown runtime '\\(none\\)'"),
])
def test_bad_runtimes(tmp_path, runtimes, match):
    with pytest.raises(CompressError, match=match):
        export(M + "tiny_mlp", ExportConfig("cpu", runtimes=runtimes), str(tmp_path / "x"))
    with pytest.raises(CompressError, match="--runtimes chooses the runtimes of --target cpu"):
        export(M + "tiny_mlp", ExportConfig("gpu", runtimes=("ort",)), str(tmp_path / "x"))
