"""A mixed plan applied end to end through the CLI: `compress plan --formats structured,2:4` on a GPU
profile (whose constructed, measured-style 2:4 entries say 2:4 halves a layer's time, so it wins), then `compress prune --plan`: channels removed, the planned
layers lowered to 2:4 / block-sparse, the directory rebuilt without pickle and equal to the in-memory
pruned + lowered model, evaluated, and exported for the GPU with its 2:4 check passing."""

from __future__ import annotations

import copy
import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compress import cli, models
from compress.prune.plan import PrunePlan
from tests.hardware_profiles.profile_fixtures import sparse_section

REPO = Path(__file__).resolve().parents[1]
SPEC = "tests.test_plan_formats_apply:net"

# a GPU-kind profile, compute-bound, with 2:4 entries at half the dense time (constructed as a measured
# profile would carry them; without entries the planner prices 2:4 from published measurements, which
# say these small layers run slower sparse); channel steps of 8
PROFILE = {
    "schema": "compress.hardware_profile", "schema_version": 1, "name": "synthetic-gpu", "source": "analytic",
    "source_detail": "roofline-only profile for tests", "device": {"kind": "gpu", "name": "test"},
    "runtime": {"name": "torch", "version": "0"}, "dtype": "float32", "batch": 1, "measurement": {},
    "peak": {"gflops": 0.5, "gbps": 1e4, "source": "test"},
    "overhead": {"per_inference_ms": 0.0, "per_op_ms": 0.0},
    "steps": {"conv": {"block": 8, "unaligned_factor": 1.2}}, "memory_ops": {}, "tables": [],
    "sparse": sparse_section("constructed GPU runtime (2:4 at half the dense time)", {"2:4": 0.5}),
}


