"""Export targets and devices: what each `compress export --target` produces and for which hardware."""

from __future__ import annotations

from dataclasses import dataclass

from compress.errors import CompressError

TARGETS = ("cpu", "gpu", "jetson")


@dataclass(frozen=True)
class JetsonDevice:
    name: str          # --device value
    tvm_tag: str       # TVM target tag (CUDA target with its aarch64 host)
    arch: str          # CUDA compute capability as sm_XY
    jetpack: str       # the JetPack line the build script was written for
    cuda_major: int = 12  # the CUDA major of that JetPack's driver: TVM's cubins must come from this major


JETSON_DEVICES = {
    "orin-nano": JetsonDevice("orin-nano", "nvidia/jetson-orin-nano", "sm_87", "JetPack 6 (TensorRT 10, CUDA 12)"),
    "agx-orin": JetsonDevice("agx-orin", "nvidia/jetson-agx-orin-64gb", "sm_87", "JetPack 6 (TensorRT 10, CUDA 12)"),
}

AARCH64_HOST = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
AARCH64_CXX = "aarch64-linux-gnu-g++"
RUNTIMES = ("ort", "tvm")   # --target cpu: onnxruntime (primary, base install) and Apache TVM (extra [tvm])
DTYPES = ("fp32", "fp16", "int8")   # int8: post-training static quantization to ONNX QDQ (export/quantize.py)
CALIB_METHODS = ("minmax", "percentile", "entropy")  # --calib-method of --dtype int8
DYNAMIC_MAX_BATCH = 32  # upper end of the TensorRT optimisation profile for a dynamic batch


@dataclass(frozen=True)
class ExportConfig:
    target: str                    # cpu | gpu | jetson
    device: str | None = None      # jetson: orin-nano | agx-orin; gpu: a free-form name (recorded only)
    dtype: str | None = None       # fp32 | fp16 (TensorRT precision; ONNX stays fp32) | int8 (model.int8.onnx, QDQ);
                                   # None: the target's default
    batch: int | None = None       # None: dynamic batch
    opt_batch: int = 1             # TensorRT profile's optimum for a dynamic batch
    runtimes: tuple[str, ...] | None = None   # cpu: which of RUNTIMES to build, each then required (--runtimes);
                                              # None: onnxruntime, plus TVM when it builds (else recorded why not)
    dense_fallback: bool = False   # ship layers whose sparse format has no kernel on the target as masked dense
    calib: str | None = None       # int8: calibration data (--calib: random[:N] | FILE.npy | data[:N] | tweets[:N] |
                                   # FILE.csv[:N], compress.calib)
    calib_method: str | None = None  # int8: minmax | percentile | entropy (--calib-method); None: chosen (export.quantize)

    def __post_init__(self) -> None:
        if self.dtype is None:
            object.__setattr__(self, "dtype", default_dtype(self.target))

    def validate(self) -> "ExportConfig":
        if self.target not in TARGETS:
            raise CompressError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.target == "jetson":
            if self.device is None:
                raise CompressError(f"--target jetson needs --device ({' or '.join(JETSON_DEVICES)})")
            if self.device not in JETSON_DEVICES:
                raise CompressError(f"unknown Jetson device {self.device!r}; choose one of {', '.join(JETSON_DEVICES)}")
        elif self.target == "cpu" and self.device not in (None, "host"):
            raise CompressError(f"--target cpu builds for this host; drop --device {self.device!r}")
        if self.dtype not in DTYPES:
            raise CompressError(f"unknown --dtype {self.dtype!r}; choose fp32, fp16 or int8")
        self._validate_int8()
        if self.target == "cpu" and self.dtype == "fp16":
            raise CompressError("--target cpu runs fp32 (onnxruntime and TVM on llvm); use --dtype fp32 or a GPU target")
        if self.batch is not None and self.batch < 1:
            raise CompressError(f"--batch {self.batch} must be a positive integer or 'dynamic'")
        if self.runtimes is not None:
            if self.target != "cpu":
                raise CompressError(f"--runtimes chooses the runtimes of --target cpu ({', '.join(RUNTIMES)}); "
                                    f"--target {self.target} builds its own")
            bad = [r for r in self.runtimes if r not in RUNTIMES]
            if bad or not self.runtimes:
                raise CompressError(f"unknown runtime {bad[0] if bad else '(none)'!r} in --runtimes; "
                                    f"choose from {', '.join(RUNTIMES)} (e.g. --runtimes ort,tvm)")
        return self

    def _validate_int8(self) -> None:
        """--dtype int8 is post-training static quantization (compress.export.quantize): it needs --calib;
        --calib and --calib-method mean nothing without it."""
        if self.dtype != "int8":
            if self.calib or self.calib_method:
                raise CompressError(f"--calib{'-method' if self.calib_method and not self.calib else ''} "
                                    "calibrates --dtype int8; add --dtype int8 or drop it")
            return
        if self.calib_method is not None and self.calib_method.lower() not in CALIB_METHODS:
            raise CompressError(f"unknown --calib-method {self.calib_method!r}; choose one of {', '.join(CALIB_METHODS)}")
        if not self.calib:
            raise CompressError("--dtype int8 needs calibration data: --calib data:N (a stratified subset of the training "
                                "split of compress: models), --calib FILE.npy (real inputs), or --calib random:N "
                                "(noise: a warning in the manifest)")
        from compress import calib

        calib.parse(self.calib, data=True, text=True)

    def wants(self, runtime: str) -> bool:
        """Whether `runtime` is built: chosen by --runtimes, or (without it) a default one."""
        return runtime in (self.runtimes if self.runtimes is not None else RUNTIMES)

    @property
    def explicit(self) -> bool:
        """--runtimes was given: a chosen runtime that cannot be built fails the export."""
        return self.runtimes is not None

    @property
    def dynamic(self) -> bool:
        return self.batch is None

    @property
    def jetson(self) -> JetsonDevice | None:
        return JETSON_DEVICES.get(self.device) if self.target == "jetson" else None

    def trt_shapes(self) -> tuple[int, int, int]:
        """(min, opt, max) batch of the TensorRT optimisation profile."""
        if self.batch is not None:
            return self.batch, self.batch, self.batch
        return 1, self.opt_batch, DYNAMIC_MAX_BATCH


def default_dtype(target: str) -> str:
    return "fp32" if target == "cpu" else "fp16"


def parse_runtimes(text: str | None) -> tuple[str, ...] | None:
    """--runtimes ort,tvm -> ("ort", "tvm") in the order given, duplicates dropped; None when not given."""
    if text is None:
        return None
    out = []
    for r in (x.strip().lower() for x in text.split(",")):
        r = {"onnxruntime": "ort"}.get(r, r)
        if r and r not in out:
            out.append(r)
    return tuple(out)


def parse_batch(text: str | None) -> int | None:
    if text is None or text == "dynamic":
        return None
    try:
        b = int(text)
    except ValueError:
        raise CompressError(f"--batch {text!r}: use a positive integer or 'dynamic'") from None
    if b < 1:
        raise CompressError(f"--batch {text!r}: use a positive integer or 'dynamic'")
    return b
