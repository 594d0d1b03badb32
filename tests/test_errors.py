"""compress.errors.first_line: the one-line quote of a wrapped exception, and the variants the places it
replaced wrote by hand (compared with those expressions over awkward messages)."""

from __future__ import annotations

import pytest

from compress.errors import first_line

MESSAGES = ["plain", "two\nlines", "\nleading newline", "  leading spaces\nx", "trailing  ", "   ", "", "\n",
            "x" * 400, "cr\rsplit", "a\u2028b"]


@pytest.mark.parametrize("msg", MESSAGES)
def test_variants_match_the_hand_written_forms(msg):
    e = RuntimeError(msg)
    s = str(e)
    # compress/graph/trace.py, export/onnx.py (stripped, type-name fallback, cut)
    assert first_line(e, 300) == (s.strip().splitlines()[0] if s.strip() else type(e).__name__)[:300]
    # export/aoti.py
    assert first_line(e, 200) == (s.strip().splitlines() or [type(e).__name__])[0][:200]
    # bench/prune_latency.py, bench/planner_budget.py ("" fallback)
    assert first_line(e, 300, empty="") == (s.strip().splitlines()[0][:300] if s.strip() else "")
    # export/manifest.py, export/inputs.py, compress/models/__init__.py (not stripped)
    assert first_line(e, 200, strip=False, empty="") == (s.splitlines()[0][:200] if s else "")
    assert first_line(e, 200, strip=False) == (s.splitlines()[0][:200] if s else type(e).__name__)
    assert first_line(e, 300, strip=False, empty="mismatch") == (s.splitlines()[0] if s else "mismatch")[:300]
    # compress/prune/apply.py, lower/*, release/config.py, bench/bsr_gpu.py, bench/gpu_suite.py: those crashed on ""
    if s:
        assert first_line(e, 120, strip=False) == s.splitlines()[0][:120]
        assert first_line(e, None, strip=False) == s.splitlines()[0]


def test_defaults_unchanged():
    assert first_line(ValueError("  a\nb")) == "a"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError("y" * 500)) == "y" * 300
    assert first_line(ValueError(""), 3) == "Val"
