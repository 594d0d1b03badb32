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
from compress.export import sparse_cpu, sparsity
from compress.export.inputs import input_specs, runner_args, torch_output
from compress.export.targets import AARCH64_CXX, AARCH64_HOST, ExportConfig

HERE = Path(__file__).resolve().parent
PADDED = "attention_mask padded"   # the parity case whose every attention mask row has padding
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


def _trt(cfg: ExportConfig, tmp: str, inputs: list, sparse: bool) -> tuple[dict, list]:
    """The TensorRT engine (when tensorrt imports here and finds a GPU) or the scripts that build it on the device.
    `inputs`: (name, shape without batch) of every ONNX input. build_engine.sh holds a TensorRT 10 line (weak
    typing, --fp16 on model.onnx) and an 11+ line (strongly typed: model_fp16.onnx), picked on the device by
    trtexec's version; build_trt.py picks the same way with the Python API."""
    from compress.export import build_trt as bt

    shutil.copy(HERE / "build_trt.py", os.path.join(tmp, "build_trt.py"))
    fp16, int8 = cfg.dtype == "fp16", cfg.dtype == "int8"
    lo, opt, hi = cfg.trt_shapes()
    onnx_path = os.path.join(tmp, bt.INT8_ONNX if int8 else "model.onnx")
    info = {"fp16": fp16, "int8": int8, "sparsity": sparse, "profile": {"min": lo, "opt": opt, "max": hi},
            "inputs": {n: list(d) for n, d in inputs}, "workspace_mib": bt.WORKSPACE_MIB}
    if fp16:  # what strongly typed TensorRT (11+) builds for fp16
        try:
            info["fp16_onnx"] = bt.write_fp16_onnx(onnx_path, os.path.join(tmp, bt.FP16_ONNX))
        except Exception as e:  # e.g. a model past protobuf's 2 GB: TensorRT 10's weak-typing line still works
            info["fp16_onnx"] = {"file": None, "reason": f"not written: {first_line(e, 200)}; TensorRT 11+ needs it"}
    batches = (lo, opt, hi) if cfg.dynamic else None
    weak, strong = (bt.trtexec_args(m, fp16, sparse, inputs, batches, int8=int8) for m in (10, bt.STRONG_TYPING_MAJOR))
    api_cmd = (f"python3 build_trt.py {os.path.basename(onnx_path)} model.engine"
               + (f" --fp16 --fp16-onnx {bt.FP16_ONNX}" if fp16 else "") + (" --int8" if int8 else "")
               + (" --sparsity" if sparse else "") + f" --min-batch {lo} --opt-batch {opt} --max-batch {hi}")
    build_sh, run_sh = bt.engine_scripts(weak, strong, bt.run_args(inputs, opt if cfg.dynamic else None), api_cmd)
    Path(tmp, "build_engine.sh").write_text(build_sh)
    Path(tmp, "run_engine.sh").write_text(run_sh)
    info |= {"trtexec": " ".join(["trtexec"] + weak), "trtexec_strongly_typed": " ".join(["trtexec"] + strong),
             "typing": "chosen on the device: weak (TensorRT 10.x) or strong (11+)", "python_api": api_cmd}
    needs = f"TensorRT (trtexec: $TRTEXEC, PATH or {bt.TRTEXEC_DIR})"
    commands = [{"what": "build the TensorRT engine", "command": "sh build_engine.sh", "needs": needs},
                {"what": "build the TensorRT engine with the Python API instead", "command": api_cmd,
                 "needs": "TensorRT's Python bindings"},
                {"what": "run and time the engine", "command": "sh run_engine.sh", "needs": needs}]
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a tensorrt whose libraries do not load
        info |= {"engine": None, "verified": False,
                 "reason": f"{mf.NOT_VERIFIED}: tensorrt is not importable here ({first_line(e)}); build it on the device"}
        return info, commands
    if cfg.target == "jetson":
        info |= {"engine": None, "verified": False,
                 "reason": f"{mf.NOT_VERIFIED}: a TensorRT engine is specific to the GPU it was built on; build it on the Jetson"}
        return info, commands
    why = bt.usable_gpu(trt)
    if why:  # tensorrt imports without a GPU, then trt.Builder() raises
        info |= {"engine": None, "verified": False, "reason": f"{mf.NOT_VERIFIED}: {why}; build it on the device"}
        return info, commands
    try:
        info |= {"engine": "model.engine", "build": bt.build(onnx_path, os.path.join(tmp, "model.engine"), fp16, sparse,
                                                             lo, opt, hi, fp16_onnx=os.path.join(tmp, bt.FP16_ONNX),
                                                             int8=int8)}
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
    lm: Any = None                      # the loaded model (compress.models.LoadedModel)
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
    if inp.has_mask(lm, example):   # every row padded: the mask must reach the graph and change the output
        xp = inp.random_inputs(lm, batch, seed=2, pad=True)
        cases.append((f"random batch {batch}, {PADDED} (seed 2)", xp, torch_output(model, xp)))
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
                   "vocab_size": lm.vocab_size, "inputs": input_specs(lm, example, batch)},
        "plans": {"prune_plan_sha256": (mf.sha256_file(os.path.join(model_or_dir, models.PLAN_FILE))
                                        if is_dir and lm.plan is not None else None),
                  "sparse_plan": plan_file, "sparse_plan_sha256": mf.sha256_file(plan_file) if plan_file else None},
        "layer_formats": formats, "accuracy_at_pruning": mf.pruning_accuracy(model_or_dir if is_dir else None),
        "expected_latency": mf.expected_latency(model, example, device, batch),
        "real_inputs": real_desc, "versions": mf.runtime_versions(),
    }


