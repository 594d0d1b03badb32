"""Does `compress export` hold its bars for the whole zoo, driven through the CLI a user runs?

Per model (the 8 torchvision CNNs with seeded random weights, and all-MiniLM-L6-v2 from the packaged
`hf:minilm`), each step a `python -m compress ...` subprocess in the repository root:

0. (CNNs) a weights file: torchvision's init with random norm statistics, since with torchvision's
   identity BatchNorm MobileNet/EfficientNet outputs are ~1e-9 and parity would hold for any runtime;
1. `compress prune MODEL [--weights W] --ratio R --out pruned`;
2. `compress export pruned --target cpu`: parity of onnxruntime (model.onnx, model.ort.onnx) and the
   TVM llvm library against torch, read from manifest.json (max abs / rel error over its inputs);
3. `compress bench cpu`: a measured latency per runtime (onnxruntime and TVM);
4. `compress export pruned --target jetson --device orin-nano` (also `agx-orin` for `--agx-orin-models`):
   the files (model.onnx, build_engine.sh, build_trt.py, the TVM library), and the library's ELF header
   read here: 64-bit, shared object (e_type 3), e_machine 183 (EM_AARCH64);
5. determinism: the sha256 of model.onnx from every export of the same pruned model (cpu and each Jetson
   device, each its own process) must be equal;
6. (`--gpu-models`) a 2:4 model and `compress export --target gpu`: MiniLM via `compress sparsify
   hf:minilm --pattern 2:4`; a CNN via the mixed-plan route, since `compress sparsify --strict` refuses 2:4 on
   any layer whose reduction dim is not a multiple of 4 (every CNN's 3-channel stem; the refusal is recorded;
   without --strict it keeps such layers dense):
   the pruned model's plan.json plus `formats` marking its 1x1 convs and Linear layers 2:4, applied by
   `compress prune MODEL --plan`. The manifest's per-layer verification is recorded and re-checked here
   independently: each 2:4 layer's ONNX tensor (initializer or Constant) loaded with onnx.numpy_helper,
   every group of 4 along the reduction axis (taken from the consuming Conv / MatMul / Gemm node) must
   hold >= 2 zeros.

Two refusals are checked once: `--target jetson` without `--device`, and `compress sparsify --pattern 2:4
--strict` on a CNN; each must exit 2 with one line and write nothing. TVM latencies are untuned (no MetaSchedule).

    nice -n 19 python bench/export_zoo.py                        # ~40 min on a shared 2-core VM
    python bench/export_zoo.py --models resnet18 --merge         # re-run one model, keep the others
    python bench/export_zoo.py --models resnet18 --gpu-models resnet18 --out /tmp/ez.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import _common as c  # noqa: E402

from compress.export.manifest import sha256_file  # noqa: E402
from compress.models.zoo import randomize_norms  # noqa: E402

MINILM = "minilm"
MODELS = c.ZOO + [MINILM]
GPU_MODELS = ["resnet18", "resnet50", MINILM]
AGX_ORIN_MODELS = ["resnet18", MINILM]
EM_AARCH64, ET_DYN = 183, 3
STEP_TIMEOUT = 3600


def spec(name: str) -> str:
    return "hf:minilm" if name == MINILM else f"torchvision:{name}"


def rel(p: Path) -> str:
    return os.path.relpath(p, c.ROOT)


def cli(args: list[str], timeout: int = STEP_TIMEOUT) -> dict:
    """Run `compress ARGS` (this interpreter, repository root, offline); rc, seconds, stdout, last stderr line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "compress"] + args, cwd=c.ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        rc, out, err = None, "", f"timed out after {timeout} s"
    res = {"command": "compress " + " ".join(args), "rc": rc, "seconds": round(time.perf_counter() - t0, 1)}
    if rc != 0:
        lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("[")]
        res["error"] = (lines[-1] if lines else "(no output)")[:400]
    res["_stdout"] = out
    return res


