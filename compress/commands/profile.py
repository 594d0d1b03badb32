"""`compress profile`: the command line of `compress.api.profile.profile` (ProfileRun)."""

from __future__ import annotations

HELP = "measure per-layer latency tables for this device (a profile for `compress predict` and the planner)"


def add_arguments(p) -> None:
    # only what this profiler measures: CPU runtimes (GPU/Jetson profiles are analytic or measured elsewhere)
    p.add_argument("--target", choices=["cpu"],
                   help="the device kind being profiled (required unless --refit or --extend)")
    p.add_argument("--runtime", default="ort", choices=["ort", "torch"])
    p.add_argument("--dtype", choices=["fp32", "int8"],
                   help="int8: time the conv/linear layers as `compress export --dtype int8` ships them (onnxruntime, "
                        "QDQ quantized, fused int8 kernels) and find their channel step by the staircase scan "
                        "(default: fp32; with --extend, FILE's)")
    p.add_argument("--model", nargs="+", default=[], metavar="MODEL",
                   help="profile the layers (and prunable channel range) of these models (default: a generic grid)")
    p.add_argument("--input-shape", help="example input shape for --model (batch dimension ignored)")
    p.add_argument("--batch", type=int, help="batch size the tables are timed at (default: 1; with --extend, FILE's)")
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
    p.add_argument("--recalibrate", action="store_true",
                   help="with --extend: time the --model models again on this machine and replace their calibration "
                        "(a profile measured on another machine of this kind, or at another speed); with --sparse: "
                        "measure every shape and network again")
    p.add_argument("--quick", action="store_true",
                   help="with --extend: measure the missing tables in one round over at most 5 channel counts per "
                        "axis (tables begun after 30 s: their smallest and full counts only), and time the added "
                        "models once (under a minute for a ResNet-50 on 2 cores)")
    p.add_argument("--sparse", metavar="FILE",
                   help="measure FILE's dense vs block-sparse table with the kernel `compress export --target cpu` "
                        "ships (compress's block-sparse op in onnxruntime), in place: the shapes of --model that it "
                        "lacks, and for a CNN the in-network cost of its 1x1 convs through the kernel")
    p.add_argument("--refit", metavar="FILE",
                   help="no timing: recompute FILE's per-model calibration from the measurements stored in it "
                        "(after a change to how the predictor uses them), in place")


def _of_file(args) -> tuple[int, str]:
    """--batch and --dtype: as given, else (with --extend) what FILE says, else 1 and fp32. A FILE that cannot be
    read is left to the library's own one-line error."""
    batch, dtype = args.batch, args.dtype
    if args.extend and (batch is None or dtype is None):
        import json

        try:
            base = json.loads(open(args.extend).read())
        except (OSError, ValueError):
            base = {}
        if isinstance(base, dict):
            batch = base.get("batch") if batch is None and isinstance(base.get("batch"), int) else batch
            dtype = {"float32": "fp32", "int8": "int8"}.get(base.get("dtype")) if dtype is None else dtype
    return (1 if batch is None else batch), (dtype or "fp32")


def run(args) -> dict:
    from compress.api.profile import ProfileRun, profile
    from compress.hardware_profiles.profiler import ProfileConfig

    batch, dtype = _of_file(args)
    return profile(ProfileRun(
        measure=ProfileConfig(target=args.target, runtime=args.runtime, batch=batch, grid_step=args.grid_step,
                              max_points=args.grid_points, rounds=args.rounds, warmup=args.warmup, reps=args.reps,
                              threads=args.threads, max_seconds=args.max_seconds, staircase=not args.no_staircase,
                              sparse=not args.no_sparse, models=tuple(args.model),
                              dtype={"fp32": "float32"}.get(dtype, dtype)),
        out=args.out, extend=args.extend, refit=args.refit, sparse=args.sparse, input_shape=args.input_shape,
        name=args.name, quick=args.quick, recalibrate=args.recalibrate))


def _layers_of(spec: str, input_shape):
    """compress.api.profile.layers_of, under the name bench/depthwise_linear.py imports."""
    from compress.api.profile import layers_of

    return layers_of(spec, input_shape)