def _dtype_args(man: dict) -> str:
    """The input options of run_ort.py / run_tvm.py for the manifest's inputs (one: --shape, --dtype, --high;
    several: an --input each)."""
    return " ".join(runner_args(man["source"]["inputs"]))


def _onnx_step(b: _Build) -> dict:
    """model.onnx, checked in onnxruntime against torch (and its 2:4 layers, for a 2:4 plan or a GPU)."""
    from compress.export import tvm_relax as tvmx
    from compress.models.outputs import describe

    b.log("exporting ONNX")
    export_model_onnx(b.model, b.example, b.onnx_path, b.cfg)
    import onnx
    if b.cfg.target == "jetson" or (b.cfg.target == "cpu" and b.cfg.explicit and b.cfg.wants("tvm")):
        import importlib.util

        from compress.export.onnx import quietly
        if importlib.util.find_spec("tvm") is None:
            why = "--target jetson" if b.cfg.target == "jetson" else "--runtimes tvm"
            raise CompressError(f"{why} needs Apache TVM: pip install 'compress-deploy[tvm]'")
        quietly(tvmx.import_onnx, b.onnx_path)  # TVM required: fail early, naming the op and layer
    b.log("onnxruntime parity")
    b.checks += _ort_parity(b.onnx_path, "onnxruntime (model.onnx)", b.cases, optimized=False)
    info = {"file": "model.onnx", "opset": onnx.load(b.onnx_path).opset_import[0].version,
            "dynamic_batch": b.cfg.dynamic}
    import torch
    with torch.no_grad():
        out = b.model(*b.example)
    if not isinstance(out, torch.Tensor):   # dicts, tuples, HF outputs: model.onnx's one output is the primary one
        info["output"] = {"name": "output", "from": describe(out)}
    return info


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
    """--target cpu: model_llvm.so (TVM for this host's CPU), checked against torch, and run_tvm.py.
    TVM is a secondary runtime: unless --runtimes names it, its absence, a frontend or build failure or a
    parity mismatch is recorded ({"built": false, "reason": ...}) and the onnxruntime artifact ships alone."""
    import importlib.util

    from compress.export import tvm_relax as tvmx
    from compress.export.onnx import quietly

    required = b.cfg.explicit
    if importlib.util.find_spec("tvm") is None:
        if required:
            raise CompressError("--runtimes tvm needs Apache TVM: pip install 'compress-deploy[tvm]'")
        return {"built": False, "reason": "not built: install compress-deploy[tvm]"}
    b.log("TVM build (llvm)")
    lib = os.path.join(b.tmp, "model_llvm.so")
    checks = []
    try:
        info = quietly(tvmx.build, b.onnx_path, tvmx.host_target(), lib) | {"version": tvmx.version()}
        for what, x, ref in b.cases:
            try:
                got = tvmx.run(lib, [t.numpy() for t in x])
            except Exception as e:
                raise CompressError(f"TVM cannot run model_llvm.so: {first_line(e, 300)}") from None
            checks.append(_check("tvm (model_llvm.so)", what, got, ref, TVM_TOL))
    except CompressError as e:
        if required:
            raise
        if os.path.exists(lib):
            os.remove(lib)
        return {"built": False, "reason": f"not built: {e}", "version": tvmx.version()}
    if not required and not all(c["ok"] for c in checks):   # a wrong library never ships as a default extra
        os.remove(lib)
        worst = max((c.get("max_rel_error") or float("inf")) for c in checks)
        return {"built": False, "reason": f"not shipped: TVM's output differs from torch (max rel error {worst:.2e})",
                "version": tvmx.version(), "parity": checks}
    b.checks += checks
    info["built"] = True
    b.copy_script("run_tvm.py")
    b.bench.append({"runtime": "tvm",
                    "argv": ["run_tvm.py", "model_llvm.so", "--device", "cpu"] + shlex.split(b.dtype_args)})
    b.commands.append({"what": "run and time with TVM",
                       "command": f"python3 run_tvm.py model_llvm.so --device cpu {b.dtype_args}",
                       "needs": f"apache-tvm {tvmx.version()} on the same CPU architecture (x86-64)"})
    return info


