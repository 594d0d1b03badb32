"""Our Triton block-sparse matmul vs dense cuBLAS vs torch's own BSR matmul on a CUDA GPU.

Question: at which block sparsity does Y = X @ W^T (W block-sparse, fp16) beat dense cuBLAS, and by
how much does our kernel beat torch's own BSR matmul (torch.sparse._triton_ops.bsr_dense_mm, or
torch.sparse.mm where that is missing)? Shapes (out x in features): 4096x4096, and the LLM MLP
shapes 4096x11008 / 11008x4096 (LLaMA-7B up/down projections), 2048 tokens; BSR blocks
16/32/64/128; block sparsity 50-95%.

Per point: a random block mask with exactly round((1 - s) * blocks) nonzero blocks (seeded), then
a correctness check of every method against an fp32 dense reference *before* timing (a method that
is wrong is not timed; ours being wrong makes the exit code 1), then timing: rounds of
triton.testing.do_bench (L2 flushed between calls, median of the timed calls) over the methods in
rotated order; the median over rounds is reported with min/max as the spread. Effective TFLOP/s
counts the dense work (2 * tokens * N * K) so it is comparable across sparsities; `tflops_nonzero`
counts only the nonzero blocks. Results: bench/results/gpu/bsr.json (rewritten after every shape, so
a run cut short keeps what it finished; "complete" says whether it did).

    python bench/bsr_gpu.py                       # full grid (~5 min on an H100)
    python bench/bsr_gpu.py --quick --out /tmp/bsr_gpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

OUT = C.BENCH / "results" / "gpu" / "bsr.json"
SHAPES = ["4096x4096", "4096x11008", "11008x4096"]
BLOCKS = [16, 32, 64, 128]
SPARSITIES = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
# The bars: (block, sparsity, method compared, minimum speedup of ours over it)
BARS = [(64, 0.5, "dense", 1.0), (32, 0.6, "dense", 1.0)] + [(b, 0.9, "torch_bsr", 1.5) for b in BLOCKS]
TOL = 1e-2  # fp16 output vs fp32 reference, relative to max |ref| + 1


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=SHAPES, help="NxK (out_features x in_features)")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--blocks", nargs="+", type=int, default=BLOCKS)
    p.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    p.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup-ms", type=int, default=10)
    p.add_argument("--rep-ms", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4096x4096, blocks 32/64, sparsity 0.5/0.9, 2 rounds")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--device", default="cuda", help="cpu only checks the script itself (tiny shapes, "
                   "kernel in Triton's interpreter, wall-clock timer); its numbers mean nothing")
    a = p.parse_args(argv)
    if a.quick:
        a.shapes, a.blocks, a.sparsities, a.rounds = ["4096x4096"], [32, 64], [0.5, 0.9], 2
    return a


def gpu_info() -> dict:
    import torch

    import triton

    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "triton": triton.__version__, "torch": torch.__version__,
            "allow_fp16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction}


def make_weight(n: int, k: int, block: int, sparsity: float, dtype, seed: int, device: str = "cuda"):
    """Dense W (n, k) with exactly round((1 - sparsity) * blocks) random nonzero blocks, and its BSR form."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    nbr, nbc = n // block, k // block
    keep = round((1 - sparsity) * nbr * nbc)
    order = torch.randperm(nbr * nbc, generator=g, device=device)[:keep]
    mask = torch.zeros(nbr * nbc, dtype=torch.bool, device=device)
    mask[order] = True
    mask = mask.view(nbr, nbc)
    w = torch.randn(n, k, generator=g, device=device, dtype=torch.float32) / k ** 0.5
    w = (w.view(nbr, block, nbc, block) * mask[:, None, :, None]).view(n, k).to(dtype)
    crow = torch.zeros(nbr + 1, dtype=torch.int64, device=device)
    crow[1:] = torch.cumsum(mask.sum(1), 0)
    col = torch.nonzero(mask)[:, 1].contiguous()
    values = w.view(nbr, block, nbc, block).permute(0, 2, 1, 3)[mask].contiguous()
    bsr = torch.sparse_bsr_tensor(crow, col, values, size=(n, k))
    return w, bsr, keep / (nbr * nbc)


def methods(x, w, bsr):
    """name -> (callable returning Y (tokens, N) or its transpose, description)."""
    import torch

    from compress.kernels import bsr_linear
    from compress.kernels import bsr_matmul as bm

    crow, col, values = bsr.crow_indices(), bsr.col_indices(), bsr.values()
    n = w.shape[0]
    out = {
        "dense": (lambda: torch.matmul(x, w.t()), "torch.matmul (cuBLAS)"),
        "ours": (lambda: bm.launch_linear(x, crow, col, values, n, None), "compress Triton kernel (autotuned)"),
        "ours_op": (lambda: bsr_linear(x, bsr), "compress.kernels.bsr_linear (custom-op dispatch + kernel)"),
    }
    try:
        from torch.sparse._triton_ops import bsr_dense_mm as torch_triton_mm

        out["torch_bsr"] = (lambda: torch_triton_mm(bsr, x.t()).t(), "torch.sparse._triton_ops.bsr_dense_mm")
    except ImportError:
        out["torch_bsr"] = (lambda: torch.sparse.mm(bsr, x.t()).t(), "torch.sparse.mm (cuSPARSE)")
    return out


def rel_err(y, ref) -> float:
    return float((y.float() - ref).abs().max()) / (float(ref.abs().max()) + 1.0)


