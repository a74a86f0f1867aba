"""Describe the machine a benchmark ran on: CPU, instruction sets that matter for int8, memory,
and the versions of the Python packages involved."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

#: CPU flags that decide which int8 kernels ONNX Runtime can use.
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                     "amx_bf16")

PACKAGES = ("onnx", "onnxruntime", "numpy", "onnxq")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        pass
    if package == "onnxq":  # running from a source checkout that is not installed
        try:
            import onnxq

            return getattr(onnxq, "__version__", "unknown") + " (source tree)"
        except Exception as exc:  # the library may be mid-edit
            return f"not importable ({type(exc).__name__})"
    return "not installed"


def source_fingerprint(root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """sha256 over the onnxq package sources and the git commit, to tie figures to the code measured."""
    import hashlib
    import subprocess
    from pathlib import Path

    root = Path(root) if root else Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    files = sorted((root / "onnxq").rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            pass
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--", "onnxq"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"onnxq_sources_sha256": digest.hexdigest()[:16], "files": len(files), "git_commit": commit,
            "onnxq_uncommitted_changes": dirty}


def machine_info() -> dict[str, Any]:
    """Plain JSON-ready description of this machine and software stack."""
    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    mem = _mem_total_bytes()
    return {
        "cpu_model": model,
        "cpu_flags": {flag: flag in flags for flag in FLAGS_OF_INTEREST},
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "ram_gib": round(mem / 2**30, 1) if mem else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": {name: _version(name) for name in PACKAGES},
        "executable": sys.executable,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(machine_info(), indent=2))
