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
         "tests_gpu.json", 200, None, 900, (), (("COMPRESS_GPU_FULL", "1"),), ("pytest",)),
    Step("bsr_gpu", "our BSR kernel vs cuBLAS dense vs torch's BSR matmul (bench/bsr_gpu.py; default: --quick grid)",
         ("bench/bsr_gpu.py", "--quick", "--out", "{out}"), "bsr.json", 180,
         ("bench/bsr_gpu.py", "--out", "{out}"), 1800),
    Step("semi_structured_24", "2:4 sparsity via torch.sparse.to_sparse_semi_structured (cuSPARSELt / CUTLASS) vs dense",
         ("bench/gpu_suite.py", "--measure-24", "--quick", "--out", "{out}"), "semi_structured_24.json", 90,
         ("bench/gpu_suite.py", "--measure-24", "--out", "{out}"), 600),
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
    a = p.parse_args(argv)
    if a.measure_24:
        ensure_compress_packages()
        return measure_24(a.out or RESULTS / "semi_structured_24.json", a.quick)
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
