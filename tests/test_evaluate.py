"""compress.accuracy.evaluate: metrics on constructed cases, model/data checks, `compress eval` end to end."""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compress.accuracy import data, evaluate
from compress.errors import CompressError

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyCNN(nn.Module):
    """A classifier for (1, 8, 8) inputs, importable as tests.test_evaluate:tiny_cnn."""
    compress_input_shape = (1, 1, 8, 8)

    def __init__(self, classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN()


def tiny_cnn_3() -> nn.Module:
    return TinyCNN(classes=3)


def tiny_cnn_28() -> nn.Module:
    """TinyCNN stating a 28x28 input (it runs on any size): a stated shape the 8x8 test data contradicts."""
    m = tiny_cnn()
    m.compress_input_shape = (1, 1, 28, 28)
    return m


def undeclared_mlp() -> nn.Module:
    """A user's own classifier for (1, 8, 8) grayscale images that does not state its input shape
    (no compress_input_shape): it runs only on 8x8 single-channel inputs, not on the default guess."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


def _write_idx(path: Path, arr: np.ndarray) -> None:
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    path.write_bytes(gzip.compress(head + arr.astype(np.uint8).tobytes(), mtime=0))


def make_learnable_idx(d: Path, n_train: int = 400, n_test: int = 200, classes: int = 4) -> Path:
    """8x8 images whose class is which quadrant is bright, plus noise."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 90, (n, 8, 8))
        for i, c in enumerate(y):
            r, q = divmod(int(c), 2)
            x[i, r * 4:(r + 1) * 4, q * 4:(q + 1) * 4] += 160
        _write_idx(d / f"{prefix}-images-idx3-ubyte.gz", np.clip(x, 0, 255))
        _write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", y)
    return d


# ---------------------------------------------------------------- metrics on constructed cases

def test_accuracy_and_agreement():
    labels = torch.tensor([0, 1, 2, 1])
    a = torch.tensor([[5., 0, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0]])    # 3/4 right
    b = torch.tensor([[5., 0, 0], [0, 0, 5], [0, 0, 5], [5, 0, 0]])    # 2/4 right
    assert evaluate.accuracy(a, labels) == 0.75
    assert evaluate.accuracy(b, labels) == 0.5
    assert evaluate.agreement(a, b) == 0.75
    assert evaluate.agreement(a, a) == 1.0


def test_functional_distance_and_kl():
    x = torch.randn(32, 10)
    assert evaluate.functional_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert evaluate.kl_divergence(x, x) == pytest.approx(0.0, abs=1e-12)
    assert evaluate.functional_distance(x, x + 3.0) == pytest.approx(0.0, abs=1e-6)   # softmax is shift-invariant
    # one-hot-like outputs on different classes: distance sqrt(2)
    big = torch.full((4, 3), -50.0)
    p, d = big.clone(), big.clone()
    p[:, 0] = 50
    d[:, 1] = 50
    assert evaluate.functional_distance(p, d) == pytest.approx(math.sqrt(2), rel=1e-6)
    # hand-computed two-class case
    p, d = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])     # (0.5, 0.5) vs (0.75, 0.25)
    assert evaluate.functional_distance(p, d) == pytest.approx(math.sqrt(2) * 0.25)
    assert evaluate.kl_divergence(p, d) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    r = evaluate.compare(p, d, torch.tensor([0]))
    assert r["accuracy"] == 1.0 and r["accuracy_dense"] == 1.0 and r["agreement"] == 1.0


def test_predict_batches_and_mode():
    m = TinyCNN().train()
    ds = data.Dataset(torch.rand(10, 1, 8, 8), torch.zeros(10, dtype=torch.long), ("a", "b", "c", "d"), "x")
    out = evaluate.predict(m, ds, batch_size=3)
    assert out.shape == (10, 4) and m.training      # restored
    with torch.no_grad():
        ref = m.eval()(ds.images)
    assert torch.allclose(out, ref, atol=1e-5)


def test_check_fits():
    ds = data.Dataset(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), tuple("abcd"), "four")
    assert evaluate.check_fits(TinyCNN(classes=4), ds) == 4
    with pytest.raises(CompressError, match="outputs 3 classes but four has 4"):
        evaluate.check_fits(TinyCNN(classes=3), ds)
    with pytest.raises(CompressError, match="outputs 5 classes"):
        evaluate.check_fits(TinyCNN(classes=5), ds)
    inexact = data.Dataset(ds.images, ds.labels, tuple("abcd"), "inferred", exact_classes=False)
    assert evaluate.check_fits(TinyCNN(classes=5), inexact) == 5
    with pytest.raises(CompressError, match="not a classifier"):
        evaluate.check_fits(nn.Conv2d(1, 2, 3), ds)
    with pytest.raises(CompressError, match="does not run"):
        evaluate.check_fits(nn.Linear(5, 4), ds)


# ---------------------------------------------------------------- CLI end to end