def public(step: dict) -> dict:
    return {k: v for k, v in step.items() if not k.startswith("_")}


def manifest(d: Path) -> dict | None:
    f = d / "manifest.json"
    return json.loads(f.read_text()) if f.is_file() else None


# --------------------------------------------------------------------------- checks

def parity(man: dict) -> dict:
    """Per runtime: max abs / rel error over the manifest's parity inputs, and whether all passed."""
    out: dict = {}
    for chk in man.get("parity", []):
        r = out.setdefault(chk["runtime"], {"max_abs_error": 0.0, "max_rel_error": 0.0, "ok": True, "inputs": []})
        r["inputs"].append(chk["inputs"])
        r["ok"] = r["ok"] and bool(chk["ok"])
        for k in ("max_abs_error", "max_rel_error"):
            if chk.get(k) is None:
                r["ok"] = False
            else:
                r[k] = max(r[k], float(chk[k]))
    return out


def elf_header(path: Path) -> dict:
    """The identifying fields of an ELF header, read directly (not through TVM)."""
    head = path.read_bytes()[:20]
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return {"elf": False}
    endian = "<" if head[5] == 1 else ">"
    e_type, e_machine = struct.unpack(endian + "HH", head[16:20])
    return {"elf": True, "class_64bit": head[4] == 2, "little_endian": head[5] == 1, "e_type": e_type,
            "e_machine": e_machine, "aarch64_shared_object": head[4] == 2 and e_type == ET_DYN and e_machine == EM_AARCH64}


