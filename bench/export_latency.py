"""How does TVM's CPU build of an exported model compare with onnxruntime's?

For a few zoo CNNs (torchvision, random weights), pruned by compress (l1, uniform ratio, round_to = the
cpu channel step): the ONNX that `compress export --target cpu` writes, onnxruntime's optimised model
(ORT_ENABLE_EXTENDED, as in the artifact), and TVM Relax builds for this host, untuned (no MetaSchedule):
`llvm` (generic x86-64, what the artifact ships) and `llvm -mcpu=<this CPU>` (LLVM may use AVX2/FMA).
Each runtime runs in its own fresh process (export/run_ort.py, export/run_tvm.py: warm-up, then the
median of N runs), one thread each, runtimes alternated round-robin over several rounds; we report the
median over rounds and tvm_vs_ort = TVM median / onnxruntime median (> 1: TVM is slower).

    nice -n -10 python bench/export_latency.py          # ~15 min on a quiet 2-core VM
    python bench/export_latency.py --models resnet18 --rounds 1 --runs 3 --out /tmp/el.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import _common as c

MODELS = ["resnet18", "mobilenet_v2", "regnet_x_400mf"]
EXPORT = c.ROOT / "export"


def run_one(cmd: list[str], env: dict) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {p.stderr.strip()[-400:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["load1"] = c.loadavg()[:1]
    return out


def build_variants(name: str, ratio: float, d, log) -> dict:
    import numpy as np
    import torch
    import tvm
    from tvm.target import codegen

    from compress.export import ort
    from compress.export import tvm_relax as tvmx
    from compress.export.onnx import export_onnx
    from compress.hardware_profiles import channel_step

    model = c.build(name)
    dense_macs = c.macs(model)
    res, t_prune = c.prune_ours(model, ratio, channel_step("cpu"))
    pruned = res.model.eval()
    x = c.example(1)
    onnx_path, opt_path = d / f"{name}.onnx", d / f"{name}.ort.onnx"
    export_onnx(pruned, x, str(onnx_path))
    ort.optimize(str(onnx_path), str(opt_path))
    with torch.no_grad():
        ref = pruned(*x).numpy()
    info = {"model": f"torchvision:{name}", "ratio": ratio, "macs_dense": dense_macs, "macs": c.macs(pruned),
            "prune_seconds": round(t_prune, 2), "files": {"onnxruntime": str(opt_path)}, "builds": {}, "parity": {}}
    info["parity"]["onnxruntime"] = ort.compare(ort.run(str(opt_path), [x[0].numpy()], optimized=True), ref, 1e-4)
    cpu = codegen.llvm_get_system_cpu()
    for key, target in (("tvm_llvm", {"kind": "llvm"}), (f"tvm_llvm_{cpu}", {"kind": "llvm", "mcpu": cpu})):
        lib = d / f"{name}_{key}.so"
        log(f"{name}: TVM build {target}")
        t0 = time.perf_counter()
        tvmx.build(str(onnx_path), tvm.target.Target(target), str(lib))
        info["builds"][key] = {"target": target, "seconds": round(time.perf_counter() - t0, 1)}
        info["files"][key] = str(lib)
        info["parity"][key] = ort.compare(tvmx.run(str(lib), [x[0].numpy()]), ref, 1e-4)
    np.save(d / f"{name}_x.npy", x[0].numpy())
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(c.RESULTS / "export_latency.json"))
    a = ap.parse_args()
    t_start = time.time()
    d = c.TMP / "export_latency"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    env = dict(os.environ, TVM_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    entries = []
    for name in a.models:
        c.log(f"{name}: prune, export, build")
        info = build_variants(name, a.ratio, d, c.log)
        common = ["--shape", "1,3,224,224", "--runs", str(a.runs), "--warmup", str(a.warmup)]
        jobs = {"onnxruntime": [sys.executable, str(EXPORT / "run_ort.py"), info["files"]["onnxruntime"],
                                "--threads", str(a.threads)] + common}
        for key in info["builds"]:
            jobs[key] = [sys.executable, str(EXPORT / "run_tvm.py"), info["files"][key], "--device", "cpu"] + common
        keys = list(jobs)
        samples = {k: [] for k in keys}
        for r in range(a.rounds):
            for i in range(len(keys)):
                k = keys[(i + r) % len(keys)]
                samples[k].append(run_one(jobs[k], env))
                c.log(f"{name} round {r}: {k} {samples[k][-1]['median_ms']:.2f} ms")
        lat = {k: {"median_ms": round(statistics.median(m["median_ms"] for m in v), 3),
                   "min_ms": round(min(m["min_ms"] for m in v), 3),
                   "rounds_ms": [round(m["median_ms"], 3) for m in v], "load1": [m["load1"][0] for m in v]}
               for k, v in samples.items()}
        ort_ms = lat["onnxruntime"]["median_ms"]
        info["latency"] = lat
        info["tvm_vs_ort"] = {k: round(lat[k]["median_ms"] / ort_ms, 2) for k in info["builds"]}
        info.pop("files")
        entries.append(info)
    out = c.result_header("export_latency", "TVM (Relax, llvm, untuned) vs onnxruntime latency on this CPU "
                          "for pruned zoo CNNs, batch 1", t_start)
    out["versions"]["apache-tvm"] = __import__("importlib.metadata").metadata.version("apache-tvm")
    out["protocol"] = {"rounds": a.rounds, "runs": a.runs, "warmup": a.warmup, "threads": a.threads, "batch": 1,
                       "process": "fresh process per measurement, runtimes alternated round-robin",
                       "ort_level": "ORT_ENABLE_EXTENDED (the artifact's model.ort.onnx)",
                       "tvm": "relax.build default pipeline, no tuning"}
    out["loadavg_end"] = c.loadavg()
    out["results"] = entries
    c.write_json(__import__("pathlib").Path(a.out), out)
    for e in entries:
        print(f"{e['model']}: onnxruntime {e['latency']['onnxruntime']['median_ms']:.2f} ms, "
              + ", ".join(f"{k} {e['latency'][k]['median_ms']:.2f} ms ({e['tvm_vs_ort'][k]}x)" for k in e["builds"]))
    c.log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
