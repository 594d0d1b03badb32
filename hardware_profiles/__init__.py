"""Device latency profiles. For now: the channel step each target runs well (defaults.json).

Full measured latency tables and the profiler come with `compress profile`.
"""

from __future__ import annotations

import json
from importlib import resources

from compress.errors import CompressError


def _defaults() -> dict:
    return json.loads(resources.files(__name__).joinpath("defaults.json").read_text())


def channel_step(target: str = "cpu") -> int:
    """Channel counts that are multiples of this run at full speed on the target's runtime."""
    d = _defaults()["targets"]
    if target not in d:
        raise CompressError(f"unknown target {target!r}; choose one of {', '.join(sorted(d))}")
    return int(d[target]["channel_step"])
