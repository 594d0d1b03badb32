"""Shared helpers for the benchmarks: model building, the pruning variants, machine info and
the alternating subprocess timing protocol. Not a benchmark itself."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TMP = BENCH / "tmp"
RESULTS = BENCH / "results" / "cpu"

ZOO = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
       "densenet121", "regnet_x_400mf", "convnext_tiny"]

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- models

def build(name: str):
    """A fresh torchvision model with random weights (seeded), canonicalised like `compress prune` does."""
    import torch
    import torchvision

    from compress.graph.canonical import canonicalize

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    canonicalize(model)
    return model


def example(batch: int = 1):
    import torch

    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 3, 224, 224, generator=g),)


def prune_ours(model, ratio: float, round_to: int, graph=None):
    """compress.prune.apply.prune with l1, uniform ratio. Returns (PruneResult, seconds).
    Pass `graph` (a previous result's) to skip tracing."""
    from compress.prune.plan import PruneConfig
    from compress.prune.apply import prune

    cfg = PruneConfig(ratio=ratio, criterion="l1", global_ranking=False, round_to=round_to)
    t0 = time.perf_counter()
    res = prune(model, example(1), cfg, round_to, {"model": "bench"}, graph=graph)
    return res, time.perf_counter() - t0


def classifier(model):
    """The final classifier nn.Linear (the last Linear in module order)."""
    from torch import nn

    lins = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return lins[-1]


def prune_tp(model, ratio: float, round_to: int | None):
    """Torch-Pruning's uniform magnitude (L1) pruner, the final classifier ignored.
    Prunes `model` in place. Returns (model, seconds)."""
    import torch_pruning as tp

    t0 = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        model, example(1), importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio, ignored_layers=[classifier(model)], round_to=round_to)
    pruner.step()
    return model.eval(), time.perf_counter() - t0


def macs(model) -> int:
    from compress.metrics import count_macs

    return count_macs(model, example(1))


def export(model, path: Path) -> None:
    from compress.export.onnx import export_onnx

    export_onnx(model, example(1), str(path))


def output_shape(model) -> tuple:
    import torch

    with torch.no_grad():
        return tuple(model(*example(1)).shape)


def check_runs(model, ref_shape) -> None:
    import torch

    with torch.no_grad():
        out = model(*example(2))
    if tuple(out.shape[1:]) != tuple(ref_shape[1:]):
        raise RuntimeError(f"pruned output shape {tuple(out.shape)} != dense {tuple(ref_shape)}")


# --------------------------------------------------------------------------- metadata

def machine_info() -> dict:
    from compress.machine import cpuinfo

    info = cpuinfo()
    cpu, flags = info.model_name("unknown"), set(info.flags)
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags]
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": isa, "platform": platform.platform()}


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "onnxruntime", "torch-pruning", "onnx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        out["compress"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                         capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["compress"] = None
    return out


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def command_line() -> str:
    rel = os.path.relpath(sys.argv[0], ROOT)
    return " ".join(["python", rel] + sys.argv[1:])


def write_json(path: Path, data: dict) -> None:
    from compress.io import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


# --------------------------------------------------------------------------- timing

def _block(proto: dict):
    """The compress.measure.Block of a timing protocol dict: `warmup` runs, then per block `runs` runs (a
    small model keeps running until `min_seconds`, default 0.3 s, is timed, at most 50 x `runs`; warm-up
    likewise lasts at least a third of it, at most 50 x `warmup` runs: a 0.1 ms network's 15 runs are
    1.5 ms, too short to settle), stopped early after `max_seconds` (0: no cap) once `min_runs` are done."""
    from compress.measure import Block

    min_s = proto.get("min_seconds", 0.3)
    return Block(runs=proto["runs"], min_seconds=min_s, max_runs=50 * proto["runs"],
                 max_seconds=proto.get("max_seconds", 0), min_runs=proto.get("min_runs", 3),
                 warmup=proto["warmup"], warmup_seconds=min_s / 3, warmup_max_runs=50 * max(proto["warmup"], 1),
                 threads=proto.get("threads", 0))


def _annotate(m: dict) -> dict:
    return m | {"load1": loadavg()[:1]}


def time_once(path: Path, batch: int, proto: dict) -> dict:
    """One measurement in a fresh process (a compress.measure worker timing one block): median ms over
    the timed iterations."""
    from compress.measure import lockstep

    return lockstep([(0, path, batch, f"{Path(path).name} batch {batch}")], _block(proto), 1, 1,
                    annotate=_annotate)[0][0]


