"""`compress export`: build a target's artifact directory (ONNX, runtime builds, scripts, manifest.json),
checking on this machine everything that can run here and marking the rest "not verified on this machine"."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from compress.errors import CompressError, first_line
from compress.export import manifest as mf
from compress.export import sparsity
from compress.export.inputs import torch_output
from compress.export.targets import AARCH64_CXX, AARCH64_HOST, ExportConfig

HERE = Path(__file__).resolve().parent
ORT_TOL, TVM_TOL = 1e-4, 1e-4


def _locate_aten_op(model, inputs, op: str) -> str:
    """The module that calls aten op `op` (by torch.export's nn_module_stack), or '(unknown layer)'."""
    try:
        from compress.export.aoti import trace
        ep = trace(model, inputs)
    except Exception:
        return "(unknown layer: the model does not trace with torch.export)"
    short = op.split("::")[-1]
    for node in ep.graph.nodes:
        if node.op == "call_function" and str(node.target).split(".")[1:2] == [short]:
            stack = node.meta.get("nn_module_stack") or {}
            return list(stack.values())[-1][0] if stack else "(top level)"
    return "(unknown layer)"


def export_model_onnx(model, inputs, path: str, cfg: ExportConfig) -> None:
    from compress.export.onnx import OPSET, export_onnx

    assert OPSET >= 17
    try:
        export_onnx(model, inputs, path, dynamic_batch=cfg.dynamic)
    except CompressError as e:
        m = re.search(r"operator '([\w:.]+)'", str(e))
        if not m:
            raise
        op = m.group(1)
        raise CompressError(f"op {op} in layer {_locate_aten_op(model, inputs, op)} cannot be exported to ONNX "
                            f"opset {OPSET}; replace that layer or register an ONNX symbolic for it") from None


def _check(runtime: str, what: str, got, ref, tol: float) -> dict:
    from compress.export.ort import compare

    return {"runtime": runtime, "inputs": what} | compare(got, ref, tol)


def _ort_parity(path: str, name: str, cases, optimized: bool) -> list[dict]:
    from compress.export import ort

    out = []
    for what, inputs, ref in cases:
        try:
            got = ort.run(path, [t.numpy() for t in inputs], optimized=optimized)
        except Exception as e:
            raise CompressError(f"onnxruntime cannot run {os.path.basename(path)}: {first_line(e)}") from None
        out.append(_check(name, what, got, ref, ORT_TOL))
    return out


def _shape_arg(shape) -> str:
    return ",".join(str(s) for s in shape)


def _trt(cfg: ExportConfig, tmp: str, sample_shape, n_inputs: int, sparse: bool, trtexec: str) -> tuple[dict, list]:
    """The TensorRT engine (when tensorrt imports here) or the scripts that build it on the device."""
    shutil.copy(HERE / "build_trt.py", os.path.join(tmp, "build_trt.py"))
    fp16 = cfg.dtype == "fp16"
    lo, opt, hi = cfg.trt_shapes()
    names = ["input"] + [f"input{i}" for i in range(1, n_inputs)]
    dims = "x".join(str(s) for s in sample_shape)
    cmd = [trtexec, "--onnx=model.onnx", "--saveEngine=model.engine"]
    if fp16:
        cmd.append("--fp16")
    if sparse:
        cmd.append("--sparsity=enable")
    if cfg.dynamic:
        for flag, b in (("--minShapes", lo), ("--optShapes", opt), ("--maxShapes", hi)):
            cmd.append(flag + "=" + ",".join(f"{n}:{b}x{dims}" for n in names))
    trtexec_cmd = " ".join(cmd)
    api_cmd = ("python3 build_trt.py model.onnx model.engine" + (" --fp16" if fp16 else "")
               + (" --sparsity" if sparse else "") + f" --min-batch {lo} --opt-batch {opt} --max-batch {hi}")
    sh = os.path.join(tmp, "build_engine.sh")
    Path(sh).write_text("#!/bin/sh\n# Build the TensorRT engine on the device (TensorRT's trtexec); the same build with the\n"
                        f"# Python API: {api_cmd}\nset -e\ncd \"$(dirname \"$0\")\"\n{trtexec_cmd}\n")
    run_cmd = f"{trtexec} --loadEngine=model.engine" + (
        " --shapes=" + ",".join(f"{n}:{opt}x{dims}" for n in names) if cfg.dynamic else "")
    info = {"fp16": fp16, "sparsity": sparse, "profile": {"min": lo, "opt": opt, "max": hi},
            "trtexec": trtexec_cmd, "python_api": api_cmd}
    commands = [{"what": "build the TensorRT engine", "command": "sh build_engine.sh", "needs": "TensorRT (trtexec)"},
                {"what": "build the TensorRT engine with the Python API instead", "command": api_cmd,
                 "needs": "TensorRT's Python bindings"},
                {"what": "run and time the engine", "command": run_cmd, "needs": "TensorRT (trtexec)"}]
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        info |= {"engine": None, "verified": False,
                 "reason": f"{mf.NOT_VERIFIED}: tensorrt is not importable here ({first_line(e)}); build it on the device"}
        return info, commands
    from compress.export.build_trt import build
    if cfg.target == "jetson":
        info |= {"engine": None, "verified": False,
                 "reason": f"{mf.NOT_VERIFIED}: a TensorRT engine is specific to the GPU it was built on; build it on the Jetson"}
        return info, commands
    try:
        info |= {"engine": "model.engine", "build": build(os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.engine"),
                                                          fp16, sparse, lo, opt, hi)}
        info["verified"] = False
        info["reason"] = f"{mf.NOT_VERIFIED}: engine built here, not run against torch"
    except Exception as e:
        raise CompressError(f"TensorRT cannot build the model: {first_line(e)}") from None
    return info, commands


def _aoti(model, inputs, tmp: str, formats: dict) -> dict:
    from compress.export import aoti

    blocks = sorted(n for n, e in formats.items() if e["format"].startswith("block:"))
    try:
        ep = aoti.trace(model, inputs)
    except Exception as e:
        return {"built": False, "reason": f"{mf.NOT_VERIFIED}: torch.export cannot trace the model ({first_line(e)})"}
    ops = aoti.custom_ops(ep)
    if not ops:
        why = "the model calls no compress block-sparse kernel (torch.ops.compress.*), nothing to package"
        if blocks:
            why += f"; the plan marks {len(blocks)} layer(s) block:N but they are not lowered to the kernel yet"
        return {"built": False, "reason": why}
    res = aoti.package(ep, model, inputs, os.path.join(tmp, "model.pt2"))
    return res | {"custom_ops": [{"op": o, "layer": l} for o, l in ops]}


@dataclass
class _Build:
    """One export in progress: what every step reads (the model, its parity cases, the directory being
    written) and what the steps add to (parity checks, device commands, bench runs, not-verified notes,
    the manifest). A step writes its files into `tmp` and returns its section of the manifest."""
    cfg: ExportConfig
    model: Any
    tmp: str
    example: tuple
    cases: list[tuple]
    formats: dict
    sample_shape: tuple
    dtype_args: str
    man: dict
    log: Callable[[str], None]
    checks: list[dict] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    bench: list[dict] = field(default_factory=list)
    not_verified: list[str] = field(default_factory=list)

    @property
    def onnx_path(self) -> str:
        return os.path.join(self.tmp, "model.onnx")

    @property
    def has_24(self) -> bool:
        return any(e["format"] == "2:4" for e in self.formats.values())

    def copy_script(self, name: str) -> None:
        shutil.copy(HERE / name, os.path.join(self.tmp, name))


def _layer_formats(model, model_or_dir: str, sparse_plan: str | None) -> tuple[str | None, dict]:
    """(the sparse plan file or None, every layer's format: dense unless the plan says otherwise)."""
    plan_file = sparse_plan or sparsity.plan_path(model_or_dir)
    formats = sparsity.dense_formats(model)
    if plan_file:
        planned = sparsity.read_plan(plan_file)
        mods = dict(model.named_modules())
        missing = sorted(n for n in planned if n not in mods)
        if missing:
            raise CompressError(f"sparse plan {plan_file} names layers the model does not have: {', '.join(missing[:5])}")
        formats |= planned
    return plan_file, formats


def _parity_cases(lm, model, cfg: ExportConfig) -> tuple[tuple, list[tuple], str]:
    """(the example inputs, the (description, inputs, torch output) cases every runtime is checked on,
    the description of the real inputs or why there are none)."""
    from compress.export import inputs as inp

    batch = cfg.batch or 1
    example = inp.random_inputs(lm, batch, seed=0)
    cases = [(f"random batch {batch} (seed 0)", example, torch_output(model, example))]
    if cfg.dynamic:
        x3 = inp.random_inputs(lm, 3, seed=1)
        cases.append(("random batch 3 (seed 1)", x3, torch_output(model, x3)))
    real, real_desc = inp.real_inputs(lm, cfg.batch)
    if real is not None:
        cases.append((f"real: {real_desc}", real, torch_output(model, real)))
    return example, cases, real_desc


def _source_manifest(lm, model, model_or_dir: str, cfg: ExportConfig, command: str, plan_file: str | None,
                     formats: dict, example: tuple, real_desc: str) -> dict:
    """The manifest's sections that describe what was exported, before any runtime step."""
    from compress import models

    batch = cfg.batch or 1
    is_dir = os.path.isdir(model_or_dir)
    device = f"jetson-{cfg.device}" if cfg.target == "jetson" and cfg.device else cfg.target
    return {
        "schema_version": mf.SCHEMA_VERSION, "command": command,
        "target": {"name": cfg.target, "device": cfg.device, "dtype": cfg.dtype,
                   "batch": "dynamic" if cfg.dynamic else cfg.batch},
        "source": {"model": lm.spec, "model_or_dir": model_or_dir, "weights_sha256": models.weights_sha256(model),
                   "source_weights_sha256": (lm.plan.source.get("sha256") if lm.plan is not None else None),
                   "input_shape": [batch, *example[0].shape[1:]], "input_dtype": lm.input_dtype,
                   "vocab_size": lm.vocab_size},
        "plans": {"prune_plan_sha256": (mf.sha256_file(os.path.join(model_or_dir, models.PLAN_FILE))
                                        if is_dir and lm.plan is not None else None),
                  "sparse_plan": plan_file, "sparse_plan_sha256": mf.sha256_file(plan_file) if plan_file else None},
        "layer_formats": formats, "accuracy_at_pruning": mf.pruning_accuracy(model_or_dir if is_dir else None),
        "expected_latency": mf.expected_latency(model, example, device, batch),
        "real_inputs": real_desc, "versions": mf.runtime_versions(),
    }


def _dtype_args(lm, shape: list) -> str:
    """The input options of run_ort.py / run_tvm.py for `shape`."""
    return f"--shape {_shape_arg(shape)} --dtype {lm.input_dtype}" + (
        f" --high {lm.vocab_size}" if lm.input_dtype == "int64" and lm.vocab_size else "")


def _onnx_step(b: _Build) -> dict:
    """model.onnx, checked in onnxruntime against torch (and its 2:4 layers, for a 2:4 plan or a GPU)."""
    from compress.export import tvm_relax as tvmx

    b.log("exporting ONNX")
    export_model_onnx(b.model, b.example, b.onnx_path, b.cfg)
    import onnx
    if b.cfg.target in ("cpu", "jetson"):
        tvmx.import_onnx(b.onnx_path)  # fail early, naming the op and layer, before any build
    b.log("onnxruntime parity")
    b.checks += _ort_parity(b.onnx_path, "onnxruntime (model.onnx)", b.cases, optimized=False)
    return {"file": "model.onnx", "opset": onnx.load(b.onnx_path).opset_import[0].version,
            "dynamic_batch": b.cfg.dynamic}


def _sparsity_24_step(b: _Build) -> dict:
    """The 2:4 pattern of every 2:4 layer, checked in the ONNX graph."""
    res = sparsity.verify_24(b.onnx_path, b.model, b.formats, b.example)
    return {"layers": res, "ok": all(r["ok"] for r in res.values()),
            "checked": sum(r.get("in_graph", True) for r in res.values()),
            "not_in_graph": sorted(n for n, r in res.items() if not r.get("in_graph", True))}


def _ort_host_step(b: _Build) -> dict:
    """--target cpu: model.ort.onnx (onnxruntime's optimised graph), checked against torch, and run_ort.py."""
    from compress.export import ort

    b.log("onnxruntime optimisation")
    opt_path = os.path.join(b.tmp, "model.ort.onnx")
    try:
        ort.optimize(b.onnx_path, opt_path)
    except Exception as e:
        raise CompressError(f"onnxruntime cannot load the model: {first_line(e)}") from None
    b.checks += _ort_parity(opt_path, "onnxruntime (model.ort.onnx)", b.cases, optimized=True)
    b.copy_script("run_ort.py")
    b.bench.append({"runtime": "onnxruntime", "argv": ["run_ort.py", "model.ort.onnx"] + shlex.split(b.dtype_args)})
    b.commands.append({"what": "run and time with onnxruntime",
                       "command": f"python3 run_ort.py model.ort.onnx {b.dtype_args}", "needs": "onnxruntime, numpy"})
    return {"file": "model.ort.onnx", "optimization_level": ort.OPT_LEVEL, "provider": "CPUExecutionProvider"}


def _tvm_host_step(b: _Build) -> dict:
    """--target cpu: model_llvm.so (TVM for this host's CPU), checked against torch, and run_tvm.py."""
    from compress.export import tvm_relax as tvmx

    b.log("TVM build (llvm)")
    lib = os.path.join(b.tmp, "model_llvm.so")
    info = tvmx.build(b.onnx_path, tvmx.host_target(), lib) | {"version": tvmx.version()}
    for what, x, ref in b.cases:
        b.checks.append(_check("tvm (model_llvm.so)", what, tvmx.run(lib, [t.numpy() for t in x]), ref, TVM_TOL))
    b.copy_script("run_tvm.py")
    b.bench.append({"runtime": "tvm",
                    "argv": ["run_tvm.py", "model_llvm.so", "--device", "cpu"] + shlex.split(b.dtype_args)})
    b.commands.append({"what": "run and time with TVM",
                       "command": f"python3 run_tvm.py model_llvm.so --device cpu {b.dtype_args}",
                       "needs": f"apache-tvm {tvmx.version()} on the same CPU architecture (x86-64)"})
    return info


def _tensorrt_step(b: _Build) -> dict:
    """--target gpu or jetson: the TensorRT engine or its build scripts, and run_ort.py as a host reference."""
    b.log("TensorRT")
    trtexec = "/usr/src/tensorrt/bin/trtexec" if b.cfg.target == "jetson" else "trtexec"
    info, trt_cmds = _trt(b.cfg, b.tmp, b.sample_shape, len(b.example), b.has_24, trtexec)
    b.commands += trt_cmds
    if info.get("reason"):
        b.not_verified.append(f"TensorRT engine: {info['reason']}")
    b.copy_script("run_ort.py")
    b.bench.append({"runtime": "onnxruntime (CPU, host reference)",
                    "argv": ["run_ort.py", "model.onnx"] + shlex.split(b.dtype_args)})
    return info


def _aoti_step(b: _Build) -> dict:
    """--target gpu: model.pt2 (AOTInductor) when the model calls compress's block-sparse kernels."""
    b.log("AOTInductor")
    info = _aoti(b.model, b.example, b.tmp, b.formats)
    if info.get("built"):
        b.checks.append({"runtime": "aoti (model.pt2, cpu)", "inputs": b.cases[0][0]} | info["parity"])
        b.not_verified.append(f"AOTInductor CUDA package: {info['cuda']}")
    elif "not verified" in info["reason"]:
        b.not_verified.append(f"AOTInductor package: {info['reason']}")
    return info


def _jetson_step(b: _Build) -> dict:
    """--target jetson: the TVM library cross-compiled for the Jetson's aarch64 CPU and CUDA GPU, and run_tvm.py."""
    from compress.export import tvm_relax as tvmx

    dev = b.cfg.jetson
    b.log(f"TVM cross-compile ({dev.tvm_tag})")
    lib_name = f"model_{dev.name}_aarch64.so"
    lib = os.path.join(b.tmp, lib_name)
    target = tvmx.jetson_target(dev.tvm_tag, AARCH64_HOST)
    if shutil.which(AARCH64_CXX) is None:
        raise CompressError(f"cross-compiling for the Jetson needs {AARCH64_CXX} "
                            "(apt-get install g++-aarch64-linux-gnu)")
    info = tvmx.build(b.onnx_path, target, lib, cc=AARCH64_CXX) | {
        "version": tvmx.version(), "tag": dev.tvm_tag, "host": AARCH64_HOST, "cc": AARCH64_CXX,
        "elf_machine": tvmx.elf_machine(lib)}
    if info["elf_machine"] != tvmx.EM_AARCH64:
        raise CompressError(f"the cross-compiled TVM library is not an aarch64 ELF (e_machine {info['elf_machine']})")
    b.copy_script("run_tvm.py")
    b.commands.append({"what": "run and time the TVM library on the Jetson's GPU",
                       "command": f"python3 run_tvm.py {lib_name} --device cuda {b.dtype_args}",
                       "needs": f"apache-tvm {tvmx.version()} built with CUDA on the Jetson"})
    b.not_verified.append(f"TVM library {lib_name}: {mf.NOT_VERIFIED} (aarch64 + CUDA {info.get('cuda_arch')}; "
                          "no Jetson here)")
    return info


def _runtime_steps(b: _Build) -> None:
    """Every artifact of the target, each checked here as far as this machine can."""
    man, target = b.man, b.cfg.target
    man["onnx"] = _onnx_step(b)
    if b.has_24 or target == "gpu":
        man["sparsity_2_4"] = _sparsity_24_step(b)
    if target == "cpu":
        ort_info = _ort_host_step(b)
        man["tvm"] = _tvm_host_step(b)
        man["onnxruntime"] = ort_info
    else:
        man["tensorrt"] = _tensorrt_step(b)
    if target == "gpu":
        man["aoti"] = _aoti_step(b)
    if target == "jetson":
        man["tvm"] = _jetson_step(b)
    if target == "gpu":
        b.not_verified.append(f"the ONNX model on a GPU runtime: {mf.NOT_VERIFIED} (no GPU here; "
                              "onnxruntime CPU checked the graph)")


def _write_manifest(b: _Build, command: str) -> None:
    """The manifest's closing sections (commands, parity, bench, verdict, files), README.md and manifest.json."""
    from compress.export.readme import render
    from compress.io import write_json

    man = b.man
    b.commands.insert(0, {"what": "rebuild this directory", "command": command or "compress export ...", "where": "host"})
    man["commands"] = b.commands
    man["parity"] = b.checks
    man["bench"] = b.bench
    man["not_verified_here"] = b.not_verified
    parity_ok = all(c["ok"] for c in b.checks)
    sparse_ok = man.get("sparsity_2_4", {}).get("ok", True)
    man["ok"] = bool(parity_ok and sparse_ok)
    man["files"] = mf.files(b.tmp)
    Path(b.tmp, "README.md").write_text(render(man))
    man["files"] = mf.files(b.tmp)
    write_json(os.path.join(b.tmp, mf.MANIFEST_FILE), man)


def export(model_or_dir: str, cfg: ExportConfig, out: str, *, weights: str | None = None,
           input_shape: tuple | None = None, sparse_plan: str | None = None, command: str = "",
           log=lambda msg: None) -> dict:
    """Write the artifact directory `out` atomically; return the manifest (its "ok" says whether every check
    that ran here passed)."""
    from compress import models
    from compress.io import atomic_dir

    cfg.validate()
    log("loading")
    lm = models.load(model_or_dir, weights)
    if input_shape:
        lm.input_shape = tuple(input_shape)
    model = lm.model.eval()
    plan_file, formats = _layer_formats(model, model_or_dir, sparse_plan)
    example, cases, real_desc = _parity_cases(lm, model, cfg)
    sample_shape = tuple(example[0].shape[1:])
    man = _source_manifest(lm, model, model_or_dir, cfg, command, plan_file, formats, example, real_desc)
    with atomic_dir(out) as tmp:
        b = _Build(cfg, model, tmp, example, cases, formats, sample_shape,
                   _dtype_args(lm, [cfg.batch or 1, *sample_shape]), man, log)
        _runtime_steps(b)
        _write_manifest(b, command)
    return man