def onnx_weights(path: Path) -> dict:
    """Every tensor an ONNX file feeds to Conv / MatMul / Gemm as its weight (initializer or Constant node),
    by the name the manifest uses, as (array, reduction axis): Conv (out, in, *k) -> 1, MatMul B (in, out)
    -> 0, Gemm B -> 1 with transB else 0. The axis comes from the consuming node, not from the manifest."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    arrays = {i.name: (i.name, numpy_helper.to_array(i)) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    arrays[n.output[0]] = (f"{n.output[0]} (Constant {n.name})", numpy_helper.to_array(a.t))
    out = {}
    for n in g.node:
        if len(n.input) < 2 or n.input[1] not in arrays:
            continue
        attrs = {a.name: a.i for a in n.attribute}
        axis = {"Conv": 1, "MatMul": 0, "Gemm": 1 if attrs.get("transB") else 0}.get(n.op_type)
        if axis is not None:
            label, arr = arrays[n.input[1]]
            out[label] = (arr, axis)
    return out


def min_zeros_per_4(arr, axis: int) -> int | None:
    """Fewest zeros in any aligned group of 4 along `axis` (None: that dim is not a multiple of 4)."""
    import numpy as np

    a = np.moveaxis(arr, axis, -1)
    if a.shape[-1] % 4:
        return None
    return int((a.reshape(-1, 4) == 0).sum(1).min())


def check_24_independently(onnx_path: Path, man: dict, plan_layers: dict) -> dict:
    """For every layer the sparse plan lowered to 2:4: the tensor the manifest names, found among the
    ONNX weights, with the layer's element count, checked along the reduction axis its consuming node
    implies: every group of 4 holds >= 2 zeros. Also counts, over all weights in the file, how many
    are 2:4 (without the manifest's names). Layers the manifest reports as not in the graph are listed."""
    import numpy as np

    weights = onnx_weights(onnx_path)
    layers = (man.get("sparsity_2_4") or {}).get("layers", {})
    checked, bad, not_in_graph, missing = {}, [], [], []
    for name, shape in sorted(plan_layers.items()):
        m = layers.get(name) or {}
        if m.get("in_graph") is False:
            not_in_graph.append(name)
            continue
        found = weights.get(m.get("initializer", ""))
        if found is None or found[0].size != int(np.prod(shape)):
            missing.append(name)
            continue
        arr, axis = found
        z = min_zeros_per_4(arr, axis)
        checked[name] = {"shape": list(arr.shape), "reduction_axis": axis, "min_zeros_per_group": z,
                         "zero_fraction": round(float((arr == 0).mean()), 4)}
        if z is None or z < 2:
            bad.append(name)
    all_24 = sum(1 for arr, axis in weights.values() if (min_zeros_per_4(arr, axis) or 0) >= 2)
    return {"layers_planned_2_4": len(plan_layers), "layers_checked": len(checked), "not_in_graph": not_in_graph,
            "missing": missing, "violations": bad, "onnx_weights": len(weights), "onnx_weights_2_4": all_24,
            "min_zeros_per_group": min((v["min_zeros_per_group"] or 0 for v in checked.values()), default=None),
            "ok": bool(checked) and not bad and not missing and all_24 >= len(checked)}


def plan_24_layers(d: Path) -> dict:
    """layer -> torch weight shape for every 2:4 layer of a sparse_plan.json."""
    plan = json.loads((d / "sparse_plan.json").read_text())
    layers = plan.get("layers", plan)
    if isinstance(layers, dict):
        layers = [dict(v, name=k) for k, v in layers.items() if isinstance(v, dict)]
    return {e["name"]: e["shape"] for e in layers if e.get("format") == "2:4"}


def seeded_weights(name: str, path: Path) -> dict:
    """Seeded random weights for a torchvision model, saved for `--weights`: torchvision's init (seed 0) with
    random norm-layer affine parameters and running statistics. Torchvision's own init leaves BatchNorm the
    identity, and then MobileNet/EfficientNet outputs are ~1e-9..1e-14: any runtime would 'match' torch.
    Returns the dense output's scale on a seeded input, so the parity numbers can be judged."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    g = torch.Generator().manual_seed(0)
    randomize_norms(model, g)
    with torch.no_grad():
        y = model(torch.randn(2, 3, 224, 224, generator=g))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return {"dense_output_max_abs": round(float(y.abs().max()), 4), "dense_output_std": round(float(y.std()), 4)}


def mixed_plan(name: str, pruned: Path, path: Path) -> list[str]:
    """The pruned model's plan.json plus `formats`: every 1x1 conv (groups 1) and Linear of the original
    model as 2:4, as `compress plan --formats structured,2:4` writes them. Returns the layer names."""
    import torchvision
    from torch import nn

    model = torchvision.models.get_model(name, weights=None)
    layers = [n for n, m in model.named_modules()
              if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)
                                              and m.groups == 1)]
    plan = json.loads((pruned / "plan.json").read_text())
    plan["formats"] = {n: {"format": "2:4", "density": 0.5} for n in layers}
    path.write_text(json.dumps(plan, indent=1, sort_keys=True) + "\n")
    return layers


# --------------------------------------------------------------------------- steps

def step_cpu(pruned: Path, d: Path, a, entry: dict) -> None:
    r = cli(["export", rel(pruned), "--target", "cpu", "--out", rel(d), "--json"])
    man = manifest(d) if r["rc"] in (0, 1) else None
    if man:
        r |= {"ok": bool(man["ok"]), "parity": parity(man), "tvm_target": man.get("tvm", {}).get("target"),
              "files": sorted(man["files"]), "expected_ms": man.get("expected_latency", {}).get("ms"),
              "onnx_sha256": sha256_file(d / "model.onnx")}
    entry["export_cpu"] = public(r)
    if not man:
        return
    b = cli(["bench", rel(d), "--runs", str(a.runs), "--warmup", str(a.warmup), "--threads", str(a.threads), "--json"])
    if b["rc"] == 0:
        res = json.loads(b["_stdout"])
        b["latency_ms"] = {x["runtime"]: ({"median_ms": round(x["median_ms"], 3), "min_ms": round(x["min_ms"], 3),
                                           "max_ms": round(x["max_ms"], 3), "runs": x["runs"]}
                                          if x.get("median_ms") is not None else {"median_ms": None, "reason": x.get("reason")})
                           for x in res["results"]}
        b["loadavg"] = [round(x, 2) for x in res["loadavg"]]
    entry["bench_cpu"] = public(b)


def step_jetson(pruned: Path, d: Path, device: str) -> dict:
    r = cli(["export", rel(pruned), "--target", "jetson", "--device", device, "--out", rel(d), "--json"])
    man = manifest(d) if r["rc"] in (0, 1) else None
    if not man:
        return public(r)
    lib = d / f"model_{device}_aarch64.so"
    script = d / "build_engine.sh"
    files = {f: (d / f).is_file() for f in ("model.onnx", "build_engine.sh", "build_trt.py", lib.name)}
    r |= {"ok": bool(man["ok"]), "files_present": files, "tvm_tag": man.get("tvm", {}).get("tag"),
          "cuda_arch": man.get("tvm", {}).get("cuda_arch"), "device_modules": man.get("tvm", {}).get("device_modules"),
          "manifest_elf_machine": man.get("tvm", {}).get("elf_machine"),
          "onnx_parity": parity(man), "onnx_sha256": sha256_file(d / "model.onnx") if files["model.onnx"] else None}
    if files[lib.name]:
        r["library"] = {"file": lib.name, "bytes": lib.stat().st_size} | elf_header(lib)
    r["trt_script_builds_model_onnx"] = files["build_engine.sh"] and "--onnx=model.onnx" in script.read_text()
    r["bar"] = bool(r["ok"] and all(files.values()) and r.get("library", {}).get("aarch64_shared_object")
                    and r["trt_script_builds_model_onnx"])
    return public(r)


def step_gpu(name: str, w: Path, pruned: Path | None, weights: list[str]) -> dict:
    """A 2:4 model (sparsify for MiniLM, the mixed plan for a CNN), exported for gpu and re-checked."""
    out: dict = {}
    src = w / "sparse24"
    if name == MINILM:
        r = cli(["sparsify", spec(name), "--pattern", "2:4", "--out", rel(src), "--json"])
        out["route"] = "compress sparsify --pattern 2:4"
        out["sparsify"] = public(r)
    else:
        if pruned is None:
            return out | {"bar": False, "reason": "no pruned model"}
        plan = w / "mixed_plan.json"
        marked = mixed_plan(name, pruned, plan)
        r = cli(["prune", spec(name)] + weights + ["--plan", rel(plan), "--out", rel(src), "--json"])
        out["route"] = "compress prune --plan (pruned plan + 1x1 conv / Linear layers marked 2:4)"
        out["layers_marked_2_4"] = len(marked)
        out["prune_mixed"] = public(r)
    if r["rc"] != 0 or not (src / "sparse_plan.json").is_file():
        return out | {"bar": False}
    plan_layers = plan_24_layers(src)
    d = w / "gpu"
    e = cli(["export", rel(src), "--target", "gpu", "--out", rel(d), "--json"])
    man = manifest(d) if e["rc"] in (0, 1) else None
    out["export_gpu"] = public(e)
    if not man:
        return out | {"bar": False}
    s = man.get("sparsity_2_4") or {}
    out["export_gpu"] |= {"ok": bool(man["ok"]), "onnx_parity": parity(man),
                          "trt_sparsity": bool(man.get("tensorrt", {}).get("sparsity")),
                          "manifest_2_4": {"ok": s.get("ok"), "checked": s.get("checked"),
                                           "not_in_graph": s.get("not_in_graph", []),
                                           "not_ok": sorted(n for n, x in s.get("layers", {}).items() if not x["ok"])}}
    out["independent_2_4"] = check_24_independently(d / "model.onnx", man, plan_layers)
    out["bar"] = bool(man["ok"] and s.get("ok") and out["independent_2_4"]["ok"]
                      and out["export_gpu"]["trt_sparsity"])
    return out


def run_model(name: str, a, work: Path) -> dict:
    w = work / name
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    t0 = time.perf_counter()
    entry: dict = {"model": name, "spec": spec(name), "ratio": a.ratio}
    pruned = w / "pruned"
    weights = []
    if name != MINILM:
        wfile = w / "weights.safetensors"
        entry["weights"] = {"recipe": "torchvision init (seed 0) + random norm affine and running statistics "
                                      "(seed 0), passed with --weights"} | seeded_weights(name, wfile)
        weights = ["--weights", rel(wfile)]
    else:
        entry["weights"] = {"recipe": "the packaged pretrained all-MiniLM-L6-v2"}
    c.log(f"{name}: prune")
    r = cli(["prune", spec(name)] + weights + ["--ratio", str(a.ratio), "--out", rel(pruned), "--json"])
    if r["rc"] == 0:
        s = json.loads((pruned / "summary.json").read_text())
        r |= {k: s.get(k) for k in ("mac_reduction", "macs_before", "macs_after", "params_before", "params_after",
                                    "round_to", "prune_seconds")}
    entry["prune"] = public(r)
    ok_pruned = r["rc"] == 0
    if ok_pruned:
        c.log(f"{name}: export cpu + bench")
        step_cpu(pruned, w / "cpu", a, entry)
        entry["export_jetson"] = {}
        for dev in ["orin-nano"] + (["agx-orin"] if name in a.agx_orin_models else []):
            c.log(f"{name}: export jetson {dev}")
            entry["export_jetson"][dev] = step_jetson(pruned, w / f"jetson_{dev}", dev)
        shas = {"cpu": entry["export_cpu"].get("onnx_sha256")} | {
            f"jetson {k}": v.get("onnx_sha256") for k, v in entry["export_jetson"].items()}
        entry["determinism"] = {"onnx_sha256": shas, "exports": len(shas),
                                "identical": len(shas) >= 2 and None not in shas.values() and len(set(shas.values())) == 1}
    if name in a.gpu_models:
        c.log(f"{name}: 2:4 + export gpu")
        entry["gpu_2_4"] = step_gpu(name, w, pruned if ok_pruned else None, weights)
    entry["bars"] = bars(entry)
    entry["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if not a.keep:
        shutil.rmtree(w, ignore_errors=True)
    return entry


def bars(e: dict) -> dict:
    cpu = e.get("export_cpu", {})
    par = cpu.get("parity", {})
    lat = e.get("bench_cpu", {}).get("latency_ms", {})
    out = {"cpu_parity_ort_tvm": bool(cpu.get("ok") and par and any(k.startswith("onnxruntime") for k in par)
                                      and any(k.startswith("tvm") for k in par) and all(v["ok"] for v in par.values())),
           "bench_latency_ort_tvm": bool(lat) and all(lat.get(k, {}).get("median_ms") for k in ("onnxruntime", "tvm")),
           "jetson_aarch64": bool(e.get("export_jetson")) and all(v.get("bar") for v in e["export_jetson"].values()),
           "onnx_deterministic": bool(e.get("determinism", {}).get("identical"))}
    if "gpu_2_4" in e:
        out["gpu_2_4"] = bool(e["gpu_2_4"].get("bar"))
    out["all"] = all(out.values())
    return out


def refused(args: list[str], work: Path, out: str) -> dict:
    """A command that must exit 2 with one line and write nothing."""
    r = cli(args + ["--out", rel(work / out)])
    return {k: r[k] for k in ("command", "rc", "error") if k in r} | {"exit_2_nothing_written": r["rc"] == 2 and
                                                                   not (work / out).exists()}


# --------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS, help=f"any of {', '.join(MODELS)}")
    ap.add_argument("--gpu-models", nargs="*", default=GPU_MODELS, help="models also checked as 2:4 for --target gpu")
    ap.add_argument("--agx-orin-models", nargs="*", default=AGX_ORIN_MODELS,
                    help="models also exported for --device agx-orin (all: orin-nano)")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--runs", type=int, default=5, help="compress bench --runs")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="compress bench --threads (0: the runtime's default)")
    ap.add_argument("--merge", action="store_true", help="keep the other models' entries of an existing --out")
    ap.add_argument("--keep", action="store_true", help="keep the artifact directories under bench/tmp/export_zoo")
    ap.add_argument("--out", default=str(c.RESULTS / "export_zoo.json"))
    a = ap.parse_args()
    unknown = sorted(set(a.models) - set(MODELS))
    if unknown:
        fail(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if not 0 < a.ratio < 1 or a.runs < 1 or a.warmup < 0:
        fail("--ratio must be in (0, 1), --runs >= 1, --warmup >= 0")
    bad = sorted(set(a.gpu_models + a.agx_orin_models) - set(MODELS))
    if bad:
        fail(f"--gpu-models / --agx-orin-models: unknown model(s) {', '.join(bad)}")
    out_path = Path(a.out)
    t_start = time.time()
    work = c.TMP / "export_zoo"
    work.mkdir(parents=True, exist_ok=True)
    old = json.loads(out_path.read_text()) if a.merge and out_path.is_file() else {}
    kept = [e for e in old.get("results", []) if e["model"] not in a.models]
    entries: list[dict] = []

    def write(final: bool) -> None:
        res = kept + entries
        res.sort(key=lambda e: MODELS.index(e["model"]))
        data = c.result_header("export_zoo", "Does compress export hold its bars for every zoo model, pruned: cpu parity "
                               "(onnxruntime and TVM llvm vs torch) and a measured latency, jetson artifacts with an "
                               "aarch64 TVM library, gpu 2:4 weights verified in the ONNX, byte-identical ONNX?", t_start)
        if kept:   # --merge: the runs that produced the kept entries, then this one
            data["runs"] = old.get("runs") or [{"command": old["command"], "date": old["date"],
                                                "wall_seconds": old["wall_seconds"], "models": [e["model"] for e in kept]}]
            data["runs"].append({k: data[k] for k in ("command", "date", "wall_seconds")} | {"models": a.models})
        data["versions"]["apache-tvm"] = _version("apache-tvm")
        data["protocol"] = {"ratio": a.ratio, "bench": {"runs": a.runs, "warmup": a.warmup, "threads": a.threads},
                            "jetson_devices": {"orin-nano": "all", "agx-orin": a.agx_orin_models},
                            "gpu_models": a.gpu_models,
                            "driver": "python -m compress (subprocess per step, repository root, HF_HUB_OFFLINE=1)",
                            "weights": "torchvision: seeded random init with random norm statistics (--weights); "
                                       "hf:minilm: the packaged pretrained weights"}
        data["refusals"] = refusals
        data["summary"] = {"models": len(res), "all_bars_met": [e["model"] for e in res if e["bars"]["all"]],
                           "failed": {e["model"]: [k for k, v in e["bars"].items() if not v and k != "all"]
                                      for e in res if not e["bars"]["all"]}, "complete": final}
        data["loadavg_end"] = c.loadavg()
        data["results"] = res
        c.write_json(out_path, data)

    refusals = {"jetson_without_device": refused(["export", "torchvision:resnet18", "--target", "jetson"], work, "x1"),
                "sparsify_2_4_cnn_stem": refused(["sparsify", "torchvision:resnet18", "--pattern", "2:4", "--strict"],
                                                   work, "x2")}
    for name in a.models:
        entries.append(run_model(name, a, work))
        e = entries[-1]
        c.log(f"{name}: {'all bars met' if e['bars']['all'] else 'FAILED ' + str(e['bars'])} ({e['wall_seconds']:.0f} s)")
        write(final=False)
    write(final=True)
    for e in kept + entries:
        print(f"{e['model']}: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in e["bars"].items()))
    c.log(f"wrote {out_path} ({(time.time() - t_start) / 60:.1f} min)")


def fail(msg: str) -> None:
    print(f"export_zoo: {msg}", file=sys.stderr)
    sys.exit(2)


def _version(pkg: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
