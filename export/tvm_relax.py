"""Apache TVM (Relax) builds of an exported ONNX model: a host library (llvm) run here for parity,
and a Jetson library (aarch64 host + CUDA) cross-compiled here.

TVM's Relax ONNX frontend imports the same ONNX file that onnxruntime runs, so both runtimes see
one graph. CUDA kernels are compiled to a cubin for the target's compute capability by NVRTC
(`cuda-bindings`) or by nvcc (`TVM_CUDA_COMPILE_MODE=nvcc`); neither needs a GPU.
"""

from __future__ import annotations

import os
import shutil
import struct

import numpy as np

from compress.errors import CompressError

EM_AARCH64, EM_X86_64 = 183, 62


def _tvm():
    try:
        import tvm
        from tvm import relax  # noqa: F401
    except ImportError as e:
        raise CompressError(f"TVM builds need apache-tvm 0.27 (pip install apache-tvm): {e}") from None
    return tvm


def version() -> str | None:
    try:
        from importlib import metadata
        return metadata.version("apache-tvm")
    except Exception:
        return None


def unsupported_ops(onnx_model) -> list[tuple[str, str]]:
    """(op_type, node name) of every node TVM's Relax ONNX frontend has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"If", "Constant"}
    return [(n.op_type, n.name) for n in onnx_model.graph.node if n.op_type not in known]


def layer_of(node_name: str) -> str:
    """TorchScript-exported node names are '/module/path/Op_N': the module path as a dotted name."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) <= 1:
        return node_name or "(top level)"
    return parts[-2] if "." in parts[-2] else ".".join(parts[:-1])


def import_onnx(onnx_path: str):
    """The Relax IRModule of an ONNX file (weights bound as constants). Unsupported ops: CompressError
    naming the op and the layer."""
    import onnx

    _tvm()
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(onnx_path)
    bad = unsupported_ops(model)
    if bad:
        op, node = bad[0]
        more = f" (and {len(bad) - 1} more node(s): {', '.join(sorted({o for o, _ in bad}))})" if len(bad) > 1 else ""
        raise CompressError(f"TVM's Relax ONNX frontend does not support op {op} in layer {layer_of(node)} "
                            f"(ONNX node {node}){more}; replace that layer or export for another target")
    try:
        return from_onnx(model, keep_params_in_input=False)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise CompressError(f"TVM's Relax ONNX frontend cannot import the model: {type(e).__name__}: {msg[:300]}") from None


def host_target() -> dict:
    return {"kind": "llvm"}


def jetson_target(tag: str, host: dict):
    tvm = _tvm()
    return tvm.target.Target(tvm.target.Target(tag), host=host)


# A CUDA 12 compiler for a JetPack 6 device (its driver is CUDA 12.2 / 12.6: a cubin from a newer CUDA major
# needs a newer driver, CUDA 13's >= 580, and minor-version compatibility holds only within one major).
CUDA12_INSTALL = ("put a CUDA 12 toolkit's nvcc (e.g. CUDA 12.6, JetPack 6.1/6.2's) first on PATH, or pip install "
                  "'cuda-bindings>=12.8,<13' 'cuda-toolkit[nvrtc]==12.6.*' with CUDA_PATH at a CUDA 12 toolkit "
                  "(a torch built for CUDA 13 pins cuda-bindings 13: use another environment)")
ANY_CUDA_ENV = "COMPRESS_JETSON_ANY_CUDA"  # =1: build with whatever CUDA is here, recorded as such (not for JetPack 6)
SCHEDULES = {  # what the Jetson library's CUDA kernels are, and what that means for its speed
    "kind": "dlight default GPU rules (Matmul, GEMV, Reduction, GeneralReduction, then Fallback)",
    "tuned": False,
    "library_dispatch": "no MetaSchedule tuning, no cuBLAS / cuDNN / CUTLASS kernels",
    "expected_gap": "not measured; generic untuned schedules are expected to run several times slower than "
                    "TensorRT on the same device",
    "fast_path": "the TensorRT engine (build_engine.sh) is the fast path on the Jetson; this library is the "
                 "portable fallback and a second opinion on correctness",
}


def nvrtc_version() -> tuple[int, int] | None:
    """NVRTC's (major, minor) through cuda-bindings (what TVM's default NVRTC path loads), None without it."""
    try:
        from cuda.bindings import nvrtc
        res, major, minor = nvrtc.nvrtcVersion()
    except Exception:  # cuda-bindings missing, or its NVRTC library
        return None
    return (int(major), int(minor)) if int(res) == 0 else None


def nvcc_version() -> tuple[int, int] | None:
    """The (major, minor) of the nvcc on PATH (the one TVM_CUDA_COMPILE_MODE=nvcc runs), None without one."""
    import re
    import subprocess

    exe = shutil.which("nvcc")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m[1]), int(m[2])) if m else None


