"""Content-addressed step cache.

A step's key is the sha256 of its inputs: the files it reads (by sha256), its config section, and the tool
version. Its outputs live in `ROOT/<step>-<key>/` (written to a temporary directory and renamed, so a
directory that exists is complete) with the step's JSON result in `result.json`. An interrupted run
leaves at most a temporary directory, removed by the next run, which recomputes only the missing steps.
One run holds the cache at a time (an advisory lock on `ROOT/.lock`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from compress.errors import CompressError

RESULT = "result.json"
CACHE_FORMAT = 1  # bump when what a step writes changes


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("compress-deploy")
    except PackageNotFoundError:
        v = "unknown"
    return f"compress-deploy {v} release-cache {CACHE_FORMAT}"


def file_sha256(path: str, _memo: dict = {}) -> str:  # noqa: B006 (memo keyed by path, size and mtime)
    st = os.stat(path)
    k = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if k not in _memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _memo[k] = h.hexdigest()
    return _memo[k]


def dir_sha256(d: str) -> str:
    """Hash of a directory's files (relative paths and contents), for directories used as inputs."""
    h = hashlib.sha256()
    for p in sorted(Path(d).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(d)).encode() + b"\0" + file_sha256(str(p)).encode() + b"\n")
    return h.hexdigest()


def step_key(step: str, inputs: dict) -> str:
    blob = json.dumps({"step": step, "inputs": inputs, "tool": tool_version()}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class StepCache:
    def __init__(self, root: str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise CompressError(f"another compress release is using the cache {self.root}; wait for it or "
                                "pass another --cache DIR") from None
        for stale in list(self.root.glob(".*.tmp-*")) + list(self.root.glob(".*.old-*")):
            shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run
        self.hits: list[str] = []
        self.misses: list[str] = []

    def close(self) -> None:
        self._lock.close()

    def path(self, step: str, inputs: dict) -> Path:
        return self.root / f"{step}-{step_key(step, inputs)[:24]}"

    def run(self, step: str, inputs: dict, fn: Callable[[str], dict]) -> tuple[str, dict]:
        """Return (output dir, result). On a miss, `fn(tmpdir)` writes outputs into tmpdir and returns the
        JSON result; the directory is renamed into place only when fn returns."""
        from compress.io import atomic_dir

        d = self.path(step, inputs)
        if (d / RESULT).is_file():
            self.hits.append(d.name)
            return str(d), json.loads((d / RESULT).read_text())
        with atomic_dir(str(d)) as tmp:
            result = fn(tmp)
            Path(tmp, "inputs.json").write_text(json.dumps(
                {"step": step, "inputs": inputs, "tool": tool_version()}, indent=1, sort_keys=True) + "\n")
            Path(tmp, RESULT).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        self.misses.append(d.name)
        return str(d), result
