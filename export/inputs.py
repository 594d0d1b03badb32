"""Inputs for parity checks: random (seeded) and real ones where the model's input has a known
source (Fashion-MNIST test images for 1x28x28 models, tokenised sentences for text models)."""

from __future__ import annotations

import numpy as np
import torch

from compress.errors import CompressError, first_line

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Pruned networks run faster on small devices.",
    "A cat sat quietly on the warm windowsill.",
    "Stock markets fell sharply after the announcement.",
    "How do I reset my password?",
    "The concert was cancelled because of the storm.",
    "Fresh bread smells wonderful in the morning.",
    "Neural networks learn representations from data.",
)


def random_inputs(lm, batch: int, seed: int) -> tuple:
    from compress import models

    return models.example_inputs(lm, (batch,) + tuple(lm.input_shape[1:]), seed=seed)


def real_inputs(lm, batch: int | None, n: int = 8) -> tuple[tuple | None, str]:
    """(inputs or None, description or the reason there are none). `batch`: a static batch size."""
    n = batch or n
    sample = tuple(lm.input_shape[1:])
    if lm.input_dtype == "float32" and sample == (1, 28, 28):
        try:
            from compress.accuracy import data
            ds = data.load("fashion-mnist", "test")
        except Exception as e:
            return None, f"Fashion-MNIST unavailable: {first_line(e, 200, strip=False)}"
        return (ds.images[:n].contiguous(),), f"Fashion-MNIST test images 0..{n - 1}"
    if lm.input_dtype == "int64" and lm.kind == "hf":
        try:
            from compress.models import _hf_dir, _transformers
            spec = lm.spec[3:] if lm.spec.startswith("hf:") else lm.spec
            tok = _transformers().AutoTokenizer.from_pretrained(str(_hf_dir(spec)), local_files_only=True)
        except Exception as e:
            return None, f"no tokenizer for {lm.spec}: {type(e).__name__}"
        seq = int(lm.input_shape[-1])
        sents = [SENTENCES[i % len(SENTENCES)] for i in range(n)]
        ids = tok(sents, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")["input_ids"]
        return (ids.to(torch.int64),), f"{n} tokenised English sentences (padded/truncated to {seq} tokens)"
    return None, (f"no real data source for input {lm.input_dtype} {list(sample)} "
                  "(real inputs: Fashion-MNIST for 1x28x28 images, tokenised sentences for Hugging Face text models)")


def torch_output(model, inputs) -> np.ndarray:
    try:
        with torch.no_grad():
            out = model(*inputs)
    except Exception as e:
        raise CompressError(f"the model does not run on its example input {[list(t.shape) for t in inputs]}: "
                            f"{type(e).__name__}: {first_line(e)}") from None
    from compress.models.outputs import primary

    t, _ = primary(out)
    if t is None:
        raise CompressError(f"the model returns {type(out).__name__} holding no tensor; nothing to check an export against")
    return t.detach().cpu().numpy()
