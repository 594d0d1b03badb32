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


def test_export_cpu_model_with_two_inputs(tmp_path, capsys):
    """issue #20: a model declaring two inputs (compress_inputs) exports for cpu with both in model.onnx, the
    manifest and README listing each, onnxruntime and TVM checked against torch on every case, the runners fed
    one --input per input; the GPU scripts give TensorRT every input's shapes."""
    import onnx

    out = tmp_path / "art"
    assert main(["export", M + "two_float_inputs", "--target", "cpu", "--out", str(out), "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["ok"], man["parity"]
    assert man["source"]["inputs"] == [{"name": "left", "shape": [1, 8], "dtype": "float32", "values": "normal"},
                                       {"name": "right", "shape": [1, 4], "dtype": "float32", "values": "normal"}]
    g = onnx.load(str(out / "model.onnx")).graph
    assert [i.name for i in g.input] == ["left", "right"]
    runtimes = {c["runtime"] for c in man["parity"] if c["ok"] and c["inputs"].startswith("random batch 3")}
    assert runtimes == {"onnxruntime (model.onnx)", "onnxruntime (model.ort.onnx)", "tvm (model_llvm.so)"}
    args = "--input left:1,8:float32:normal --input right:1,4:float32:normal"
    assert [c["command"].endswith(args) for c in man["commands"][1:]] == [True, True]
    readme = (out / "README.md").read_text()
    assert "- `left`: float32 [1, 8] (dynamic batch), float values" in readme and args in readme
    gpu = tmp_path / "gpu"
    assert main(["export", M + "two_float_inputs", "--target", "gpu", "--out", str(gpu), "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["tensorrt"]["inputs"] == {"left": [8], "right": [4]}
    assert "--minShapes=left:1x8,right:1x4 " in (gpu / "build_engine.sh").read_text()
    assert "--shapes=left:1x8,right:1x4" in (gpu / "run_engine.sh").read_text()
    assert man["bench"][0]["argv"][2:] == args.split()


def test_export_two_inputs_int8_and_bad_input(tmp_path, capsys):
    """--dtype int8 of a model with several inputs keeps them all when the others are an attention mask (or
    token type ids): random calibration feeds masks of ones, which the manifest records and flags (padded inputs'
    ranges not calibrated), and the int8 model is judged on padded masks; otherwise, like a shape its inputs
    cannot take, it is refused in one line, exit 2, nothing written."""
    pytest.importorskip("transformers")
    out = tmp_path / "q"
    assert main(["export", "tests.models:bert_two_inputs", "--target", "cpu", "--dtype", "int8", "--calib",
                 "random:16", "--runtimes", "ort", "--out", str(out), "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["int8"]["inputs"] == ["input_ids", "attention_mask"] and man["onnx"] and man["ok"]
    assert man["int8"]["calibration"]["masks"].startswith("attention_mask: ones (random inputs: no padding); 0 of 16")
    assert man["int8"]["parity"]["padded_sequences"] == man["int8"]["parity"]["samples"] == 64
    assert any("model.int8.onnx: " in n and "without padding" in n for n in man["not_verified_here"])
    int8 = next(b for b in man["bench"] if "int8" in b["runtime"])
    assert int8["argv"][2:] == ["--input", "input_ids:1,12:int64:high=64", "--input", "attention_mask:1,12:int64:mask"]
    for argv, msg in [([M + "two_float_inputs", "--dtype", "int8", "--calib", "random"], "also takes right, which is"),
                      ([M + "two_float_inputs", "--input-shape", "1,5"], "does not run on its example input")]:
        bad = tmp_path / "bad"
        assert main(["export", *argv, "--target", "cpu", "--out", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("compress export: error: ") and msg in err[-1], err
        assert not bad.exists()
