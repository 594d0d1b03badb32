"""Zoo-wide invariants of structured pruning.

For every model: weights are re-initialised with a seeded generator at scales where every
channel matters (torchvision zero-initialises some BN gammas and heads, ConvNeXt's layer scale
is 1e-6), the model is pruned and

(a) the physically pruned model computes the original model with the removed channels zeroed
    (reference built here from `zero_removed` + `removed_classes`, on a fresh input);
(b) parameters and MACs fall and at least one group shrank;
(c) its ONNX export, run in onnxruntime (CPU), matches torch, also at another batch size;
(d) the saved directory reloads with nothing unpickled and computes the same output;
and ONNX export is byte-for-byte deterministic.

Heavy models are marked `slow` but run by default (deselect with `-m "not slow"`).
"""

from __future__ import annotations

import copy
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from compress import models  # noqa: E402
from compress.export.onnx import export_onnx, ort_parity, ort_session  # noqa: E402
from compress.io import save_pruned  # noqa: E402
from compress.metrics import size_summary  # noqa: E402
from compress.prune.plan import PruneConfig, removed_classes  # noqa: E402
from compress.prune.structured import zero_removed  # noqa: E402
from compress.prune.apply import prune  # noqa: E402

TOL = 1e-4
ROUND_TO = 16


@dataclass(frozen=True)
class Zoo:
    spec: str
    shape: tuple[int, ...]        # example input (batch 1)
    check_batch: int = 2          # batch of the fresh input used for the checks
    ratios: tuple[float, ...] = (0.3,)
    slow: bool = False
    randomize: bool = True        # hf:minilm keeps its pretrained weights


CNN = (1, 3, 64, 64)
ZOO = [
    Zoo("torchvision:resnet18", CNN, ratios=(0.3, 0.5)),
    Zoo("torchvision:resnet50", CNN, slow=True),
    Zoo("torchvision:mobilenet_v2", CNN, ratios=(0.3, 0.5)),
    Zoo("torchvision:mobilenet_v3_small", CNN),
    Zoo("torchvision:efficientnet_b0", CNN),
    Zoo("torchvision:densenet121", CNN, slow=True),
    Zoo("torchvision:regnet_x_400mf", CNN),
    Zoo("torchvision:convnext_tiny", CNN, slow=True),
    Zoo("torchvision:vit_b_16", (1, 3, 224, 224), check_batch=1, slow=True),
    Zoo("hf:minilm", (1, 16), ratios=(0.3, 0.5), randomize=False),
    Zoo("tests.models:tiny_gqa", (1, 12), check_batch=3, ratios=(0.3, 0.5)),
]
CASES = [pytest.param((z, r), id=f"{z.spec.split(':')[-1]}-{r}", marks=[pytest.mark.slow] if z.slow else [])
         for z in ZOO for r in z.ratios]


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded weights at scales where every channel carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "layer_scale" in leaf:                                  # ConvNeXt: 1e-6 by default
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif "class_token" in leaf or "pos_embedding" in leaf:    # ViT: zeros / tiny
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:                                        # conv, linear, embedding
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif leaf == "bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:                                                     # BN / LN gains
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_var is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=g))
    return model


def rel_err(got, ref) -> float:
    got, ref = torch.as_tensor(got).double(), torch.as_tensor(ref).double()
    assert got.shape == ref.shape, f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    return float((got - ref).abs().max()) / max(float(ref.abs().max()), 1e-6)


@dataclass
class Pruned:
    zoo: Zoo
    ratio: float
    lm: models.LoadedModel       # the original (randomised) model
    inputs: tuple                # example inputs, batch 1
    check: tuple                 # fresh inputs, batch zoo.check_batch
    res: object                  # PruneResult
    tmp: Path
    _onnx: Path | None = field(default=None, repr=False)

    def onnx(self) -> Path:
        if self._onnx is None:
            self._onnx = self.tmp / "model.onnx"
            export_onnx(self.res.model, self.inputs, str(self._onnx))
        return self._onnx


_graph_cache: dict[str, tuple] = {}   # spec -> (lm, graph) of the last spec, reused by its next ratio


@pytest.fixture(scope="module", params=CASES)
def case(request, tmp_path_factory) -> Pruned:
    zoo, ratio = request.param
    if zoo.spec in _graph_cache:
        lm, graph = _graph_cache[zoo.spec]
    else:
        _graph_cache.clear()
        lm = models.load(zoo.spec)
        if zoo.randomize:
            randomize(lm.model)
        graph = None
    inputs = models.example_inputs(lm, zoo.shape)
    source = {"model": zoo.spec, "sha256": models.weights_sha256(lm.model), "input_shape": list(zoo.shape),
              "input_dtype": lm.input_dtype}
    res = prune(lm.model, inputs, PruneConfig(ratio=ratio), ROUND_TO, source, graph=graph)
    if len(zoo.ratios) > 1 and ratio != zoo.ratios[-1]:
        _graph_cache[zoo.spec] = (lm, res.graph)
    else:
        _graph_cache.pop(zoo.spec, None)
    check = models.example_inputs(lm, (zoo.check_batch,) + zoo.shape[1:], seed=7)
    tmp = tmp_path_factory.mktemp(f"{zoo.spec.split(':')[-1]}-{ratio}")
    return Pruned(zoo, ratio, lm, inputs, check, res, tmp)


