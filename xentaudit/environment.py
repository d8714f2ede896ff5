"""What a run audited with: versions, the CPU and the reference kernel's clone, and whether each
framework used flushes subnormal numbers. Every report records it, so results compared across
machines or upgrades say what changed."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from pathlib import Path

from xentaudit import impls as zoo

# the packages whose versions a report names: always, and per backend used
CORE = ("xentaudit", "numpy")
PACKAGES = {"tensorflow": ("tensorflow", "keras"), "torch": ("torch",), "jax": ("jax", "optax")}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    import importlib.metadata  # here, not at the top: a --help never reads a version

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def subnormal_flushes(backends: Iterable[str]) -> dict[str, bool]:
    """Per backend (``Impl.backend`` names), whether it flushes subnormals on this CPU
    (measured: exp(-100) in float32, a subnormal 3.8e-44, comes back as 0 or not)."""
    return {b: zoo.load_backend(b).flushes_subnormals() for b in backends}


def environment(backends: Iterable[str]) -> dict[str, str]:
    """The record of a run whose implementations ran in ``backends`` (``Impl.backend`` names),
    in this process: ``environment_of`` their ``subnormal_flushes``."""
    return environment_of(subnormal_flushes(backends))


def environment_of(flushes: Mapping[str, bool]) -> dict[str, str]:
    """The record of a run whose implementations ran in the backends of ``flushes``, which says
    whether each flushes subnormals (measured where they ran: ``subnormal_flushes``): package
    versions, Python, the CPU and the reference method's kernel clone, and the flushes."""
    from xentaudit.reference import base

    used = [b for b in zoo.BACKENDS if b in flushes]
    record = {"python": platform.python_version()}
    for package in (*CORE, *(p for b in used for p in PACKAGES[b])):
        record[package] = _version(package)
    record["cpu"] = f"{cpu_model()} ({platform.machine()})"
    kernel = base.kernel
    record["kernel"] = kernel.isa() if kernel is not None else "none (numpy reference)"
    record["subnormals"] = ", ".join(f"{b} {'flushed' if flushes[b] else 'kept'}" for b in used)
    return record


def describe(record: dict[str, str]) -> str:
    """The record in one line, for the text reports."""
    return "; ".join(f"{key} {value}" for key, value in record.items() if value)
