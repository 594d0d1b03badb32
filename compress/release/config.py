"""`compress.toml`: the release config, validated before any work starts.

Every problem is collected with its key path (`targets.cpu.ratio: ...`) and all of them are reported
together in one CompressError (exit 2). Paths in the file are relative to the file's directory.

    [model]                       spec (required), weights, input_shape
    [data]                        spec (required): fashion-mnist or a directory
    [measure]                     runs (latency repetitions per round), rounds (alternating dense/pruned),
                                  batch (the batch latency is measured at; default: the model's input shape)
    [targets.cpu|gpu|jetson]      the plan: ratio = R | ratios = [R, ...] (candidates) |
                                  latency_budget = F (fraction of dense latency, needs profile);
                                  profile, device, criterion, finetune (epochs), distill, lr, seed,
                                  require_measured (an unverifiable latency budget fails the gate),
                                  dtype = "fp32" | "int8" (the precision that ships; int8: cpu only, with
                                  calib = SPEC and optional calib_method, as `compress export --dtype int8`)
    [budgets.<target>]            max_accuracy_drop (percentage points), min_speedup, max_latency_ms,
                                  max_size_mb (1 MB = 10^6 bytes of the exported model file)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field

from compress.errors import CompressError, first_line

TARGETS = ("cpu", "gpu", "jetson")
MEASURED_HERE = ("cpu",)  # targets whose artifacts run on this machine; the others need a profile
LATENCY_BUDGETS = ("min_speedup", "max_latency_ms")  # only predicted (not verified) off MEASURED_HERE
JETSON_PROFILES = {"orin-nano": "jetson-orin-nano", "agx-orin": "jetson-agx-orin"}  # device -> shipped profile
BUDGETS = ("max_accuracy_drop", "min_speedup", "max_latency_ms", "max_size_mb")
DTYPES = ("fp32", "int8")
INT8_TARGETS = ("cpu",)  # int8 artifacts this release can measure and judge (onnxruntime on this machine)


@dataclass(frozen=True)
class Budgets:
    max_accuracy_drop: float | None = None  # percentage points of top-1 accuracy (dense - pruned) * 100
    min_speedup: float | None = None  # dense latency / pruned latency
    max_latency_ms: float | None = None  # pruned latency, ms
    max_size_mb: float | None = None  # exported model file, 10^6 bytes

    def items(self) -> list[tuple[str, float]]:
        return [(k, getattr(self, k)) for k in BUDGETS if getattr(self, k) is not None]


@dataclass(frozen=True)
class Target:
    name: str
    ratios: tuple[float, ...] = ()  # fixed-ratio plan: candidate ratios, tried in order
    latency_budget: float | None = None  # plan from a profile: fraction of the dense latency
    profile: str | None = None
    device: str | None = None
    criterion: str = "l1"
    finetune: float = 0.0
    distill: bool = False
    lr: float | None = None
    seed: int = 0
    require_measured: bool = False  # a latency budget that cannot be measured here fails instead of skipping
    measure_plan: bool = False  # cpu latency_budget: `compress plan --measure` (candidates timed here)
    budgets: Budgets = field(default_factory=Budgets)
    dtype: str = "fp32"  # the precision that ships: int8 plans, exports, measures and judges the int8 artifact
    calib: str | None = None  # int8: calibration data (compress export --calib; a .npy path is absolute here)
    calib_method: str | None = None  # int8: compress export --calib-method

    @property
    def int8(self) -> bool:
        return self.dtype == "int8"

    def export_args(self) -> list[str]:
        """The `compress export` flags of this target's precision (none for fp32)."""
        if not self.int8:
            return []
        return ["--dtype", "int8", "--calib", self.calib] + (["--calib-method", self.calib_method]
                                                             if self.calib_method else [])

    def quant_key(self) -> dict:
        """What an int8 artifact depends on beyond its source (empty for fp32, so fp32 cache keys stay as they were)."""
        if not self.int8:
            return {}
        calib_file = self.calib if self.calib and self.calib.endswith(".npy") and os.path.isfile(self.calib) else None
        from compress.release.cache import file_sha256

        return {"dtype": self.dtype, "calib": self.calib, "calib_method": self.calib_method,
                "calib_sha256": file_sha256(calib_file) if calib_file else None}

    @property
    def measured_here(self) -> bool:
        return self.name in MEASURED_HERE

    def section(self) -> dict:
        """The config section that keys this target's cached steps (budgets excluded: changing a
        budget re-checks, it does not re-run)."""
        return {"target": self.name, "criterion": self.criterion, "finetune": self.finetune,
                "distill": self.distill, "lr": self.lr, "seed": self.seed, "device": self.device}


