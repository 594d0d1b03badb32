"""`compress release --config compress.toml --out DIR [--only TARGET] [--cache DIR]`: prune, fine-tune,
export, verify and measure each configured target, check its budgets, write the reports.
Exit 0: every budget met; 1: a budget failed (named in the summary line); 2: bad config."""

from __future__ import annotations

HELP = "CI release gate: prune/export/measure per target from compress.toml, check budgets, write reports"


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="compress.toml (see docs/release.md)")
    p.add_argument("--out", required=True, metavar="DIR", help="artifacts per target, report.json/.md, junit.xml, plots/")
    p.add_argument("--only", metavar="TARGET", help="run only this configured target (cpu, gpu, jetson)")
    p.add_argument("--cache", metavar="DIR", help="step cache (default: DIR/.cache); share it between runs to reuse steps")


def run(args) -> dict:
    import os
    import shutil
    import time

    from compress.io import atomic_dir, write_json
    from compress.release import config, pipeline, report

    t0 = time.perf_counter()
    cfg = config.load(args.config, args.only)  # every config problem at once, before any work
    out = os.path.abspath(args.out)
    cache_dir = args.cache or os.path.join(out, ".cache")
    results, cache = pipeline.run(cfg, cache_dir)
    rep = report.build(cfg, results)
    for t in rep["targets"]:
        dirs = results[t["target"]][t["selected"]]["_dirs"]
        with atomic_dir(os.path.join(out, t["target"])) as tmp:
            for name, src in dirs.items():
                shutil.copytree(src, os.path.join(tmp, name))
    files = report.write(rep, out)
    seconds = round(time.perf_counter() - t0, 3)
    write_json(os.path.join(out, "run.json"), {"seconds": seconds, "cache": cache_dir,
                                               "steps_reused": cache.hits, "steps_run": cache.misses})
    text = (f"{rep['summary']}\nreports: {', '.join(os.path.join(args.out, f) for f in files.values() if isinstance(f, str))}"
            f"; {len(cache.hits)} step(s) reused, {len(cache.misses)} run, {seconds:.1f} s")
    return {"text": text, "json": rep | {"out": args.out, "files": files, "seconds": seconds,
                                         "steps_reused": len(cache.hits), "steps_run": len(cache.misses)},
            "code": 0 if rep["pass"] else 1}
