"""`hf:DIR` models that are not plain text encoders (compress.models): a classifier keeps the head its config names,
models fed something else than token ids are refused in one line, and so is an encoder-decoder that needs
decoder inputs."""

from __future__ import annotations

import pytest
import torch

from compress.cli import main

tf = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

BERT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100,
            max_position_embeddings=32)


def _save(tmp_path, name, model) -> str:
    d = tmp_path / name
    model.save_pretrained(d)
    return f"hf:{d}"


def test_a_classifier_directory_keeps_its_head_through_prune_and_export(tmp_path, capsys):
    torch.manual_seed(0)
    spec = _save(tmp_path, "cls", tf.BertForSequenceClassification(tf.BertConfig(**BERT, num_labels=3)))
    out = tmp_path / "p"
    assert main(["prune", spec, "--ratio", "0.5", "--round-to", "8", "--out", str(out), "--json"]) == 0
    from compress import models

    lm = models.load(str(out))
    assert type(lm.model.model).__name__ == "BertForSequenceClassification"
    with torch.no_grad():
        assert lm.model(*models.example_inputs(lm)).shape == (1, 3)
    capsys.readouterr()
    e = tmp_path / "e"
    assert main(["export", str(out), "--target", "cpu", "--runtimes", "ort", "--out", str(e)]) == 0
    import onnx

    (o,) = onnx.load(e / "model.onnx").graph.output
    assert [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] == ["batch", 3]   # logits


def test_text_eval_embeds_a_classifier_by_its_last_hidden_layer():
    from compress.accuracy.text_eval import hidden_states
    from compress.models import HFTensorOutput

    torch.manual_seed(0)
    m = HFTensorOutput(tf.BertForSequenceClassification(tf.BertConfig(**BERT, num_labels=3))).eval()
    ids, mask = torch.randint(0, 100, (2, 5)), torch.ones(2, 5, dtype=torch.int64)
    with torch.no_grad():
        assert hidden_states(m, ids, mask).shape == (2, 5, 32)


@pytest.mark.parametrize("name,make,takes", [
    ("vit", lambda: tf.ViTModel(tf.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64, image_size=32, patch_size=16)), "pixel_values"),
    ("w2v", lambda: tf.Wav2Vec2Model(tf.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=64, conv_dim=(8, 8), conv_stride=(5, 2),
                                                       conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                                       num_conv_pos_embedding_groups=2)), "input_values"),
])
def test_a_model_not_fed_token_ids_is_refused_in_one_line(tmp_path, capsys, name, make, takes):
    torch.manual_seed(0)
    spec = _save(tmp_path, name, make())
    assert main(["inspect", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and takes in err and "package.module:function" in err


def test_an_encoder_decoder_needing_decoder_inputs_is_refused_naming_them(tmp_path, capsys):
    torch.manual_seed(0)
    spec = _save(tmp_path, "t5", tf.T5Model(tf.T5Config(num_layers=1, num_decoder_layers=1, d_model=32, d_ff=64,
                                                        num_heads=2, d_kv=16, vocab_size=100)))
    out = tmp_path / "p"
    assert main(["prune", spec, "--ratio", "0.3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "decoder_input_ids" in err and "T5Model" in err
    assert not out.exists()


def test_a_directory_pruned_when_hf_models_were_built_as_automodel_still_loads(tmp_path, monkeypatch, capsys):
    """Directories written before hf: honoured the config's `architectures` hold the bare model's parameter names
    (model.encoder.*, not model.bert.encoder.*): they rebuild as AutoModel."""
    import compress.models as cm

    torch.manual_seed(0)
    spec = _save(tmp_path, "cls", tf.BertForSequenceClassification(tf.BertConfig(**BERT, num_labels=3)))
    out = tmp_path / "p"
    with monkeypatch.context() as m:
        m.setattr(cm, "_hf_class", lambda tf_, config: tf_.AutoModel)
        assert main(["prune", spec, "--ratio", "0.5", "--round-to", "8", "--out", str(out)]) == 0
    lm = cm.load(str(out))
    assert type(lm.model.model).__name__ == "BertModel"
    with torch.no_grad():
        assert lm.model(*cm.example_inputs(lm)).shape == (1, 16, 32)
