"""Budget checks, report.md, JUnit XML (validated against the common JUnit schema's elements and
attributes) and plots, from candidate records shaped as the pipeline writes them."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

from compress.release import config, report

# The common JUnit XML schema (Jenkins junit-10.xsd / Ant): element -> (required attrs, allowed attrs, children)
JUNIT = {
    "testsuites": (set(), {"name", "time", "tests", "failures", "errors", "disabled", "skipped"}, {"testsuite"}),
    "testsuite": ({"name", "tests"}, {"name", "tests", "failures", "errors", "skipped", "disabled", "time",
                                      "timestamp", "hostname", "id", "package", "file"},
                  {"properties", "testcase", "system-out", "system-err"}),
    "testcase": ({"name"}, {"name", "classname", "time", "assertions", "status", "file", "line"},
                 {"skipped", "error", "failure", "system-out", "system-err"}),
    "failure": (set(), {"message", "type"}, set()),
    "error": (set(), {"message", "type"}, set()),
    "skipped": (set(), {"message"}, set()),
    "system-out": (set(), set(), set()),
    "system-err": (set(), set(), set()),
}


def validate_junit(xml: bytes) -> ET.Element:
    root = ET.fromstring(xml)
    assert root.tag in ("testsuites", "testsuite")

    def walk(el):
        required, allowed, children = JUNIT[el.tag]
        assert required <= set(el.attrib), (el.tag, el.attrib)
        assert set(el.attrib) <= allowed, (el.tag, set(el.attrib) - allowed)
        for k in ("tests", "failures", "errors", "skipped"):
            if k in el.attrib:
                assert int(el.attrib[k]) >= 0
        if "time" in el.attrib:
            float(el.attrib["time"])
        for c in el:
            assert c.tag in children, (el.tag, c.tag)
            walk(c)

    walk(root)
    for suite in root.iter("testsuite"):  # the counts say what the cases hold
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures", 0)) == sum(c.find("failure") is not None for c in cases)
        assert int(suite.get("skipped", 0)) == sum(c.find("skipped") is not None for c in cases)
    return root


def _cfg(tmp_path, budgets: str, target: str = "cpu", extra: str = ""):
    p = tmp_path / "compress.toml"
    p.write_text('[model]\nspec = "compress:fmnist-cnn"\n[data]\nspec = "fashion-mnist"\n'
                 f'[targets.{target}]\nratios = [0.3, 0.5]\nfinetune = 1.0\ndistill = true\n{extra}'
                 f'[budgets.{target}]\n' + budgets)
    return config.load(str(p))


def _cand(label, ratio, acc, ms, size_mb, measured=True):
    return {"label": label, "ratio": ratio, "latency_budget": None, "plan_predicted": None,
            "accuracy": acc, "accuracy_dense": 0.9169,
            "accuracy_at_prune_time": acc, "accuracy_before_finetune": 0.3, "eval_samples": 10000,
            "accuracy_drop_points": (0.9169 - acc) * 100, "latency_ms_dense": 0.5, "latency_ms": ms,
            "latency_source": "measured on this machine" if measured else "predicted from profile p.json",
            "latency_measured": measured, "not_verified_here": [] if measured else ["TVM library: not verified"],
            "speedup": 0.5 / ms, "size_mb_dense": 1.24,
            "size_mb": size_mb, "params": 150000, "params_dense": 309162, "macs": 5000000, "macs_dense": 10520320,
            "onnx_parity_ok": True, "onnx_sha256": "0" * 64, "_dirs": {}}


def _results():
    return {"cpu": [_cand("ratio 0.3", 0.3, 0.9120, 0.35, 0.60), _cand("ratio 0.5", 0.5, 0.9050, 0.25, 0.32)]}


def test_budgets_pass_and_the_fastest_passing_candidate_is_released(tmp_path):
    cfg = _cfg(tmp_path, "max_accuracy_drop = 1.5\nmin_speedup = 1.2\nmax_size_mb = 1.0\n")
    rep = report.build(cfg, _results())
    assert rep["pass"] and rep["failures"] == []
    (t,) = rep["targets"]
    assert t["selected"] == 1  # both pass; ratio 0.5 is faster
    assert [b["budget"] for b in t["candidates"][1]["checks"]] == ["max_accuracy_drop", "min_speedup", "max_size_mb"]
    assert rep["summary"] == "release PASSED: cpu (ratio 0.5) met 3 budget(s)"
    json.dumps(rep)  # serialisable, no private fields
    assert "_dirs" not in t["candidates"][0]


def test_a_failing_budget_is_named_with_its_target(tmp_path):
    cfg = _cfg(tmp_path, "max_accuracy_drop = 0.5\nmin_speedup = 1.2\nmax_latency_ms = 0.3\n")
    rep = report.build(cfg, _results())
    assert not rep["pass"]
    # each candidate fails one budget (0.3: latency 0.35 ms; 0.5: drop 1.19 points); the faster one is reported
    assert rep["targets"][0]["selected"] == 1
    assert rep["summary"] == "release FAILED: cpu: max_accuracy_drop (1.19 points, budget <= 0.5)"
    root = validate_junit(report.junit(rep))
    cases = root.findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == ["max_accuracy_drop", "min_speedup", "max_latency_ms"]
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert len(failed) == 1 and root.get("failures") == "1"
    assert failed[0] in rep["summary"]


def test_a_missed_speedup_shows_the_per_round_range(tmp_path):
    """Dense and pruned are timed in the same round; the range of their per-round ratios tells a busy machine
    (a wide range) from a model that is not fast enough (a tight one)."""
    cfg = _cfg(tmp_path, "min_speedup = 2.5\n")
    res = _results()
    for c in res["cpu"]:
        c["speedup_rounds"] = [c["speedup"] * f for f in (0.9, 1.0, 1.3)]
    rep = report.build(cfg, res)
    assert rep["summary"] == "release FAILED: cpu: min_speedup (2 x, budget >= 2.5; per round 1.80-2.60x)"
    assert "| speedup | 1.00x | 2.00x (per round 1.80-2.60x) |" in report.markdown(rep)


def test_markdown_table_and_files(tmp_path):
    cfg = _cfg(tmp_path, "max_accuracy_drop = 1.5\nmin_speedup = 1.2\nmax_size_mb = 0.5\n")
    rep = report.build(cfg, _results())
    md = report.markdown(rep)
    assert "| accuracy | 0.9169 | 0.9050 |" in md
    assert "| latency (ms) | 0.500 | 0.250 |" in md
    assert "| speedup | 1.00x | 2.00x |" in md
    assert "| size (MB) | 1.240 | 0.320 |" in md
    assert "| `max_size_mb` | <= 0.5 MB | 0.32 MB | ✅ pass |" in md
    assert "| ratio 0.3 | 0.9120 |" in md and "| ratio 0.5 (released) |" in md
    out = tmp_path / "out"
    files = report.write(rep, str(out))
    for f in ("report.json", "report.md", "junit.xml"):
        assert (out / f).is_file()
    validate_junit((out / "junit.xml").read_bytes())
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(rep))
    png = out / files["plots"][0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    first = {f: (out / f).read_bytes() for f in ("report.json", "report.md", "junit.xml", files["plots"][0])}
    report.write(rep, str(out))  # same report -> same bytes (no timestamps)
    assert first == {f: (out / f).read_bytes() for f in first}
    assert not [p for p in os.listdir(out) if p.startswith(".")]


def _jetson(tmp_path, require_measured: bool):
    cfg = _cfg(tmp_path, "max_accuracy_drop = 1.5\nmin_speedup = 1.2\nmax_latency_ms = 0.3\n", "jetson",
               'device = "orin-nano"\n' + ("require_measured = true\n" if require_measured else ""))
    res = {"jetson": [_cand("ratio 0.3", 0.3, 0.9120, 0.35, 0.60, measured=False),
                      _cand("ratio 0.5", 0.5, 0.9050, 0.25, 0.32, measured=False)]}
    return cfg, report.build(cfg, res)


def test_predicted_latency_budgets_are_not_verified_and_skipped(tmp_path):
    cfg, rep = _jetson(tmp_path, require_measured=False)
    assert cfg.targets[0].profile.endswith("jetson-orin-nano.json")  # the device's shipped profile by default
    assert rep["pass"] and rep["failures"] == []
    t = rep["targets"][0]
    assert t["selected"] == 1  # ratio 0.3's predicted latency 0.35 ms misses max_latency_ms; ratio 0.5's meets it
    by = {b["budget"]: b for b in t["candidates"][1]["checks"]}
    assert by["max_accuracy_drop"]["status"] == "pass" and by["max_accuracy_drop"]["verified"]
    for name in ("min_speedup", "max_latency_ms"):
        assert by[name]["status"] == "not verified on this machine" and by[name]["pass"] is None
        assert not by[name]["verified"] and by[name]["value_meets_limit"] and not by[name]["fails_gate"]
    assert rep["summary"] == ("release PASSED: jetson (ratio 0.5) met 1 budget(s), 2 not verified on this machine "
                              "(latency predicted, not measured)")
    md = report.markdown(rep)
    assert "### jetson (orin-nano): pass" in md
    assert "| latency (ms), PREDICTED, not measured | 0.500 | 0.250 |" in md
    assert ("| `max_latency_ms` | <= 0.3 ms | 0.25 ms (predicted) | ⏭️ not verified on this machine (predicted value "
            "meets the limit) |") in md
    assert "- TVM library: not verified" in md
    root = validate_junit(report.junit(rep))
    skipped = {c.get("name"): c.find("skipped") for c in root.iter("testcase") if c.find("skipped") is not None}
    assert set(skipped) == {"min_speedup", "max_latency_ms"} and root.get("skipped") == "2"
    assert all("not verified on this machine" in s.get("message") and "predicted" in s.get("message")
               for s in skipped.values())
    assert not list(root.iter("failure"))


def test_require_measured_fails_the_gate_naming_each_unverified_budget(tmp_path):
    _, rep = _jetson(tmp_path, require_measured=True)
    assert not rep["pass"]
    assert rep["failures"] == [
        "jetson: min_speedup not verified on this machine (predicted 2 x, budget >= 1.2; require_measured = true)",
        "jetson: max_latency_ms not verified on this machine (predicted 0.25 ms, budget <= 0.3; require_measured = true)"]
    root = validate_junit(report.junit(rep))
    failed = [c for c in root.iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["min_speedup", "max_latency_ms"]
    assert {c.find("failure").get("type") for c in failed} == {"NotVerified"} and root.get("skipped") == "0"
    assert "❌ not verified on this machine (predicted value meets the limit; require_measured)" in report.markdown(rep)