@dataclass(frozen=True)
class ReleaseConfig:
    path: str
    model: str
    data: str
    weights: str | None = None
    input_shape: str | None = None
    runs: int = 50
    rounds: int = 5
    batch: int | None = None  # latency measured at this batch (the artifacts keep a dynamic batch)
    targets: tuple[Target, ...] = ()

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)


_SCHEMA = {
    "model": {"spec": str, "weights": str, "input_shape": str},
    "data": {"spec": str},
    "measure": {"runs": int, "rounds": int, "batch": int},
}
_TARGET_KEYS = {"ratio": float, "ratios": list, "latency_budget": float, "profile": str, "device": str,
                "criterion": str, "finetune": float, "distill": bool, "lr": float, "seed": int,
                "require_measured": bool, "measure_plan": bool, "dtype": str, "calib": str, "calib_method": str}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "a table"}


def _type_ok(value, typ) -> bool:
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ)


def _what(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append(f"{path}: {msg}")

    def check_table(self, table: dict, path: str, schema: dict) -> dict:
        """Typed values of `table` under `schema`; unknown keys and wrong types are recorded."""
        out = {}
        for k, v in table.items():
            p = f"{path}.{k}" if path else k
            if k not in schema:
                self.add(p, f"unknown key (allowed: {', '.join(schema)})")
            elif not _type_ok(v, schema[k]):
                self.add(p, f"expected {_TYPE_NAMES[schema[k]]}, got {_what(v)} {v!r}")
            else:
                out[k] = float(v) if schema[k] is float else v
        return out


def _resolve(base: str, p: str) -> str:
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))


def _profile_file(name: str, base: str, dtype: str = "fp32", batch: int | None = None) -> tuple[str | None, str | None]:
    """(path, problem): a profile file (relative to the config's directory) or a shipped profile's name
    (e.g. cpu-x86-2core-ort, resolved to its batch-1 file as `compress plan` does; int8: its
    NAME-int8[-TAG]-bN.json at the measured batch), validated; an int8 profile for an fp32 target and the
    reverse are problems."""
    from compress.hardware_profiles import load_profile

    is_name = not (name.endswith(".json") or os.sep in name or "/" in name)
    path = name if is_name else _resolve(base, name)
    if not is_name and not os.path.isfile(path):
        return None, (f"file {path} does not exist (give a profile file or a shipped profile's name, "
                      "e.g. cpu-x86-2core-ort)")
    try:
        if dtype == "int8":
            return load_profile(path, dtype="int8", batch=batch if is_name else None).path, None
        prof = load_profile(path, batch=1 if is_name else None)
    except CompressError as e:
        return None, first_line(e, None, strip=False)
    if prof.dtype == "int8":
        return None, f"profile {prof.path} is an int8 profile; set dtype = \"int8\" or give an fp32 profile"
    return prof.path, None


def _precision(name: str, t: dict, raw: dict, base: str, err: _Errors) -> tuple[str, str | None, str | None]:
    """(dtype, calib, calib_method) of a target, checked: int8 needs calibration data and a target whose
    int8 artifact runs here; calib and calib_method need int8."""
    path = f"targets.{name}"
    dtype = t.get("dtype", "fp32")
    if dtype not in DTYPES:
        err.add(f"{path}.dtype", f"unknown dtype {dtype!r} (choose {' or '.join(DTYPES)})")
    calib, method = t.get("calib"), t.get("calib_method")
    if dtype != "int8":
        for k in ("calib", "calib_method"):
            if k in raw:
                err.add(f"{path}.{k}", 'calibrates an int8 artifact: set dtype = "int8" or drop it')
        return dtype, None, None
    if name not in INT8_TARGETS:
        err.add(f"{path}.dtype", f"int8 releases are measured and judged on this machine's CPU: only "
                f"{', '.join(INT8_TARGETS)} so far")
    if calib is None and "calib" not in raw:
        err.add(f"{path}.calib", 'required with dtype = "int8": static quantization needs calibration data '
                "(data:N, a FILE.npy of real inputs, or random:N)")
    elif calib is not None:
        from compress import calib as calib_specs

        try:
            c = calib_specs.parse(calib, data=True)
            if c.kind == "npy":
                calib = _resolve(base, calib)
                if not os.path.isfile(calib):
                    err.add(f"{path}.calib", f"file {calib} does not exist")
        except CompressError as e:
            err.add(f"{path}.calib", first_line(e, None, strip=False))
    if method is not None:
        from compress.export.targets import CALIB_METHODS

        if method.lower() not in CALIB_METHODS:
            err.add(f"{path}.calib_method", f"unknown method {method!r} (choose {', '.join(CALIB_METHODS)})")
    return dtype, calib, method


