"""hardware_profiles/gpu_profile.py on the CPU (issue #19, item 5): the same code path the GPU suite runs with
device "cuda" / float16, here with device "cpu" / float32 on a tiny model and grid. The profile it writes
validates, records why 2:4 was not measured, names the runtime of every sparse entry, and the planner takes it.
No GPU number is claimed or checked here."""

from __future__ import annotations

import json

import pytest

from compress.errors import CompressError
from compress.hardware_profiles import gpu_profile as G
from compress.hardware_profiles import schema

SPEC = "tests.models:tiny_cnn"
TINY = G.GpuProfileConfig(device="cpu", batch=2, grid_step=16, max_points=2, warmup=1, reps=3, inner=2,
                          memory_sizes=((16, 8, 8), (32, 8, 8)), blocks=(16,), sparse_shapes=3, threads=1,
                          models=(SPEC,))


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    import torch

    n = torch.get_num_threads()
    out = tmp_path_factory.mktemp("gpu_profile") / "cpu.json"
    layers, dense = G.model_layers([SPEC], TINY.batch)
    prof = G.measure(layers, TINY, str(out), "cpu-torch-float32-b2", dense_models=dense)
    torch.set_num_threads(n)
    return out, prof


def _plan(tmp_path, profile: str, formats: tuple):
    from compress.api.plan import PlanRun, plan
    from compress.models.source import ModelSpec
    from compress.planner.solve import PlanConfig

    return plan(PlanRun(ModelSpec(SPEC), str(tmp_path / "plan"), PlanConfig(latency_budget=0.8), profile=profile,
                        formats=formats))


def test_cpu_profile_validates_and_says_what_measured_it(cpu_profile):
    path, prof = cpu_profile
    assert schema.read(path)["name"] == "cpu-torch-float32-b2"
    assert prof["source"] == "measured" and prof["device"]["kind"] == "cpu" and prof["dtype"] == "float32"
    assert prof["runtime"]["name"] == "torch" and prof["batch"] == 2
    assert {t["op"] for t in prof["tables"]} == {"conv", "dwconv", "linear"}
    assert prof["memory_ops"] and prof["calibration"][0]["model"] == SPEC
    sp = prof["sparse"]
    assert sp["two_four"].startswith("skipped: ") and "CUDA" in sp["two_four"]   # no CPU 2:4 kernel: the reason
    assert sp["runtime"] == G.RUNTIME_BSR_CPU and not sp["errors"]
    dense = {(e["layer"], e["in"], e["out"], e["rows"]): e for e in sp["entries"] if e["format"] == "dense"}
    blocks = [e for e in sp["entries"] if e["format"] != "dense"]
    assert dense and blocks and all(e["format"] == "bsr16x16" and e["runtime"] == G.RUNTIME_BSR_CPU for e in blocks)
    for e in blocks:   # the planner's schema, and each sparse result checked against dense before timing
        d = dense[(e["layer"], e["in"], e["out"], e["rows"])]
        assert e["density"] == 0.5 and e["ms"] > 0 and e["max_rel_err"] <= 1e-4
        assert e["speedup_vs_dense"] == pytest.approx(d["ms"] / e["ms"], rel=0.01)
    assert not any(e["format"] == "2:4" for e in sp["entries"])


def test_the_planner_takes_the_profile(cpu_profile, tmp_path):
    path, _ = cpu_profile
    out = _plan(tmp_path, str(path), ("structured",))
    assert out["json"]["profile"] == "cpu-torch-float32-b2" and out["json"]["profile_source"] == "measured"
    # on a CPU profile block formats are priced only by the kernel the CPU artifact runs (planner/formats.py):
    # entries of torch's CPU BSR are refused, with the fix named
    with pytest.raises(CompressError, match="cannot price block formats"):
        _plan(tmp_path, str(path), ("structured", "block"))


def test_the_planner_prices_block_from_entries_in_this_schema(cpu_profile, tmp_path):
    """What the GPU run writes differs in its device (kind gpu) and numbers: the same file relabelled as a GPU
    (a test double, never shipped) is planned with --formats structured,2:4,block, block priced from its entries."""
    path, prof = cpu_profile
    relabelled = dict(prof, device={"kind": "gpu", "name": "cpu measurement relabelled for this test"})
    gpu = tmp_path / "as-gpu.json"
    gpu.write_text(json.dumps(relabelled))
    out = _plan(tmp_path, str(gpu), ("structured", "2:4", "block"))
    fr = out["json"]["formats_report"]
    assert G.RUNTIME_BSR_CPU in fr["costs"]["block"] and fr["costs"]["block"].startswith("measured")
    opts = [o for layer in fr["layers"] for o in layer["options"] if o["format"] == "block:16"]
    assert opts and all(o["source"].startswith("measured") for o in opts)


def test_sparse_shapes_and_timer():
    from compress.hardware_profiles.layers import LayerSig

    layers = [LayerSig("conv", 64, 256, h=56, w=56), LayerSig("conv", 64, 64, (3, 3), (1, 1), (1, 1), 1, 56, 56),
              LayerSig("linear", 384, 1536, tokens=128), LayerSig("conv", 64, 256, h=56, w=56)]
    got = G.sparse_shapes(layers, 8, 5)
    assert [(s["layer"], s["in"], s["out"], s["rows"]) for s in got] == [("linear", 384, 1536, 128 * 8),   # by MACs
                                                                        ("conv1x1", 64, 256, 56 * 56 * 8)]
    import torch

    assert G.time_ms(lambda: None, torch.device("cpu"), 1, 3, 2) >= 0
    if not torch.cuda.is_available():
        with pytest.raises(CompressError, match="no CUDA device"):
            G.resolve_device("cuda")
