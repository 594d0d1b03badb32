"""`compress bench DIR [--runs N] [--batch B]`: time an artifact directory's runtimes on this machine, each in its own
process (warm-up, then the median of N runs), next to the manifest's expected latency."""

from __future__ import annotations

HELP = "measure an exported artifact's latency on this machine and compare with the manifest's expectation"


def add_arguments(p) -> None:
    p.add_argument("dir", metavar="DIR", help="a directory written by compress export")
    p.add_argument("--runs", type=int, default=50, help="timed runs per runtime (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="CPU threads per runtime (0: the runtime's default)")
    p.add_argument("--batch", type=int, default=None,
                   help="time at this batch (default: the exported one; other batches need a dynamic-batch export)")


def run(args) -> dict:
    from compress.export.bench import bench

    res = bench(args.dir, runs=args.runs, warmup=args.warmup, threads=args.threads, batch=args.batch)
    ins = res.get("inputs") or []
    what = (f"input {res['shape']}" if len(ins) < 2 else
            "inputs " + ", ".join(f"{s['name']} {s['shape']} {s['dtype']}" for s in ins))
    lines = [f"{res['model']} ({res['target']}), {what}, {res['runs']} runs after {res['warmup']} "
             f"warm-up, each runtime in its own process:"]
    exp = res["expected_ms"]
    for r in res["results"]:
        if r.get("median_ms") is None:
            lines.append(f"  {r['runtime']:36s} not measured: {r['reason']}")
            continue
        e = r.get("expected_ms", exp)
        vs = f", {r['median_ms'] / e:.2f}x the expected {e:.3f} ms" if e else ""
        lines.append(f"  {r['runtime']:36s} median {r['median_ms']:8.3f} ms (min {r['min_ms']:.3f}){vs}")
    if not exp:
        lines.append(f"expected latency: unknown ({res['expected_reason']})")
    for nv in res["not_verified_here"]:
        lines.append(f"NOT VERIFIED: {nv}")
    return {"text": "\n".join(lines), "json": res}