def alternate(jobs: list[tuple], proto: dict) -> dict:
    """Time every job (key, path, batch) once per round, round-robin (A, B, C, ... then again),
    rotating the starting job each round, each measurement in a fresh process (compress.measure.lockstep
    with one round per pass, `proto["rounds"]` passes). Returns key -> list of per-round measurements."""
    from compress.measure import lockstep

    return lockstep([(key, path, batch, f"{Path(path).name} batch {batch}") for key, path, batch in jobs],
                    _block(proto), 1, proto["rounds"], annotate=_annotate)


def alternate_workers(jobs: list[tuple], proto: dict, passes: int = 2) -> dict:
    """Like `alternate`, but each job (key, path, batch) gets a timing worker, its own process with
    its session loaded once, and the workers time one block each in turn,
    round-robin, `proto["rounds"]` rounds per pass; every pass starts fresh workers (a process's own
    placement and allocations can bias it). Only one session runs at a time, and a drift of the
    machine's speed over minutes (seen on shared VMs: the same file 30% faster a few minutes later)
    falls on neighbouring blocks of every job alike, which fresh-process rounds cannot promise.
    Returns key -> list of per-block measurements (passes x rounds). The harness is
    compress.measure.lockstep, which `compress plan --measure` and the release gate use too."""
    from compress.measure import lockstep

    return lockstep([(key, path, batch, f"{Path(path).name} batch {batch}") for key, path, batch in jobs],
                    _block(proto), proto["rounds"], passes, annotate=_annotate)


def summarize(meas: list[dict]) -> dict:
    """Median over rounds of the per-measurement medians, min/max over rounds as the spread;
    `best_ms` is the median over rounds of the per-measurement fastest iteration (less noise-sensitive)."""
    med = [m["median_ms"] for m in meas]
    return {"median_ms": round(statistics.median(med), 3), "min_ms": round(min(med), 3),
            "max_ms": round(max(med), 3), "best_ms": round(statistics.median(m["min_ms"] for m in meas), 3),
            "cpu_ms": round(statistics.median(m["cpu_ms"] for m in meas), 3),
            "rounds_ms": [round(x, 3) for x in med], "runs": [m["runs"] for m in meas],
            "load1": [m["load1"][0] if m["load1"] else None for m in meas]}


def error_stats(errors: list[float]) -> dict:
    """n, median and largest |error|, mean signed error of relative errors (predicted / measured - 1)."""
    a = sorted(abs(x) for x in errors)
    if not a:
        return {"n": 0}
    return {"n": len(a), "median_abs_error": round(statistics.median(a), 4), "max_abs_error": round(a[-1], 4),
            "mean_signed_error": round(statistics.mean(errors), 4)}


def derived(dense: dict, lat: dict, dense_macs: int, macs: int, pairs: list | None = None) -> dict:
    """efficiency: from medians over rounds (the headline), or with `pairs` ((dense block, variant
    block) of the same round, from alternate_workers) from the median over rounds of their speedup.
    efficiency_min: from the fastest round of each (contention only adds time and the shared machine
    switches between quiet and loaded phases, so the fastest round estimates unloaded latency).
    efficiency_best: from the median over rounds of each measurement's fastest iteration."""
    red = dense_macs / macs
    speedup = dense["median_ms"] / lat["median_ms"]
    out = {"mac_reduction": round(red, 4)}
    if pairs:
        paired = statistics.median(d["median_ms"] / v["median_ms"] for d, v in pairs)
        out |= {"speedup_of_medians": round(speedup, 4), "speedup_per_round": [
            round(d["median_ms"] / v["median_ms"], 4) for d, v in pairs]}
        speedup = paired
    return out | {"speedup": round(speedup, 4), "efficiency": round(speedup / red, 4),
                  "efficiency_min": round(dense["min_ms"] / lat["min_ms"] / red, 4),
                  "efficiency_best": round(dense["best_ms"] / lat["best_ms"] / red, 4)}


