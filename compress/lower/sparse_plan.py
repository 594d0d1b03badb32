"""SparsePlan: per layer, the format a weight was lowered to, as plain deterministic JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from compress.errors import CompressError
from compress.io import SPARSE_PLAN_FILE as PLAN_FILE

SCHEMA_VERSION = 1
FORMATS = ("2:4", "block", "unstructured", "dense")


def _r(x: float | None) -> float | None:
    """Errors rounded to 6 significant digits: the JSON does not change with BLAS thread counts."""
    return None if x is None else float(f"{x:.6g}")


@dataclass(frozen=True)
class LayerPlan:
    name: str
    kind: str                          # linear | conv
    shape: tuple[int, ...]             # the weight's shape
    format: str                        # 2:4 | block:B | unstructured | dense
    density: float                     # fraction of the weight's entries kept
    criterion: str
    block: int | None = None
    module: str = "dense"              # Sparse24Linear | BlockSparseLinear | dense (weights with zeros)
    error_before: float | None = None  # relative output error of the selection, before any weight update
    error_after: float | None = None   # ... of the weights stored
    error_magnitude: float | None = None  # 2:4 only: plain magnitude 2:4 (the baseline)
    skipped: str | None = None         # why the layer could not take the run's pattern and stays dense (format
                                       # "dense"); written only when set, so plans without one keep their bytes

    def __post_init__(self):
        if not (self.format in ("2:4", "unstructured", "dense") or self.format.startswith("block:")):
            raise CompressError(f"layer {self.name}: unknown format {self.format!r}")
        if self.skipped is not None and self.format != "dense":
            raise CompressError(f"layer {self.name}: skipped ({self.skipped}) but stored as {self.format}, not dense")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        for f in ("density", "error_before", "error_after", "error_magnitude"):
            object.__setattr__(self, f, _r(getattr(self, f)))

    @property
    def shape_2d(self) -> tuple[int, int]:
        n = self.shape[0]
        k = 1
        for s in self.shape[1:]:
            k *= s
        return n, k


@dataclass(frozen=True)
class SparsePlan:
    source: dict                       # {"model", "sha256", "input_shape", "input_dtype"}
    config: dict                       # {"pattern", "sparsity", "criterion", "update", "calib", "seed"}
    layers: tuple[LayerPlan, ...]
    schema_version: int = SCHEMA_VERSION
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        d = asdict(self)
        for layer in d["layers"]:
            if layer["skipped"] is None:
                del layer["skipped"]
        return json.dumps(d, indent=1, sort_keys=True) + "\n"

    @property
    def skipped(self) -> dict[str, str]:
        """{layer: why it stays dense} for the layers that could not take the run's pattern."""
        return {lp.name: lp.skipped for lp in self.layers if lp.skipped is not None}

    @classmethod
    def from_json(cls, text: str, path: str = PLAN_FILE) -> "SparsePlan":
        try:
            d = json.loads(text)
            if d.get("schema_version") != SCHEMA_VERSION:
                raise CompressError(f"{path}: schema_version {d.get('schema_version')} is not {SCHEMA_VERSION}")
            d["layers"] = tuple(LayerPlan(**layer) for layer in d["layers"])
            d["notes"] = tuple(d.get("notes", ()))
            return cls(**d)
        except CompressError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CompressError(f"{path} is not a valid sparse plan ({type(e).__name__}: {e})") from None

    def layer(self, name: str) -> LayerPlan:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)
