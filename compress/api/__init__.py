"""The library entry points of the verbs prune, plan, sparsify, profile, eval and inspect: one module each, holding a frozen
config dataclass and a function that takes it and returns what the CLI prints, {"text", "json", "code"?}:

    from compress.api.prune import PruneRun, prune          # compress prune
    from compress.api.plan import PlanRun, plan             # compress plan
    from compress.api.sparsify import SparsifyRun, sparsify  # compress sparsify
    from compress.api.profile import ProfileRun, profile    # compress profile (measure, --extend, --refit)
    from compress.api.eval import EvalRun, evaluate         # compress eval
    from compress.api.inspect import InspectRun, inspect    # compress inspect

`compress/commands/<verb>.py` parses the command line into the config and calls the function.
`compress.api.accuracy` holds the accuracy and fine-tuning step of `prune --data`.
export, bench, predict and release compose typed library calls directly: `compress.export.package.export`
(ExportConfig), `compress.export.bench.bench`, `compress.hardware_profiles` (load_profile, extract_layers),
`compress.release.config.load` + `compress.release.pipeline.run`.
"""