def _out(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        y = model(*inputs)
    return getattr(y, "logits", y)


def test_pruned_equals_masked_reference(case):
    graph, plan = case.res.graph, case.res.plan
    removed = removed_classes(graph, plan)
    assert removed, "nothing was removed"
    ref = zero_removed(copy.deepcopy(case.lm.model), graph.removed_indices(removed)).eval()
    y_orig = _out(case.lm.model, case.check)
    y_ref = _out(ref, case.check)
    y_pruned = _out(case.res.model, case.check)
    assert torch.isfinite(y_ref).all() and float(y_ref.std()) > 0, "degenerate reference output"
    # the removed channels mattered: zeroing them changed the output
    assert rel_err(y_ref, y_orig) > 1e-3, "removed channels had no effect: the test weights are degenerate"
    err = rel_err(y_pruned, y_ref)
    assert err <= TOL, f"{case.zoo.spec}@{case.ratio}: pruned differs from masked original by {err:.2e}"
    assert case.res.max_rel_error <= TOL


def test_size_falls_and_a_group_shrank(case):
    before = size_summary(case.lm.model, case.inputs)
    after = size_summary(case.res.model, case.inputs)
    assert after["params"] < before["params"]
    assert after["macs"] < before["macs"]
    gp = case.res.plan.groups
    assert all(g.channels_after <= g.channels_before for g in gp)
    assert any(g.channels_after < g.channels_before for g in gp)
    # every kept parameter has exactly the sizes the plan names
    params = dict(case.res.model.named_parameters())
    params.update(dict(case.res.model.named_buffers()))
    for name, dims in case.res.plan.param_keep().items():
        for d, idx in dims.items():
            assert params[name].shape[d] == len(idx), (name, d)


def test_onnx_matches_torch(case):
    path = case.onnx()
    parity = ort_parity(str(path), case.res.model, case.inputs)
    assert parity["ok"], parity
    # independent run at the check batch size (the batch axis is dynamic)
    sess = ort_session(str(path))
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), case.check)}
    got = sess.run(None, feeds)[0]
    err = rel_err(torch.from_numpy(got), _out(case.res.model, case.check))
    assert err <= TOL, f"{case.zoo.spec}@{case.ratio}: onnxruntime differs from torch by {err:.2e}"


def test_onnx_export_is_deterministic(case):
    first = case.onnx().read_bytes()
    again = case.tmp / "again.onnx"
    export_onnx(case.res.model, case.inputs, str(again))
    assert again.read_bytes() == first, "two ONNX exports of the same model differ"


def test_saved_directory_reloads_without_pickle(case, monkeypatch):
    d = case.tmp / "pruned"
    d.mkdir()
    save_pruned(str(d), case.res.model, case.res.plan, case.lm.hf_config)

    def no_pickle(*a, **k):
        raise AssertionError("loading a pruned directory must not unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    lm2 = models.load(str(d))
    monkeypatch.undo()
    assert lm2.plan is not None and lm2.spec == case.zoo.spec
    assert tuple(lm2.input_shape) == case.zoo.shape and lm2.input_dtype == case.lm.input_dtype
    got = dict(lm2.model.state_dict())
    want = case.res.model.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].shape == v.shape and torch.equal(got[k], v), k
    y = _out(lm2.model, case.check)
    assert torch.equal(y, _out(case.res.model, case.check)), f"reloaded output differs ({rel_err(y, _out(case.res.model, case.check)):.1e})"


# ---------------------------------------------------------------- grouped-query attention
@pytest.mark.parametrize("spec", ["tests.models:tiny_gqa", "tests.models:tiny_gqa_sdpa"])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_gqa_removes_whole_kv_heads_with_their_query_heads(spec, ratio, tmp_path):
    lm = models.load(spec)
    model = lm.model
    hd = model.layers[0].self_attn.head_dim
    inputs = models.example_inputs(lm)
    res = prune(model, inputs, PruneConfig(ratio=ratio), ROUND_TO, {"model": spec, "input_shape": list(inputs[0].shape)})
    keep = res.plan.param_keep()

    def kept(name, dim, n):  # kept indices of parameter `name` along `dim` (all n if untouched)
        return keep.get(name, {}).get(dim, list(range(n)))

    shrank = False
    for i, layer in enumerate(res.model.layers):
        a = layer.self_attn
        hq, hk = a.q_proj.out_features // hd, a.k_proj.out_features // hd
        assert a.q_proj.out_features % hd == 0 and a.k_proj.out_features % hd == 0
        assert a.v_proj.out_features == a.k_proj.out_features
        assert a.o_proj.in_features == a.q_proj.out_features
        assert hk >= 1 and hq == 2 * hk, (hq, hk)        # still 2 query heads per kv head
        shrank |= hk < 2
        p = f"layers.{i}.self_attn."
        k_rows = kept(p + "k_proj.weight", 0, 2 * hd)
        kept_kv = sorted({j // hd for j in k_rows})
        assert k_rows == [j * hd + c for j in kept_kv for c in range(hd)], "k rows are not whole heads"
        assert kept(p + "v_proj.weight", 0, 2 * hd) == k_rows
        q_rows = kept(p + "q_proj.weight", 0, 4 * hd)
        want_q = [(2 * j + r) * hd + c for j in kept_kv for r in range(2) for c in range(hd)]
        assert q_rows == want_q, "query heads kept are not those of the kept kv heads"
        assert kept(p + "o_proj.weight", 1, 4 * hd) == q_rows
    assert shrank, "no kv head was removed"
    ref = zero_removed(copy.deepcopy(model), res.graph.removed_indices(removed_classes(res.graph, res.plan)))
    x = models.example_inputs(lm, (3, 12), seed=3)
    assert rel_err(_out(res.model, x), _out(ref, x)) <= TOL
    path = tmp_path / "m.onnx"
    export_onnx(res.model, inputs, str(path))
    sess = ort_session(str(path))
    for b in (1, 3):
        x = models.example_inputs(lm, (b, 12), seed=b)
        got = sess.run(None, {sess.get_inputs()[0].name: x[0].numpy()})[0]
        assert rel_err(torch.from_numpy(got), _out(res.model, x)) <= TOL

