"""Device latency profiles: each target's channel step (defaults.json), measured or analytic
latency tables (one JSON file per device + runtime + dtype + batch), layer extraction and the
latency model. See docs/profiles.md.

Importing this package is cheap: torch and onnxruntime are imported only where used.
"""

from __future__ import annotations

import json
from pathlib import Path

from compress._layout import package_path
from compress.errors import CompressError

# a package whose modules live in the top-level hardware_profiles/ folder (compress/hardware_profiles/ once installed): see compress/_layout.py
__path__ = package_path(__file__)


def _defaults() -> dict:
    return json.loads((Path(__path__[0]) / "defaults.json").read_text())


def channel_step(target: str = "cpu") -> int:
    """Channel counts that are multiples of this run at full speed on the target's runtime."""
    d = _defaults()["targets"]
    if target not in d:
        raise CompressError(f"unknown target {target!r}; choose one of {', '.join(sorted(d))}")
    return int(d[target]["channel_step"])


from compress.hardware_profiles.layers import LayerSig, extract_layers  # noqa: E402
from compress.hardware_profiles.predictor import (  # noqa: E402
    DeviceProfile, expected_latency_ms, load_profile, predict_ms, shipped, table_key)

__all__ = ["channel_step", "LayerSig", "extract_layers", "DeviceProfile", "load_profile", "predict_ms",
           "expected_latency_ms", "shipped", "table_key"]
