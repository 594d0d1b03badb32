"""Structured vs block-sparse ResNet-50 on this CPU, exported and timed (latency only: random weights).

Candidates from torchvision's resnet50 (seeded random weights; no accuracy is claimed here):
- dense: `compress export torchvision:resnet50 --target cpu --batch 1` (onnxruntime, model.ort.onnx);
- structured ratio R (each of --ratios): `compress prune --ratio R` (l1, round_to 16), exported;
- block:32 at sparsity S (each of --sparsities): `compress sparsify --pattern block:32`: the 1x1 convs and the
  classifier run compress's block-sparse kernel inside onnxruntime (model.bsr.onnx, with the NCHW<->NHWC
  transposes a 1x1 conv needs), the 3x3 convs stay dense with the zeros in place.
Each artifact is timed at batch 1 (224x224) in lockstep with the dense one (compress/measure.py: one
onnxruntime worker per file, alternating blocks), 2 threads; `compress predict` with the shipped profile for
this CPU (block layers priced on the kernel from its sparse entries) is reported beside, with its error.

    python bench/resnet50_block.py                 # ~10 min on an idle 2-core VM
    python bench/resnet50_block.py --time-only     # re-time the artifacts of an earlier run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time

import _common as c

MODEL = "torchvision:resnet50"


cli = c.compress_cli


def expected(src: str, file: str) -> tuple[float | None, str]:
    """`compress predict` of the candidate with this CPU's shipped batch-1 profile: the block-sparse layers priced
    on the kernel (model.bsr.onnx) when the profile has entries measured with it."""
    p = subprocess.run([sys.executable, "-m", "compress", "predict", str(src), "--profile", "cpu-x86-2core-ort", "--batch", "1",
                        "--json"], cwd=c.ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        return None, p.stderr.strip()[-300:]
    d = json.loads(p.stdout)
    if file == "model.bsr.onnx":
        return d.get("predicted_sparse_kernel_ms"), d["profile_name"]
    return d["predicted_ms"], d["profile_name"]


def time_all(cands: dict, args) -> None:
    for v in cands.values():
        v["expected_ms"], v["expected_profile"] = expected(v["source"], v["file"])
    c.log("timing every artifact in lockstep")
    got = c.time_artifacts({k: str(c.Path(v["artifact"]) / v["file"]) for k, v in cands.items()}, args.threads,
                           args.rounds, args.passes)
    for k, t in got.items():
        exp = cands[k].get("expected_ms")
        cands[k] |= t | {"expected_error": round(exp / t["median_ms"] - 1, 4) if exp else None}
        c.log(f"{k}: {t['median_ms']:.2f} ms ({t['speedup_vs_dense']:.2f}x dense), expected {exp}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--work", default=str(c.TMP / "resnet50_block"))
    ap.add_argument("--out", default=str(c.RESULTS / "resnet50_block.json"))
    ap.add_argument("--time-only", action="store_true", help="re-time the artifacts of an earlier run")
    args = ap.parse_args()
    t_start = time.time()
    if args.time_only:
        out = json.loads(c.Path(args.out).read_text())
        time_all(out["candidates"], args)
        out["timing"] |= {"retimed": c.now(), "retime_command": c.command_line()}
    else:
        work = c.Path(args.work)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        cands = {}

        def add(name, src, file):
            art = work / f"{name}-art"
            cli("export", src, "--target", "cpu", "--runtimes", "ort", "--batch", "1", "--out", art)
            cands[name] = {"artifact": c.rel(art), "file": file, "source": src if src == MODEL else c.rel(src)}

        c.log("dense")
        add("dense", MODEL, "model.ort.onnx")
        for r in args.ratios:
            c.log(f"structured {r}")
            cli("prune", MODEL, "--ratio", r, "--out", work / f"structured{r}")
            add(f"structured@{r}", work / f"structured{r}", "model.ort.onnx")
        for s in args.sparsities:
            name = f"block{args.block}@{s}"
            c.log(name)
            cli("sparsify", MODEL, "--pattern", f"block:{args.block}", "--sparsity", s, "--out", work / name)
            add(name, work / name, "model.bsr.onnx")
        time_all(cands, args)
        out = c.result_header("resnet50_block", "ResNet-50 on this CPU: structured pruning vs block-sparse 1x1 convs "
                              "(compress's kernel in onnxruntime), exported and timed at batch 1", t_start)
        out |= {"model": MODEL, "batch": 1, "threads": args.threads, "weights": "random (seeded): latency only",
                "timing": {"rounds": args.rounds, "passes": args.passes, "protocol": "compress.measure lockstep"},
                "candidates": cands}
    out["loadavg_end"] = c.loadavg()
    out["wall_seconds"] = round(time.time() - t_start, 1)
    c.write_json(c.Path(args.out), out)
    c.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
