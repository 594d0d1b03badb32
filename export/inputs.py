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


def random_inputs(lm, batch: int, seed: int, pad: bool = False) -> tuple:
    """Seeded random inputs at `batch` (compress.models.example_inputs: token ids below the vocabulary size,
    attention masks of ones). `pad`: every attention mask pads its row, keeping a random 1..len-1 tokens
    (as a tokenizer pads a batch of shorter sentences)."""
    from compress import models

    x = models.example_inputs(lm, (batch,) + tuple(lm.input_shape[1:]), seed=seed)
    if not pad:
        return x
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, t in zip(names(lm), x):
        if value_kind(name, t) == "mask" and t.dim() == 2 and t.shape[1] > 1:
            keep = torch.randint(1, t.shape[1], (t.shape[0], 1), generator=g)
            t = (torch.arange(t.shape[1]).unsqueeze(0) < keep).to(t.dtype)
        out.append(t)
    return tuple(out)


def names(lm) -> list[str]:
    """The graph input names of the model's inputs (compress.export.onnx.input_names: its declared names, or
    `input` for a model with one)."""
    from compress import models

    return models.input_names(lm) or ["input"]


def value_kind(name: str, t) -> str:
    """What the values of an input are, as the runners generate them (compress.models.input_values): normal
    (float), mask (0/1, padded), zeros (token type ids) or ids (integers below a bound)."""
    from compress import models

    return models.input_values(name, t)


def has_mask(lm, example: tuple) -> bool:
    return len(example) > 1 and any(value_kind(n, t) == "mask" for n, t in zip(names(lm), example))


def input_specs(lm, example: tuple, batch: int) -> list[dict]:
    """The manifest's input specs: every graph input's name, shape (batch `batch`, the example's sample shape) and
    dtype, with what its values are (`value_kind`; `high`: token ids are drawn from [0, high))."""
    out = []
    for name, t in zip(names(lm), example):
        kind = value_kind(name, t)
        spec = {"name": name, "shape": [int(batch), *t.shape[1:]],
                "dtype": str(t.dtype).replace("torch.", ""), "values": kind}
        if kind == "ids" and lm.vocab_size:
            spec["high"] = int(lm.vocab_size)
        out.append(spec)
    return out


def runner_args(specs: list[dict], batch: int | None = None) -> list[str]:
    """run_ort.py / run_tvm.py options feeding these inputs (at `batch`, default the specs' own): one input
    as --shape/--dtype/--high, several as one --input NAME:SHAPE:DTYPE[:VALUES] each."""
    def shape(s):
        return ",".join(str(d) for d in ([batch] if batch else s["shape"][:1]) + list(s["shape"][1:]))

    if len(specs) == 1:
        s = specs[0]
        return (["--shape", shape(s), "--dtype", s["dtype"]]
                + (["--high", str(s["high"])] if s["dtype"] == "int64" and s.get("high") else []))
    out = []
    for s in specs:
        values = f"high={s['high']}" if s["values"] == "ids" and s.get("high") else s["values"]
        out += ["--input", f"{s['name']}:{shape(s)}:{s['dtype']}:{values}"]
    return out


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
        try:
            x = tokenised(tok, sents, names(lm), seq)
        except CompressError as e:
            return None, f"{lm.spec}: {e}"
        return x, (f"{n} tokenised English sentences (padded/truncated to {seq} tokens"
                   + (", attention_mask 0 on the padding)" if len(x) > 1 else ")"))
    return None, (f"no real data source for input {lm.input_dtype} {list(sample)} "
                  "(real inputs: Fashion-MNIST for 1x28x28 images, tokenised sentences for Hugging Face text models)")


def tokenised(tok, texts, input_names: list[str], seq: int) -> tuple:
    """One int64 tensor per input of `input_names` for `texts`, tokenised by `tok` and padded/truncated to `seq`
    tokens: the token ids, the tokenizer's attention mask (0 on the padding), token type ids as zeros (one
    sentence). CompressError when the inputs are not one of token ids plus masks / token type ids."""
    kinds = [value_kind(n, torch.zeros(1, dtype=torch.int64)) for n in input_names]
    if kinds.count("ids") != 1:
        raise CompressError(f"inputs {', '.join(input_names)} are not token ids with an attention mask / token type "
                            "ids (one input of ids; the others named *mask* or *token_type*)")
    from compress.accuracy.text import with_padding

    try:
        enc = with_padding(tok)(list(texts), padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    except (ValueError, KeyError, TypeError) as e:   # a tokenizer that cannot pad or truncate to `seq`
        raise CompressError(f"the tokenizer cannot pad the sentences to {seq} tokens ({first_line(e, 200)})") from None
    ids = enc["input_ids"].to(torch.int64)
    mask = enc["attention_mask"].to(torch.int64) if "attention_mask" in enc else torch.ones_like(ids)
    return tuple({"ids": ids, "mask": mask, "zeros": torch.zeros_like(ids)}[k] for k in kinds)


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
