"""`compress export`: exit codes, text and JSON output, no partial directory on bad input."""

from __future__ import annotations

import json

import pytest

from compress.cli import main
from tests.export.export_models import mask_24, tiny_cnn, write_plan

M = "tests.export.export_models:"


def test_export_cpu_json(tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["export", M + "tiny_mlp", "--target", "cpu", "--out", str(out), "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["ok"] and man["out"] == str(out)
    assert json.loads((out / "manifest.json").read_text())["files"] == man["files"]
    assert {c["runtime"] for c in man["parity"]} >= {"tvm (model_llvm.so)", "onnxruntime (model.ort.onnx)"}


def test_export_gpu_text_marks_what_is_not_verified(tmp_path, capsys):
    plan = tmp_path / "sparse_plan.json"
    write_plan(plan, mask_24(tiny_cnn()))
    out = tmp_path / "gpu"
    code = main(["export", M + "tiny_cnn_24", "--target", "gpu", "--sparse-plan", str(plan), "--batch", "4",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "2:4 pattern in the ONNX weights: 5/5 layers ok" in text
    assert "NOT VERIFIED: TensorRT engine: not verified on this machine" in text
    script = (out / "build_engine.sh").read_text()
    assert "--fp16 --sparsity=enable" in script and "Shapes" not in script  # static batch 4: no profile flags
    assert "--min-batch 4 --opt-batch 4 --max-batch 4" in script


def test_export_gpu_dense_model_with_24_plan_fails_the_check(tmp_path, capsys):
    plan = tmp_path / "sparse_plan.json"
    write_plan(plan, mask_24(tiny_cnn()))
    code = main(["export", "tests.models:tiny_cnn", "--target", "gpu", "--sparse-plan", str(plan),
                 "--out", str(tmp_path / "o")])
    text = capsys.readouterr().out
    assert code == 1 and "NOT 2:4: " in text and "check failed" in text


@pytest.mark.parametrize("argv,msg", [
    (["--target", "tpu"], "unknown target 'tpu'"),
    (["--target", "jetson", "--device", "nano-x"], "unknown Jetson device 'nano-x'"),
    (["--target", "jetson"], "needs --device"),
    (["--target", "cpu", "--batch", "zero"], "--batch 'zero'"),
    (["--target", "cpu", "--runtimes", "ort,trt"], "unknown runtime 'trt' in --runtimes"),
])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, capsys, argv, msg):
    out = tmp_path / "o"
    assert main(["export", M + "tiny_mlp", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and "Traceback" not in err[0]
    assert not list(tmp_path.iterdir())


def test_unsupported_op_exit_2_names_op_and_layer(tmp_path, capsys):
    # TVM asked for explicitly: its frontend refusing an op fails the export, one line, nothing written
    assert main(["export", M + "not_in_tvm", "--target", "cpu", "--runtimes", "ort,tvm", "--out", str(tmp_path / "o"),
                 "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "op Celu in layer act" in err[0]
    assert not list(tmp_path.iterdir())


def test_tvm_is_secondary_by_default(tmp_path, capsys):
    # without --runtimes the same refusal is recorded and the onnxruntime artifact ships (exit 0)
    out = tmp_path / "o"
    assert main(["export", M + "not_in_tvm", "--target", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "TVM: not built: " in text and "op Celu in layer act" in text
    man = json.loads((out / "manifest.json").read_text())
    assert man["ok"] and not man["tvm"]["built"] and "model_llvm.so" not in man["files"]
    assert main(["bench", str(out), "--runs", "2", "--warmup", "0", "--json"]) == 0
    assert [r["runtime"] for r in json.loads(capsys.readouterr().out)["results"]] == ["onnxruntime"]
    # --runtimes ort: TVM not requested
    assert main(["export", M + "tiny_mlp", "--target", "cpu", "--runtimes", "ort", "--out", str(tmp_path / "p"),
                 "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["tvm"] == {"built": False, "reason": "not requested (--runtimes)"}


def test_dict_output_model_exports_its_primary_output(tmp_path, capsys):
    out = tmp_path / "seg"
    assert main(["export", "tests.export.export_models:dict_output", "--target", "cpu", "--runtimes", "ort",
                 "--out", str(out), "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["ok"] and man["onnx"]["output"] == {"name": "output", "from": "dict (out, aux): 'out'"}
