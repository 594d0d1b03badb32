"""Where a verb's model comes from: a model spec loaded and checked to run, the per-sample input
shape accuracy needs, and the dense source model a pruned directory was made from.

`ModelSpec` is what the MODEL argument, --weights and --input-shape of a verb say; `ModelSpec.load()`
loads it and checks that it runs on its example input (what `compress prune`, `inspect`,
`sparsify` and `plan` do before any work).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from compress import models
from compress.errors import CompressError, first_line


def _shape(input_shape: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """--input-shape as given ("1,3,224,224") or as a sequence of ints; None when not given."""
    if not input_shape:
        return None
    return models.parse_shape(input_shape if isinstance(input_shape, str) else ",".join(map(str, input_shape)))


@dataclass(frozen=True)
class ModelSpec:
    """A model to load: `model` is torchvision:NAME | hf:DIR | compress:NAME | package.module:function
    | a directory written by `compress prune`/`sparsify`; `weights` a .safetensors file or a torch
    state_dict (loaded with weights_only); `input_shape` the example input's shape, "1,3,224,224"
    or (1, 3, 224, 224) (default: the model's own)."""
    model: str
    weights: str | None = None
    input_shape: str | tuple[int, ...] | None = None

    def load(self, data: str | None = None, calib: str | None = None) -> tuple[models.LoadedModel, tuple]:
        """The loaded model and its example inputs; the model must run on them. Without --input-shape,
        the samples of `data` (--data) or of a `calib` FILE.npy (--calib) set the input shape of a model
        that does not state one (its default is a guess: a Fashion-MNIST classifier runs on 1x28x28,
        not 3x224x224), and `lm.input_shape` becomes it; a model that states another shape than the
        data's is refused in one line that says how to fix it (`input_shape_for`)."""
        lm = models.load(self.model, self.weights)
        shape, origin = _shape(self.input_shape), "--input-shape"
        if shape is None:
            shape, origin = input_shape_for(lm, data, calib)
            lm.input_shape = shape
        inputs = models.example_inputs(lm, shape)
        try:
            with torch.no_grad():
                lm.model(*inputs)
        except Exception as e:
            if lm.kind == "hf":
                raise CompressError(
                    f"{lm.spec} ({type(getattr(lm.model, 'model', lm.model)).__name__}) does not run on token ids "
                    f"of shape {tuple(inputs[0].shape)}" + (" and their attention mask" if len(inputs) > 1 else "")
                    + f" ({first_line(e, 200)}); hf: models are fed only these: one that needs other inputs (e.g. an "
                    "encoder-decoder's decoder_input_ids) can be loaded as package.module:function declaring "
                    "compress_inputs; --input-shape 1,N sets the sequence length") from None
            whose = {"data": f" (the samples of --data {data})", "calib": f" (the samples of --calib {calib})"}
            raise CompressError(f"the model does not run on an input of shape {tuple(inputs[0].shape)}"
                                f"{whose.get(origin, '')} ({first_line(e, 200)}); pass the right --input-shape"
                                + (" or data the model takes" if origin in whose else "")) from None
        return lm, inputs


def input_shape_for(lm: models.LoadedModel, data: str | None = None, calib: str | None = None):
    """(the example input shape, where it came from: "model" | "data" | "calib") of a model loaded without
    --input-shape: its own shape, unless `data` (--data, an image data set) or a `calib` FILE.npy has
    samples of another shape. A model that only guesses its shape (`lm.shape_declared` False) takes
    the samples' shape; one that states its shape is refused (one line naming both shapes and the fix)."""
    own = tuple(lm.input_shape)
    if lm.input_dtype != "float32":          # token ids: the sequence length is the model's
        return own, "model"
    theirs, what = None, ""
    if data:
        from compress.accuracy import data as datasets
        ds = datasets.load(data, "test", own[1:])
        theirs, what, origin = ds.sample_shape, f"--data {data}", "data"
    elif calib and calib.endswith(".npy") and os.path.isfile(calib):
        import numpy as np
        try:
            theirs = tuple(np.load(calib, mmap_mode="r", allow_pickle=False).shape[1:])
        except ValueError:
            return own, "model"                  # compress.calib says what is wrong with the file
        what, origin = f"--calib {calib}", "calib"
    if theirs is None or tuple(theirs) == own[1:]:
        return own, "model"
    if lm.shape_declared:
        raise CompressError(f"{lm.spec} states its input shape {own} (compress_input_shape) but {what} has samples "
                            f"of shape {tuple(theirs)}; give data of the model's shape, or pass --input-shape "
                            f"{','.join(map(str, (own[0],) + tuple(theirs)))} if the model runs on the data's")
    return (own[0],) + tuple(theirs), origin


def sample_shape(lm: models.LoadedModel, input_shape: str | Sequence[int] | None = None) -> tuple[int, ...]:
    """The per-sample input shape (C, H, W) of an image classifier, for checking a --data set against it."""
    if lm.input_dtype != "float32":
        raise CompressError(f"{lm.spec} takes {lm.input_dtype} token ids; accuracy needs an image classifier "
                            "(text models: compress eval MODEL_OR_DIR --data tweets|FILE.csv)")
    shape = _shape(input_shape) or tuple(lm.input_shape)
    return tuple(shape[1:])


def data_sample_shape(lm: models.LoadedModel, data: str, input_shape: str | Sequence[int] | None = None):
    """(per-sample shape, where it came from: "--input-shape" | "model" | "data", the --data test split loaded
    at it). --input-shape rules when given; else the model's own shape when it states one
    (`lm.shape_declared`); else the data's (IDX files have a fixed shape; image folders are resized to the
    model's default). The split is checked to have that shape."""
    from compress.accuracy import data as datasets

    shape, origin = sample_shape(lm, input_shape), "--input-shape" if input_shape else "model"
    ds = datasets.load(data, "test", shape)
    if origin == "model" and not lm.shape_declared and ds.sample_shape != shape:
        shape, origin = ds.sample_shape, "data"      # the model's shape was a default guess: the data's wins
    datasets.check_shape(ds, shape)
    return shape, origin, ds


def dense_source(plan, source_weights: str | None = None):
    """Rebuild the dense model a pruned directory came from. Returns (model, None) when its weights
    hash matches the plan's, else (None, why not)."""
    spec = plan.source.get("model")
    try:
        lm = models.load(spec, source_weights)
    except CompressError as e:
        return None, f"the dense source {spec} cannot be rebuilt ({e})"
    if models.weights_sha256(lm.model) != plan.source.get("sha256"):
        how = ("--source-weights does not hold" if source_weights else
               f"{spec} rebuilt on its own does not have")
        return None, (f"the dense source's weights are not recoverable: {how} the weights that were pruned "
                      f"(sha256 {str(plan.source.get('sha256'))[:12]}...); pass --source-weights FILE")
    return lm.model.eval(), None
