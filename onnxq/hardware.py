"""What the host CPU's integer kernels can do, for defaults that work where onnxq runs."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The feature flags of the host CPU (Linux ``/proc/cpuinfo``); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def saturates_u8s8() -> bool:
    """True on an x86 CPU with AVX2 but no VNNI: ORT's u8 x s8 kernels (vpmaddubsw) saturate the
    16-bit sum of two products there, which costs int8 accuracy unless weights use 7 bits
    (``reduce_range``). False where the flags cannot be read (ORT's own default applies)."""
    if platform.machine().lower() not in _X86:
        return False
    flags = cpu_flags()
    return "avx2" in flags and not (flags & _VNNI_FLAGS)
