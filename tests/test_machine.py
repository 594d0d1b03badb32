"""compress.machine: /proc/cpuinfo read once, and the callers that identify this machine by it give what
they gave when each read the file itself (the reference readers below are the replaced code, on text)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from compress import machine
from compress.machine import CpuInfo

ROOT = Path(__file__).resolve().parents[1]

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512_vnni
vmx flags\t: vnmi preemption_timer
bugs\t\t: spectre_v1

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512_vnni
"""
AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7R13 Processor  
flags\t\t: fpu sse2 avx avx2 fma
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes
CPU implementer\t: 0x41
"""
TEXTS = {"intel": INTEL, "amd": AMD, "arm": ARM, "empty": "", "unreadable": None}


def info_of(text):
    return CpuInfo() if text is None else CpuInfo.parse(text)


def test_fields_parsed_from_cpuinfo_text():
    i = CpuInfo.parse(INTEL)
    assert i.field("vendor_id") == "GenuineIntel"
    assert i.model_name("x") == "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"
    assert i.flags == ["fpu", "vme", "sse", "sse2", "avx", "avx2", "fma", "avx512f", "avx512_vnni"]
    assert (i.vendor, i.isa) == ("intel", "avx512")
    a = CpuInfo.parse(AMD)
    assert a.model_name("x") == "AMD EPYC 7R13 Processor"          # stripped
    assert (a.vendor, a.isa) == ("amd", "avx2")
    for none in (CpuInfo.parse(ARM), CpuInfo.parse(""), CpuInfo()):
        assert none.model_name("fallback") == "fallback"
        assert (none.flags, none.vendor, none.isa, none.field("vendor_id")) == ([], "", "avx2", "")


def test_present_but_empty_model_name_is_not_the_fallback():
    assert CpuInfo.parse("model name\t:\n").model_name("fallback") == ""


def test_cpuinfo_reads_the_file_once(monkeypatch, tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(AMD)
    monkeypatch.setattr(machine, "CPUINFO", str(f))
    machine.cpuinfo.cache_clear()
    try:
        assert machine.cpuinfo().vendor == "amd"
        f.write_text(INTEL)
        assert machine.cpuinfo().vendor == "amd"                    # cached: not read again
        machine.cpuinfo.cache_clear()
        monkeypatch.setattr(machine, "CPUINFO", str(tmp_path / "missing"))
        assert machine.cpuinfo() == CpuInfo()
    finally:
        machine.cpuinfo.cache_clear()


# the replaced readers, on a text (None: /proc/cpuinfo unreadable)

def old_host_tags(text):
    def field(key):
        if text is None:
            return ""
        line = next((ln for ln in text.splitlines() if ln.startswith(key)), None)
        return "" if line is None else line.split(":", 1)[1].strip()
    isa = "avx512" if "avx512f" in field("flags").split() else "avx2"
    vendor = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(field("vendor_id"), "")
    return ([f"{vendor}-{isa}"] if vendor else []) + [isa]


def old_release_cpu(text):
    cpu = platform.processor()
    if text is not None:
        cpu = next((ln.split(":", 1)[1].strip() for ln in text.splitlines(True) if ln.startswith("model name")), cpu)
    return cpu


def old_sparse_bench(text):
    name, flags = platform.processor() or "unknown", []
    for line in (text or "").splitlines():
        if line.startswith("model name") and name in ("unknown", "", platform.processor()):
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1].split()
    return name, flags


def old_bench_common(text):
    cpu, flags = "unknown", set()
    for line in (text or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    for line in (text or "").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return cpu, flags


@pytest.fixture
def fake_cpu(monkeypatch):
    def use(text):
        monkeypatch.setattr(machine, "cpuinfo", lambda: info_of(text))
    return use


@pytest.mark.parametrize("kind", sorted(TEXTS))
def test_callers_give_what_they_gave(kind, fake_cpu):
    from compress.hardware_profiles import predictor, sparse_bench
    from compress.release import tools

    text = TEXTS[kind]
    fake_cpu(text)
    assert predictor.host_tags() == old_host_tags(text)
    assert tools.machine()["cpu"] == old_release_cpu(text)
    m = sparse_bench.machine("cpu")
    name, flags = old_sparse_bench(text)
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "neon", "asimd") if f in flags]
    assert (m["name"], m["isa"]) == (name, isa)

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import _common
    finally:
        sys.path.remove(str(ROOT / "bench"))
    cpu, flags = old_bench_common(text)
    got = _common.machine_info()
    assert (got["cpu"], got["isa"]) == (cpu, [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni",
                                                         "amx_tile") if f in flags])
    assert list(got) == ["cpu", "cores", "isa", "platform"]


def test_this_machine_unchanged():
    """On the real /proc/cpuinfo the callers agree with the replaced readers."""
    from compress.hardware_profiles import predictor
    from compress.release import tools

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = None
    assert predictor.host_tags() == old_host_tags(text)
    assert tools.machine()["cpu"] == old_release_cpu(text)


def test_import_is_cheap():
    code = ("import sys, compress.machine as m; m.cpuinfo(); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'numpy', 'compress')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    assert out.strip() == "['compress', 'compress.errors', 'compress.machine']"