def _target(name: str, raw, budgets_raw, base: str, err: _Errors, criteria: tuple[str, ...],
            batch: int | None = None) -> Target | None:
    path = f"targets.{name}"
    if name not in TARGETS:
        err.add(path, f"unknown target (choose from {', '.join(TARGETS)})")
        return None
    if not isinstance(raw, dict):
        err.add(path, f"expected a table, got {_what(raw)}")
        return None
    t = err.check_table(raw, path, _TARGET_KEYS)
    dtype, calib, calib_method = _precision(name, t, raw, base, err)
    ratios: list[float] = []
    if "ratio" in t:
        ratios = [t["ratio"]]
    if "ratios" in t:
        for i, r in enumerate(t["ratios"]):
            if not _type_ok(r, float):
                err.add(f"{path}.ratios[{i}]", f"expected a number, got {_what(r)} {r!r}")
            else:
                ratios.append(float(r))
        if not t["ratios"]:
            err.add(f"{path}.ratios", "must list at least one ratio")
    for i, r in enumerate(ratios):
        if not 0 < r < 1:
            where = f"{path}.ratios[{i}]" if "ratios" in t else f"{path}.ratio"
            err.add(where, f"must be in (0, 1), got {r}")
    plans = [k for k in ("ratio", "ratios", "latency_budget") if k in raw]
    if len(plans) > 1:
        err.add(path, f"give one plan, not {' and '.join(plans)}")
    elif not plans:
        err.add(path, "needs a plan: ratio = R, ratios = [R, ...] or latency_budget = F (with profile)")
    lb = t.get("latency_budget")
    if lb is not None and not 0 < lb <= 1:
        err.add(f"{path}.latency_budget", f"is a fraction of the dense latency in (0, 1], got {lb}")
    device = t.get("device")
    if name == "jetson":
        if device is None and "device" not in raw:
            err.add(f"{path}.device", f"required: the Jetson to export for ({' or '.join(JETSON_PROFILES)})")
        elif device is not None and device not in JETSON_PROFILES:
            err.add(f"{path}.device", f"unknown Jetson device {device!r} (choose {' or '.join(JETSON_PROFILES)})")
    elif name == "cpu" and device not in (None, "host"):
        err.add(f"{path}.device", f"the cpu target builds for this machine; drop device = {device!r}")
    profile = t.get("profile")
    if profile is None and "profile" not in raw:
        if name == "jetson" and device in JETSON_PROFILES:
            profile = JETSON_PROFILES[device]  # the shipped profile of the device
        elif "latency_budget" in raw:
            err.add(f"{path}.profile", "required: a latency_budget plan is made against a device profile "
                    "(compress profile --target " + name + " --out FILE)")
        elif name not in MEASURED_HERE:
            err.add(f"{path}.profile", f"required: {name} latency cannot be measured on this machine and is "
                    f"predicted from a device profile (compress profile --target {name} --out FILE)")
    if profile is not None:
        # (an int8 target that cannot be int8 has been reported: its profile is checked as fp32's)
        profile, problem = _profile_file(profile, base, dtype if name in INT8_TARGETS else "fp32", batch)
        if problem:
            err.add(f"{path}.profile", problem)
    if t.get("measure_plan") and (name != "cpu" or "latency_budget" not in raw):
        err.add(f"{path}.measure_plan", "times candidate plans on this machine: only for the cpu target with a "
                "latency_budget")
    elif t.get("measure_plan") and dtype == "int8":
        err.add(f"{path}.measure_plan", 'times fp32 candidates; it does not plan dtype = "int8" yet')
    crit = t.get("criterion", "l1")
    if "criterion" in t and crit not in criteria:
        err.add(f"{path}.criterion", f"unknown criterion {crit!r} (choose from {', '.join(criteria)})")
    if t.get("finetune", 0) < 0:
        err.add(f"{path}.finetune", f"epochs must be >= 0, got {t['finetune']}")
    if t.get("distill") and not t.get("finetune"):
        err.add(f"{path}.distill", "needs finetune > 0 (distillation happens during fine-tuning)")
    if "lr" in t and not t["lr"] > 0:
        err.add(f"{path}.lr", f"must be positive, got {t['lr']}")
    b = {}
    if budgets_raw is not None:
        bpath = f"budgets.{name}"
        if not isinstance(budgets_raw, dict):
            err.add(bpath, f"expected a table, got {_what(budgets_raw)}")
        else:
            b = err.check_table(budgets_raw, bpath, {k: float for k in BUDGETS})
            for k, v in b.items():
                if v < 0 or (k == "max_accuracy_drop" and v > 100):
                    rng = "[0, 100] percentage points" if k == "max_accuracy_drop" else ">= 0"
                    err.add(f"{bpath}.{k}", f"must be in {rng}, got {v}")
    return Target(name=name, ratios=tuple(ratios), latency_budget=lb, profile=profile, device=device,
                  criterion=crit, finetune=t.get("finetune", 0.0), distill=t.get("distill", False),
                  lr=t.get("lr"), seed=t.get("seed", 0), require_measured=t.get("require_measured", False),
                  measure_plan=t.get("measure_plan", False),
                  budgets=Budgets(**b), dtype=dtype, calib=calib, calib_method=calib_method)


