"""Atomic writes (output directories, single files) and the file names of the directories compress writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

# the files of the directories compress writes: prune (plan + weights), sparsify (sparse plan + encoded weights)
PLAN_FILE, WEIGHTS_FILE, HF_CONFIG_FILE = "plan.json", "model.safetensors", "config.json"
SPARSE_PLAN_FILE, SPARSE_WEIGHTS_FILE = "sparse_plan.json", "sparse_model.safetensors"


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


@contextlib.contextmanager
def atomic_file(path, suffix: str = ".tmp"):
    """Yield a temporary file path beside `path` (its folder must exist) for the block to write; on success
    the file gets mode 0o644 and replaces `path` in one rename, on failure it is removed and `path` is left
    as it was. `suffix` ends the temporary name (a writer that picks the format by extension needs it)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)                      # mkstemp creates 0600
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path, data: str | bytes) -> None:
    """Write `data` (str: as UTF-8) to `path` atomically: readers see the old file or the whole new one."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)


def json_text(obj) -> str:
    """The JSON text compress writes: indent 1, keys sorted, a trailing newline."""
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


def write_json(path, obj) -> None:
    write_text_atomic(path, json_text(obj))


def save_pruned(d: str, model, plan, hf_config: dict | None = None) -> None:
    from safetensors.torch import save_model

    Path(d, PLAN_FILE).write_text(plan.to_json())
    save_model(model, os.path.join(d, WEIGHTS_FILE))
    if hf_config is not None:
        write_json(os.path.join(d, HF_CONFIG_FILE), hf_config)