def rel(path) -> str:
    """`path` relative to the repository root when it lies inside it (results JSON name no machine paths)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def time_artifacts(files: dict[str, str], threads: int, rounds: int, passes: int, dense: str = "dense") -> dict:
    """Time exported ONNX files in lockstep (compress/measure.py: one onnxruntime worker per file, alternating
    blocks) at batch 1; paths relative to the repository root or absolute: {key: median_ms, min/max block ms, speedup over `dense`, the load average}."""
    from compress.measure import Block, block_ms

    got = block_ms([(k, str(ROOT / f), 1) for k, f in files.items()], Block(threads=threads), rounds, passes)
    dense_ms = statistics.median(got[dense])
    return {k: {"median_ms": round(statistics.median(ms), 3), "min_block_ms": round(min(ms), 3),
                "max_block_ms": round(max(ms), 3), "speedup_vs_dense": round(dense_ms / statistics.median(ms), 3),
                "timed_loadavg": loadavg()} for k, ms in got.items()}


def compress_cli(*args) -> str:
    """`python -m compress ARGS` from the repository root, offline; its stdout, or exit with its error's tail."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "compress", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"compress {' '.join(map(str, args[:2]))} failed: {p.stderr.strip()[-800:]}")
    return p.stdout


def lockstep_args(ap) -> None:
    """The lockstep timing options of the benches that time ONNX files with alternate_workers."""
    ap.add_argument("--rounds", type=int, default=4, help="round-robin rounds per pass (blocks per file)")
    ap.add_argument("--passes", type=int, default=2, help="fresh sets of timing workers")
    ap.add_argument("--runs", type=int, default=10, help="timed iterations per block (median)")
    ap.add_argument("--max-seconds", type=float, default=2.5, help="per block, stop after this (at least 3 runs)")
    ap.add_argument("--warmup", type=int, default=2)


def distill_and_timing_args(ap) -> None:
    """The options of the MiniLM benchmarks that distil candidates and time their artifacts in lockstep."""
    ap.add_argument("--distill-sentences", type=int, default=1500)
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--eval-sentences", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads when timing")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch threads for distillation")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--passes", type=int, default=2)


def gradual_block_remask(model, layers: dict, total_steps: int):
    """An `after_step` for a training loop: gradual magnitude pruning of whole blocks (Zhu & Gupta 2017). Each
    layer of `layers` (name -> (block, density)) starts dense; its block sparsity rises on the cubic ramp
    (compress.sparse.schedule.cubic_sparsity) over the first 3/4 of `total_steps` to 1 - density, the blocks
    of least norm re-selected every 10 steps and once when the ramp ends; every step re-applies the masks."""
    import torch

    from compress.lower import formats as F
    from compress.sparse.schedule import cubic_sparsity

    ramp = max(1.0, 0.75 * total_steps)         # a ramp shorter than one step ends at the first step
    masks = {n: torch.ones_like(model.get_submodule(n).weight) for n in layers}
    state = {"step": 0, "final": False}

    def remask():
        state["step"] += 1
        done = state["step"] >= ramp
        with torch.no_grad():
            for n, (block, density) in layers.items():
                w = model.get_submodule(n).weight
                if state["step"] % 10 == 0 or (done and not state["final"]):
                    keep = 1.0 - cubic_sparsity(1.0 - density, state["step"], ramp)
                    masks[n] = F.block_mask_full(F.select_blocks(w.abs(), block, keep), block, tuple(w.shape)).to(w.dtype)
                w.mul_(masks[n])
        state["final"] = state["final"] or done

    return remask


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def nchwc_stats(path: Path) -> dict:
    """How onnxruntime's CPU graph optimiser lays out the convolutions of one ONNX file.

    With ORT_ENABLE_ALL, MLAS moves convolutions into the blocked NCHWc layout (block 8 on AVX2,
    16 on AVX-512) only when their channel counts are multiples of the block; the others run as
    plain NCHW convs with Reorder nodes at each layout change. Returns counts from the optimised graph."""
    import onnx
    import onnxruntime as ort

    opt = path.with_name(path.stem + "_opt.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.optimized_model_filepath = str(opt)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(opt)).graph.node
    opt.unlink(missing_ok=True)
    convs = [n for n in nodes if n.op_type in ("Conv", "FusedConv")]
    return {"convs": len(convs), "nchwc_convs": sum(n.domain == "com.microsoft.nchwc" for n in convs),
            "reorders": sum(n.op_type in ("ReorderInput", "ReorderOutput") for n in nodes)}


def result_header(benchmark: str, question: str, t_start: float) -> dict:
    """The fields every results JSON starts with: what, when, on which machine and versions."""
    return {"benchmark": benchmark, "question": question, "command": command_line(), "date": now(),
            "wall_seconds": round(time.time() - t_start, 1), "machine": machine_info(), "versions": versions()}
