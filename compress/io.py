"""Atomic output directories and the pruned-model directory format."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from compress.models import HF_CONFIG_FILE, PLAN_FILE, WEIGHTS_FILE


@contextlib.contextmanager
def atomic_dir(out: str):
    """Yield a temporary directory beside `out`; rename it to `out` only if the block succeeds."""
    out_p = Path(out).resolve()
    out_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{out_p.name}.tmp-", dir=out_p.parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_p.exists():
        old = tempfile.mkdtemp(prefix=f".{out_p.name}.old-", dir=out_p.parent)
        os.replace(out_p, os.path.join(old, "d"))
    os.chmod(tmp, 0o755)
    for f in Path(tmp).rglob("*"):
        os.chmod(f, 0o755 if f.is_dir() else 0o644)
    os.replace(tmp, out_p)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def save_pruned(d: str, model, plan, hf_config: dict | None = None) -> None:
    from safetensors.torch import save_model

    Path(d, PLAN_FILE).write_text(plan.to_json())
    save_model(model, os.path.join(d, WEIGHTS_FILE))
    if hf_config is not None:
        write_json(os.path.join(d, HF_CONFIG_FILE), hf_config)
