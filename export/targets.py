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


JETSON_DEVICES = {
    "orin-nano": JetsonDevice("orin-nano", "nvidia/jetson-orin-nano", "sm_87", "JetPack 6 (TensorRT 10, CUDA 12)"),
    "agx-orin": JetsonDevice("agx-orin", "nvidia/jetson-agx-orin-64gb", "sm_87", "JetPack 6 (TensorRT 10, CUDA 12)"),
}

AARCH64_HOST = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
AARCH64_CXX = "aarch64-linux-gnu-g++"
DYNAMIC_MAX_BATCH = 32  # upper end of the TensorRT optimisation profile for a dynamic batch


@dataclass(frozen=True)
class ExportConfig:
    target: str                    # cpu | gpu | jetson
    device: str | None = None      # jetson: orin-nano | agx-orin; gpu: a free-form name (recorded only)
    dtype: str | None = None       # fp32 | fp16 (TensorRT precision; ONNX stays fp32); None: the target's default
    batch: int | None = None       # None: dynamic batch
    opt_batch: int = 1             # TensorRT profile's optimum for a dynamic batch

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
        if self.dtype not in ("fp32", "fp16"):
            raise CompressError(f"unknown --dtype {self.dtype!r}; choose fp32 or fp16")
        if self.target == "cpu" and self.dtype == "fp16":
            raise CompressError("--target cpu runs fp32 (onnxruntime and TVM on llvm); use --dtype fp32 or a GPU target")
        if self.batch is not None and self.batch < 1:
            raise CompressError(f"--batch {self.batch} must be a positive integer or 'dynamic'")
        return self

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
