"""Issues #20 and #22: the bars of bench/predict_unprofiled.py and bench/int8_pruned.py (pure logic on
synthetic rows; the benchmarks themselves need a quiet machine), and their README sections."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import int8_pruned  # noqa: E402
import make_tables  # noqa: E402
import predict_unprofiled as pu  # noqa: E402


def _row(model, pred, meas, frac, recal=None):
    r = {"model": model, "fit_model": None} | pu.errors(pred, meas, frac)
    if recal:
        r["recalibrated"] = pu.errors(recal, meas, frac)
    return r


def test_calibrated_names_strip_the_source_prefix():
    prof = SimpleNamespace(data={"calibration": [{"model": "torchvision:resnet18"}, {"model": "compress:fmnist-cnn"}]})
    assert pu.calibrated_names(prof, None) == {"resnet18", "fmnist-cnn"}


def test_unprofiled_errors_and_bars():
    r = _row("a", {"dense": 10.0, "pruned": 5.0}, {"dense": 20.0, "pruned": 8.0}, 0.4)
    assert r["predicted_fraction"] == 0.5 and r["fraction_error"] == 0.25
    assert r["absolute_error"] == {"dense": -0.5, "pruned": -0.375} and r["host_speed"] == 2.0
    rows = [_row(f"m{i}", {"dense": 10.0, "pruned": 5.0}, {"dense": 10.5, "pruned": 5.2}, 0.5 * (1 + 0.01 * i),
                 recal={"dense": 10.4, "pruned": 5.2}) for i in range(8)] + [{"model": "untimed"}]
    s = pu.summary(rows)
    assert s["architectures_timed"] == 8
    assert s["shipped"]["met"]["all"] and s["recalibrated"]["met"]["all"]
    assert s["shipped"]["absolute"]["n"] == 16
    assert s["host_speed_dense_measured_over_predicted"]["median"] == 1.05
    assert s["recalibrated"]["host_speed_median"] == round(10.5 / 10.4, 3)
    # one architecture 30% off in fraction: the worst bar fails, the median holds; seven are too few
    s = pu.summary(rows[:7] + [_row("bad", {"dense": 10.0, "pruned": 6.5}, {"dense": 10.0, "pruned": 5.0}, 0.5)])
    assert s["shipped"]["met"]["fraction_median"] and not s["shipped"]["met"]["fraction_worst"]
    assert not pu.summary(rows[:7])["shipped"]["met"]["architectures"]


def test_reference_model_separates_host_speed_from_prediction_error():
    """A calibrated model timed beside each architecture: a host 2x slower than the profile's machine makes every
    prediction -50% off in ms; scaled by the reference's measured / predicted, the error left is the model's own."""
    rows = []
    for i, own in enumerate((0.0, 0.1, -0.2)):
        meas = {"dense": 20.0 * (1 + own), "pruned": 10.0 * (1 + own)}
        r = _row(f"m{i}", {"dense": 10.0, "pruned": 5.0}, meas, 0.5)
        r["reference"] = pu.reference_errors("resnet50", 21.0, 42.0, {"dense": 10.0, "pruned": 5.0}, meas)
        rows.append(r)
    assert rows[0]["absolute_error"]["dense"] == -0.5 and rows[0]["reference"]["host_speed"] == 2.0
    assert rows[0]["reference"]["absolute_error_host_corrected"] == {"dense": 0.0, "pruned": 0.0}
    s = pu.summary(rows)["reference"]
    assert s["host_speed"]["median"] == 2.0
    assert s["absolute_host_corrected"]["max_abs_error"] == round(1 / 0.8 - 1, 4)


def _i8(model, variant, pred, meas, eff=None, frac_err=None):
    r = {"model": model, "variant": variant, "macs": 100, "predicted_int8_ms": pred, "measured_int8_ms": meas,
         "prediction_error": round(pred / meas - 1, 4)}
    if eff is not None:
        r["vs_dense"] = {"int8": {"efficiency": eff, "speedup": 2 * eff, "mac_reduction": 2.0}}
    if frac_err is not None:
        r["fraction_error"] = frac_err
    return r


def test_int8_efficiency_bar_needs_both_models():
    rows = [_i8("resnet50", "u0.3", 10, 10, eff=0.95), _i8("mobilenet_v2", "u0.3", 10, 10, eff=0.91),
            _i8("resnet18", "u0.3", 10, 10, eff=0.5)]
    s = int8_pruned.summary(rows, ["resnet50", "mobilenet_v2", "resnet18"], [], [])
    assert s["efficiency"]["met"] is True and "prediction" not in s
    rows[1]["vs_dense"]["int8"]["efficiency"] = 0.85
    assert int8_pruned.summary(rows, ["resnet50", "mobilenet_v2"], [], [])["efficiency"]["met"] is False
    assert int8_pruned.summary(rows[2:], ["resnet18"], [], [])["efficiency"]["met"] is None


def test_int8_prediction_bar_counts_pruned_variants_only():
    rows = [_i8(f"m{i}", v, 10.5, 10.0, frac_err=0.01) for i in range(5) for v in ("u0.3", "u0.5", "g0.4", "rand1")]
    rows += [_i8(f"m{i}", "dense", 20.0, 10.0) for i in range(5)]        # dense: reported, not in the bar
    rows += [{"model": "m0", "variant": "rand2", "error": "RuntimeError: x"}]
    s = int8_pruned.summary(rows, [], [f"m{i}" for i in range(5)], ["u0.3", "u0.5", "g0.4", "rand1"])["prediction"]
    assert s["pruned_variants"]["n"] == 20 and s["met"]["all"]
    assert s["dense_models"]["median_abs_error"] == 1.0
    s = int8_pruned.summary(rows[:19], [], [f"m{i}" for i in range(5)], ["u0.3", "u0.5", "g0.4", "rand1"])
    assert not s["prediction"]["met"]["variants"]


def test_readme_sections_render_and_skip_untimed():
    head = {"command": "python bench/x.py", "date": "2026-12-05T00:00:00", "wall_seconds": 60.0,
            "machine": {"cpu": "cpu", "cores": 2, "isa": []}, "versions": {}}
    rows = [_row("m", {"dense": 10.0, "pruned": 5.0}, {"dense": 10.5, "pruned": 5.2}, 0.5)]
    rows[0] |= {"mac_reduction": 2.0, "measured_ms": {"dense": 10.5, "pruned": 5.2}, "measured_fraction": 0.5}
    d = head | {"protocol": {"ratio": 0.3, "batch": 8, "rounds": 1, "passes": 1}, "summary": pu.summary(rows),
                "profiles": {"shipped": {"path": "p.json", "calibrated_on": ["torchvision:resnet18"]}},
                "entries": rows, "skipped": ["resnet18: refused"], "failures": []}
    text = "\n".join(make_tables.predict_unprofiled_section(d))
    assert "| m | 2.00 |" in text and "resnet18: refused" in text
    assert "Not timed" in "\n".join(make_tables.predict_unprofiled_section(d | {"entries": [{"model": "m"}]}))
    rows[0]["reference"] = pu.reference_errors("resnet50", 21.0, 42.0, {"dense": 10.0, "pruned": 5.0},
                                               {"dense": 10.5, "pruned": 5.2})
    text = "\n".join(make_tables.predict_unprofiled_section(d | {"summary": pu.summary(rows), "entries": rows}, "ViTs"))
    assert "not calibrated on: ViTs (" in text and "| x2.00 | +90.5% | +92.3% |" in text and "Host speed (resnet50" in text
    rows = [_i8("resnet50", "u0.3", 10, 10, eff=0.95), _i8("resnet50", "dense", 20, 20)]
    d = head | {"protocol": {"batch": 8, "rounds": 1, "passes": 1, "prediction_models": [], "prediction_variants": {}},
                "profile": {"path": "p.json", "steps": {"conv": {"block": 16}}}, "failures": [], "entries": rows,
                "summary": int8_pruned.summary(rows, ["resnet50"], [], [])}
    text = "\n".join(make_tables.int8_pruned_section(d))
    assert "| resnet50 | 2.00 |" in text and "not evaluated" in text
