"""Every GPU measurement of the project in one command, results as JSON.

    python bench/gpu_suite.py                  # all steps, bench/results/gpu/suite.json (+ each step's own JSON)
    python bench/gpu_suite.py --list           # the steps
    python bench/gpu_suite.py --only tests_gpu bsr_gpu
    python bench/gpu_suite.py --quick          # smoke run: quick variants, results under /tmp/gpu_suite/

Works from a plain checkout without installing anything: `ensure_compress_packages` puts the
repository root on sys.path (compress.kernels, compress.export and compress.hardware_profiles find
their top-level folders by themselves, see compress/_layout.py), and every step runs in its own
subprocess through `python bench/gpu_suite.py --exec ...`, which does the same.
`pip install --no-deps --no-build-isolation -e .` works as well.

Add a measurement: append a Step to STEPS (a name, the argv run after the mapping is applied,
where it writes its JSON, a timeout). The suite records each step's exit code, time, output tail
and its JSON (inlined), and keeps going when one fails; exit code 1 if any step failed.
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

@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    what: str
    argv: tuple  # run as: python bench/gpu_suite.py --exec *argv ({out} is replaced by `out`)
    out: str  # JSON the step writes, relative to the results folder
    timeout_s: int = 900
    quick_argv: tuple | None = None


STEPS = [
    Step("tests_gpu", "pytest tests/gpu (compiled Triton kernel correctness on the GPU)",
         ("-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "tests/gpu", "--junitxml={out_xml}"),
         "tests_gpu.json", 900),
    Step("bsr_gpu", "our BSR kernel vs cuBLAS dense vs torch's BSR matmul (bench/bsr_gpu.py)",
         ("bench/bsr_gpu.py", "--out", "{out}"), "bsr.json", 1800, ("bench/bsr_gpu.py", "--quick", "--out", "{out}")),
    Step("semi_structured_24", "2:4 sparsity via torch.sparse.to_sparse_semi_structured (cuSPARSELt / CUTLASS) vs dense",
         ("bench/gpu_suite.py", "--measure-24", "--out", "{out}"), "semi_structured_24.json", 600,
         ("bench/gpu_suite.py", "--measure-24", "--quick", "--out", "{out}")),
]


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


def run_step(step: Step, results: Path, quick: bool) -> dict:
    import tempfile

    out = results / step.out
    out_xml = Path(tempfile.mkdtemp(prefix="gpu_suite_")) / (Path(step.out).stem + ".xml")
    argv = step.quick_argv if quick and step.quick_argv else step.argv
    argv = [a.replace("{out}", str(out)).replace("{out_xml}", str(out_xml)) for a in argv]
    cmd = [sys.executable, str(BENCH / "gpu_suite.py"), "--exec", *argv]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiled kernels are measured
    t0 = time.time()
    rec = {"name": step.name, "what": step.what, "command": " ".join(["python", "bench/gpu_suite.py", "--exec", *argv])}
    try:
        p = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=step.timeout_s)
        rec["exit_code"] = p.returncode
        tail = (p.stdout + p.stderr)[-4000:]
    except subprocess.TimeoutExpired as exc:
        rec["exit_code"] = None
        rec["timed_out_after_s"] = step.timeout_s
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
    p = argparse.ArgumentParser(description="Run every GPU measurement; JSON under bench/results/gpu/.")
    p.add_argument("--only", nargs="+", metavar="STEP", help="run these steps only")
    p.add_argument("--list", action="store_true")
    p.add_argument("--quick", action="store_true", help="quick variants, results under /tmp/gpu_suite unless --results")
    p.add_argument("--results", type=Path, help="results folder (default bench/results/gpu)")
    p.add_argument("--allow-no-gpu", action="store_true", help="run even without CUDA (checks the suite itself)")
    p.add_argument("--measure-24", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.measure_24:
        ensure_compress_packages()
        return measure_24(a.out or RESULTS / "semi_structured_24.json", a.quick)
    if a.list:
        for s in STEPS:
            print(f"{s.name:22s} {s.what}")
        return 0
    names = [s.name for s in STEPS]
    unknown = [n for n in (a.only or []) if n not in names]
    if unknown:
        print(f"gpu_suite.py: unknown step(s) {unknown}; steps: {names}", file=sys.stderr)
        return 2
    if not a.allow_no_gpu:
        import torch

        if not torch.cuda.is_available():
            print("gpu_suite.py: no CUDA device here; run it on a GPU machine (--allow-no-gpu runs the "
                  "plumbing anyway)", file=sys.stderr)
            return 2
    results = a.results or (Path("/tmp/gpu_suite") if a.quick else RESULTS)
    steps = [s for s in STEPS if not a.only or s.name in a.only]
    sys.path.insert(0, str(BENCH))
    import _common as C

    t0 = time.time()
    doc = C.result_header("gpu_suite", "every GPU measurement of the project, one command", t0)
    doc["steps"] = []
    summary_path = results / "suite.json"
    for step in steps:
        C.log(f"step {step.name}: {step.what}")
        rec = run_step(step, results, a.quick)
        C.log(f"step {step.name}: exit {rec['exit_code']} in {rec['seconds']} s")
        doc["steps"].append(rec)
        doc["wall_seconds"] = round(time.time() - t0, 1)
        json_write(summary_path, doc)
    C.log(f"wrote {summary_path}")
    return 0 if all(r["ok"] for r in doc["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
