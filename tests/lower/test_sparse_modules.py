"""Lowered models compute what the masked dense model computes (fp32, CPU, both backends), keep
their weights once in the sparse format, survive the directory round-trip, and trace with torch.export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.lower import formats as Fm
from compress.lower.modules import (BlockSparseLinear, Sparse24Linear, choose_backend, densify, set_backends,
                                    sparse_module)
from compress.lower.pipeline import SparsifyConfig, save_sparse_dir, sparsify
from compress.models import load_sparse_dir
from lowering_models import all_odd, bottleneck, odd_linear, stem_cnn, tiny_bert, vit_mlp

MODELS = {"vit_mlp": vit_mlp, "tiny_bert": tiny_bert, "bottleneck": bottleneck}


def inputs_for(model, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch,) + tuple(model.compress_input_shape[1:])
    if getattr(model, "compress_input_dtype", "float32") == "int64":
        return (torch.randint(0, model.compress_vocab_size, shape, generator=g),)
    return (torch.randn(shape, generator=g),)


def lowered(name: str, pattern: str, update: str = "none"):
    model = MODELS[name]()
    x = inputs_for(model)
    calib = [inputs_for(model, 8, s) for s in (1, 2)]
    cfg = SparsifyConfig(pattern=pattern, sparsity=0.5 if pattern == "2:4" else 0.6, update=update,
                         data_select=update == "obs")
    return model, x, sparsify(model, x, cfg, {"model": f"tests.lower.lowering_models:{name}",
                                              "input_shape": list(x[0].shape)}, calib)


CASES = [(m, p) for m in MODELS for p in ("2:4", "block:16", "block:32")]


@pytest.mark.parametrize("name,pattern", CASES)
def test_lowered_equals_masked_dense(name, pattern, one_thread, tmp_path):
    model, x, res = lowered(name, pattern, "obs" if pattern == "2:4" else "none")
    swapped = [m for m in res.model.modules() if isinstance(m, (Sparse24Linear, BlockSparseLinear))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) or (
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))]
    assert len(swapped) == len(linears) > 0                     # every Linear and 1x1 conv replaced
    with torch.no_grad():
        ref = res.masked(*x)
        for backend in ("dense", "sparse"):
            set_backends(res.model, prefer=backend)
            assert torch.allclose(res.model(*x), ref, rtol=1e-5, atol=1e-5), backend
        # the masked model really is sparse in the claimed pattern
        for lp in res.plan.layers:
            w2 = Fm.weight_2d(res.masked.get_submodule(lp.name))
            if pattern == "2:4":
                assert ((w2 != 0).reshape(w2.shape[0], -1, 4).sum(-1) <= 2).all(), lp.name
            else:                                               # a layer smaller than one block keeps it
                assert 0 < lp.density <= 1 and (lp.density < 1 or max(lp.shape_2d) <= lp.block), lp.name
    # weights stored once: no dense weight in the state_dict of a sparse module
    for m in swapped:
        assert "weight" not in dict(m.named_parameters()) and "weight_dense" not in m.state_dict()
    save_sparse_dir(str(tmp_path), res)
    back = load_sparse_dir(str(tmp_path))
    with torch.no_grad():
        assert torch.allclose(back(*x), ref, rtol=1e-5, atol=1e-5)
    assert type(back.get_submodule(res.plan.layers[0].name)) is type(res.model.get_submodule(res.plan.layers[0].name))


def test_densify_gives_plain_modules_with_zeros_in_place(one_thread):
    _, x, res = lowered("bottleneck", "block:16")
    dense = densify(res.model)
    assert not any(isinstance(m, (Sparse24Linear, BlockSparseLinear)) for m in dense.modules())
    with torch.no_grad():
        assert torch.allclose(dense(*x), res.masked(*x), rtol=1e-5, atol=1e-6)


def test_unstructured_and_3x3_convs_stay_dense_modules_with_sparse_storage(one_thread):
    _, x, res = lowered("bottleneck", "2:4")
    assert res.plan.layer("conv2").module == "dense"             # 3x3: 2:4 weights, nn.Conv2d at run time
    assert {"conv2.values", "conv2.indices"} <= set(res.tensors) and "conv2.weight" not in res.tensors
    assert isinstance(res.model.conv2, nn.Conv2d)
    _, _, res_u = lowered("vit_mlp", "unstructured")
    assert {"fc1.crow_indices", "fc1.col_indices", "fc1.values"} <= set(res_u.tensors)


def test_lowered_model_traces_with_torch_export(one_thread):
    _, x, res = lowered("vit_mlp", "2:4")
    ep = torch.export.export(res.model, x, strict=False)
    with torch.no_grad():
        assert torch.allclose(ep.module()(*x), res.masked(*x), rtol=1e-5, atol=1e-5)


def test_backend_choice_from_profile_and_preference():
    m = BlockSparseLinear(32, 16, 16, torch.tensor([0, 1]), torch.tensor([1]), torch.randn(1, 16, 16))
    assert choose_backend("fc", m) == "auto"                     # sparse on CUDA, dense on CPU
    x = torch.randn(3, 32)
    dense = m(x)                                                 # auto on CPU: the dense path ...
    m.backend = "sparse"
    assert torch.allclose(m(x), dense, atol=1e-5)                # ... equals torch's BSR matmul
    assert torch.allclose(dense, x @ m.dense_weight().T, atol=1e-6)
    assert choose_backend("fc", m, prefer="sparse") == "sparse"
    assert choose_backend("fc", m, prefer={"fc": "sparse", "other": "dense"}) == "sparse"
    assert choose_backend("fc", m, profile={"fc": {"block:16": 0.5, "dense": 1.0}}) == "sparse"
    assert choose_backend("fc", m, profile={"fc": {"block:16": 2.0, "dense": 1.0}}, prefer="sparse") == "dense"
    assert choose_backend("fc", m, profile=lambda name, mod: {"sparse": 0.1, "dense": 0.2}) == "sparse"
    assert choose_backend("fc", m, profile={"other": {"sparse": 0.1, "dense": 0.2}}) == "auto"
    with pytest.raises(CompressError):
        choose_backend("fc", m, prefer="fast")


def test_sparse24_module_from_a_conv_with_stride(one_thread):
    conv = nn.Conv2d(8, 4, 1, stride=2)
    w2 = Fm.weight_2d(conv)
    keep = Fm.select_24(w2)
    mod = sparse_module(conv, "2:4", Fm.encode_24(w2 * keep, keep))
    with torch.no_grad():
        conv.weight.copy_(Fm.weight_from_2d(conv, w2 * keep))
        x = torch.randn(2, 8, 9, 9)
        mod.backend = "sparse"                                  # CPU: 2:4 has no CPU kernel, runs dense
        assert torch.allclose(mod(x), conv(x), atol=1e-6)


def test_2_4_strict_refuses_a_reduction_dim_not_multiple_of_4():
    model = odd_linear()
    with pytest.raises(CompressError, match="layer bad: 2:4 .* multiple of 4, it has 10; pick another --pattern"):
        sparsify(model, (torch.randn(2, 12),), SparsifyConfig(pattern="2:4", strict=True), {"model": "x"})
    with pytest.raises(CompressError, match="no layer of the model can take 2:4 .*layer a: .* it has 10"):
        sparsify(all_odd(), (torch.randn(2, 10),), SparsifyConfig(pattern="2:4"), {"model": "x"})


def test_2_4_keeps_a_layer_it_cannot_take_dense_and_says_why(one_thread, tmp_path):
    """A 3-channel stem under 2:4 stays dense (as NVIDIA ASP / ModelOpt leave it), named with the reason in
    the plan; every other layer is lowered; the directory round-trips and export's read_plan reads it."""
    from compress.export.sparsity import read_plan
    from compress.lower.sparse_plan import SparsePlan

    model = stem_cnn()
    x = inputs_for(model)
    calib = [inputs_for(model, 4, 1)]
    res = sparsify(model, x, SparsifyConfig(pattern="2:4", update="obs", data_select=True, calib="random:4"),
                   {"model": "tests.lower.lowering_models:stem_cnn", "input_shape": list(x[0].shape)}, calib)
    stem = res.plan.layer("conv1")
    assert stem.format == "dense" and stem.module == "dense" and stem.density == 1.0
    assert stem.skipped == "2:4 needs a reduction dimension that is a multiple of 4, it has 3"
    assert stem.error_before is None and stem.error_after is None
    assert res.plan.skipped == {"conv1": stem.skipped}
    assert any("conv1" in n and "--strict" in n for n in res.plan.notes)
    for name in ("conv2", "conv3", "fc"):
        lp = res.plan.layer(name)
        assert lp.format == "2:4" and lp.density == 0.5 and lp.skipped is None, name
    assert isinstance(res.model.conv2, Sparse24Linear) and isinstance(res.model.conv1, nn.Conv2d)
    assert torch.equal(res.masked.conv1.weight, model.conv1.weight)            # untouched
    text = res.plan.to_json()
    assert text.count('"skipped"') == 1 and SparsePlan.from_json(text) == res.plan
    save_sparse_dir(str(tmp_path), res)
    back = load_sparse_dir(str(tmp_path))
    with torch.no_grad():
        assert torch.allclose(back(*x), res.masked(*x), rtol=1e-5, atol=1e-5)
    formats = read_plan(str(tmp_path / "sparse_plan.json"))
    assert formats["conv1"] == {"format": "dense", "density": 1.0} and formats["conv2"]["format"] == "2:4"
    with pytest.raises(CompressError, match="layer conv1: 2:4 needs .* it has 3"):
        sparsify(model, x, SparsifyConfig(pattern="2:4", strict=True), {"model": "x"})


@pytest.mark.parametrize("pattern", ["block:16", "block:64"])
def test_block_formats_take_every_layer_even_a_3_channel_stem(pattern, one_thread):
    """Block formats pad the weight to whole blocks, so no layer is skipped (nothing to refuse)."""
    model = stem_cnn()
    x = inputs_for(model)
    res = sparsify(model, x, SparsifyConfig(pattern=pattern, sparsity=0.5, strict=True), {"model": "x"})
    assert not res.plan.skipped and all(lp.format == pattern for lp in res.plan.layers)
    with torch.no_grad():
        assert torch.allclose(res.model(*x), res.masked(*x), rtol=1e-5, atol=1e-5)


def test_block_sparse_sparse_backend_traces_through_the_custom_op(one_thread):
    _, x, res = lowered("vit_mlp", "block:16")
    set_backends(res.model, prefer="sparse")
    ep = torch.export.export(res.model, x, strict=False)
    assert "compress.bsr_linear" in str(ep.graph)
    with torch.no_grad():
        assert torch.allclose(ep.module()(*x), res.masked(*x), rtol=1e-5, atol=1e-5)
