"""compress.api: the verbs prune, sparsify, eval and inspect called from Python with the CLI's options give
what the CLI gives; compress.calib parses --calib specs with the CLI's one-line errors."""

from __future__ import annotations

import json

import pytest

from compress import calib
from compress.api.accuracy import FinetuneConfig
from compress.api.eval import EvalRun, evaluate
from compress.api.inspect import InspectRun, inspect
from compress.api.prune import PruneRun, prune
from compress.api.sparsify import SparsifyRun, sparsify
from compress.cli import main
from compress.errors import CompressError
from compress.lower.pipeline import SparsifyConfig
from compress.prune.plan import PruneConfig
from compress.models.source import ModelSpec
from tests.test_evaluate import make_learnable_idx

M = "tests.test_evaluate:tiny_cnn"

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return code, out


@pytest.mark.parametrize("spec, data, want", [
    ("random", False, calib.CalibSpec("random", 32)),
    ("random:5", False, calib.CalibSpec("random", 5)),
    ("x.npy", False, calib.CalibSpec("npy", path="x.npy")),
    ("data", True, calib.CalibSpec("data", 128)),
    ("data:7", True, calib.CalibSpec("data", 7)),
    ("data.npy", False, calib.CalibSpec("npy", path="data.npy")),
])
def test_calib_parse(spec, data, want):
    assert calib.parse(spec, data=data) == want


@pytest.mark.parametrize("spec, data, msg", [
    ("random:x", False, "--calib 'random:x': use random:N with an integer N"),
    ("data:x", True, "--calib 'data:x': use data:N with an integer N"),
    ("data:4", False, "--calib 'data:4': use random[:N] or a .npy file of inputs"),
    ("foo", True, "--calib 'foo': use random[:N] or a .npy file of inputs"),
])
def test_calib_parse_errors(spec, data, msg):
    with pytest.raises(CompressError) as e:
        calib.parse(spec, data=data)
    assert str(e.value) == msg


def test_calib_parse_text_specs():
    """`export --dtype int8` of a text model also takes text data: tweets[:N] or FILE.csv[:N] (default 128)."""
    assert calib.parse("tweets", text=True) == calib.CalibSpec("text", 128, path="tweets")
    assert calib.parse("tweets:32", text=True) == calib.CalibSpec("text", 32, path="tweets")
    assert calib.parse("d/x.csv:5", text=True) == calib.CalibSpec("text", 5, path="d/x.csv")
    assert calib.parse("random:4", text=True) == calib.CalibSpec("random", 4)
    with pytest.raises(CompressError, match="a .npy file of inputs \\(text models: tweets\\[:N\\] or FILE.csv"):
        calib.parse("tweets.txt", text=True)
    with pytest.raises(CompressError, match="use random\\[:N\\] or a .npy file of inputs$"):
        calib.parse("tweets")                                # not a text model


def test_inspect_and_eval_match_the_cli(tmp_path, capsys):
    idx = make_learnable_idx(tmp_path / "idx", n_train=40, n_test=20)
    _, out = _cli(capsys, "inspect", M, "--json")
    assert inspect(InspectRun(ModelSpec(M)))["json"] == json.loads(out)
    _, out = _cli(capsys, "eval", M, "--data", str(idx), "--batch-size", "7")
    res = evaluate(EvalRun(ModelSpec(M), str(idx), batch_size=7))
    assert res["text"] == out.rstrip("\n")


def test_prune_matches_the_cli(tmp_path, capsys):
    idx = make_learnable_idx(tmp_path / "idx", n_train=40, n_test=20)
    common = ["--ratio", "0.5", "--round-to", "1", "--criterion", "taylor", "--data", str(idx), "--calib", "data:16",
              "--finetune", "1", "--lr", "0.05", "--lr-schedule", "cosine"]
    _cli(capsys, "prune", M, *common, "--out", str(tmp_path / "cli"))
    res = prune(PruneRun(ModelSpec(M), str(tmp_path / "api"),
                         PruneConfig(ratio=0.5, criterion="taylor", round_to=1), calib="data:16", data=str(idx),
                         finetune=FinetuneConfig(epochs=1, lr=0.05, lr_schedule="cosine")))
    assert res["code"] == 0 and "before and" in res["text"] and "(cosine LR)" in res["text"]
    for f in ("plan.json", "model.safetensors"):
        assert (tmp_path / "api" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    api = json.loads((tmp_path / "api" / "summary.json").read_text())
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    for k in ("accuracy", "accuracy_pruned_before_finetune", "agreement", "criterion", "ratio", "macs_after"):
        assert api[k] == cli[k], k
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(api["finetune"]["history"]) == strip(cli["finetune"]["history"])


def test_sparsify_matches_the_cli(tmp_path, capsys):
    bert = "tests.lower.lowering_models:tiny_bert"
    _, out = _cli(capsys, "sparsify", bert, "--pattern", "2:4", "--update", "obs", "--calib", "random:16",
                  "--out", str(tmp_path / "cli"))
    res = sparsify(SparsifyRun(ModelSpec(bert), str(tmp_path / "api"),
                               SparsifyConfig(pattern="2:4", update="obs", calib="random:16")))
    assert res["code"] == 0
    assert res["text"] == out.rstrip("\n").replace(str(tmp_path / "cli"), str(tmp_path / "api"))
    for f in ("sparse_plan.json", "sparse_model.safetensors", "model.onnx"):
        assert (tmp_path / "api" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    api = json.loads((tmp_path / "api" / "summary.json").read_text())
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert res["json"] == api | {"out": str(tmp_path / "api")}
    drop = lambda s: {k: v for k, v in s.items() if k != "sparsify_seconds"}  # noqa: E731
    assert drop(api) == drop(cli)
    with pytest.raises(CompressError, match="--sparsity is required with --pattern block:16"):
        sparsify(SparsifyRun(ModelSpec(bert), str(tmp_path / "bad"), SparsifyConfig(pattern="block:16", sparsity=None)))
    assert not (tmp_path / "bad").exists()
