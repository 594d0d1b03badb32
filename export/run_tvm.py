#!/usr/bin/env python3
"""Run and time a TVM (Relax) library exported by `compress export`: random inputs, warm-up, then the
median of N runs; prints one JSON line. Needs only apache-tvm 0.27 (built with CUDA on a Jetson) and numpy.

    python3 run_tvm.py model.so --device cpu --shape 1,3,224,224 --dtype float32 --runs 50
    python3 run_tvm.py model_jetson.so --device cuda --shape 1,3,224,224
    python3 run_tvm.py model_llvm.so --input input_ids:1,16:int64:high=30522 --input attention_mask:1,16:int64:mask
      (a model with several inputs: one --input NAME:SHAPE:DTYPE[:VALUES] each, in the model's input order, as
       run_ort.py takes them)
"""

import argparse
import json
import os
import statistics
import sys
import time


VALUES = ("normal", "mask", "zeros")


def parse_input(text):
    """NAME:SHAPE:DTYPE[:VALUES] -> (name, shape, dtype, values); values 'high=N', mask, zeros or normal."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or not parts[0]:
        raise argparse.ArgumentTypeError(f"--input {text!r}: use NAME:SHAPE:DTYPE[:VALUES], "
                                         "e.g. input_ids:1,16:int64:high=30522 or attention_mask:1,16:int64:mask")
    name, shape, dtype = parts[:3]
    values = parts[3] if len(parts) == 4 else ("normal" if dtype == "float32" else "high=1000")
    try:
        dims = [int(s) for s in shape.split(",")]
        ok = dtype in ("float32", "int64") and min(dims) > 0 and (
            values in VALUES or (values.startswith("high=") and int(values[5:]) > 0))
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"--input {text!r}: SHAPE positive integers, DTYPE float32 or int64, "
                                         f"VALUES high=N, {', '.join(VALUES)}")
    return name, dims, dtype, values


def make_input(rng, shape, dtype, values):
    """Random values for one input: token ids below N, a padded 0/1 mask (row i keeps its first 1..len tokens),
    zeros, or standard normal floats."""
    import numpy as np

    if values == "mask":
        keep = rng.integers(1, shape[-1] + 1, size=tuple(shape[:-1]) + (1,))
        return (np.arange(shape[-1]) < keep).astype(dtype)
    if values == "zeros":
        return np.zeros(shape, dtype)
    if values.startswith("high="):
        return rng.integers(0, int(values[5:]), shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


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
    ap.add_argument("--shape", help="input shape, e.g. 1,3,224,224 (a model with one input)")
    ap.add_argument("--input", action="append", type=parse_input, default=[], metavar="NAME:SHAPE:DTYPE[:VALUES]",
                    help="one per input of a model with several, in its input order (instead of --shape/--dtype/--high)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "int64"])
    ap.add_argument("--high", type=int, default=1000, help="int64 inputs are drawn from [0, high)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--manifest", help="manifest.json whose tvm.runtime the library was built with "
                                       "(default: the one beside the library)")
    ap.add_argument("--skip-version-check", action="store_true")
    a = ap.parse_args(argv)
    if bool(a.shape) == bool(a.input):
        ap.error("give --shape (one input) or an --input for every input")

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
    rng = np.random.default_rng(0)
    if a.input:
        xs = [make_input(rng, s, d, v) for _, s, d, v in a.input]
        shape = a.input[0][1]
    else:
        shape = [int(s) for s in a.shape.split(",")]
        xs = [make_input(rng, shape, a.dtype, f"high={a.high}" if a.dtype == "int64" else "normal")]
    args = [tvm.runtime.tensor(x, dev) for x in xs]
    for _ in range(a.warmup):
        vm["main"](*args)
    dev.sync()
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        vm["main"](*args)
        dev.sync()
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"runtime": "tvm", "device": a.device, "median_ms": statistics.median(times),
                      "min_ms": min(times), "max_ms": max(times), "runs": len(times), "warmup": a.warmup,
                      "shape": shape} | ({"inputs": {n: s for n, s, _, _ in a.input}} if a.input else {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
