"""Golden outputs: the bytes of what the verbs write stay the same through refactors.

Each case runs the CLI as a user would and compares the sha256 of its deterministic files
(plan.json, sparse_plan.json, model.onnx, the weights) and the numbers of its summary or report
with tests/golden/golden.json. Only timing, parity errors and other measured values are left out.

A change that is meant to change an output: re-record with
    python tests/test_golden.py --record
and say in the commit which case changed and why.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden" / "golden.json"
PROFILE = str(ROOT / "hardware_profiles" / "cpu-x86-2core-ort-b1.json")   # explicit: not chosen by the host CPU

CASES = {
    "prune-resnet18": ["prune", "torchvision:resnet18", "--ratio", "0.3"],
    "prune-mobilenet_v2": ["prune", "torchvision:mobilenet_v2", "--ratio", "0.3"],
    "prune-minilm": ["prune", "hf:minilm", "--ratio", "0.3"],
    "sparsify-minilm-2:4": ["sparsify", "hf:minilm", "--pattern", "2:4", "--sparsity", "0.5"],
    "plan-resnet18": ["plan", "torchvision:resnet18", "--target", "cpu", "--profile", PROFILE, "--latency-budget", "0.6"],
}
HASHED = ("plan.json", "sparse_plan.json", "model.onnx", "model.safetensors", "sparse_model.safetensors", "config.json")
NUMBERS = ("summary.json", "report.json")
MEASURED = ("seconds", "parity", "max_rel_error", "max_abs_error")   # keys holding these words vary by machine


def _numbers(obj, prefix: str = "") -> dict:
    """The numbers of a summary or report, flattened ("layers.x.density": 0.5), measured ones left out."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not any(m in k for m in MEASURED):
                out |= _numbers(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out |= _numbers(v, f"{prefix}{i}.")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1]] = round(obj, 6) if isinstance(obj, float) else obj
    return out


def _machine() -> str:
    from compress.hardware_profiles.predictor import host_tags
    from compress.release.tools import machine

    return f"{machine()['cpu']} ({'/'.join(host_tags()) or 'no x86 tags'})"


def run_case(name: str, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "compress", *CASES[name], "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{name}: exit {r.returncode}\n{r.stderr}"
    rec = {"files": {}, "numbers": {}}
    for f in HASHED:
        if (out / f).is_file():
            data = (out / f).read_bytes()
            if f == "config.json":         # a Hugging Face config names the folder it was read from
                cfg = json.loads(data)
                cfg.pop("_name_or_path", None)
                data = json.dumps(cfg, sort_keys=True).encode()
            rec["files"][f] = hashlib.sha256(data).hexdigest()
    for f in NUMBERS:
        if (out / f).is_file():
            rec["numbers"] |= {f"{f}:{k}": v for k, v in _numbers(json.loads((out / f).read_text())).items()}
    return rec


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, tmp_path):
    pytest.importorskip("transformers")
    golden = json.loads(GOLDEN.read_text())
    want = golden[name]
    got = run_case(name, tmp_path / "out")
    where = f"recorded on {golden['_machine']}, run on {_machine()}"
    assert got["files"] == want["files"], f"{name}: output bytes changed ({where}; re-record only if meant)"
    diff = {k: (want["numbers"].get(k), got["numbers"].get(k)) for k in want["numbers"].keys() | got["numbers"].keys()
            if want["numbers"].get(k) != got["numbers"].get(k)}
    assert not diff, f"{name}: numbers changed ({where}): {dict(sorted(diff.items())[:10])}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_golden.py --record")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        golden = {name: run_case(name, Path(tmp) / name) for name in sorted(CASES)} | {"_machine": _machine()}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