def _sparse_cpu_step(b: _Build) -> dict:
    """--target cpu with block-sparse layers: model.bsr.onnx, whose block-sparse layers run compress's compiled
    kernel inside onnxruntime (libcompress_bsr.so + bsr_cpu_runtime.py shipped beside it), checked against torch."""
    from compress.export import sparse_cpu
    from compress.kernels import bsr_cpu

    layers = sparse_cpu.cpu_sparse_layers(b.model, b.formats)
    missing = sparse_cpu.missing_requirements()
    if missing:
        b.not_verified.append(f"{sparse_cpu.MODEL_FILE}: {missing}")
        return {"built": False, "reason": missing, "layers": layers}
    b.log(f"CPU block-sparse kernel ({len(layers)} layers)")
    lib = os.path.join(b.tmp, sparse_cpu.LIB_FILE)
    info = bsr_cpu.build(lib)
    path = os.path.join(b.tmp, sparse_cpu.MODEL_FILE)
    sparse_cpu.export(b.model, layers, b.example, path, b.cfg.dynamic)
    shutil.copy(Path(bsr_cpu.__file__).with_name(sparse_cpu.RUNTIME_FILE), os.path.join(b.tmp, sparse_cpu.RUNTIME_FILE))
    runtime = f"onnxruntime + compress BSR kernel ({sparse_cpu.MODEL_FILE})"
    for what, x, ref in b.cases:
        b.checks.append(_check(runtime, what, sparse_cpu.run(path, lib, [t.numpy() for t in x]), ref, ORT_TOL))
    b.copy_script("run_ort.py")
    argv = ["run_ort.py", sparse_cpu.MODEL_FILE, "--bsr-kernel"] + shlex.split(b.dtype_args)
    expected = mf.expected_latency(b.model, b.example, b.cfg.target, b.cfg.batch or 1, sparse=True)
    b.bench.append({"runtime": "onnxruntime + compress BSR kernel", "argv": argv, "expected_ms": expected.get("ms")})
    b.commands.append({"what": "run and time with onnxruntime, block-sparse layers on compress's kernel",
                       "command": "python3 " + " ".join(argv), "needs": sparse_cpu.NEEDS})
    return {"file": sparse_cpu.MODEL_FILE, "library": info, "runtime_module": sparse_cpu.RUNTIME_FILE,
            "expected_latency": expected,
            "op": f"{sparse_cpu.runtime.DOMAIN}::{sparse_cpu.runtime.OP_TYPE}", "layers": layers,
            "needs": sparse_cpu.NEEDS, "portable_to": "x86-64 CPUs with the instruction set of -march="
            f"{info['march']} (this machine's, when native)"}


