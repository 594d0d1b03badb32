"""README.md written into an artifact directory: what is there and the commands to build and run it."""

from __future__ import annotations


_VALUES = {"normal": "float values", "mask": "attention mask: 1 for a token, 0 for padding",
           "zeros": "token type ids (0 for a single sentence)"}


def render(manifest: dict) -> str:
    t = manifest["target"]
    lines = [f"# {manifest['source']['model']} exported for {t['name']}"
             + (f" ({t['device']})" if t.get("device") else ""), "",
             f"Written by `{manifest['command']}`.", "",
             "## Inputs", ""]
    dyn = t.get("batch") == "dynamic"
    for spec in manifest["source"].get("inputs") or []:
        lines.append(f"- `{spec['name']}`: {spec['dtype']} {spec['shape']}" + (" (dynamic batch)" if dyn else "")
                     + (f", {_VALUES[spec['values']]}" if spec["values"] != "ids" else
                        f", token ids in [0, {spec['high']})" if spec.get("high") else ", token ids"))
    lines += ["", "## Files", ""]
    for name, f in manifest["files"].items():
        lines.append(f"- `{name}` ({f['bytes']:,} bytes, sha256 `{f['sha256'][:16]}...`)")
    lines += ["", "## On the device", ""]
    for c in manifest["commands"]:
        lines += [f"{c['what']}" + (f" (needs {c['needs']})" if c.get("needs") else "") + ":", "",
                  "```sh", c["command"], "```", ""]
    trt = manifest.get("tensorrt")
    if trt:
        lines += ["`build_engine.sh` and `run_engine.sh` find trtexec as `$TRTEXEC`, then on `PATH`, then in "
                  "`/usr/src/tensorrt/bin` (deb and tar installs). The build line follows the installed TensorRT: "
                  "10.x builds `model.onnx` with weak typing" + (" and `--fp16`" if trt.get("fp16") else "")
                  + "; 11 and later are strongly typed (`--fp16` was removed) and build "
                  + ("`model_fp16.onnx` (fp16 weights, fp32 inputs and outputs)" if trt.get("fp16") else "`model.onnx`")
                  + ", so the precision is the ONNX file's. `build_trt.py` chooses the same way.", ""]
    if t["name"] == "jetson":
        tv = manifest["tvm"]
        rt = tv.get("runtime") or {}
        sched = tv.get("schedule") or {}
        lines += ["TVM's library was cross-compiled for the device's aarch64 CPU and CUDA "
                  f"{tv.get('cuda_arch', '')}; it needs apache-tvm {rt.get('apache-tvm')} (tvm-ffi {rt.get('tvm-ffi')}) "
                  "built with CUDA on the Jetson (the runtime alone is enough: `tvm.runtime.load_module`); "
                  "`run_tvm.py` checks that against this manifest before loading it. Its cubins were made by "
                  f"CUDA {tv.get('cuda_version')} ({tv.get('cuda_compiler')}) for {tv.get('device_cuda', 'the device')}."
                  + (f" **{tv['cuda_mismatch']}.**" if tv.get("cuda_mismatch") else ""), ""]
        if sched:
            lines += [f"Its kernels use {sched['kind']}: {sched['library_dispatch']}. Expected speed: "
                      f"{sched['expected_gap']}. {sched['fast_path'][0].upper() + sched['fast_path'][1:]}.", ""]
    sc = manifest.get("sparse_cpu")
    if sc and sc.get("file"):
        exp = (sc.get("expected_latency") or {}).get("ms")
        lines += [f"`{sc['file']}` runs {len(sc['layers'])} block-sparse layers on compress's kernel "
                  f"(`{sc['library']['file']}`, built with `-march={sc['library']['march']}`: this CPU's instruction "
                  f"set) inside onnxruntime; `model.ort.onnx` runs the same weights dense. Load it with "
                  f"`{sc['runtime_module']}`'s `session_options()` (or `run_ort.py --bsr-kernel`). "
                  + (f"Expected latency on the profiled CPU: {exp:.3f} ms. " if exp else "")
                  + "`compress bench` times both; deploy the faster.", ""]
    for note in manifest.get("runs_dense") or []:
        lines.append(f"- dense fallback: {note}")
    if manifest.get("runs_dense"):
        lines.append("")
    nv = manifest.get("not_verified_here") or []
    if nv:
        lines += ["## Not verified on the machine that exported it", ""] + [f"- {x}" for x in nv] + [""]
    return "\n".join(lines)
