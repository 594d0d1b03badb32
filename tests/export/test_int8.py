"""`compress export --dtype int8` (export/quantize.py): ONNX QDQ by onnxruntime's quantize_static, judged against
fp32 by task metric; bad input one line, exit 2, nothing written; TensorRT's int8 lines; `compress eval` on it."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from compress.accuracy import data
from compress.cli import main
from compress.export import build_trt as bt
from tests.export.export_models import tiny_fmnist

FMNIST_INSTALLED = os.path.isfile(os.path.join(data.FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
needs_fmnist = pytest.mark.skipif(not FMNIST_INSTALLED, reason="dataset-fashion-mnist is not installed")
LABELLED = "tests.export.test_int8:tiny_fmnist_labelled"


def tiny_fmnist_labelled():
    """A 1x28x28 classifier that names its training data (as compress: models do), so its int8 accuracy is judged."""
    m = tiny_fmnist()
    m.compress_dataset = "fashion-mnist"
    return m


def tiny_encoder():
    """Token ids -> (N, T, 16) hidden states through an FFN with a GELU: a text encoder in miniature."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

        def forward(self, ids):
            x = self.embed(ids)
            return x + self.down(nn.functional.gelu(self.up(x)))

    m = Enc().eval()
    m.compress_input_shape, m.compress_input_dtype, m.compress_vocab_size = (1, 8), "int64", 50
    return m