def _cli(*args, cwd=ROOT, env=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "compress", *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return make_learnable_idx(tmp_path_factory.mktemp("idx") / "quadrants")


@pytest.fixture(scope="module")
def trained_weights(idx_dir, tmp_path_factory):
    """TinyCNN trained on the quadrant data, saved as safetensors."""
    from safetensors.torch import save_model

    from compress.accuracy.train import Schedule, fit
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    m = tiny_cnn()
    fit(m, data.load(str(idx_dir), "train"), Schedule(lr=0.05, epochs=3, batch_size=32))
    torch.set_num_threads(n)
    p = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_model(m, str(p))
    return p


def _main(capsys, *args):
    from compress.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_cli_dense_and_pruned(idx_dir, trained_weights, tmp_path, capsys):
    # end to end in a subprocess: the console entry point, --json on stdout
    r = _cli("eval", "tests.test_evaluate:tiny_cnn", "--weights", str(trained_weights), "--data", str(idx_dir), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert 0.9 <= res["accuracy"] <= 1.0 and res["samples"] == 200 and res["classes"] == 4
    assert not res["pruned"]

    out = tmp_path / "pruned"
    code, stdout, err = _main(capsys, "prune", "tests.test_evaluate:tiny_cnn", "--weights", str(trained_weights),
                              "--ratio", "0.5", "--round-to", "1", "--data", str(idx_dir), "--finetune", "1",
                              "--distill", "--out", str(out), "--json")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    for k in ("accuracy_dense", "accuracy_pruned_before_finetune", "accuracy", "agreement", "functional_distance"):
        assert k in summary and 0.0 <= summary[k] <= 1.5, k
    assert summary["accuracy_dense"] == pytest.approx(res["accuracy"])
    assert summary["finetune"]["distill"] and summary["onnx_parity"]["ok"]
    assert json.loads(stdout)["accuracy"] == summary["accuracy"]

    # the callable's weights came from --weights: not recoverable without --source-weights
    code, stdout, err = _main(capsys, "eval", str(out), "--data", str(idx_dir), "--json")
    assert code == 0, err
    res2 = json.loads(stdout)
    assert res2["pruned"] and res2["accuracy"] == pytest.approx(summary["accuracy"])
    assert "not recoverable" in res2["dense_source"] and "agreement" not in res2

    r = _cli("eval", str(out), "--data", str(idx_dir), "--source-weights", str(trained_weights), "--json")
    assert r.returncode == 0, r.stderr
    res3 = json.loads(r.stdout)
    assert res3["dense_source"] == "recovered"
    for k in ("accuracy_dense", "agreement", "functional_distance"):
        assert res3[k] == pytest.approx(summary[k]), k

    code, stdout, err = _main(capsys, "eval", str(out), "--data", str(idx_dir))      # text output
    assert code == 0 and "accuracy" in stdout and "not recoverable" in stdout


def test_eval_takes_the_input_shape_from_the_data(idx_dir, tmp_path, capsys):
    # issue #20: a callable without compress_input_shape, trained on small grayscale images, evaluated
    # without --input-shape: the data's (1, 8, 8) wins over the (3, 224, 224) default guess
    code, stdout, err = _main(capsys, "eval", "tests.test_evaluate:undeclared_mlp", "--data", str(idx_dir), "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["input_shape"] == [1, 8, 8] and res["input_shape_from"] == "data" and res["samples"] == 200
    # --input-shape still rules when given, and a model that states its shape is checked against the data
    code, stdout, err = _main(capsys, "eval", "tests.test_evaluate:undeclared_mlp", "--data", str(idx_dir),
                              "--input-shape", "1,1,8,8", "--json")
    assert code == 0 and json.loads(stdout)["input_shape_from"] == "--input-shape"
    code, stdout, err = _main(capsys, "eval", "tests.test_evaluate:tiny_cnn", "--data", str(idx_dir), "--json")
    assert code == 0 and json.loads(stdout)["input_shape_from"] == "model"
    # a pruned directory of that model (pruned at --input-shape 1,1,8,8) evaluates the same way
    out = tmp_path / "p"
    code, _, err = _main(capsys, "prune", "tests.test_evaluate:undeclared_mlp", "--input-shape", "1,1,8,8",
                         "--ratio", "0.5", "--round-to", "1", "--out", str(out))
    assert code == 0, err
    code, stdout, err = _main(capsys, "eval", str(out), "--data", str(idx_dir), "--json")
    assert code == 0, err
    assert json.loads(stdout)["dense_source"] == "recovered"


def test_eval_model_that_does_not_fit_the_data_says_pass_input_shape(idx_dir, capsys):
    code, _, err = _main(capsys, "eval", "torchvision:resnet18", "--data", str(idx_dir))
    assert code == 2 and "does not run on" in err and "--input-shape" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["eval", "tests.test_evaluate:tiny_cnn_3", "--data", "{idx}"], "outputs 3 classes"),
    (["eval", "tests.test_evaluate:tiny_cnn", "--data", "{tmp}/missing"], "does not exist"),
    (["eval", "tests.test_evaluate:tiny_cnn", "--data", "{idx}", "--input-shape", "1,1,28,28"], "(1, 28, 28)"),
    (["prune", "tests.test_evaluate:tiny_cnn", "--ratio", "0.5", "--finetune", "1", "--out", "{tmp}/o"],
     "--finetune needs --data"),
    (["prune", "tests.test_evaluate:tiny_cnn", "--ratio", "0.5", "--data", "{idx}", "--distill", "--out", "{tmp}/o"],
     "--distill needs --finetune"),
    (["prune", "tests.test_evaluate:tiny_cnn", "--ratio", "0.5", "--data", "{idx}", "--finetune", "1",
      "--lr-rewind", "--out", "{tmp}/o"], "original training schedule"),
])
def test_cli_errors(idx_dir, tmp_path, capsys, argv, message):
    argv = [a.format(idx=idx_dir, tmp=tmp_path) for a in argv]
    code, out, err = _main(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def _onnx_with_inputs(path, inputs):
    """An ONNX file taking `inputs` ((name, elem type), each (N, 4)) and summing them as floats."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", [n], [f"{n}_f"], to=TensorProto.FLOAT) for n, _ in inputs]
    nodes.append(helper.make_node("Sum", [f"{n}_f" for n, _ in inputs], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, ["n", 4]) for n, t in inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_eval_onnx_whose_inputs_it_cannot_feed_exit_2_one_line(tmp_path, capsys):
    """compress eval of an ONNX file feeds one float image tensor, or token ids with attention_mask / token_type_ids
    from the tokenizer of the hf: model its manifest.json names; anything else is one line naming what is wrong."""
    from onnx import TensorProto

    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "\n".join(f"sentence {i},{'ab'[i % 2]}" for i in range(20)) + "\n")
    two_float = _onnx_with_inputs(tmp_path / "f.onnx", [("left", TensorProto.FLOAT), ("right", TensorProto.FLOAT)])
    (tmp_path / "t").mkdir()
    two_ids = _onnx_with_inputs(tmp_path / "t" / "m.onnx", [("ids_a", TensorProto.INT64), ("ids_b", TensorProto.INT64)])
    token = _onnx_with_inputs(tmp_path / "k.onnx", [("input_ids", TensorProto.INT64),
                                                     ("attention_mask", TensorProto.INT64)])
    for f, data_, msg in [
            (two_float, "fashion-mnist", "f.onnx takes left float32 [None, 4], right float32 [None, 4]: compress eval "
                                         "runs ONNX image classifiers (one float32 image tensor) and text models"),
            (token, str(csv), "k.onnx takes token ids, and no manifest.json (compress export) or plan.json"),
            (two_ids, str(csv), "m.onnx: inputs ids_a, ids_b are not token ids with an attention mask"),
            (two_ids, "fashion-mnist", "text data fashion-mnist does not exist; use --data tweets or a CSV file")]:
        (tmp_path / "t" / "manifest.json").write_text(json.dumps({"source": {"model": "hf:minilm"}}))
        code, _, err = _main(capsys, "eval", str(f), "--data", data_)
        assert code == 2 and msg in err and "Traceback" not in err and err.count("\n") == 1, err


def test_prune_and_plan_take_the_input_shape_from_the_data(idx_dir, tmp_path, capsys):
    # issue #20: a user's callable without compress_input_shape that runs only on 8x8 grayscale images,
    # pruned with --data and no --input-shape: the data's (1, 8, 8) wins over the (3, 224, 224) guess
    out = tmp_path / "p"
    code, stdout, err = _main(capsys, "prune", "tests.test_evaluate:undeclared_mlp", "--data", str(idx_dir),
                              "--ratio", "0.5", "--round-to", "1", "--criterion", "activation", "--out", str(out),
                              "--json")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["onnx_parity"]["ok"] and summary["eval_samples"] == 200 and 0 <= summary["accuracy"] <= 1
    assert json.loads((out / "plan.json").read_text())["source"]["input_shape"] == [1, 1, 8, 8]
    import onnx
    (inp,) = onnx.load(str(out / "model.onnx")).graph.input
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [1, 8, 8]
    code, stdout, err = _main(capsys, "eval", str(out), "--data", str(idx_dir), "--json")
    assert code == 0 and json.loads(stdout)["accuracy"] == pytest.approx(summary["accuracy"])
    # a model that states another shape than the data's: one line naming both and the fix
    code, stdout, err = _main(capsys, "prune", "tests.test_evaluate:tiny_cnn_28", "--data", str(idx_dir),
                              "--ratio", "0.5", "--out", str(tmp_path / "q"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "q").exists()
    assert "(1, 1, 28, 28)" in err and "(1, 8, 8)" in err and "--input-shape 1,1,8,8" in err
    # compress plan: the samples of a --calib FILE.npy set the shape the same way
    npy = tmp_path / "calib.npy"
    np.save(npy, data.load(str(idx_dir), "train").images[:16].numpy())
    plan = ["plan", "tests.test_evaluate:undeclared_mlp", "--criterion", "activation", "--latency-budget", "2",
            "--out", str(tmp_path / "pl")]
    code, stdout, err = _main(capsys, *plan)
    assert code == 2 and "does not run on an input of shape (1, 3, 224, 224)" in err
    code, stdout, err = _main(capsys, *plan, "--calib", str(npy))
    assert code == 0 and "nothing to do" in stdout, err
