"""Dense vs torch's CPU block-sparse (BSR) matmul, at the grid of bench/bsr_gpu.py.

Question: on this CPU, at which block sparsity does torch's native BSR matmul (MKL sparse BLAS,
fp32: torch has no 16-bit CPU BSR kernel) beat the dense matmul for Y = X @ W^T? The answer is
what a CPU backend choice between "bsr" and "dense" per layer should follow.

Shapes are the GPU script's scaled down 4x (1024x1024, 1024x2688, 2688x1024; out x in features),
256 tokens, blocks 16/32/64/128, block sparsity 50-95%, fp32. Protocol: per shape, each method
(dense / bsr) runs in its own fresh process per round, the two alternated (A B, then B A, ...);
in a process every point is checked against dense (fp64 reference) before it is timed, warmed
up, then timed (median of the runs, at most --max-seconds per point, at least 3 runs); reported:
median over rounds with min/max. torch threads: --threads (default 1: the machine is shared).
Results: bench/results/cpu/bsr.json.

    nice -n -10 python bench/bsr_cpu.py                 # ~5 min on a quiet 2-core VM
    python bench/bsr_cpu.py --shapes 512x512 --rounds 1 --out /tmp/bsr_cpu.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

OUT = C.RESULTS / "bsr.json"
SHAPES = ["1024x1024", "1024x2688", "2688x1024"]
BLOCKS = [16, 32, 64, 128]
SPARSITIES = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=SHAPES)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--blocks", nargs="+", type=int, default=BLOCKS)
    p.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=1.0, help="cap on timed seconds per point (>= 3 runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--worker", choices=["dense", "bsr"], help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- worker (one process)

def make_weight(n: int, k: int, block: int, sparsity: float, seed: int):
    """Dense fp32 W (n, k) with exactly round((1 - sparsity) * blocks) random nonzero blocks, and its BSR."""
    import torch

    g = torch.Generator().manual_seed(seed)
    nbr, nbc = n // block, k // block
    keep = round((1 - sparsity) * nbr * nbc)
    mask = torch.zeros(nbr * nbc, dtype=torch.bool)
    mask[torch.randperm(nbr * nbc, generator=g)[:keep]] = True
    mask = mask.view(nbr, nbc)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    w = (w.view(nbr, block, nbc, block) * mask[:, None, :, None]).view(n, k)
    crow = torch.zeros(nbr + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(mask.sum(1), 0)
    col = torch.nonzero(mask)[:, 1].contiguous()
    values = w.view(nbr, block, nbc, block).permute(0, 2, 1, 3)[mask].contiguous()
    return w, torch.sparse_bsr_tensor(crow, col, values, size=(n, k)), keep / (nbr * nbc)


def time_fn(fn, args) -> dict:
    for _ in range(args.warmup):
        fn()
    times, t_start = [], time.perf_counter()
    while len(times) < args.runs and (len(times) < 3 or time.perf_counter() - t_start < args.max_seconds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": len(times)}


def worker(args) -> int:
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
    torch.set_num_threads(args.threads)
    n, k = (int(v) for v in args.shape.split("x"))
    x = torch.randn(args.tokens, k, generator=torch.Generator().manual_seed(args.seed + n + k))
    out = {}
    with torch.inference_mode():
        if args.worker == "dense":
            w, _, _ = make_weight(n, k, 64 if n % 64 == 0 and k % 64 == 0 else 16, 0.5, args.seed)
            out["dense"] = time_fn(lambda: torch.nn.functional.linear(x, w), args)
        else:
            for block in args.blocks:
                if n % block or k % block:
                    continue
                for sp in args.sparsities:
                    w, bsr, density = make_weight(n, k, block, sp, args.seed + block + int(sp * 1000))
                    y = (bsr @ x.t()).t()  # what compress.kernels uses on CPU (F.linear(x, bsr) is ~5-20x slower)
                    ref = x.double() @ w.double().t()
                    err = float((y.double() - ref).abs().max()) / (float(ref.abs().max()) + 1)
                    rec = {"density": round(density, 6), "max_rel_err": err, "correct": err <= 1e-5}
                    if rec["correct"]:
                        rec.update(time_fn(lambda: (bsr @ x.t()).t(), args))
                    out[f"{block}/{sp}"] = rec
    print(json.dumps(out))
    return 0


# --------------------------------------------------------------------------- driver

def run_worker(kind: str, shape: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--shape", shape, "--tokens", str(args.tokens),
           "--runs", str(args.runs), "--warmup", str(args.warmup), "--max-seconds", str(args.max_seconds),
           "--threads", str(args.threads), "--seed", str(args.seed), "--blocks", *map(str, args.blocks),
           "--sparsities", *map(str, args.sparsities)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{kind} worker for {shape} failed: {p.stderr.strip()[-800:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    for v in res.values():
        v["load1"] = C.loadavg()[:1]
    return res


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        return worker(args)
    import torch

    t0 = time.time()
    doc = C.result_header("bsr_cpu", "At which block sparsity does torch's CPU BSR matmul (fp32) beat dense "
                          "for Y = X @ W^T, per block size?", t0)
    doc["versions"]["mkl"] = torch.backends.mkl.is_available()
    doc["protocol"] = {"tokens": args.tokens, "dtype": "float32", "rounds": args.rounds, "runs": args.runs,
                       "warmup": args.warmup, "max_seconds": args.max_seconds, "threads": args.threads,
                       "seed": args.seed, "order": "per shape: dense and bsr processes alternated, A B then B A",
                       "bsr_call": "(w_bsr @ x.t()).t() (torch.sparse_bsr weight, int64 indices, MKL; the call "
                                   "compress.kernels makes on CPU)",
                       "dense_call": "torch.nn.functional.linear(x, w)"}
    entries, incorrect = [], 0
    for shape in args.shapes:
        n, k = (int(v) for v in shape.split("x"))
        samples = {"dense": [], "bsr": []}
        for r in range(args.rounds):
            for kind in (("dense", "bsr") if r % 2 == 0 else ("bsr", "dense")):
                samples[kind].append(run_worker(kind, shape, args))
            C.log(f"{shape} round {r + 1}/{args.rounds} done")
        dense_ms = [s["dense"]["median_ms"] for s in samples["dense"]]
        dense = {"median_ms": round(statistics.median(dense_ms), 3), "min_ms": round(min(dense_ms), 3),
                 "max_ms": round(max(dense_ms), 3), "load1": [s["dense"]["load1"][0] for s in samples["dense"]]}
        flops = 2.0 * args.tokens * n * k
        for key in samples["bsr"][0]:
            block, sp = key.split("/")
            recs = [s[key] for s in samples["bsr"]]
            e = {"shape": shape, "n": n, "k": k, "tokens": args.tokens, "block": int(block), "sparsity": float(sp),
                 "density": recs[0]["density"], "max_rel_err": max(r["max_rel_err"] for r in recs),
                 "correct": all(r["correct"] for r in recs), "dense": dense}
            if e["correct"]:
                ms = [r["median_ms"] for r in recs]
                med = statistics.median(ms)
                e["bsr"] = {"median_ms": round(med, 3), "min_ms": round(min(ms), 3), "max_ms": round(max(ms), 3),
                            "rounds_ms": [round(m, 3) for m in ms], "runs": [r["runs"] for r in recs],
                            "load1": [r["load1"][0] for r in recs]}
                e["speedup_vs_dense"] = round(dense["median_ms"] / med, 3)
                e["speedup_vs_dense_min"] = round(dense["min_ms"] / min(ms), 3)
                e["gflops_effective"] = {"dense": round(flops / dense["median_ms"] / 1e6, 2),
                                         "bsr": round(flops / med / 1e6, 2)}
            else:
                incorrect += 1
            entries.append(e)
    doc["entries"] = entries
    doc["break_even"] = break_even(entries)
    doc["incorrect_points"] = incorrect
    doc["wall_seconds"] = round(time.time() - t0, 1)
    C.write_json(args.out, doc)
    for row in doc["break_even"]:
        C.log(f"{row['shape']} block {row['block']}: BSR faster than dense from sparsity {row['from_sparsity']} "
              f"(best speedup {row['best_speedup']} at {row['best_at']})")
    C.log(f"wrote {args.out}")
    return 1 if incorrect else 0


def break_even(entries: list[dict]) -> list[dict]:
    """Per shape and block: the lowest measured sparsity from which BSR stays faster than dense."""
    out = []
    for shape in dict.fromkeys(e["shape"] for e in entries):
        for block in dict.fromkeys(e["block"] for e in entries if e["shape"] == shape):
            pts = sorted((e["sparsity"], e.get("speedup_vs_dense")) for e in entries
                         if e["shape"] == shape and e["block"] == block)
            frm = None
            for i, (sp, _) in enumerate(pts):
                if all(s is not None and s > 1.0 for _, s in pts[i:]):
                    frm = sp
                    break
            best = max((p for p in pts if p[1] is not None), key=lambda p: p[1], default=(None, None))
            out.append({"shape": shape, "block": block, "from_sparsity": frm, "best_speedup": best[1],
                        "best_at": best[0]})
    return out


if __name__ == "__main__":
    sys.exit(main())
