"""`compress profile`: measure a device's latency tables on this machine (see hardware_profiles/profiler.py)."""

from __future__ import annotations

HELP = "measure per-layer latency tables for this device (a profile for `compress predict` and the planner)"


def add_arguments(p) -> None:
    # only what this profiler measures: CPU runtimes (GPU/Jetson profiles are analytic or measured elsewhere)
    p.add_argument("--target", choices=["cpu"], help="the device kind being profiled (required unless --refit)")
    p.add_argument("--runtime", default="ort", choices=["ort", "torch"])
    p.add_argument("--model", nargs="+", default=[], metavar="MODEL",
                   help="profile the layers (and prunable channel range) of these models (default: a generic grid)")
    p.add_argument("--input-shape", help="example input shape for --model (batch dimension ignored)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--name", help="profile name (default: the output file's stem)")
    p.add_argument("--rounds", type=int, default=3, help="passes over the grid; a point keeps its fastest round")
    p.add_argument("--reps", type=int, default=7, help="timed runs per point and round (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--grid-points", type=int, default=10, help="at most this many channel counts per axis")
    p.add_argument("--grid-step", type=int, default=16, help="measured channel counts are multiples of this")
    p.add_argument("--threads", type=int, default=0, help="runtime threads (0: the runtime's default)")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="per measurement session, stop waiting for undisturbed runs after this long")
    p.add_argument("--no-staircase", action="store_true", help="skip the one-channel-at-a-time staircase scan")
    p.add_argument("--no-sparse", action="store_true", help="skip the dense vs block-sparse Linear/1x1 table")
    p.add_argument("--out", metavar="FILE", help="the profile to write (required unless --refit)")
    p.add_argument("--extend", metavar="FILE",
                   help="add the tables and dense timings of --model that FILE lacks to FILE (same device, runtime, "
                        "batch), keeping everything FILE has, then recompute its calibration; in place")
    p.add_argument("--refit", metavar="FILE",
                   help="no timing: recompute FILE's per-model calibration from the measurements stored in it "
                        "(after a change to how the predictor uses them), in place")


def _layers(args) -> tuple[list, dict]:
    """The layers to profile, and per --model its layers and dense model with an example input at
    --batch (timed end to end for the profile's per-model calibration)."""
    from compress import models
    from compress.hardware_profiles.layers import extract_layers
    from compress.hardware_profiles.profiler import DEFAULT_LAYERS

    if not args.model:
        return list(DEFAULT_LAYERS), {}
    out, dense = [], {}
    for spec in args.model:
        lm = models.load(spec)
        shape = models.parse_shape(args.input_shape) if args.input_shape else None
        x = models.example_inputs(lm, shape)
        layers = extract_layers(lm.model, x)
        out += layers
        xb = models.example_inputs(lm, (args.batch,) + tuple(x[0].shape[1:]))
        dense[spec] = (layers, lm.model.eval(), xb)
    return out, dense


