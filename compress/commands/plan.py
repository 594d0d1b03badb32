"""`compress plan`: the command line of `compress.api.plan.plan` (PlanRun)."""

from __future__ import annotations

HELP = "plan channel counts per group that meet a latency budget on a device profile"


def add_arguments(p) -> None:
    from compress.prune.importance import CRITERIA

    p.add_argument("model", metavar="MODEL", help="torchvision:NAME | hf:DIR | compress:NAME | package.module:function")
    p.add_argument("--target", default="cpu", help="device: cpu, gpu or jetson (picks the shipped profile)")
    p.add_argument("--profile", help="a profile file or shipped name (default: the target's shipped profile)")
    p.add_argument("--batch", type=int, help="batch size to plan for (default: the profile's)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "int8"],
                   help="the precision that ships: int8 plans against an int8 profile (`compress export --dtype int8`'s "
                        "latency; shipped as NAME-int8[-TAG]-bN.json, or --profile FILE from `compress profile --dtype "
                        "int8`)")
    b = p.add_mutually_exclusive_group(required=True)
    b.add_argument("--latency-budget", type=float, metavar="F", help="target latency as a fraction of dense, e.g. 0.6")
    b.add_argument("--latency-ms", type=float, metavar="MS", help="target latency in milliseconds")
    p.add_argument("--criterion", default="l1", choices=CRITERIA)
    p.add_argument("--calib", help="calibration data for data-driven criteria (as for compress prune)")
    p.add_argument("--formats", default="structured",
                   help="comma list of structured,2:4,block: formats the report compares (a mixed plan wins only when it "
                        "keeps more). block: from the profile's sparse entries (on cpu only those timed with the kernel "
                        "that ships); 2:4: gpu/jetson only, measured entries or a fit to published measurements")
    p.add_argument("--sparse-layers", metavar="REGEX",
                   help="with sparse --formats: only layers whose module name matches REGEX may run sparse "
                        "(e.g. 'intermediate|output\\.dense' for a BERT-style MLP)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME", help="modules whose output channels are kept")
    p.add_argument("--min-keep", type=float, default=0.1, help="never keep fewer than this fraction of a group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (its batch is replaced by --batch)")
    p.add_argument("--weights", help="weights for MODEL (.safetensors, or a state_dict loaded with weights_only)")
    p.add_argument("--measure", action="store_true",
                   help="--target cpu on the machine the plan is for: time each candidate plan next to the dense model "
                        "in onnxruntime and re-plan at a corrected budget until the measured latency meets it")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def run(args) -> dict:
    from compress.api.plan import PlanRun, plan
    from compress.models.source import ModelSpec
    from compress.planner.solve import PlanConfig

    return plan(PlanRun(
        model=ModelSpec(args.model, args.weights, args.input_shape),
        out=args.out,
        planner=PlanConfig(latency_budget=args.latency_budget, latency_ms=args.latency_ms, criterion=args.criterion,
                           ignore=tuple(args.ignore), min_keep=args.min_keep, seed=args.seed),
        target=args.target, profile=args.profile, batch=args.batch, calib=args.calib,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        measure=args.measure, dtype=args.dtype, sparse_layers=args.sparse_layers))
