"""A Linear whose weight is tied to another parameter (a language model's head and its token embedding) is not
sparsified: masking or lowering it would change the embedding as well, and the lowered model would no longer be
the masked dense model it is checked against."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compress.cli import main
from compress.errors import CompressError
from compress.lower.pipeline import check_layers

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = "tests.lower.test_tied_weights:"


class TiedLM(nn.Module):
    def __init__(self, mid: bool = True):
        super().__init__()
        self.emb = nn.Embedding(64, 32)
        self.mid = nn.Linear(32, 32) if mid else nn.Identity()
        self.head = nn.Linear(32, 64, bias=False)
        self.head.weight = self.emb.weight
        self.compress_input_shape, self.compress_input_dtype, self.compress_vocab_size = (2, 8), "int64", 64

    def forward(self, ids):
        return self.head(torch.relu(self.mid(self.emb(ids))))


def tied_lm() -> nn.Module:
    return TiedLM()


def tied_only() -> nn.Module:
    return TiedLM(mid=False)


def test_a_tied_linear_stays_dense_naming_what_it_is_tied_to():
    layers, skipped = check_layers(TiedLM(), "block:16")
    assert set(layers) == {"mid", "head"}
    assert set(skipped) == {"head"} and "tied to emb.weight" in skipped["head"]
    with pytest.raises(CompressError, match="tied to other parameters.*layer head") as e:
        check_layers(TiedLM(mid=False), "block:16")
    assert "--pattern" not in str(e.value)


def test_sparsify_cli_lowers_the_rest_and_the_lowered_model_matches(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sparsify", HERE + "tied_lm", "--pattern", "block:16", "--sparsity", "0.5", "--out", str(out)]) == 0
    plan = json.loads((out / "sparse_plan.json").read_text())
    formats = {lp["name"]: lp["format"] for lp in plan["layers"]}
    assert formats.get("mid") == "block:16" and formats.get("head", "dense") == "dense"
    capsys.readouterr()
    out2 = tmp_path / "s2"
    assert main(["sparsify", HERE + "tied_only", "--pattern", "block:16", "--sparsity", "0.5", "--out", str(out2)]) == 2
    assert "tied" in capsys.readouterr().err and not out2.exists()
