"""README.md written into an artifact directory: what is there and the commands to build and run it."""

from __future__ import annotations


def render(manifest: dict) -> str:
    t = manifest["target"]
    lines = [f"# {manifest['source']['model']} exported for {t['name']}"
             + (f" ({t['device']})" if t.get("device") else ""), "",
             f"Written by `{manifest['command']}`.", "",
             "## Files", ""]
    for name, f in manifest["files"].items():
        lines.append(f"- `{name}` ({f['bytes']:,} bytes, sha256 `{f['sha256'][:16]}...`)")
    lines += ["", "## On the device", ""]
    for c in manifest["commands"]:
        lines += [f"{c['what']}" + (f" (needs {c['needs']})" if c.get("needs") else "") + ":", "",
                  "```sh", c["command"], "```", ""]
    if t["name"] == "jetson":
        lines += ["TVM's library was cross-compiled for the device's aarch64 CPU and CUDA "
                  f"{manifest['tvm'].get('cuda_arch', '')}; it needs apache-tvm {manifest['versions'].get('apache-tvm')} "
                  "built with CUDA on the Jetson (the runtime alone is enough: `tvm.runtime.load_module`). "
                  "Its cubins were made by this machine's CUDA toolkit; a device whose driver is older than that "
                  "toolkit cannot load them, rebuild with the device's CUDA version in that case.", ""]
    nv = manifest.get("not_verified_here") or []
    if nv:
        lines += ["## Not verified on the machine that exported it", ""] + [f"- {x}" for x in nv] + [""]
    return "\n".join(lines)
