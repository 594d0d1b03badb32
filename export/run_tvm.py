#!/usr/bin/env python3
"""Run and time a TVM (Relax) library exported by `compress export`: random inputs, warm-up, then the
median of N runs; prints one JSON line. Needs only apache-tvm 0.27 (built with CUDA on a Jetson) and numpy.

    python3 run_tvm.py model.so --device cpu --shape 1,3,224,224 --dtype float32 --runs 50
    python3 run_tvm.py model_jetson.so --device cuda --shape 1,3,224,224
"""

import argparse
import json
import os
import statistics
import sys
import time


def _minor(version):
    """'0.27' of '0.27.0.post1' (TVM and tvm-ffi keep their ABI within a minor release)."""
    return ".".join(str(version).split(".")[:2]) if version else None


def check_runtime(built, here):
    """None when this machine's TVM runtime can load a library built with `built` (the manifest's
    tvm.runtime: apache-tvm and tvm-ffi versions), else one line saying what to install."""
    bad = [k for k in ("apache-tvm", "tvm-ffi") if built.get(k) and _minor(built[k]) != _minor(here.get(k))]
    if not bad:
        return None
    want = ", ".join(f"{k} {_minor(built[k])}.x" for k in ("apache-tvm", "tvm-ffi") if built.get(k))
    have = ", ".join(f"{k} {here.get(k)}" for k in bad)
    return (f"this library was built with apache-tvm {built.get('apache-tvm')} (tvm-ffi {built.get('tvm-ffi')}); "
            f"here: {have}. Install {want} (pip install 'apache-tvm=={built.get('apache-tvm')}', or on a Jetson "
            f"build TVM v{_minor(built.get('apache-tvm'))} from source with CUDA), or pass --skip-version-check")


def _here():
    import tvm
    try:
        import tvm_ffi
        ffi = tvm_ffi.__version__
    except (ImportError, AttributeError):
        ffi = None
    return {"apache-tvm": tvm.__version__, "tvm-ffi": ffi}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lib")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", required=True, help="input shape, e.g. 1,3,224,224")
    ap.add_argument("--dtype", default="float32", choices=["float32", "int64"])
    ap.add_argument("--high", type=int, default=1000, help="int64 inputs are drawn from [0, high)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--manifest", help="manifest.json whose tvm.runtime the library was built with "
                                       "(default: the one beside the library)")
    ap.add_argument("--skip-version-check", action="store_true")
    a = ap.parse_args(argv)

    import numpy as np
    import tvm
    from tvm import relax

    man_path = a.manifest or os.path.join(os.path.dirname(os.path.abspath(a.lib)), "manifest.json")
    if not a.skip_version_check and os.path.isfile(man_path):
        with open(man_path) as f:
            built = (json.load(f).get("tvm") or {}).get("runtime") or {}
        why = check_runtime(built, _here())
        if why:
            print(f"run_tvm.py: {why}", file=sys.stderr)
            return 2

    dev = tvm.cuda(0) if a.device == "cuda" else tvm.cpu(0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(a.lib), dev)
    shape = [int(s) for s in a.shape.split(",")]
    rng = np.random.default_rng(0)
    x = (rng.integers(0, a.high, shape) if a.dtype == "int64" else rng.standard_normal(shape)).astype(a.dtype)
    arg = tvm.runtime.tensor(x, dev)
    for _ in range(a.warmup):
        vm["main"](arg)
    dev.sync()
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        vm["main"](arg)
        dev.sync()
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"runtime": "tvm", "device": a.device, "median_ms": statistics.median(times),
                      "min_ms": min(times), "max_ms": max(times), "runs": len(times), "warmup": a.warmup,
                      "shape": shape}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
