"""The planner prices only what ships (issue #19): block formats on a CPU only from entries measured by the
kernel the CPU artifact runs, 2:4 on a GPU/Jetson from measured entries or a model fitted to published
measurements (labelled so), and the plan report says per format where its costs come from."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from compress.cli import main
from compress.hardware_profiles.predictor import DeviceProfile
from compress.planner import formats as F
from compress.planner.solve import PlanConfig, finish, prepare
from tests.hardware_profiles.profile_fixtures import sparse_section

# a roofline-only profile (no tables), compute-bound so that sparse formats can pay
BASE = {
    "schema": "compress.hardware_profile", "schema_version": 1, "name": "pricing-test", "source": "measured",
    "source_detail": "constructed for tests", "device": {"kind": "cpu", "name": "test"},
    "runtime": {"name": "ort", "version": "0"}, "dtype": "float32", "batch": 1,
    "measurement": {"date": "2026-12-05T01:00:00+00:00"},
    "peak": {"gflops": 0.1, "gbps": 1e4, "source": "test"},
    "overhead": {"per_inference_ms": 0.0, "per_op_ms": 0.0},
    "steps": {"conv": {"block": 8, "unaligned_factor": 1.0}}, "memory_ops": {}, "tables": [],
}
BLOCKS = {"bsr16x16": 0.5, "bsr32x32": 0.6}


def _profile(kind="cpu", sparse=None, **device) -> dict:
    d = copy.deepcopy(BASE)
    d["device"] = {"kind": kind, "name": "test", **device}
    if kind != "cpu":
        d["runtime"] = {"name": "tensorrt", "version": "0"}
        d["dtype"] = "float16"
    if sparse is not None:
        d["sparse"] = sparse
    return d


def _mlp():
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def _report(d: dict, allowed=("block",)):
    prof = DeviceProfile(d)
    cfg = PlanConfig(latency_budget=0.8)
    prep = prepare(_mlp(), (torch.randn(4, 64),), prof, cfg)
    _, res, _ = finish(prep, cfg, {"model": "mlp"})
    return F.report(prep, cfg, {"model": "mlp"}, res, allowed)


# ------------------------------------------------------------------------------------------------ CPU, block
def test_cpu_entries_measured_by_torch_price_nothing(one_thread):
    d = _profile(sparse=sparse_section("torch", BLOCKS))
    prof = DeviceProfile(d)
    assert F.usable_entries(prof) == []
    rep, mixed = _report(d)
    assert rep["layers"] == [] and rep["winner"] == "structured" and mixed is None
    assert rep["costs"]["block"].startswith("not priced") and "torch" in rep["costs"]["block"]
    # an entry that names the deployed runtime itself counts even in a torch section; the rest do not
    sec = sparse_section("torch", BLOCKS)
    sec["entries"] = [dict(e, runtime=F.SPARSE_RUNTIME) for e in sec["entries"] if e["layer"] == "linear"]
    assert {e["layer"] for e in F.usable_entries(DeviceProfile(_profile(sparse=sec)))} == {"linear"}


def test_cpu_entries_measured_by_the_shipped_kernel_price_block_layers(one_thread):
    d = _profile(sparse=sparse_section(F.SPARSE_RUNTIME, BLOCKS))
    rep, mixed = _report(d)
    priced = {x["layer"]: x for x in rep["layers"]}
    assert set(priced) == {"0", "2"}          # 64->256 and 256->64; the 64->10 head is not a multiple of 16
    for x in priced.values():
        opts = {(o["format"], o["density"]): o for o in x["options"]}
        assert set(opts) == {("block:16", 0.5), ("block:32", 0.5)}
        assert opts[("block:16", 0.5)]["ms"] == pytest.approx(0.5 * x["dense_ms"], rel=1e-4)
        assert opts[("block:32", 0.5)]["ms"] == pytest.approx(0.6 * x["dense_ms"], rel=1e-4)
        src = opts[("block:16", 0.5)]["source"]
        assert src.startswith(f"measured (profile pricing-test, runtime {F.SPARSE_RUNTIME}, 2026-12-05T00:00:00+00:00)")
        assert x["winner"] == "block:16"
    assert rep["costs"]["block"] == f"measured (profile pricing-test, runtime {F.SPARSE_RUNTIME}, 2026-12-05T00:00:00+00:00)"
    assert rep["costs"]["structured"].startswith("measured (profile pricing-test, runtime ort 0, 2026-12-05T01:00:00")
    assert rep["unstructured"]["speedup"] > 1.0 and mixed is not None


class _Conv1D(nn.Module):
    """Hugging Face's Conv1D (GPT-2): a Linear with an (in, out) weight, computed by addmm: priced as a linear
    layer, but compress.lower cannot lower it."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight, self.bias = nn.Parameter(torch.randn(nx, nf) * 0.1), nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(x.size()[:-1] + (self.nf,))