class Net(nn.Module):
    """Fashion-MNIST shaped: a 3x3 stem, a 1x1 expand/project residual block, two Linear layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(32, 128, 1), nn.BatchNorm2d(128), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(128, 32, 1), nn.BatchNorm2d(32))
        self.fc1 = nn.Linear(32, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.project(self.expand(x)))
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


def net() -> nn.Module:
    torch.manual_seed(0)
    m = Net()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.copy_(0.1 * torch.randn(bn.num_features, generator=g))
                bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=g))
    m.compress_input_shape = (1, 1, 28, 28)
    return m.eval()


def _write_idx(path: Path, arr: np.ndarray) -> None:
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    path.write_bytes(gzip.compress(head + arr.astype("u1").tobytes(), mtime=0))


def _idx_dir(d: Path) -> Path:
    """A small labelled IDX dataset (MNIST format) of 28x28 images, 10 classes."""
    d.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 48), ("t10k", 40)):
        _write_idx(d / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return d


def _main(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def mixed_plan(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("plan")
    prof = d / "gpu-profile.json"
    prof.write_text(json.dumps(PROFILE))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        rc = _main("plan", SPEC, "--target", "gpu", "--profile", prof, "--latency-budget", "0.4",
                   "--formats", "structured,2:4", "--out", d / "out")
    finally:
        os.chdir(cwd)
        torch.set_num_threads(n)
    assert rc == 0
    return d / "out" / "plan.json"


def _in_memory(plan: PrunePlan, calib_spec: str | None):
    """The pruned + lowered model computed here, without the CLI."""
    from compress.lower.mixed import fit, lower_planned, planned
    from compress.prune.apply import apply_plan
    from compress.calib import input_batches

    lm = models.load(SPEC)
    inputs = models.example_inputs(lm)
    specs = planned(plan.formats, lm.model)
    res = apply_plan(lm.model, inputs, plan)
    ok, dense = fit(specs, res.model)
    calib = input_batches(calib_spec or "random:32", lm, inputs)
    return lower_planned(res.model, ok, {"model": SPEC}, calib, calib_spec is not None, calib_spec or "random:32"), dense


def _is_24(w: torch.Tensor) -> bool:
    from compress.export.sparsity import is_24

    return is_24(w.detach().numpy())[0]


def test_mixed_plan_applies_end_to_end(mixed_plan, tmp_path, one_thread, monkeypatch):
    from compress.lower.modules import Sparse24Linear

    monkeypatch.chdir(REPO)
    plan = PrunePlan.from_json(mixed_plan.read_text())
    marked = {n for n, e in plan.formats.items() if e["format"] == "2:4"}
    assert marked, f"the planner chose no 2:4 layer on a compute-bound GPU profile: {plan.formats}"
    assert any(g.channels_after < g.channels_before for g in plan.groups), "no structured part"

    out = tmp_path / "pruned"
    assert _main("prune", SPEC, "--plan", mixed_plan, "--calib", "random:16", "--out", out) == 0
    assert sorted(os.listdir(out)) == ["model.onnx", "plan.json", "sparse_model.safetensors", "sparse_plan.json",
                                       "summary.json"]
    s = json.loads((out / "summary.json").read_text())
    assert set(s["formats"]) == set(plan.formats) and s["sparse_update"] == "obs"
    for name in marked:
        e = s["formats"][name]
        assert e["format"] == "2:4" and e["module"] == "Sparse24Linear" and e["density"] == 0.5, name
        assert 0 <= e["error_after"] <= e["error_before"], name
    assert s["onnx_parity"]["ok"] and s["max_rel_error_lowered_vs_masked"] <= 1e-5
    assert not any("compress sparsify" in n for n in s["notes"])        # the planner's hint is now stale

    # rebuilt without unpickling: pruned shapes, 2:4 modules, the same outputs as computed in memory
    lm = models.load(str(out))
    assert lm.plan is not None and lm.plan.formats == plan.formats
    ref, dense = _in_memory(plan, "random:16")
    assert not dense
    mods = dict(lm.model.named_modules())
    for name in marked:
        m = mods[name]
        assert isinstance(m, Sparse24Linear) and _is_24(m.dense_weight()), name
        assert tuple(m.dense_weight().shape) == tuple(dict(ref.masked.named_modules())[name].weight.shape[:2])
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = lm.model(x)
        assert torch.allclose(got, ref.model(x), rtol=0, atol=1e-6)
        assert torch.allclose(got, ref.masked(x), rtol=1e-5, atol=1e-6)
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.allclose(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], got.numpy(), rtol=1e-4, atol=1e-5)

    # a pruned directory: pruning it again is refused; eval and the GPU export work on it
    assert _main("prune", str(out), "--ratio", "0.5", "--out", tmp_path / "again") == 2
    data = _idx_dir(tmp_path / "data")
    assert _main("eval", str(out), "--data", data) == 0
    exp = tmp_path / "gpu"
    assert _main("export", str(out), "--target", "gpu", "--out", exp) == 0
    man = json.loads((exp / "manifest.json").read_text())
    s24 = man["sparsity_2_4"]
    assert s24["ok"] and set(s24["layers"]) == marked, s24
    assert man["source"]["source_weights_sha256"] == plan.source["sha256"]


def test_block_fallback_and_data(mixed_plan, tmp_path, one_thread, monkeypatch, capsys):
    """block:N from the plan, a 2:4 layer whose reduction dim is not a multiple of 4 (kept dense, named),
    and --data as calibration (2:4 by output error + OBS; accuracy measured after lowering)."""
    from compress.lower.modules import BlockSparseLinear, Sparse24Linear

    monkeypatch.chdir(REPO)
    d = json.loads(mixed_plan.read_text())
    d["formats"] = {"fc1": {"format": "block:16", "density": 0.5}, "expand.0": {"format": "2:4", "density": 0.5},
                    "stem.0": {"format": "2:4", "density": 0.5}}      # stem.0 reduces over 1 input channel
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(d))
    out = tmp_path / "pruned"
    data = _idx_dir(tmp_path / "data")
    assert _main("prune", SPEC, "--plan", p, "--data", data, "--out", out) == 0
    text = capsys.readouterr().out
    assert "warning: layer stem.0: 2:4 needs a reduction dimension that is a multiple of 4" in text
    s = json.loads((out / "summary.json").read_text())
    f = s["formats"]
    assert f["stem.0"]["format"] == "dense" and "multiple of 4" in f["stem.0"]["fallback"]
    assert f["fc1"]["module"] == "BlockSparseLinear" and f["fc1"]["format"] == "block:16"
    assert 0.0 < f["fc1"]["density"] < 1.0       # of the real weights; the edge blocks are zero-padded
    assert f["expand.0"]["module"] == "Sparse24Linear" and f["expand.0"]["error_after"] <= f["expand.0"]["error_before"]
    assert s["sparse_update"] == "obs" and "train split" in s["sparse_calib"]
    assert "accuracy_before_lowering" in s and 0.0 <= s["accuracy"] <= 1.0
    assert any("stem.0" in n for n in s["notes"])

    lm = models.load(str(out))
    assert isinstance(lm.model.fc1, BlockSparseLinear) and isinstance(lm.model.expand[0], Sparse24Linear)
    nb = lm.model.fc1.padded[0] * lm.model.fc1.padded[1] // 16 ** 2
    assert abs(lm.model.fc1.density - 0.5) <= 0.5 / nb                # the plan's density, in whole blocks
    assert isinstance(lm.model.stem[0], nn.Conv2d)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    ref = models.load(str(out)).model
    with torch.no_grad():
        assert torch.equal(lm.model(x), ref(x))                       # deterministic rebuild
    # the block layer zeroes whole 16x16 blocks of its (pruned) weight
    w = lm.model.fc1.dense_weight()
    n, k = w.shape
    padded = torch.nn.functional.pad(w, (0, -k % 16, 0, -n % 16))
    blocks = padded.reshape(padded.shape[0] // 16, 16, -1, 16).abs().sum((1, 3))
    assert (blocks == 0).any() and (blocks > 0).any()


def test_structured_only_plan_writes_what_it_always_did(mixed_plan, tmp_path, one_thread, monkeypatch):
    monkeypatch.chdir(REPO)
    d = json.loads(mixed_plan.read_text())
    d["formats"] = {}
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(d))
    out = tmp_path / "pruned"
    assert _main("prune", SPEC, "--plan", p, "--out", out) == 0
    assert sorted(os.listdir(out)) == ["model.onnx", "model.safetensors", "plan.json", "summary.json"]
    s = json.loads((out / "summary.json").read_text())
    assert "formats" not in s and "max_rel_error_lowered_vs_masked" not in s
    lm = models.load(str(out))
    assert all(isinstance(m, (nn.Linear, nn.Conv2d)) for n, m in lm.model.named_modules() if n in ("fc1", "fc2"))


@pytest.mark.parametrize("formats,match", [
    ({"nope": {"format": "2:4", "density": 0.5}}, "the plan's formats name layer 'nope'"),
    ({"fc1": {"format": "3:8", "density": 0.5}}, "layer fc1 has format '3:8'"),
    ({"fc1": {"format": "block:24", "density": 0.5}}, "block size 24 is not a power of two"),
    ({"fc1": {"format": "2:4", "density": 0.25}}, "keeps density 0.5"),
    ({"fc1": {"format": "block:16", "density": 0}}, r"needs a density in \(0, 1\]"),
    ({"stem.1": {"format": "2:4", "density": 0.5}}, "it is a BatchNorm2d"),
])
def test_bad_formats_are_bad_input(mixed_plan, tmp_path, capsys, monkeypatch, formats, match):
    import re

    monkeypatch.chdir(REPO)
    d = copy.deepcopy(json.loads(mixed_plan.read_text()))
    d["formats"] = formats
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(d))
    assert _main("prune", SPEC, "--plan", p, "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_every_candidate_is_a_plan_of_its_own(mixed_plan, tmp_path, one_thread, monkeypatch):
    """`plan --formats` writes each candidate the report compares (structured-only, unstructured-only,
    mixed) as candidates/NAME.json, and each applies with `compress prune --plan`: the unstructured one
    removes no channel and lowers exactly the report's per-layer winners."""
    monkeypatch.chdir(REPO)
    out = mixed_plan.parent
    report = json.loads((out / "report.json").read_text())["formats_report"]
    assert report["candidates"] == {k: f"candidates/{k}.json" for k in ("structured", "unstructured", "mixed")}
    cand = {k: PrunePlan.from_json((out / v).read_text()) for k, v in report["candidates"].items()}
    chosen = PrunePlan.from_json(mixed_plan.read_text())
    assert report["winner"] == "mixed" and cand["mixed"].keep == chosen.keep and cand["mixed"].formats == chosen.formats
    assert cand["structured"].formats == {} and any(g.channels_after < g.channels_before for g in cand["structured"].groups)
    u = cand["unstructured"]
    assert u.keep == {} and u.groups == [] and u.formats == report["unstructured"]["sparse_layers"] and u.formats

    d = tmp_path / "unstructured"
    assert _main("prune", SPEC, "--plan", out / "candidates" / "unstructured.json", "--out", d) == 0
    lm, dense = models.load(str(d)), net()
    shapes = {n: tuple(p.shape) for n, p in dense.named_parameters()}
    lowered = json.loads((d / "summary.json").read_text())["formats"]
    assert set(lowered) == set(u.formats)
    for name, mod in lm.model.named_modules():
        if name in u.formats:
            assert tuple(mod.dense_weight().shape[:2]) == shapes[f"{name}.weight"][:2], name


