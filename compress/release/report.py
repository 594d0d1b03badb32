"""Budget checks and the release's reports: report.json, report.md (a CI job summary), junit.xml (one
testcase per budget and target), plots/<target>.png (accuracy vs latency of the candidates tried).

Reports hold no timestamps or durations, so the same inputs give the same files (run.json has those).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from compress.release.config import LATENCY_BUDGETS, ReleaseConfig, Target

# budget -> (candidate value key, comparison, unit shown)
BUDGET_CHECKS = {
    "max_accuracy_drop": ("accuracy_drop_points", "<=", "points"),
    "min_speedup": ("speedup", ">=", "x"),
    "max_latency_ms": ("latency_ms", "<=", "ms"),
    "max_size_mb": ("size_mb", "<=", "MB"),
}


NOT_VERIFIED = "not verified on this machine"


def check(t: Target, cand: dict) -> list[dict]:
    """Each budget of `t` against the candidate. A latency budget on a target whose latency is predicted, not
    measured (gpu, jetson), is not verified: status "not verified" (the predicted value and whether it meets
    the limit are kept), which fails the gate only when the target sets require_measured."""
    out = []
    for name, limit in t.budgets.items():
        key, op, unit = BUDGET_CHECKS[name]
        value = cand[key]
        meets = value is not None and (value <= limit if op == "<=" else value >= limit)
        verified = name not in LATENCY_BUDGETS or cand.get("latency_measured", True)
        status = ("pass" if meets else "fail") if verified else NOT_VERIFIED
        gate_fail = status == "fail" or (not verified and t.require_measured)
        out.append({"budget": name, "limit": limit, "value": value, "op": op, "unit": unit, "verified": verified,
                    "value_meets_limit": meets, "status": status, "pass": meets if verified else None,
                    "fails_gate": gate_fail})
    return out


def _select(checked: list[dict]) -> int:
    """The released candidate: no budget failing the gate and parity ok, fastest; else the one closest to
    passing (among equals, the one whose unverified budgets' predicted values meet their limits)."""
    def rank(i):
        c = checked[i]
        fails = sum(b["fails_gate"] for b in c["checks"]) + (not c["onnx_parity_ok"])
        unmet = sum(not b["value_meets_limit"] for b in c["checks"])
        return (fails, unmet, -c["speedup"], i)
    return min(range(len(checked)), key=rank)


def _rounds(c: dict, fmt: str = " (per round {}-{}x)") -> str:
    """The range of the per-round speedups (dense and pruned timed in the same round), '' when not measured:
    a wide range means a busy machine, not a slow model."""
    r = c.get("speedup_rounds") or []
    return fmt.format(f"{min(r):.2f}", f"{max(r):.2f}") if len(r) > 1 else ""


def _failure(t: Target, c: dict, b: dict) -> str:
    if b["verified"]:
        rounds = _rounds(c, "; per round {}-{}x") if b["budget"] == "min_speedup" else ""
        return f"{t.name}: {b['budget']} ({_fmt(b['value'])} {b['unit']}, budget {b['op']} {_fmt(b['limit'])}{rounds})"
    return (f"{t.name}: {b['budget']} {NOT_VERIFIED} (predicted {_fmt(b['value'])} {b['unit']}, budget {b['op']} "
            f"{_fmt(b['limit'])}; require_measured = true)")


def build(cfg: ReleaseConfig, results: dict) -> dict:
    targets, failures = [], []
    for t in cfg.targets:
        cands = [{k: v for k, v in c.items() if k != "_dirs"} | {"checks": check(t, c)} for c in results[t.name]]
        sel = _select(cands)
        c = cands[sel]
        failures += [_failure(t, c, b) for b in c["checks"] if b["fails_gate"]]
        if not c["onnx_parity_ok"]:
            failures.append(f"{t.name}: onnxruntime parity failed")
        ok = not any(b["fails_gate"] for b in c["checks"]) and c["onnx_parity_ok"]
        plan = ({"latency_budget": t.latency_budget, "profile": os.path.basename(t.profile)}
                if t.latency_budget is not None else {"ratios": list(t.ratios)})
        targets.append({"target": t.name, "device": t.device, "dtype": t.dtype, "plan": plan, "criterion": t.criterion,
                        "finetune_epochs": t.finetune, "distill": t.distill, "budgets": dict(t.budgets.items()),
                        "latency_profile": os.path.basename(t.profile) if t.profile else None,
                        "require_measured": t.require_measured, "selected": sel, "pass": ok, "candidates": cands})
    passed = not failures

    def met(x):
        checks = x["candidates"][x["selected"]]["checks"]
        n_nv = sum(b["status"] == NOT_VERIFIED for b in checks)
        return (f"{x['target']} ({x['candidates'][x['selected']]['label']}) met {len(checks) - n_nv} budget(s)"
                + (f", {n_nv} {NOT_VERIFIED} (latency predicted, not measured)" if n_nv else ""))

    summary = ("release PASSED: " + "; ".join(met(x) for x in targets) if passed
               else "release FAILED: " + "; ".join(failures))
    return {"schema_version": 2, "config": os.path.basename(cfg.path), "model": cfg.model,
            "data": cfg.data if cfg.data == "fashion-mnist" else os.path.basename(cfg.data),
            "pass": passed, "summary": summary, "failures": failures, "targets": targets}


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _acc(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _result(b: dict) -> str:
    if b["status"] == "pass":
        return "✅ pass"
    if b["status"] == "fail":
        return "❌ FAIL"
    pred = "predicted value meets the limit" if b["value_meets_limit"] else "predicted value misses the limit"
    return f"{'❌' if b['fails_gate'] else '⏭️'} {NOT_VERIFIED} ({pred}{'; require_measured' if b['fails_gate'] else ''})"


def markdown(rep: dict) -> str:
    lines = [f"## compress release: {'✅ passed' if rep['pass'] else '❌ failed'}", "",
             f"Model `{rep['model']}`, data `{rep['data']}`, config `{rep['config']}`.", "", rep["summary"], ""]
    for t in rep["targets"]:
        c = t["candidates"][t["selected"]]
        measured = c["latency_measured"]
        lat = "latency (ms)" if measured else "latency (ms), PREDICTED, not measured"
        name = t["target"] + (f" ({t['device']})" if t.get("device") else "")
        lines += [f"### {name}: {'pass' if t['pass'] else 'FAIL'} ({c['label']}, criterion {t['criterion']}, "
                  f"fine-tuned {t['finetune_epochs']:g} epoch(s){' with distillation' if t['distill'] else ''})", "",
                  "| | dense | pruned |", "|---|---:|---:|",
                  f"| accuracy | {_acc(c['accuracy_dense'])} | {_acc(c['accuracy'])} |",
                  f"| {lat} | {c['latency_ms_dense']:.3f} | {c['latency_ms']:.3f} |",
                  f"| speedup{'' if measured else ', predicted'} | 1.00x | {c['speedup']:.2f}x{_rounds(c)} |",
                  f"| size (MB) | {c['size_mb_dense']:.3f} | {c['size_mb']:.3f} |",
                  f"| params | {c['params_dense']:,} | {c['params']:,} |",
                  f"| MACs | {c['macs_dense']:,} | {c['macs']:,} |", "",
                  f"Latency: {c['latency_source']}. ONNX parity: {'ok' if c['onnx_parity_ok'] else 'FAILED'}. "
                  f"Accuracy on {c['eval_samples']:,} test samples.", ""]
        if t.get("dtype") == "int8":
            lines += [f"Precision: int8 (`model.int8.onnx`, judged in onnxruntime): accuracy is the int8 artifact's "
                      f"(its fp32 model.onnx: {_acc(c.get('accuracy_fp32'))}, top-1 agreement "
                      f"{_acc(c.get('agreement_int8_fp32'))}), dense is the fp32 model's; latency dense and pruned "
                      f"int8, dense fp32 {_fmt(c.get('latency_ms_dense_fp32'))} ms (pruned int8 "
                      f"{_fmt(c.get('speedup_vs_fp32'))}x faster); size of model.int8.onnx.", ""]
        p = c.get("plan_predicted")
        if p:
            lines += [f"Plan: `compress plan` on {p['profile']} for {c['latency_budget']:g} of the dense latency: "
                      f"predicted {p['dense_ms']:.3f} -> {p['predicted_ms']:.3f} ms (target {p['target_ms']:.3f} ms, "
                      f"{p['predicted_speedup']:.2f}x).", ""]
        if c["checks"]:
            lines += ["| budget | limit | value | result |", "|---|---:|---:|---|"]
            for b in c["checks"]:
                lines.append(f"| `{b['budget']}` | {b['op']} {_fmt(b['limit'])} {b['unit']} | "
                             f"{_fmt(b['value'])} {b['unit']}{'' if b['verified'] else ' (predicted)'} | {_result(b)} |")
            lines.append("")
        if c.get("not_verified_here"):
            lines += ["Not verified on this machine (see the artifact's manifest.json):", ""]
            lines += [f"- {x}" for x in c["not_verified_here"]] + [""]
        if len(t["candidates"]) > 1:
            lines += ["Candidates tried:", "", "| candidate | accuracy | latency (ms) | speedup | size (MB) | budgets |",
                      "|---|---:|---:|---:|---:|---|"]
            for i, k in enumerate(t["candidates"]):
                n_ok = sum(b["status"] == "pass" for b in k["checks"])
                lines.append(f"| {k['label']}{' (released)' if i == t['selected'] else ''} | {_acc(k['accuracy'])} | "
                             f"{k['latency_ms']:.3f} | {k['speedup']:.2f}x | {k['size_mb']:.3f} | "
                             f"{n_ok}/{len(k['checks'])} passed |")
            lines.append("")
    return "\n".join(lines)


def junit(rep: dict) -> bytes:
    """JUnit XML: <testsuites> with one <testsuite> per target and one <testcase> per budget; a failed
    budget carries <failure message type>, a budget that cannot be verified on this machine <skipped message>
    (a <failure type="NotVerified"> when the target sets require_measured)."""
    root = ET.Element("testsuites", name="compress release")
    total = fails = skips = 0
    for t in rep["targets"]:
        c = t["candidates"][t["selected"]]
        checks = c["checks"]
        n_fail = sum(b["fails_gate"] for b in checks)
        n_skip = sum(b["status"] == NOT_VERIFIED and not b["fails_gate"] for b in checks)
        suite = ET.SubElement(root, "testsuite", name=f"release.{t['target']}", tests=str(len(checks)),
                              failures=str(n_fail), errors="0", skipped=str(n_skip), time="0")
        for b in checks:
            case = ET.SubElement(suite, "testcase", classname=f"release.{t['target']}", name=b["budget"], time="0")
            pred = "" if b["verified"] else " (predicted, not measured)"
            text = (f"{t['target']} {c['label']}: {b['budget']} = {_fmt(b['value'])} {b['unit']}{pred}, "
                    f"budget {b['op']} {_fmt(b['limit'])} {b['unit']}")
            if b["status"] == "fail":
                f = ET.SubElement(case, "failure", message=f"{b['budget']} not met on {t['target']}", type="BudgetExceeded")
                f.text = text
            elif b["status"] == NOT_VERIFIED and b["fails_gate"]:
                f = ET.SubElement(case, "failure", message=f"{b['budget']} {NOT_VERIFIED} and {t['target']} sets "
                                  "require_measured", type="NotVerified")
                f.text = text
            elif b["status"] == NOT_VERIFIED:
                ET.SubElement(case, "skipped", message=f"{b['budget']} {NOT_VERIFIED}: {t['target']} latency is "
                              f"predicted from profile {t['latency_profile']}, not measured; {text}")
            else:
                ET.SubElement(case, "system-out").text = text
        total += len(checks)
        fails += n_fail
        skips += n_skip
    root.set("tests", str(total))
    root.set("failures", str(fails))
    root.set("errors", "0")
    root.set("skipped", str(skips))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def plot(t: dict, path: str) -> None:
    """Accuracy vs latency of the dense model and every candidate, budget limits drawn as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = t["candidates"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    c0 = cands[0]
    if c0["accuracy_dense"] is not None:
        ax.scatter([c0["latency_ms_dense"]], [c0["accuracy_dense"] * 100], marker="s", color="black", label="dense")
    for i, c in enumerate(cands):
        ok = not any(b["fails_gate"] for b in c["checks"])
        ax.scatter([c["latency_ms"]], [c["accuracy"] * 100], color="tab:green" if ok else "tab:red",
                   marker="*" if i == t["selected"] else "o", s=120 if i == t["selected"] else 50)
        ax.annotate(c["label"], (c["latency_ms"], c["accuracy"] * 100), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    b = t["budgets"]
    if "max_latency_ms" in b:
        ax.axvline(b["max_latency_ms"], color="tab:orange", ls="--", label="max_latency_ms")
    if "min_speedup" in b:
        ax.axvline(c0["latency_ms_dense"] / b["min_speedup"], color="tab:purple", ls=":", label="min_speedup")
    if "max_accuracy_drop" in b and c0["accuracy_dense"] is not None:
        ax.axhline(c0["accuracy_dense"] * 100 - b["max_accuracy_drop"], color="tab:blue", ls="--",
                   label="max_accuracy_drop")
    ax.set_xlabel(f"latency (ms), {'measured' if c0['latency_measured'] else 'PREDICTED (not measured)'}")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{t['target']}: candidates (green: no budget failed; star: released)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def write(rep: dict, out: str) -> dict:
    """report.json, report.md, junit.xml and plots/<target>.png in `out`, each written atomically."""
    from compress.io import atomic_file, json_text, write_text_atomic

    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    files = {"report.json": json_text(rep), "report.md": markdown(rep) + "\n", "junit.xml": junit(rep)}
    for name, data in files.items():
        write_text_atomic(os.path.join(out, name), data)
    for t in rep["targets"]:
        with atomic_file(os.path.join(out, "plots", f"{t['target']}.png"), suffix=".tmp.png") as tmp:
            plot(t, tmp)                           # the .png suffix: matplotlib picks the format by it
    return {"report_json": "report.json", "report_md": "report.md", "junit": "junit.xml",
            "plots": [f"plots/{t['target']}.png" for t in rep["targets"]]}