def _tensorrt_step(b: _Build) -> dict:
    """--target gpu or jetson: the TensorRT engine or its build scripts, and run_ort.py as a host reference."""
    from compress.export import build_trt as bt
    from compress.export import ort

    b.log("TensorRT")
    fp16_tol = 1e-2  # model_fp16.onnx vs torch (fp32), relative to the largest output
    built = os.path.join(b.tmp, bt.INT8_ONNX) if b.cfg.dtype == "int8" else b.onnx_path
    inputs = bt.onnx_inputs(built, [tuple(t.shape[1:]) for t in b.example])
    info, trt_cmds = _trt(b.cfg, b.tmp, inputs, b.has_24)
    b.commands += trt_cmds
    if info.get("reason"):
        b.not_verified.append(f"TensorRT engine: {info['reason']}")
    f16 = info.get("fp16_onnx") or {}
    if f16 and not f16.get("file"):
        b.not_verified.append(f"{bt.FP16_ONNX}: {f16['reason']}")
    if f16.get("file"):  # what strongly typed TensorRT builds for fp16, checked in onnxruntime (CPU, fp16)
        try:
            f16["parity"] = [{"inputs": what} | ort.compare(ort.run(os.path.join(b.tmp, bt.FP16_ONNX),
                                                                    [t.numpy() for t in x]), ref, fp16_tol)
                             for what, x, ref in b.cases]
            if not all(c["ok"] for c in f16["parity"]):
                b.not_verified.append(f"{bt.FP16_ONNX} differs from torch beyond {fp16_tol} (fp16 range or rounding): "
                                      "a strongly typed fp16 engine (TensorRT 11+) would too; consider --dtype fp32")
        except Exception as e:  # an op onnxruntime's CPU provider has no fp16 kernel for
            f16["parity"] = None
            b.not_verified.append(f"{bt.FP16_ONNX}: {mf.NOT_VERIFIED} (onnxruntime CPU cannot run it: {first_line(e, 200)})")
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
    cuda_major = dev.cuda_major  # cubins from the device driver's CUDA major, or refuse (one line)
    if os.environ.get(tvmx.ANY_CUDA_ENV) == "1":
        try:
            tvmx.cuda_compiler(dev.cuda_major)
        except CompressError:
            cuda_major = None
    info = tvmx.build(b.onnx_path, target, lib, cc=AARCH64_CXX, cuda_major=cuda_major) | {
        "version": tvmx.version(), "tag": dev.tvm_tag, "host": AARCH64_HOST, "cc": AARCH64_CXX,
        "elf_machine": tvmx.elf_machine(lib), "device_cuda": f"{dev.jetpack}: driver CUDA {dev.cuda_major}.x"}
    if info["elf_machine"] != tvmx.EM_AARCH64:
        raise CompressError(f"the cross-compiled TVM library is not an aarch64 ELF (e_machine {info['elf_machine']})")
    if not info["cuda_version"].startswith(f"{dev.cuda_major}."):
        info["cuda_mismatch"] = (f"built with CUDA {info['cuda_version']} ({tvmx.ANY_CUDA_ENV}=1): a CUDA "
                                 f"{dev.cuda_major} driver ({dev.jetpack}) cannot load its kernels")
        b.not_verified.append(f"TVM library {lib_name}: {info['cuda_mismatch']}")
    rt = info["runtime"]
    b.copy_script("run_tvm.py")
    b.commands.append({"what": "run and time the TVM library on the Jetson's GPU (generic dlight schedules, "
                               "expected slower than the TensorRT engine)",
                       "command": f"python3 run_tvm.py {lib_name} --device cuda {b.dtype_args}",
                       "needs": f"apache-tvm {rt['apache-tvm']} (tvm-ffi {rt['tvm-ffi']}) built with CUDA on the Jetson"})
    b.not_verified.append(f"TVM library {lib_name}: {mf.NOT_VERIFIED} (aarch64 + CUDA {info.get('cuda_arch')}, "
                          f"CUDA {info['cuda_version']}; no Jetson here)")
    return info


def _check_int8_inputs(lm) -> None:
    """A model with several inputs is calibrated from token ids (export/quantize.py): each other input must be an
    attention mask (from the calibration data: 0 on the padding) or token type ids (zeros) shaped like the first;
    anything else is refused in one line."""
    from compress import models
    from compress.export import inputs as inp

    x = models.example_inputs(lm)
    fills = [inp.value_kind(n, t) for (n, _, _), t in zip(lm.inputs[1:], x[1:])]
    bad = [n for (n, _, _), f, t in zip(lm.inputs[1:], fills, x[1:])
           if f not in ("mask", "zeros") or t.shape != x[0].shape]
    if bad:
        raise CompressError(f"--dtype int8 calibrates a model with several inputs from its token ids (attention "
                            f"masks and token type ids follow from them); {lm.spec} also takes {', '.join(bad)}, which "
                            f"is not an attention mask or token type ids shaped like {lm.inputs[0][0]}: export it in "
                            "fp32 (--dtype fp32)")