def cuda_compiler(major: int | None = None) -> tuple[str, str]:
    """(compiler, CUDA version) TVM turns generated CUDA C into cubins with, without a GPU here: NVRTC when
    cuda-bindings loads it (TVM's default), else nvcc on PATH. `major`: only a compiler of that CUDA major
    (the device driver's); otherwise a one-line CompressError naming what was found and what to install."""
    found = [(name, v) for name, v in (("nvrtc", nvrtc_version()), ("nvcc", nvcc_version())) if v]
    for name, v in found:
        if major is None or v[0] == major:
            return name, f"{v[0]}.{v[1]}"
    if not found:
        raise CompressError("compiling TVM's CUDA kernels needs NVRTC (pip install cuda-bindings 'cuda-toolkit[nvrtc]') "
                            "or nvcc on PATH; neither is available")
    have = ", ".join(f"{'NVRTC' if n == 'nvrtc' else 'nvcc'} {v[0]}.{v[1]}" for n, v in found)
    raise CompressError(f"the Jetson library needs a CUDA {major} compiler (JetPack 6's driver is CUDA 12; a newer "
                        f"major's cubins need a newer driver), found {have}: {CUDA12_INSTALL}; or set {ANY_CUDA_ENV}=1 "
                        "for a device whose driver is that new")


def _cuda_pipeline(target, fell_back: list[str]):
    """TVM 0.27's default Relax CUDA pipeline (tvm.relax.backend.cuda.pipeline.get_default_pipeline) with one
    change: a dlight schedule rule that raises on a function falls through to the next rule (GEMV, reduction,
    ..., Fallback) instead of failing the build. dlight's Matmul rule asserts ("consumers of the cache-write
    stage that are not properly inlined") on the fused 1x1 conv + multiply of squeeze-excitation blocks
    (MobileNetV3, EfficientNet). Each function that fell back is appended to `fell_back`."""
    tvm = _tvm()
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    class FallThrough(dl.ScheduleRule):
        def __init__(self, rule):
            self.rule = rule

        def apply(self, func, tgt, tunable):
            try:
                return self.rule.apply(func, tgt, tunable)
            except Exception as e:  # the rule does not fit this function: let the next one try
                fell_back.append(f"{_main_block(func)}: {type(self.rule).__name__} ({type(e).__name__})")
                return None

    rules = [FallThrough(r) for r in (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction())]
    legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
                relax.transform.FuseOps(), relax.transform.FuseTIR(),
                dl.ApplyDefaultSchedule(*rules, dl.gpu.Fallback())]

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(cuda.library_dispatch_passes(target) + legalize
                                            + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))(mod)

    return pipeline


def _main_block(func) -> str:
    """The name of a PrimFunc's first output block (what the function computes, e.g. 'conv2d_nchw')."""
    try:
        from tvm import s_tir
        sch = s_tir.Schedule(func)
        return ",".join(sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root")))
    except Exception:
        return "(unnamed function)"


def runtime_versions() -> dict:
    """The TVM runtime a library built here needs on the device: apache-tvm and its tvm-ffi ABI."""
    tvm = _tvm()
    try:
        import tvm_ffi
        ffi = tvm_ffi.__version__
    except (ImportError, AttributeError):
        ffi = None
    return {"apache-tvm": tvm.__version__, "tvm-ffi": ffi}


def build(onnx_path: str, target, out_path: str, cc: str | None = None, cuda_major: int | None = None) -> dict:
    """Build the ONNX model with Relax for `target` and export a shared library to `out_path`. A CUDA target
    compiles its kernels with a compiler of CUDA `cuda_major` (None: any), recorded with its version."""
    tvm = _tvm()
    from tvm import relax

    mod = import_onnx(onnx_path)
    tgt = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    info = {"target": str(tgt), "file": os.path.basename(out_path), "runtime": runtime_versions()}
    env_before = os.environ.get("TVM_CUDA_COMPILE_MODE")
    fell_back: list[str] = []
    try:
        pipeline = "default"
        if tgt.kind.name == "cuda":
            info["cuda_compiler"], info["cuda_version"] = cuda_compiler(cuda_major)
            os.environ["TVM_CUDA_COMPILE_MODE"] = info["cuda_compiler"]
            info["cuda_arch"] = str(tgt.attrs.get("arch", ""))
            info["schedule"] = dict(SCHEDULES)
            pipeline = _cuda_pipeline(tgt, fell_back)
        with tgt:
            ex = relax.build(mod, target=tgt, relax_pipeline=pipeline)
        if fell_back:
            info["schedule_fallbacks"] = [f"{f} x{fell_back.count(f)}" for f in sorted(set(fell_back))]
        if cc:
            ex.export_library(out_path, cc=cc)
        else:
            ex.export_library(out_path)
    except CompressError:
        raise
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise CompressError(f"TVM build for {tgt.kind.name} failed: {type(e).__name__}: {msg[:300]}") from None
    finally:
        if tgt.kind.name == "cuda":
            if env_before is None:
                os.environ.pop("TVM_CUDA_COMPILE_MODE", None)
            else:
                os.environ["TVM_CUDA_COMPILE_MODE"] = env_before
    info["device_modules"] = sorted({m.kind for m in _walk(ex.mod)} - {"relax.VMExecutable"})
    return info


def _walk(m):
    yield m
    for s in m.imports:
        yield from _walk(s)


def run(lib_path: str, arrays: list[np.ndarray]) -> np.ndarray:
    """Load an exported host library and run `main` on CPU; the first output as numpy."""
    tvm = _tvm()
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(lib_path), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
    while not hasattr(out, "numpy"):
        out = out[0]
    return out.numpy()


def elf_machine(path: str) -> int | None:
    """e_machine of an ELF file (183: AArch64, 62: x86-64), None if it is not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    endian = "<" if head[5] == 1 else ">"
    return struct.unpack(endian + "H", head[18:20])[0]