def _ort_ops(path) -> list[str]:
    """The op types of the graph onnxruntime's CPU provider runs for `path` (ORT_ENABLE_ALL)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def _sha(p) -> str:
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def test_int8_cpu_random_calibration_deterministic(tmp_path, capsys):
    outs = []
    for k in range(2):
        out = tmp_path / f"o{k}"
        assert main(["export", "tests.models:tiny_cnn", "--target", "cpu", "--runtimes", "ort", "--dtype", "int8",
                     "--calib", "random:16", "--out", str(out), "--json"]) == 0
        outs.append(out)
    capsys.readouterr()
    man = json.loads((outs[0] / "manifest.json").read_text())
    assert _sha(outs[0] / "model.int8.onnx") == _sha(outs[1] / "model.int8.onnx")   # byte-identical
    q = man["int8"]
    assert man["ok"] and q["quantization"]["format"] == "QDQ" and q["method"]["method"] == "MinMax"
    assert "no labelled data" in q["method"]["chosen_by"] and "random inputs" in q["calibration"]["warning"]
    assert q["parity"]["metric"] == "top1_agreement" and q["parity"]["value"] >= 0.95
    b8 = [b for b in man["bench"] if "int8" in b["runtime"]][0]
    assert ["run_ort.py", "model.int8.onnx"] == b8["argv"][:2]
    # the int8 run is timed against the int8 profile's prediction (or none), never the fp32 expected_latency
    e8 = q["expected_latency"]
    assert b8["expected_ms"] == e8["ms"]
    assert (e8["ms"] is None and "int8" in e8["reason"]) or (e8["dtype"] == "int8" and e8["batch"] == 1)
    import onnx
    ops = {n.op_type for n in onnx.load(str(outs[0] / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # onnxruntime runs every conv of the CPU artifact as its int8 kernel, also those whose input or output
    # tensor feeds two ops (the stem's output: the residual block and its skip); with int8 activations it left
    # such convs in fp32 on dequantized tensors (uint8 activations, U8S8, fuse everywhere)
    assert _ort_ops(outs[0] / "model.int8.onnx").count("QLinearConv") == 6
    assert "Conv" not in _ort_ops(outs[0] / "model.int8.onnx")
    # compress bench times it like the other runtimes
    assert main(["bench", str(outs[0]), "--runs", "2", "--warmup", "0", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["results"]
    assert any("int8" in r["runtime"] and r["median_ms"] and r["expected_ms"] == e8["ms"] for r in runs)


@needs_fmnist
def test_int8_labelled_model_method_chosen_by_accuracy_and_eval(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["export", LABELLED, "--target", "cpu", "--runtimes", "ort", "--dtype", "int8", "--calib", "data:64",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "top1_agreement" in text and "accuracy int8" in text
    q = json.loads((out / "manifest.json").read_text())["int8"]
    assert q["method"]["chosen_by"].startswith("measured") and len(q["method"]["tried"]) == 6
    # every method with and without bias correction; the choice is recorded where the quantization is described
    assert [t["bias_correction"] for t in q["method"]["tried"]] == [False] * 3 + [True] * 3
    assert ("bias_correction" in q["quantization"]) == q["method"]["bias_correction"]
    assert "fashion-mnist" in q["calibration"]["data"] and "warning" not in q["calibration"]
    p = q["parity"]
    assert p["samples"] == 1000 and "test split" in p["inputs"] and p["ok"] and p["value"] >= 0.95
    assert {"accuracy_int8", "accuracy_fp32"} <= set(p)
    # compress eval runs model.int8.onnx in onnxruntime on the test split, and model.onnx beside it
    assert main(["eval", str(out), "--data", "fashion-mnist", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["onnx"].endswith("model.int8.onnx") and res["samples"] == 10000
    assert 0 <= res["accuracy"] <= 1 and res["agreement_fp32"] >= 0.95
    assert abs(res["accuracy"] - res["accuracy_fp32"]) < 0.05
    assert main(["eval", str(out / "model.onnx"), "--data", "fashion-mnist", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == res["accuracy_fp32"]


@needs_fmnist
def test_random_calibration_of_a_labelled_model_warns(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["export", LABELLED, "--target", "cpu", "--runtimes", "ort", "--dtype", "int8", "--calib", "random:16",
                 "--calib-method", "minmax", "--out", str(out)]) in (0, 1)
    text = capsys.readouterr().out
    q = json.loads((out / "manifest.json").read_text())["int8"]
    assert "data:128" in q["calibration"]["warning"] and q["method"]["chosen_by"] == "--calib-method"
    assert "NOT VERIFIED: model.int8.onnx: calibrated on random inputs" in text


def _bad(tmp_path, capsys, argv, model="tests.models:tiny_cnn") -> str:
    out = tmp_path / "o"
    assert main(["export", model, "--target", "cpu", "--runtimes", "ort", *argv, "--out", str(out), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name != "calib.npy"]
    return err[0]


@pytest.mark.parametrize("argv,msg", [
    (["--dtype", "int8"], "--dtype int8 needs calibration data"),
    (["--dtype", "int8", "--calib", "random:8", "--calib-method", "kl"], "unknown --calib-method 'kl'"),
    (["--dtype", "int8", "--calib", "images.png"], "--calib 'images.png'"),
    (["--calib", "random:8"], "calibrates --dtype int8"),
    (["--dtype", "int4", "--calib", "random:8"], "unknown --dtype 'int4'"),
    (["--dtype", "int8", "--calib", "data:16"], "no training data is known for tests.models:tiny_cnn"),
])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, capsys, argv, msg):
    assert msg in _bad(tmp_path, capsys, argv)


def test_gpu_target_needs_calibration_too(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["export", "tests.models:tiny_cnn", "--target", "gpu", "--dtype", "int8", "--out", str(out)]) == 2
    assert "--dtype int8 needs calibration data" in capsys.readouterr().err and not out.exists()


def test_calibration_npy_of_the_wrong_shape(tmp_path, capsys):
    f = tmp_path / "calib.npy"
    np.save(f, np.zeros((8, 3, 16, 16), np.float32))
    err = _bad(tmp_path, capsys, ["--dtype", "int8", "--calib", str(f)])
    assert "samples have shape (3, 16, 16), the model takes (3, 32, 32)" in err


def test_calibration_npy_of_real_shape_is_used(tmp_path, capsys):
    f = tmp_path / "calib.npy"
    np.save(f, np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "o"
    assert main(["export", "tests.models:tiny_cnn", "--target", "cpu", "--runtimes", "ort", "--dtype", "int8",
                 "--calib", str(f), "--calib-method", "Entropy", "--out", str(out)]) == 0
    q = json.loads((out / "manifest.json").read_text())["int8"]
    assert q["calibration"]["samples"] == 16 and "warning" not in q["calibration"]
    assert q["quantization"]["calibration_method"] == "Entropy"


@pytest.mark.parametrize("sparse", [False, True])
def test_trtexec_int8_lines_for_both_majors(sparse):
    inputs = [("input", (3, 32, 32))]
    weak = bt.trtexec_args(10, False, sparse, inputs, (1, 1, 32), int8=True)
    strong = bt.trtexec_args(bt.STRONG_TYPING_MAJOR, False, sparse, inputs, (1, 1, 32), int8=True)
    for args in (weak, strong):
        assert args[0] == "--onnx=model.int8.onnx" and "--fp16" not in args
        assert ("--sparsity=enable" in args) == sparse
    assert "--int8" in weak and "--int8" not in strong   # 11+: strongly typed, the Q/DQ nodes carry int8


def test_gpu_int8_export_scripts(tmp_path, capsys):
    out = tmp_path / "gpu"
    assert main(["export", "tests.models:tiny_cnn", "--target", "gpu", "--dtype", "int8", "--calib", "random:16",
                 "--out", str(out), "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["tensorrt"]["int8"] and not man["tensorrt"]["fp16"] and "fp16_onnx" not in man["tensorrt"]
    assert man["int8"]["quantization"]["activations"].endswith("symmetric (TensorRT)")
    script = (out / "build_engine.sh").read_text()
    assert "--onnx=model.int8.onnx --saveEngine=model.engine --int8 " in script
    assert script.count("--onnx=model.int8.onnx") == 2 and "--fp16" not in script
    assert "python3 build_trt.py model.int8.onnx model.engine --int8" in script


def test_text_encoder_judged_by_cosine_ffn_down_projection_kept_fp32(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["export", "tests.export.test_int8:tiny_encoder", "--target", "cpu", "--runtimes", "ort", "--dtype",
                 "int8", "--calib", "random:32", "--out", str(out), "--json"]) == 0
    q = json.loads(capsys.readouterr().out)["int8"]
    assert q["parity"]["metric"] == "cosine" and q["parity"]["ok"] and q["parity"]["threshold"] == 0.98
    assert q["quantization"]["op_types"] == ["MatMul", "Gemm"] and q["method"]["method"] == "MinMax"
    kept = q["quantization"]["kept_fp32"]["nodes"]
    assert len(kept) == 1 and "down" in kept[0]


def test_bias_correction_removes_the_mean_shift_of_int8_weight_rounding(tmp_path):
    """bias_correct: b -= dW E[x] per output channel (Nagel et al. 2019) for a dense, a depthwise and a
    bias-less conv and a Gemm; with the weights rounded as quantize_static rounds them, each layer's output mean
    on the calibration inputs moves back towards fp32."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper as nh

    from compress.export import quantize as q

    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 1, (8, 1, 3, 3)).astype(np.float32)
    w3 = rng.normal(0, 1, (4, 8, 1, 1)).astype(np.float32)
    w4 = rng.normal(0, 1, (5, 4)).astype(np.float32)
    inits = [nh.from_array(w1, "w1"), nh.from_array(np.zeros(8, np.float32), "b1"), nh.from_array(w2, "w2"),
             nh.from_array(np.ones(8, np.float32), "b2"), nh.from_array(w3, "w3"), nh.from_array(w4, "w4"),
             nh.from_array(np.zeros(5, np.float32), "b4")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="c2", group=8),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="c3"),
             helper.make_node("GlobalAveragePool", ["c3"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w4", "b4"], ["y"], name="g", transB=1)]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, 6, 6])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 5])], inits)
    src, dst = str(tmp_path / "m.onnx"), str(tmp_path / "bc.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    x = rng.uniform(0, 1, (16, 3, 6, 6)).astype(np.float32)
    info = q.bias_correct(src, dst, [x[:8], x[8:]])
    assert info["layers"] == 4 and info["max_shift"] > 0

    def means(path, rounded):
        m = onnx.load(path)
        if rounded:
            for t in m.graph.initializer:
                if t.name.startswith("w"):
                    t.CopyFrom(nh.from_array(q._int8_rounded(nh.to_array(t)), t.name))
        m.graph.output.extend(helper.ValueInfoProto(name=n) for n in ("c1",))
        p = str(tmp_path / "r.onnx")
        onnx.save(m, p)
        return ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"x": x})

    fp, raw, fixed = means(src, False), means(src, True), means(dst, True)
    # the first conv sees the same input in all three: the mean shift of its outputs shrinks (not to 0 exactly:
    # E[x] is the whole input's mean, each kernel tap sees a slightly different window of it); so do the logits'
    def shift(a, b, axes):
        return np.abs(a.mean(axes) - b.mean(axes)).max()

    assert shift(fixed[1], fp[1], (0, 2, 3)) < 0.05 * shift(raw[1], fp[1], (0, 2, 3))
    assert shift(fixed[0], fp[0], 0) < 0.3 * shift(raw[0], fp[0], 0)
    assert onnx.load(dst).graph.node[4].input[2] == "w3_bias_correction"   # the bias-less conv got a bias


def test_encoder_judged_on_the_real_tokens_of_padded_inputs():
    """judge/cosine pool (N, T, H) hidden states over the tokens the attention mask keeps: outputs that differ only
    on padding agree (cosine 1), as a mean-pooling sentence encoder sees them; without the mask they would not."""
    from compress.export import quantize as q

    rng = np.random.default_rng(0)
    fp32 = rng.standard_normal((4, 6, 8)).astype(np.float32)
    mask = np.ones((4, 6), np.int64)
    mask[1:, 3:] = 0
    int8 = fp32.copy()
    int8[1:, 3:] += 5.0                                       # garbage on the padded positions only
    assert np.allclose(q.embedding(fp32, mask)[1], fp32[1, :3].mean(0))
    j = q.judge(int8, fp32, mask=mask)
    assert j["metric"] == "cosine" and j["ok"] and j["min"] == pytest.approx(1.0)
    assert q.judge(int8, fp32)["min"] < 0.9


def test_the_ffn_down_projection_is_found_through_reshapes_and_no_further(tmp_path):
    # a fixed batch puts reshapes between a GELU and the MatMul it feeds; the next layer's MatMul, fed through the
    # down-projection, is not GELU-fed
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.export.quantize import gelu_fed_matmuls

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 4], np.int64), "s")
    nodes = [helper.make_node("Erf", ["x"], ["e"], name="erf"), helper.make_node("Mul", ["x", "e"], ["g"], name="mul")]
    prev = "g"
    for i in range(5):
        nodes.append(helper.make_node("Reshape", [prev, "s"], [f"r{i}"], name=f"reshape{i}"))
        prev = f"r{i}"
    nodes += [helper.make_node("MatMul", [prev, "w"], ["d"], name="down"),
              helper.make_node("Add", ["d", "x"], ["a"], name="residual"),
              helper.make_node("MatMul", ["a", "w"], ["y"], name="next")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w, shape])
    onnx.save(helper.make_model(g), tmp_path / "m.onnx")
    assert gelu_fed_matmuls(str(tmp_path / "m.onnx")) == ["down"]