class _TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(256, 64)
        self.fc = nn.Linear(64, 256)
        self.proj = _Conv1D(64, 256)
        self.head = nn.Linear(64, 256, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(self.proj(torch.relu(self.fc(self.emb(ids)))))


def test_layers_that_cannot_be_lowered_are_offered_no_sparse_format(one_thread):
    """A plan must not mark for a sparse format a layer `compress prune --plan` cannot lower: a Conv1D, or a Linear
    whose weight is tied to the embedding (sparsifying it would sparsify the embedding too)."""
    prof = DeviceProfile(_profile(sparse=sparse_section(F.SPARSE_RUNTIME, BLOCKS)))
    cfg = PlanConfig(latency_budget=0.8)
    prep = prepare(_TiedLM().eval(), (torch.randint(0, 256, (4, 16)),), prof, cfg)
    _, res, _ = finish(prep, cfg, {"model": "lm"})
    rep, _ = F.report(prep, cfg, {"model": "lm"}, res, ("block",))
    assert {x["layer"] for x in rep["layers"]} == {"fc"}


def test_cpu_never_offers_2_4(one_thread):
    d = _profile(sparse=sparse_section(F.SPARSE_RUNTIME, {"2:4": 0.3, **BLOCKS}))
    rep, _ = _report(d, ("2:4", "block"))
    assert {o["format"] for x in rep["layers"] for o in x["options"]} == {"block:16", "block:32"}
    assert rep["costs"]["2:4"] == "not offered: CPU runtimes have no 2:4 kernel"


@pytest.mark.parametrize("sparse", [sparse_section("torch", BLOCKS), None])
def test_cli_block_without_usable_entries_is_one_line_exit_2(tmp_path, capsys, sparse):
    """`--formats structured,block` on a CPU profile with no entries from the kernel that ships: one line naming
    the profile and the command that re-measures its sparse table, exit 2, nothing written."""
    prof = tmp_path / "cpu.json"
    prof.write_text(json.dumps(_profile(sparse=sparse)))
    out = tmp_path / "out"
    rc = main(["plan", "tests.models:tiny_cnn", "--profile", str(prof), "--latency-budget", "0.6",
               "--formats", "structured,block", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "profile pricing-test" in err and f"`compress profile --sparse {prof} [--model MODEL]`" in err
    assert f"--profile {prof}" in err
    assert (("measured with torch" in err) if sparse else ("no block-sparse entries" in err))


def test_cli_block_with_entries_from_the_shipped_kernel(tmp_path, capsys, one_thread):
    prof = tmp_path / "cpu.json"
    prof.write_text(json.dumps(_profile(sparse=sparse_section(F.SPARSE_RUNTIME, BLOCKS))))
    out = tmp_path / "out"
    assert main(["plan", "tests.models:tiny_cnn", "--profile", str(prof), "--latency-budget", "0.6",
                 "--formats", "structured,block", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    label = f"measured (profile pricing-test, runtime {F.SPARSE_RUNTIME}, 2026-12-05T00:00:00+00:00)"
    assert report["costs"]["block"] == label and f"costs, block: {label}" in capsys.readouterr().out
    srcs = [o["source"] for x in report["formats_report"]["layers"] for o in x["options"]]
    assert srcs and all(s.startswith(label) for s in srcs)


def test_shipped_cpu_profile_refuses_block_and_says_to_copy_it():
    from compress.hardware_profiles import load_profile

    prof = load_profile("cpu-x86-2core-ort-b1")
    msg = F.no_block_entries(prof)
    assert "measured with torch" in msg and "re-measure the sparse table of a copy of cpu-x86-2core-ort-b1.json as FILE" in msg
    assert "`compress profile --sparse FILE [--model MODEL]`" in msg and "\n" not in msg


# ------------------------------------------------------------------------------------------------ 2:4 published
def _fit_points(cls):
    return [p for p in F.published_two_four()["points"] if p["class"] == cls and p["used_in_fit"]]


@pytest.mark.parametrize("cls", ["a100", "h100"])
def test_published_model_reproduces_its_points_within_its_stated_error(cls):
    model = F.published_two_four()["model"]
    c = model["classes"][cls]
    pts = _fit_points(cls)
    assert len(pts) >= 5
    for p in pts:
        s = F.two_four_speedup(p["m"], p["n"], p["k"], cls)
        assert max(s / p["speedup"], p["speedup"] / s) <= c["max_error"] + 1e-3, p["id"]
    # the stored parameters are the fit's (re-fitting the points gives them back)
    assert F.fit_two_four(pts, model["s_min"], model["width"]) == {k: c[k] for k in ("s_max", "w0", "max_error")}


def test_published_model_anchors():
    """The anchors named in issue #19 (A100): BERT-base end to end 0.87x at batch 4, 1.28x at batch 16,
    a 4096x4096 layer with one token 0.11x; A100 at most ~1.4x; H100 below dense for BERT-size GEMMs."""
    a100 = F.published_two_four()["model"]["classes"]["a100"]["max_error"]
    for (m, n, k), want in (((4 * 384, 3072, 768), 0.87), ((16 * 384, 3072, 768), 1.28), ((1, 4096, 4096), 0.111)):
        s = F.two_four_speedup(m, n, k, "a100")
        assert want / a100 <= s <= want * a100
    assert F.two_four_speedup(8192, 8192, 8192, "a100") < 1.4
    assert F.two_four_speedup(16 * 384, 3072, 768, "h100") < 1.0
    assert max(F.two_four_speedup(10 ** 6, 10 ** 4, 10 ** 4, c) for c in ("orin",)) <= 1.0


@pytest.mark.parametrize("cls", ["a100", "h100", "orin"])
def test_published_model_is_monotone_in_size(cls):
    sizes = [(m, n, k) for m in (1, 8, 64, 512, 4096, 32768) for n, k in ((64, 64), (768, 3072), (4096, 4096))]
    sizes.sort(key=lambda s: s[0] * s[1] * s[2])
    vals = [F.two_four_speedup(*s, cls) for s in sizes]
    assert all(b >= a - 1e-12 for a, b in zip(vals, vals[1:]))
    assert F.published_two_four()["model"]["s_min"] <= vals[0] and vals[-1] <= 2.0


def test_gpu_class_from_the_device():
    def cls(**dev):
        return F.gpu_class(DeviceProfile(_profile("gpu", **dev)))[0]

    assert cls(name="NVIDIA H100 80GB HBM3") == "h100" and cls(name="x", compute_capability="9.0") == "h100"
    assert cls(name="NVIDIA A100-SXM4-80GB") == "a100" and cls(name="x", compute_capability="8.0") == "a100"
    assert cls(name="RTX 3090", compute_capability="8.6") == "a100"       # no points of its own: A100-class, said so
    assert "A100-class assumed" in F.gpu_class(DeviceProfile(_profile("gpu", name="RTX 3090")))[1]
    assert F.gpu_class(DeviceProfile(_profile("jetson", name="Jetson Orin Nano")))[0] == "orin"


def test_gpu_prices_2_4_from_the_published_model_and_measured_entries_win(one_thread):
    # no measured 2:4 entry: the published model, labelled so; these GEMMs are tiny (M=4), so 2:4 loses
    d = _profile("gpu", name="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
    rep, _ = _report(d, ("2:4",))
    assert rep["layers"]
    for x in rep["layers"]:
        (o,) = x["options"]
        assert o["format"] == "2:4" and o["source"].startswith("published, not measured here: ")
        assert "A100-class" in o["source"] and o["ms"] > x["dense_ms"] and x["winner"] == "dense"
    assert rep["costs"]["2:4"].startswith("published, not measured here: ")
    # a GPU profile with measured 2:4 entries: those price it, whatever the published model says
    d["sparse"] = sparse_section("tensorrt 10 (constructed)", {"2:4": 0.5})
    rep, mixed = _report(d, ("2:4",))
    for x in rep["layers"]:
        (o,) = x["options"]
        assert o["source"].startswith("measured (profile pricing-test, runtime tensorrt 10 (constructed)")
        assert o["ms"] == pytest.approx(0.5 * x["dense_ms"], rel=1e-4) and x["winner"] == "2:4"
    assert rep["costs"]["2:4"].startswith("measured (profile pricing-test, runtime tensorrt 10 (constructed)")
    assert mixed is not None


def test_cli_gpu_plan_report_says_2_4_is_published_not_measured(tmp_path, capsys, one_thread):
    prof = tmp_path / "gpu.json"
    d = _profile("gpu", name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    d["source"] = "analytic"
    prof.write_text(json.dumps(d))
    out = tmp_path / "out"
    rc = main(["plan", "tests.models:tiny_cnn", "--target", "gpu", "--profile", str(prof), "--latency-budget", "0.6",
               "--formats", "structured,2:4", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["costs"]["2:4"].startswith("published, not measured here: ") and "H100-class" in report["costs"]["2:4"]
    assert report["costs"]["structured"].startswith("analytic (profile pricing-test")
    assert report["formats_report"]["costs"] == report["costs"]
    srcs = {o["source"].split(":")[0] for x in report["formats_report"]["layers"] for o in x["options"]}
    assert srcs == {"published, not measured here"}
    assert "costs, 2:4: published, not measured here" in text and "costs, structured: analytic" in text
    assert not math.isnan(report["predicted_ms"])
