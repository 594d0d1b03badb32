"""The identity of this machine's CPU, read from /proc/cpuinfo once per process.

What latency measurements and profile choices depend on: the model name, the flags (vector ISA),
the vendor. Cheap to import (standard library only). Every field reads as missing where there is
no /proc/cpuinfo (not Linux) or it cannot be read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

CPUINFO = "/proc/cpuinfo"
VENDORS = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}


@dataclass(frozen=True)
class CpuInfo:
    """The lines of a /proc/cpuinfo text (empty: none readable)."""

    lines: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "CpuInfo":
        return cls(tuple(text.splitlines()))

    def field(self, key: str, default: str | None = "") -> str | None:
        """The value (stripped) of the first line starting with `key` (the first CPU's), else `default`."""
        for line in self.lines:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
        return default

    def model_name(self, default: str) -> str:
        """The first `model name` line's value, else `default` (no such line, or no /proc/cpuinfo)."""
        return self.field("model name", default)

    @property
    def flags(self) -> list[str]:
        """The first `flags` line's flags ([] without one, e.g. on ARM, which lists `Features`)."""
        return self.field("flags").split()

    @property
    def vendor(self) -> str:
        """amd, intel, or '' (not an x86 /proc/cpuinfo)."""
        return vendor_of(self.field("vendor_id"))

    @property
    def isa(self) -> str:
        """The x86 vector ISA as the shipped CPU profiles name it: avx512 or avx2."""
        return isa_of(self.field("flags"))


def vendor_of(vendor_id: str) -> str:
    """amd, intel, or '' for a `vendor_id` value."""
    return VENDORS.get(vendor_id, "")


def isa_of(flags: str) -> str:
    """avx512 (the `flags` value lists avx512f) or avx2."""
    return "avx512" if "avx512f" in flags.split() else "avx2"


@functools.cache
def cpuinfo() -> CpuInfo:
    """This machine's /proc/cpuinfo, read once (empty where it cannot be read)."""
    try:
        with open(CPUINFO) as f:
            return CpuInfo.parse(f.read())
    except OSError:
        return CpuInfo()