def run(args) -> dict:
    import sys
    from pathlib import Path

    from compress.errors import CompressError
    from compress.hardware_profiles.profiler import ProfileConfig, run as run_profile

    if args.refit:
        return _refit(args.refit)
    if args.extend and args.out:
        raise CompressError("give --out FILE (a new profile) or --extend FILE (add to one), not both")
    if args.extend and not args.model:
        raise CompressError("--extend needs --model: the models whose layers the profile should gain")
    if not args.target or not (args.out or args.extend):
        raise CompressError("compress profile needs --target and --out (or --extend FILE, or --refit FILE)")
    for k in ("batch", "rounds", "reps", "grid_points", "grid_step"):
        if getattr(args, k) < 1:
            raise CompressError(f"--{k.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise CompressError("--warmup must be >= 0")
    if args.extend:
        from compress.hardware_profiles import schema

        if not Path(args.extend).is_file():
            raise CompressError(f"--extend {args.extend}: no such profile file")
        base = schema.read(args.extend)
        if base["batch"] != args.batch:
            raise CompressError(f"--extend {args.extend}: that profile is for batch {base['batch']}; pass --batch {base['batch']}")
    elif not Path(args.out).resolve().parent.is_dir():
        raise CompressError(f"--out {args.out}: directory {Path(args.out).resolve().parent} does not exist")
    cfg = ProfileConfig(target=args.target, runtime=args.runtime, batch=args.batch, grid_step=args.grid_step,
                        max_points=max(args.grid_points, 2), rounds=args.rounds, warmup=args.warmup, reps=args.reps,
                        threads=args.threads, max_seconds=args.max_seconds,
                        staircase=not args.no_staircase, sparse=not args.no_sparse,
                        models=tuple(args.model))
    layers, dense = _layers(args)
    if args.extend:
        return _extend(args, base, layers, dense, cfg)
    name = args.name or Path(args.out).stem
    prof = run_profile(layers, cfg, args.out, name, progress=sys.stderr.isatty(), dense_models=dense)
    n_pts = sum(len(t["cin"]) * len(t["cout"]) for t in prof["tables"])
    m = prof["measurement"]
    text = (f"wrote {args.out}: {len(prof['tables'])} layer tables ({n_pts} channel points x {cfg.rounds} rounds), "
            f"{len(prof['memory_ops'])} memory-op fits; peak {prof['peak']['gflops']} GFLOP/s, "
            f"{prof['peak']['gbps']} GB/s; {m['wall_seconds']} s"
            + (f" (resumed {m['resumed_measurements']} finished measurements)" if m["resumed_measurements"] else ""))
    return {"text": text, "json": {"out": args.out, "name": name, "tables": len(prof["tables"]), "points": n_pts,
                                   "wall_seconds": m["wall_seconds"], "resumed": m["resumed_measurements"],
                                   "peak": prof["peak"], "overhead": prof["overhead"]}}


def _extend(args, base: dict, layers, dense, cfg) -> dict:
    """Measure the --model layers into a temporary profile, merge what `base` lacks into it, recompute
    the calibration, and replace --extend FILE (atomically: nothing changes if any step fails)."""
    import sys
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from compress.hardware_profiles.profiler import _write, merge_into, refit, run as run_profile
    from compress.io import write_text_atomic

    dest = Path(args.extend)
    cfg = replace(cfg, staircase=False, sparse=False)   # the merge keeps FILE's staircase and sparse table
    with tempfile.TemporaryDirectory(prefix="compress-extend-", dir=dest.resolve().parent) as tmp:
        new = run_profile(layers, cfg, str(Path(tmp) / "new.json"), base["name"], progress=sys.stderr.isatty(),
                          dense_models=dense)
        merged, info = merge_into(base, new)
        staged = Path(tmp) / dest.name
        _write(merged, staged)
        prof = refit(str(staged), _layers_of)
        write_text_atomic(dest, staged.read_bytes())
    cal = {c["model"]: c["factor"] for c in prof["calibration"]}
    text = (f"extended {dest}: {info['tables']} layer tables added; calibrated "
            + (", ".join(f"{m} x{cal[m]}" for m in info["models"]) or "no new model (all were calibrated already)"))
    return {"text": text, "json": {"out": str(dest), "added": info, "calibration": prof["calibration"]}}


def _layers_of(spec: str, input_shape):
    """A model's layers at its profiled input shape (the architecture; weights do not matter)."""
    from compress import models
    from compress.hardware_profiles.layers import extract_layers

    lm = models._build_source(spec, pretrained=False)
    shape = (1, *input_shape) if input_shape else None
    return extract_layers(lm.model, models.example_inputs(lm, shape))


def _refit(path: str) -> dict:
    from pathlib import Path

    from compress.errors import CompressError
    from compress.hardware_profiles.profiler import refit

    if not Path(path).is_file():
        raise CompressError(f"--refit {path}: no such profile file")
    prof = refit(path, _layers_of)
    rows = prof["calibration"]
    text = f"refitted {path}: " + "; ".join(
        f"{c['model']} x{c['factor']}" + (f" (in-network: kernels x{c['kernel_factor']}, {c['b_ms'] * 1e3:+.2f} us/layer)"
                                          if c.get("b_ms") is not None else "") for c in rows)
    return {"text": text, "json": {"out": path, "calibration": rows}}
