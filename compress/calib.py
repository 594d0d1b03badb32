"""--calib: the calibration data of data-driven criteria, lowering and planning.

A spec is one of
- `random[:N]`   N inputs (default 32) drawn like the model's example input (seed 1);
- `FILE.npy`     a numeric array of inputs, one sample per row, shaped like the model's input;
- `data[:N]`     a stratified subset of N samples (default 128) of --data's training split
                 (`compress prune --data` only: `parse(spec, data=True)`);
- `tweets[:N]`, `FILE.csv[:N]`  N sentences (default 128) of text data (compress.accuracy.text), stratified from its
                 training split and tokenised with their real padding (`export --dtype int8` of text models only:
                 `parse(spec, text=True)`).

`parse` reads a spec; `input_batches` builds the batches of a random or .npy spec (a data subset's:
`compress.accuracy.data.subset_batches`). Batches are tuples of model inputs, 8 samples each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from compress.errors import CompressError

RANDOM_SAMPLES = 32
DATA_SAMPLES = 128
BATCH = 8


@dataclass(frozen=True)
class CalibSpec:
    kind: str                    # "random" | "npy" | "data" | "text"
    samples: int | None = None   # random, data, text: how many samples
    path: str | None = None      # npy: the file; text: the text data (tweets or a CSV file)


def _count(spec: str, default: int, form: str) -> int:
    if ":" not in spec:
        return default
    try:
        return int(spec.split(":", 1)[1])
    except ValueError:
        raise CompressError(f"--calib {spec!r}: use {form}:N with an integer N") from None


def is_data(spec: str | None) -> bool:
    """Whether a spec asks for a subset of --data's training split (data[:N])."""
    return (spec or "").startswith("data")


def parse(spec: str, data: bool = False, text: bool = False) -> CalibSpec:
    """Read a --calib spec; `data`: data[:N] is allowed (and wins over a .npy ending); `text`: tweets[:N] and
    FILE.csv[:N] are."""
    if data and is_data(spec):
        return CalibSpec("data", _count(spec, DATA_SAMPLES, "data"))
    head, _, n = spec.rpartition(":")
    head = head if n.isdigit() else spec
    if text and (head == "tweets" or head.endswith(".csv")):
        return CalibSpec("text", int(n) if head != spec else DATA_SAMPLES, path=head)
    if spec.startswith("random"):
        return CalibSpec("random", _count(spec, RANDOM_SAMPLES, "random"))
    if spec.endswith(".npy"):
        return CalibSpec("npy", path=spec)
    raise CompressError(f"--calib {spec!r}: use random[:N] or a .npy file of inputs"
                        + (" (text models: tweets[:N] or FILE.csv[:N])" if text else ""))


def input_batches(spec: str | None, lm, inputs: tuple, batch: int = BATCH) -> list[tuple]:
    """The batches of a random[:N] or FILE.npy spec for the loaded model `lm` whose example inputs
    are `inputs` ([] without a spec)."""
    import numpy as np
    import torch

    from compress import models

    if not spec:
        return []
    c = parse(spec)
    if c.kind == "random":
        shape = (c.samples,) + tuple(inputs[0].shape[1:])
        every = models.example_inputs(lm, shape, seed=1)     # one tensor per model input
        return [tuple(x[i:i + batch] for x in every) for i in range(0, c.samples, batch)]
    fill = _other_inputs(spec, lm, inputs) if len(inputs) > 1 else None
    if not os.path.isfile(spec):
        raise CompressError(f"--calib {spec}: file does not exist")
    try:
        full = torch.from_numpy(np.load(spec, allow_pickle=False))
    except ValueError as e:
        raise CompressError(f"--calib {spec}: not a numeric .npy array ({e})") from None
    if tuple(full.shape[1:]) != tuple(inputs[0].shape[1:]):
        raise CompressError(f"--calib {spec}: samples have shape {tuple(full.shape[1:])}, "
                            f"the model takes {tuple(inputs[0].shape[1:])}")
    full = full.to(inputs[0].dtype)
    if fill is not None:
        return [(full[i:i + batch], *fill(full[i:i + batch])) for i in range(0, len(full), batch)]
    return [(full[i:i + batch],) for i in range(0, len(full), batch)]


def _other_inputs(spec: str, lm, inputs: tuple):
    """For a model with several inputs, whose .npy holds the first (token ids): a function giving the others from
    it, an attention mask (1 on every token, 0 where the id is the model's pad token id, when its config names
    one) or token type ids (zeros); refused in one line when another input is neither, or shaped otherwise."""
    import torch

    from compress import models

    names = models.input_names(lm) or []
    kinds = [models.input_values(n, t) for n, t in zip(names[1:], inputs[1:])]
    if any(k not in ("mask", "zeros") for k in kinds) or any(t.shape != inputs[0].shape for t in inputs[1:]):
        raise CompressError(f"--calib {spec}: a .npy file holds one input, {lm.spec} takes {len(inputs)} "
                            f"({', '.join(names)}); use --calib random[:N]")
    pad = (lm.hf_config or {}).get("pad_token_id")

    def fill(ids):
        mask = (ids != pad).to(ids.dtype) if pad is not None else torch.ones_like(ids)
        return tuple(mask if k == "mask" else torch.zeros_like(ids) for k in kinds)

    return fill
