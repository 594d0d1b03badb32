"""`compress profile`: measure a device's latency tables on this machine (see hardware_profiles/profiler.py).

    profile(ProfileRun(ProfileConfig(target="cpu", models=("torchvision:resnet18",)), out="p.json"))

returns {"text", "json"} as the CLI prints them. Three modes: measure a new profile (`out`), add the
tables `measure.models` need to an existing profile in place (`extend`), or recompute a profile's
calibration from the measurements stored in it, without timing (`refit`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from compress.errors import CompressError
from compress.hardware_profiles.profiler import ProfileConfig


@dataclass(frozen=True)
class ProfileRun:
    """One `compress profile` run.

    - `measure`: what is measured and how (--target, --runtime, --dtype, --batch, --grid-step, --rounds,
      --warmup, --reps, --threads, --max-seconds, --no-staircase, --no-sparse, --model). Its
      `max_points` is --grid-points as given (at least 1; the grid uses at least 2); its `target`
      is required unless `refit` (the command passes None without --target); its `models` are the
      models whose layers are profiled (empty: a generic grid).
    - `out`: the new profile to write (--out).
    - `extend`: a profile to add `measure.models`' missing tables to, in place (--extend).
    - `refit`: a profile whose calibration is recomputed, in place, without timing (--refit); the
      other fields are then ignored.
    - `sparse`: a CPU profile whose dense vs block-sparse table is re-measured, in place, with the kernel
      that ships (--sparse); `measure.models` choose the layer shapes (default: a generic grid), and
      `measure.threads` / `measure.reps` apply. A model with 1x1 convs the kernel takes is also timed whole,
      dense vs those convs through the kernel, for their in-network cost (sparse_bench.conv_context). What the
      section already holds from the same kernel on this machine is kept and not measured again (every shape
      and network again with `recalibrate`); entries measured by anything else are dropped.
    - `input_shape`: example input shape for the models, "N,C,H,W" (--input-shape; batch ignored).
    - `name`: the profile's name (--name; default: the stem of `out`).
    - `recalibrate`: with `sparse`, measure every shape and network again; with `extend`, time the models again on this machine even where FILE has calibrated them,
      and replace their calibration rows (a profile measured on another machine of the same kind, or on a
      day it ran at another speed: the tables keep their shape, the factor takes this machine's speed)
      (--recalibrate).
    - `quick`: with `extend`, measure the missing tables in one round over a coarser grid (at most
      QUICK_GRID_POINTS channel counts per axis; tables begun after QUICK_TABLE_SECONDS at their ends
      only) and time the added models once (--quick).
    """
    measure: ProfileConfig = ProfileConfig()
    out: str | None = None
    extend: str | None = None
    refit: str | None = None
    sparse: str | None = None
    input_shape: str | None = None
    name: str | None = None
    quick: bool = False
    recalibrate: bool = False


# `--extend --quick`: one round, and at most this many channel counts per axis (the grid step and the full
# count always among them): a ResNet-50's 16 tables in about a third of the points
QUICK_GRID_POINTS = 5
# and at most this long per measurement session waiting for runs no other process disturbed (default 20 s: on
# a loaded machine a session otherwise runs up to 6 x --reps times); past it, the fastest run counts
QUICK_MAX_SECONDS = 2.0
# and a budget for the tables: one not begun within it is measured at its ends only (smallest and full count per
# axis), so that a model with many missing shapes, or a loaded machine, still finishes in about a minute
QUICK_TABLE_SECONDS = 30.0


def profile(cfg: ProfileRun) -> dict:
    """Validate, then measure, extend or refit as `cfg` says; {"text", "json"}."""
    if cfg.refit:
        return _refit(cfg.refit)
    if cfg.sparse:
        return _sparse(cfg)
    if cfg.extend and not cfg.measure.target:   # the profile extended says what it is (checked in _base_profile)
        cfg = replace(cfg, measure=replace(cfg.measure, target="cpu"))
    _check(cfg)
    base = _base_profile(cfg)
    mcfg = replace(cfg.measure, max_points=max(cfg.measure.max_points, 2))
    layers, dense = _layers(cfg)
    if cfg.extend:
        return _extend(cfg, base, layers, dense, mcfg)
    return _measure_new(cfg, layers, dense, mcfg)


def _check(cfg: ProfileRun) -> None:
    """The mode and the measurement settings are consistent (errors name the command's flags)."""
    m = cfg.measure
    if cfg.extend and cfg.out:
        raise CompressError("give --out FILE (a new profile) or --extend FILE (add to one), not both")
    if cfg.extend and not m.models:
        raise CompressError("--extend needs --model: the models whose layers the profile should gain")
    if cfg.recalibrate and not cfg.extend:
        raise CompressError("--recalibrate applies to --extend FILE (re-times the --model models for FILE's calibration) or --sparse FILE")
    if cfg.quick and not cfg.extend:
        raise CompressError("--quick applies to --extend FILE (a new profile is measured in full)")
    if not m.target or not (cfg.out or cfg.extend):
        raise CompressError("compress profile needs --target and --out (or --extend FILE, or --refit FILE)")
    counts = {"batch": m.batch, "rounds": m.rounds, "reps": m.reps, "grid-points": m.max_points,
              "grid-step": m.grid_step}
    for flag, v in counts.items():
        if v < 1:
            raise CompressError(f"--{flag} must be >= 1")
    if m.warmup < 0:
        raise CompressError("--warmup must be >= 0")
    from compress.hardware_profiles.profiler import check_dtype

    check_dtype(m)


def _base_profile(cfg: ProfileRun) -> dict | None:
    """The profile `extend` adds to (None for a new profile), after checking the files' places."""
    if not cfg.extend:
        if not Path(cfg.out).resolve().parent.is_dir():
            raise CompressError(f"--out {cfg.out}: directory {Path(cfg.out).resolve().parent} does not exist")
        return None
    from compress.hardware_profiles import schema

    if not Path(cfg.extend).is_file():
        raise CompressError(f"--extend {cfg.extend}: no such profile file")
    base = schema.read(cfg.extend)
    have = (base["device"].get("kind"), base["runtime"].get("name"))
    if have != (cfg.measure.target, cfg.measure.runtime):
        raise CompressError(f"--extend {cfg.extend}: that profile is for {have[0]} / {have[1]}; this profiler "
                            f"measures --target {cfg.measure.target} --runtime {cfg.measure.runtime} here")
    if base["batch"] != cfg.measure.batch:
        raise CompressError(f"--extend {cfg.extend}: that profile is for batch {base['batch']}; "
                            f"pass --batch {base['batch']}")
    if base["dtype"] != cfg.measure.dtype:
        flag = "int8" if base["dtype"] == "int8" else "fp32"
        raise CompressError(f"--extend {cfg.extend}: that profile is {base['dtype']}; pass --dtype {flag}")
    return base


def _layers(cfg: ProfileRun) -> tuple[list, dict]:
    """The layers to profile, and per model its layers and dense model with an example input at
    the batch (timed end to end for the profile's per-model calibration)."""
    from compress import models
    from compress.hardware_profiles.layers import extract_layers
    from compress.hardware_profiles.profiler import DEFAULT_LAYERS

    if not cfg.measure.models:
        return list(DEFAULT_LAYERS), {}
    out, dense = [], {}
    for spec in cfg.measure.models:
        lm = models.load(spec)
        shape = models.parse_shape(cfg.input_shape) if cfg.input_shape else None
        x = models.example_inputs(lm, shape)
        layers = extract_layers(lm.model, x)
        out += layers
        xb = models.example_inputs(lm, (cfg.measure.batch,) + tuple(x[0].shape[1:]))
        dense[spec] = (layers, lm.model.eval(), xb)
    return out, dense


def _measure_new(cfg: ProfileRun, layers, dense, mcfg: ProfileConfig) -> dict:
    """Measure a new profile into `cfg.out`."""
    from compress.hardware_profiles.profiler import run as run_profile

    name = cfg.name or Path(cfg.out).stem
    prof = run_profile(layers, mcfg, cfg.out, name, progress=sys.stderr.isatty(), dense_models=dense)
    n_pts = sum(len(t["cin"]) * len(t["cout"]) for t in prof["tables"])
    m = prof["measurement"]
    text = (f"wrote {cfg.out}: {len(prof['tables'])} {prof['dtype']} layer tables ({n_pts} channel points x "
            f"{mcfg.rounds} rounds, conv channel step {prof['steps']['conv']['block']}), "
            f"{len(prof['memory_ops'])} memory-op fits; peak {prof['peak']['gflops']} GFLOP/s, "
            f"{prof['peak']['gbps']} GB/s; {m['wall_seconds']} s"
            + (f" (resumed {m['resumed_measurements']} finished measurements)" if m["resumed_measurements"] else ""))
    return {"text": text, "json": {"out": cfg.out, "name": name, "dtype": prof["dtype"], "steps": prof["steps"],
                                   "tables": len(prof["tables"]), "points": n_pts,
                                   "wall_seconds": m["wall_seconds"], "resumed": m["resumed_measurements"],
                                   "peak": prof["peak"], "overhead": prof["overhead"]}}


def _extend(cfg: ProfileRun, base: dict, layers, dense, mcfg: ProfileConfig) -> dict:
    """Measure what `base` lacks for the models (tables by key, memory-op kinds, the dense timings of
    uncalibrated models; profiler.missing) into a temporary profile, merge it in, calibrate the added
    models against the merged tables, and replace `cfg.extend` (atomically: nothing changes if any step
    fails). Nothing else is measured again: overheads, peaks and the context line are FILE's."""
    import tempfile

    from compress.hardware_profiles.profiler import _write, merge_into, missing, recalibrate, run as run_profile
    from compress.io import write_text_atomic

    dest = Path(cfg.extend)
    mcfg = replace(mcfg, staircase=False, sparse=False)   # the merge keeps FILE's staircase and sparse table
    if cfg.quick:
        mcfg = replace(mcfg, rounds=1, max_points=min(mcfg.max_points, QUICK_GRID_POINTS),
                       max_seconds=min(mcfg.max_seconds, QUICK_MAX_SECONDS))
    if cfg.recalibrate:                  # forget the models' rows: `missing` then times them again
        base = _without_calibration(base, set(dense))
    tables, kinds, todo = missing(base, layers, mcfg, dense)
    if not (tables or kinds or todo):
        text = (f"{dest} already has every layer table of {', '.join(cfg.measure.models)} and their calibration: "
                "nothing measured, the file is unchanged")
        return {"text": text, "json": {"out": str(dest), "added": None, "calibration": base.get("calibration") or []}}
    with tempfile.TemporaryDirectory(prefix="compress-extend-", dir=dest.resolve().parent) as tmp:
        new = run_profile(layers, mcfg, str(Path(tmp) / "new.json"), base["name"], progress=sys.stderr.isatty(),
                          dense_models=dense, base=base, table_seconds=QUICK_TABLE_SECONDS if cfg.quick else None)
        merged, info = merge_into(base, new)
        info["quick"] = cfg.quick
        info["reduced_tables"] = new["measurement"].get("reduced_tables", [])
        recalibrate(merged, {spec: dense[spec][0] for spec in info["models"]})
        staged = Path(tmp) / dest.name
        _write(merged, staged)
        write_text_atomic(dest, staged.read_bytes())
    cal = {c["model"]: c["factor"] for c in merged["calibration"]}
    text = (f"extended {dest}: {info['tables']} layer tables added"
            + (f" ({mcfg.rounds} round, at most {mcfg.max_points} channel counts per axis: --quick"
               + (f"; {len(info['reduced_tables'])} begun after {QUICK_TABLE_SECONDS:g} s at their ends only"
                  if info["reduced_tables"] else "") + ")" if cfg.quick else "")
            + (f", memory ops {', '.join(info['memory_ops'])}" if info["memory_ops"] else "") + "; calibrated "
            + (", ".join(f"{m} x{cal[m]}" for m in info["models"]) or "no new model (all were calibrated already)")
            + f"; {info['wall_seconds']} s measuring")
    return {"text": text, "json": {"out": str(dest), "added": info, "calibration": merged["calibration"]}}


def _without_calibration(base: dict, models: set) -> dict:
    """A copy of profile `base` without the calibration rows (and context.network rows) of `models`."""
    import copy

    out = copy.deepcopy(base)
    out["calibration"] = [c for c in out.get("calibration") or [] if c["model"] not in models]
    ctx = out.get("context") or {}
    if ctx.get("network"):
        ctx["network"] = [r for r in ctx["network"] if r.get("model") not in models]
    return out


def _sparse(cfg: ProfileRun) -> dict:
    """Re-measure the sparse table of the CPU profile `cfg.sparse` with the deployed kernel, in place."""
    from compress.hardware_profiles import schema, sparse_bench
    from compress.hardware_profiles.profiler import _write

    path = Path(cfg.sparse)
    if not path.is_file():
        raise CompressError(f"--sparse {cfg.sparse}: no such profile file")
    prof = schema.read(str(path))
    if prof["device"]["kind"] != "cpu":
        raise CompressError(f"--sparse {cfg.sparse}: a {prof['device']['kind']} profile; the sparse table is "
                            "measured on this CPU (use a cpu profile)")
    if prof["dtype"] != "float32":
        raise CompressError(f"--sparse {cfg.sparse}: a {prof['dtype']} profile; the block-sparse kernel that ships "
                            "is fp32 (use an fp32 profile)")
    if cfg.measure.reps < 1:
        raise CompressError("--reps must be >= 1")
    layers, dense = _layers(cfg)
    old = prof.get("sparse") or {}
    here = sparse_bench.machine("cpu")
    # the same kernel on the same machine: measure only the shapes (and networks) the table lacks
    keep = (old.get("runtime") == sparse_bench.RUNTIME and not cfg.recalibrate
            and (old.get("machine") or {}).get("name", here["name"]) == here["name"])
    have = frozenset((e["layer"], e["in"], e["out"], e["rows"]) for e in old.get("entries", [])) if keep else frozenset()
    table = sparse_bench.table(layers, prof["batch"], cfg.measure.reps, cfg.measure.threads, have=have)
    table["machine"] = here
    if table["machine"]["name"] != prof["device"]["name"]:
        table["warning"] = (f"measured on {table['machine']['name']}, the profile's tables on "
                            f"{prof['device']['name']}")
    if old.get("runtime") == table["runtime"]:          # keep the shapes measured before with the same kernel
        fresh = {(e["layer"], e["in"], e["out"], e["rows"]) for e in table["entries"]}
        table["entries"] = [e for e in old.get("entries", [])
                            if (e["layer"], e["in"], e["out"], e["rows"]) not in fresh] + table["entries"]
        if have:
            table["date"] = old.get("date", table["date"])
    old_ctx = ((old.get("context") or {}).get("conv1x1") or {}) if old.get("runtime") == table["runtime"] else {}
    prof["sparse"] = table
    ctx = _conv_context(prof, dense, cfg, old_ctx, skip=keep)
    if ctx:
        table["context"] = {"conv1x1": ctx}
    _write(prof, path)
    n = sum(e["format"] != "dense" for e in table["entries"])
    shapes = sorted({(e["layer"], e["in"], e["out"], e["rows"]) for e in table["entries"]})
    best = max((e for e in table["entries"] if e["format"] != "dense"), key=lambda e: e["speedup_vs_dense"],
               default=None)
    text = (f"re-measured {path}'s sparse table with {table['runtime']}: {len(shapes)} shapes, {n} block-sparse "
            f"points" + (f"; best {best['format']} at density {best['density']}: {best['speedup_vs_dense']}x dense"
                         if best else ""))
    if ctx:
        text += (f"; a 1x1 conv through the kernel costs {ctx['ms_per_layer']:.4f} ms + {ctx['ms_per_melem']:.4f} ms "
                 f"per million activation elements in its network beyond its one-op timing "
                 f"({', '.join(r['model'] for r in ctx['models'])})")
    return {"text": text, "json": {"out": str(path), "sparse": table}}


def _conv_context(prof: dict, dense: dict, cfg: ProfileRun, old: dict, skip: bool) -> dict | None:
    """The in-network cost of the kernel's 1x1 convs (sparse_bench.conv_context), measured on every model of
    `dense` that has eligible 1x1 convs (`skip`: not those measured before), kept beside earlier models'
    measurements; the rate is their median."""
    import statistics

    from compress.hardware_profiles import sparse_bench
    from compress.hardware_profiles.predictor import DeviceProfile

    batch = int(prof["batch"])
    # priced without a context rate: what the one-op factors alone predict
    p = DeviceProfile({k: v for k, v in prof.items() if k != "sparse"} | {"sparse": {
        k: v for k, v in (prof.get("sparse") or {}).items() if k != "context"}})
    records = {r["model"]: r for r in old.get("models") or []}
    for spec, (layers, model, xb) in dense.items():
        if skip and spec in records:
            continue
        x = tuple(t[:1].repeat(batch, *[1] * (t.dim() - 1)) for t in xb)
        r = sparse_bench.conv_context(spec, model, x, layers, p, threads=cfg.measure.threads)
        if r is not None:
            records[spec] = r
    if not records:
        return None
    return {"ms_per_layer": round(statistics.median(r.get("ms_per_layer", 0.0) for r in records.values()), 6),
            "ms_per_melem": round(statistics.median(r["ms_per_melem"] for r in records.values()), 6),
            "models": list(records.values()), "note": sparse_bench.CONTEXT_NOTE.format(block=sparse_bench.CONTEXT_BLOCK)}


def layers_of(spec: str, input_shape):
    """A model's layers at its profiled input shape (the architecture; weights do not matter)."""
    from compress import models
    from compress.hardware_profiles.layers import extract_layers

    lm = models._build_source(spec, pretrained=False)
    shape = (1, *input_shape) if input_shape else None
    return extract_layers(lm.model, models.example_inputs(lm, shape))


def _refit(path: str) -> dict:
    """Recompute the calibration of the profile at `path` from its stored measurements, in place."""
    from compress.hardware_profiles.profiler import refit

    if not Path(path).is_file():
        raise CompressError(f"--refit {path}: no such profile file")
    prof = refit(path, layers_of)
    rows = prof["calibration"]
    text = f"refitted {path}: " + "; ".join(
        f"{c['model']} x{c['factor']}" + (f" (in-network: kernels x{c['kernel_factor']}, {c['b_ms'] * 1e3:+.2f} us/layer)"
                                          if c.get("b_ms") is not None else "") for c in rows)
    return {"text": text, "json": {"out": path, "calibration": rows}}