def load(path: str, only: str | None = None) -> ReleaseConfig:
    """Parse and validate `path`; raise CompressError listing every problem (one per line)."""
    from compress.prune.importance import CRITERIA

    if not os.path.isfile(path):
        raise CompressError(f"--config {path}: file does not exist")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CompressError(f"{path}: not valid TOML ({e})") from None
    base = os.path.dirname(os.path.abspath(path))
    err = _Errors()
    known = {"model", "data", "measure", "targets", "budgets"}
    for k, v in raw.items():
        if k not in known:
            err.add(k, f"unknown key (allowed: {', '.join(sorted(known))})")
        elif not isinstance(v, dict):
            err.add(k, f"expected a table, got {_what(v)}")
    tables = {k: raw[k] if isinstance(raw.get(k), dict) else {} for k in known}
    model = err.check_table(tables["model"], "model", _SCHEMA["model"])
    data = err.check_table(tables["data"], "data", _SCHEMA["data"])
    measure = err.check_table(tables["measure"], "measure", _SCHEMA["measure"])
    if "spec" not in tables["model"]:
        err.add("model.spec", "required (e.g. compress:fmnist-cnn, torchvision:resnet18, hf:DIR)")
    if "spec" not in tables["data"]:
        err.add("data.spec", "required: fashion-mnist or a directory of IDX files / class folders")
    weights = model.get("weights")
    if weights is not None:
        weights = _resolve(base, weights)
        if not os.path.isfile(weights):
            err.add("model.weights", f"file {weights} does not exist")
    dspec = data.get("spec")
    if dspec is not None and dspec != "fashion-mnist":
        dspec = _resolve(base, dspec)
        if not os.path.isdir(dspec):
            err.add("data.spec", f"directory {dspec} does not exist (or use fashion-mnist)")
    for k in ("runs", "rounds", "batch"):
        if k in measure and measure[k] < 1:
            err.add(f"measure.{k}", f"must be >= 1, got {measure[k]}")
    targets = []
    for name, b in tables["budgets"].items():
        if name not in tables["targets"]:
            err.add(f"budgets.{name}", f"a budget without a target: there is no [targets.{name}]")
    for name, t in tables["targets"].items():
        tgt = _target(name, t, tables["budgets"].get(name), base, err, CRITERIA, measure.get("batch"))
        if tgt is not None:
            targets.append(tgt)
    if not tables["targets"]:
        err.add("targets", "configure at least one target, e.g. [targets.cpu] with ratio = 0.5")
    if only is not None and only not in tables["targets"]:
        err.add("--only", f"target {only!r} is not configured (configured: {', '.join(tables['targets']) or 'none'})")
    if err.items:
        n = len(err.items)
        raise CompressError(f"{path}: {n} problem{'s' if n > 1 else ''}:\n" +
                            "\n".join(f"  {e}" for e in err.items))
    if only is not None:
        targets = [t for t in targets if t.name == only]
    return ReleaseConfig(path=os.path.abspath(path), model=model["spec"], data=dspec, weights=weights,
                         input_shape=model.get("input_shape"), runs=measure.get("runs", 50),
                         rounds=measure.get("rounds", 5), batch=measure.get("batch"), targets=tuple(targets))