def test_sparse_layers_restricts_which_layers_run_sparse(mixed_plan, tmp_path, one_thread, monkeypatch, capsys):
    """--sparse-layers REGEX: only the layers it matches are offered a sparse format, in every candidate;
    a pattern that is not a regular expression, or one without a sparse format, is bad input."""
    monkeypatch.chdir(REPO)
    prof = mixed_plan.parent.parent / "gpu-profile.json"
    common = ["plan", SPEC, "--target", "gpu", "--profile", prof, "--latency-budget", "0.4"]
    out = tmp_path / "fc"
    assert _main(*common, "--formats", "structured,2:4", "--sparse-layers", r"^fc\d$", "--out", out) == 0
    r = json.loads((out / "report.json").read_text())["formats_report"]
    assert r["sparse_layers_pattern"] == r"^fc\d$"
    assert {x["layer"] for x in r["layers"]} <= {"fc1", "fc2"} and r["layers"]
    for name in r["candidates"]:
        assert set(PrunePlan.from_json((out / "candidates" / f"{name}.json").read_text()).formats) <= {"fc1", "fc2"}
    capsys.readouterr()
    assert _main(*common, "--formats", "structured,2:4", "--sparse-layers", "fc[", "--out", tmp_path / "bad") == 2
    assert "is not a regular expression" in capsys.readouterr().err
    assert _main(*common, "--sparse-layers", "fc", "--out", tmp_path / "bad2") == 2
    assert "needs a sparse format" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()