def _int8_step(b: _Build) -> dict:
    """--dtype int8: model.int8.onnx (ONNX QDQ: post-training static quantization of model.onnx on --calib,
    compress.export.quantize), judged against model.onnx by task metric (top-1 agreement, or cosine); on --target
    cpu onnxruntime runs and `bench` times it, on gpu/jetson it is TensorRT's input (explicit quantization). A model
    with several inputs keeps them all: calibrated with the masks its calibration data gives, judged on padded ones."""
    from compress.export import quantize as q

    lm, specs = b.lm, b.man["source"]["inputs"]
    text = lm.input_dtype == "int64"
    dataset = None if text else q.dataset_of(b.model, lm.spec)
    cal = q.calibration(b.cfg.calib, lm, b.example, dataset, b.cfg.batch)
    path = os.path.join(b.tmp, q.INT8_FILE)
    info = q.build_int8(b.onnx_path, path, cal, q.parse_method(b.cfg.calib_method), dataset, b.sample_shape,
                        b.cfg.batch, b.cfg.target, text, b.log)
    b.log("int8 vs fp32 (task metric)")
    info["parity"] = p = q.check(path, b.onnx_path, b.cases, dataset, b.sample_shape, b.cfg.batch, lm)
    info["inputs"] = [s["name"] for s in specs]
    int8_args = " ".join(runner_args(specs))
    b.checks.append({"runtime": f"onnxruntime int8 ({q.INT8_FILE}) vs fp32 (model.onnx)", "inputs": p["inputs"],
                     "ok": p["ok"], "metric": p["metric"], "value": p["value"], "threshold": p["threshold"]})
    for why in (cal.warning, p.get("note")):
        if why:
            b.not_verified.append(f"{q.INT8_FILE}: {why}")
    if b.cfg.target == "cpu":   # timed against the int8 profile's prediction, not the fp32 one of expected_latency
        info["expected_latency"] = expected = mf.expected_latency(b.model, b.example, b.cfg.target, b.cfg.batch or 1,
                                                                  dtype="int8")
        b.bench.append({"runtime": "onnxruntime int8 (QDQ)", "argv": ["run_ort.py", q.INT8_FILE] + shlex.split(int8_args),
                        "expected_ms": expected.get("ms")})
        b.commands.append({"what": "run and time the int8 model with onnxruntime",
                           "command": f"python3 run_ort.py {q.INT8_FILE} {int8_args}", "needs": "onnxruntime, numpy"})
    return info


def _runtime_steps(b: _Build) -> None:
    """Every artifact of the target, each checked here as far as this machine can."""
    man, target = b.man, b.cfg.target
    man["onnx"] = _onnx_step(b)
    if b.cfg.dtype == "int8":
        man["int8"] = _int8_step(b)
    if b.has_24 or target == "gpu":
        man["sparsity_2_4"] = _sparsity_24_step(b)
    if target == "cpu":
        ort_info = _ort_host_step(b) if b.cfg.wants("ort") else {"built": False, "reason": "not requested (--runtimes)"}
        man["tvm"] = _tvm_host_step(b) if b.cfg.wants("tvm") else {"built": False, "reason": "not requested (--runtimes)"}
        man["onnxruntime"] = ort_info
    else:
        man["tensorrt"] = _tensorrt_step(b)
    if target == "gpu":
        man["aoti"] = _aoti_step(b)
    if target == "cpu" and sparse_cpu.cpu_sparse_layers(b.model, b.formats):
        man["sparse_cpu"] = _sparse_cpu_step(b)
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
    if cfg.dtype == "int8" and len(lm.inputs) > 1:
        _check_int8_inputs(lm)                         # a model int8 cannot quantize: refused before writing
    plan_file, formats = _layer_formats(model, model_or_dir, sparse_plan)
    example, cases, real_desc = _parity_cases(lm, model, cfg)
    sample_shape = tuple(example[0].shape[1:])
    man = _source_manifest(lm, model, model_or_dir, cfg, command, plan_file, formats, example, real_desc)
    if cfg.target == "cpu":
        man["runs_dense"] = sparse_cpu.check_cpu(model, formats, cfg.dense_fallback)
    elif cfg.target == "jetson":
        man["runs_dense"] = sparse_cpu.check_jetson(formats, cfg.dense_fallback)
    with atomic_dir(out) as tmp:
        b = _Build(cfg, model, tmp, example, cases, formats, sample_shape, _dtype_args(man), man, log, lm=lm)
        _runtime_steps(b)
        _write_manifest(b, command)
    return man