def bench_ms(fn, args) -> float:
    """Median ms of fn: triton.testing.do_bench on CUDA (L2 flushed between calls); a wall-clock
    median on CPU (script check only)."""
    if args.device == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_point(x, w, bsr, density, args) -> dict:
    from compress.errors import first_line
    from compress.kernels import bsr_matmul as bm

    ref = x.float() @ w.float().t()
    ms = methods(x, w, bsr)
    entry = {"density": round(density, 6), "methods": {}}
    ok = {}
    for name, (fn, desc) in ms.items():
        try:
            y = fn()
            sync(args.device)
            err = rel_err(y, ref)
            ok[name] = err <= TOL
            entry["methods"][name] = {"what": desc, "max_rel_err": round(err, 6), "correct": ok[name]}
        except Exception as exc:  # torch's own path may reject a shape/dtype: record it, time the others
            ok[name] = False
            entry["methods"][name] = {"what": desc, "error": f"{type(exc).__name__}: {first_line(exc, 300, strip=False, empty='')}"}
    del ref
    timed = [k for k in ms if ok[k]]
    samples = {k: [] for k in timed}
    for r in range(args.rounds):
        order = timed[r % len(timed):] + timed[:r % len(timed)] if timed else []
        for k in order:
            samples[k].append(bench_ms(ms[k][0], args))
    flops = 2.0 * x.shape[0] * w.shape[0] * w.shape[1]
    for k in timed:
        med = statistics.median(samples[k])
        entry["methods"][k].update({"median_ms": round(med, 5), "min_ms": round(min(samples[k]), 5),
                                    "max_ms": round(max(samples[k]), 5), "rounds_ms": [round(s, 5) for s in samples[k]],
                                    "tflops_effective": round(flops / med / 1e9, 2),
                                    "tflops_nonzero": round(flops * density / med / 1e9, 2)})
    t = {k: entry["methods"][k].get("median_ms") for k in ms}
    if t.get("ours"):
        for other in ("dense", "torch_bsr", "ours_op"):
            if t.get(other):
                entry[f"speedup_vs_{other}"] = round(t[other] / t["ours"], 3)
    block = bsr.values().shape[-1]
    entry["config"] = bm.best_config(block, x.shape[0], w.shape[0], w.shape[1], x.dtype, nnz=int(bsr.values().shape[0]))
    entry["ours_correct"] = ok.get("ours", False)
    return entry


def bars(entries: list[dict]) -> list[dict]:
    out = []
    for block, sp, other, need in BARS:
        for e in entries:
            if e["block"] == block and abs(e["sparsity"] - sp) < 1e-9:
                got = e.get(f"speedup_vs_{other}")
                out.append({"shape": e["shape"], "block": block, "sparsity": sp, "vs": other, "need": need,
                            "speedup": got, "met": None if got is None else got >= need})
    return out


def main(argv=None) -> int:
    args = parse(argv)
    from gpu_suite import ensure_compress_packages

    ensure_compress_packages()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bsr_gpu.py: no CUDA device; run it on a GPU machine (CPU numbers: bench/bsr_cpu.py)", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    t0 = time.time()
    doc = C.result_header("bsr_gpu", "fp16 Y = X @ W^T with block-sparse W: our Triton kernel vs dense cuBLAS "
                          "vs torch's own BSR matmul; break-even sparsity and speedups", t0)
    doc.update({"gpu": gpu_info() if args.device == "cuda" else None, "device": args.device,
                "complete": False, "entries": [],
                "protocol": {"tokens": args.tokens, "dtype": args.dtype, "rounds": args.rounds,
                             "do_bench": {"warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms, "return_mode": "median"},
                             "tolerance": TOL, "seed": args.seed,
                             "order": "methods rotated each round; median over rounds"}})
    failures = 0
    for si, shape in enumerate(args.shapes):
        n, k = (int(v) for v in shape.lower().split("x"))
        g = torch.Generator(device=args.device).manual_seed(args.seed + 1000 + si)
        x = torch.randn(args.tokens, k, generator=g, device=args.device).to(dtype)
        for block in args.blocks:
            if n % block or k % block:
                C.log(f"skip {shape} block {block}: not divisible")
                continue
            for sp in args.sparsities:
                w, bsr, density = make_weight(n, k, block, sp, dtype, args.seed + block + int(sp * 1000), args.device)
                e = {"shape": shape, "n": n, "k": k, "tokens": args.tokens, "block": block, "sparsity": sp,
                     "loadavg": list(os.getloadavg())}
                e.update(run_point(x, w, bsr, density, args))
                failures += not e["ours_correct"]
                doc["entries"].append(e)
                C.log(f"{shape} b{block} s{sp}: " + ", ".join(
                    f"{m} {v['median_ms']:.3f} ms" for m, v in e["methods"].items() if "median_ms" in v)
                      + f"  speedup vs dense {e.get('speedup_vs_dense')} vs torch {e.get('speedup_vs_torch_bsr')}")
                del w, bsr
        doc["wall_seconds"] = round(time.time() - t0, 1)
        doc["bars"] = bars(doc["entries"])
        C.write_json(args.out, doc)
    doc["complete"] = True
    doc["wall_seconds"] = round(time.time() - t0, 1)
    doc["bars"] = bars(doc["entries"])
    doc["ours_incorrect_points"] = failures
    C.write_json(args.out, doc)
    C.log(f"wrote {args.out} ({len(doc['entries'])} points, {failures} incorrect)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
