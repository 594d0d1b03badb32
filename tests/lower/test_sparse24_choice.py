"""Issue #23, items 9-11: Sparse24Linear on a GPU, checked here by its decisions (no CUDA on this machine).

- 2:4 is taken per layer only where it is measured faster (a profile's "sparse" backend, or a one-off timing
  cached per device, dtype and token-count bucket), dense otherwise, and every choice is recorded;
- fp32 never takes the semi-structured path (fp32 semi-structured is 1:2, and cuSPARSELt has no fp32);
- the converted weights are cached once per (device, dtype), an exception without a message does not
  break the fallback, and copy.deepcopy works with a cached semi-structured weight."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from compress.lower import modules as M


def _layer(k=16, n=8, seed=0) -> M.Sparse24Linear:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, k // 2, generator=g)
    indices = torch.tensor([0, 2] * (k // 4), dtype=torch.uint8).view(1, -1).repeat(n, 1)
    return M.Sparse24Linear(k, n, values, indices, torch.randn(n, generator=g))


CUDA = torch.device("cuda", 0)  # only named: choose() decides before touching the device for these cases


def test_fp32_never_takes_the_semi_structured_path(monkeypatch):
    m = _layer()
    monkeypatch.setattr(M, "measure_24", lambda *a: pytest.fail("fp32 must not be timed"))
    for backend in ("auto", "sparse"):
        m.backend = backend
        assert m.choose(CUDA, torch.float32, 64) == "dense"
    rec = next(iter(m.choices.values()))
    assert "1:2" in rec["why"] and rec["choice"] == "dense"


def test_auto_times_once_per_shape_and_takes_dense_when_24_is_slower(monkeypatch):
    m = _layer()
    calls = []

    def fake_measure(mod, device, dtype, rows):
        calls.append(rows)
        return (2.0, 1.0) if rows <= 16 else (0.5, 1.0)  # 2:4 slower at few tokens, faster at many

    monkeypatch.setattr(M, "measure_24", fake_measure)
    assert m.choose(CUDA, torch.float16, 9) == "dense"
    assert m.choose(CUDA, torch.float16, 13) == "dense"  # same bucket (<= 16): cached, not re-timed
    assert m.choose(CUDA, torch.float16, 4096) == "sparse"
    assert calls == [16, 4096]
    recs = list(m.choices.values())
    assert recs[0] == {"choice": "dense", "sparse_ms": 2.0, "dense_ms": 1.0, "why": "timed once for this shape"}
    assert recs[1]["choice"] == "sparse"


def test_unavailable_semi_structured_path_is_recorded_dense(monkeypatch):
    m = _layer()
    monkeypatch.setattr(M, "measure_24", lambda *a: (None, 1.0))
    assert m.choose(CUDA, torch.bfloat16, 64) == "dense"
    assert "unavailable" in next(iter(m.choices.values()))["why"]


def test_a_measured_profile_choosing_sparse_skips_the_timing(monkeypatch):
    model = nn.Sequential(_layer())
    monkeypatch.setattr(M, "measure_24", lambda *a: pytest.fail("the profile already measured it"))
    assert M.set_backends(model, {"0": {"2:4": 0.1, "dense": 0.2}}) == {"0": "sparse"}
    assert model[0].choose(CUDA, torch.float16, 64) == "sparse"
    assert M.set_backends(model, {"0": {"2:4": 0.3, "dense": 0.2}}) == {"0": "dense"}


def test_converted_weight_is_cached_and_an_exception_without_message_falls_back(monkeypatch):
    import torch.sparse

    m = _layer()
    conversions = []

    def refuse(w):
        conversions.append(w)
        raise RuntimeError()  # no message: the fallback must not index an empty splitlines()

    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", refuse)
    x = torch.randn(5, 16).half()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y1 = m._sparse_linear(x)
        y2 = m._sparse_linear(x)
    assert len(conversions) == 1 and len(w) == 1 and "(RuntimeError)" in str(w[0].message)
    key = (torch.device("cpu"), torch.float16)
    assert m._cast[key] is m._weight("cpu", torch.float16)  # cast once, reused
    ref = torch.nn.functional.linear(x, m.dense_weight().half())
    assert torch.equal(y1, ref) and torch.equal(y2, ref)


class _SemiLike:
    """Stands in for a SparseSemiStructuredTensor whose deepcopy fails (a wrapper subclass without clone)."""

    def __deepcopy__(self, memo):
        raise RuntimeError("The default implementation of __deepcopy__() for wrapper subclasses only works for "
                           "subclass types that implement clone()")


def test_deepcopy_and_state_dict_skip_the_cached_semi_structured_weight():
    model = nn.Sequential(_layer(), nn.ReLU())
    key = (torch.device("cpu"), torch.float16)
    model[0]._semi[key] = _SemiLike()
    model[0].choices["x"] = {"choice": "sparse"}
    twin = copy.deepcopy(model)  # what lower/pipeline.py and lower/mixed.py do
    assert twin[0]._semi == {} and twin[0]._cast == {} and twin[0].choices == {"x": {"choice": "sparse"}}
    assert key in model[0]._semi  # the original keeps its cache
    assert set(model.state_dict()) == {"0.bias", "0.values", "0.indices"}
    x = torch.randn(3, 16)
    assert torch.equal(twin(x), model(x))