def test_cosine_is_scale_free_for_the_vanishing_outputs_of_random_init_nets():
    """Random-init torchvision nets (mnasnet, segmentation heads) give outputs of 1e-8: cosine must read their int8
    copy as the same direction (an absolute floor on the norms' product made it 0.02, failing dense maps' check)."""
    from compress.export import quantize as q

    rng = np.random.default_rng(0)
    fp32 = (rng.standard_normal((4, 1000)) * 1e-8).astype(np.float32)
    j = q.judge(fp32 * 1.001, fp32)
    assert j["logit_cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    seg = (rng.standard_normal((4, 3, 8, 8)) * 1e-9).astype(np.float32)
    assert q.judge(seg.copy(), seg)["ok"] and q.judge(-seg, seg)["value"] == pytest.approx(-1.0)
    z = np.zeros((2, 5), np.float32)
    assert list(q.cosine(z, z)) == [1.0, 1.0] and list(q.cosine(z, z + 1)) == [0.0, 0.0]


def test_flips_between_near_tied_classes_do_not_fail_an_honest_int8_model():
    """Random-init classifiers checked on noise decide by hairs (pruned torchvision:efficientnet_v2_s: 5 of 64
    decisions flipped, swin_t 12, at logit cosine 0.999): flips within the int8 rounding noise pass; flips of clear
    decisions, or near-ties whose logits disagree, still fail."""
    from compress.export import quantize as q

    rng = np.random.default_rng(0)
    fp32 = rng.standard_normal((64, 10))
    fp32[:8, 1] = fp32[:8].max(1) + 1.0                     # 8 clear decisions for class 1 ...
    fp32[:8, 2] = fp32[:8, 1] - 0.005                       # ... with class 2 a near-tie
    int8 = fp32 + rng.standard_normal(fp32.shape) * 0.01    # rounding noise
    int8[:8, 2] = int8[:8, 1] + 0.001                       # which flips the ties: 0.875 exact agreement
    j = q.judge(int8, fp32)
    assert j["top1_agreement_exact"] == pytest.approx(0.875) and j["near_ties"] == 8
    assert j["ok"] and j["value"] == 1.0 and j["note"].startswith("8 of 64")
    broken = int8.copy()
    broken[:8, 2] = fp32[:8, 2]
    broken[:8, 3] += 5.0                                    # one outlier logit flips clear decisions: not ties
    j = q.judge(broken, fp32)
    assert not j["ok"] and j["near_ties"] == 0 and j["value"] == pytest.approx(0.875)
    noisy = int8 + rng.standard_normal(int8.shape) * 2      # the ties flip, but the logits disagree: no excuse
    j = q.judge(noisy, fp32)
    assert j["logit_cosine_mean"] < q.COSINE_MIN and j["near_ties"] == 0 and j["value"] == j["top1_agreement_exact"]
