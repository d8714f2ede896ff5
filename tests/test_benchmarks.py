"""The benchmarks' --isa (benchmarks/machine.py): a figure said to be of the AVX2 code must come
from a process whose numpy, XLA and ATen were held to it, not only the reference kernel."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# A benchmark's opening, then what its process was left with: numpy's dispatch targets in use
# (read in this fresh process, after the variables were set), the kernel clone's variable and
# the frameworks' variables.
PROBE = textwrap.dedent(
    f"""
    import os, sys
    sys.path.insert(0, {str(BENCHMARKS)!r})
    from machine import _numpy_dispatch, benchmark_parser, parsed

    parsed(benchmark_parser("probe", runs=1))
    targets, features = _numpy_dispatch()
    print("numpy", *(t for t in targets if features.get(t)))
    print("above", *(t for t in targets if t.startswith("AVX512") or t == "X86_V4"))
    for name in ("XENTAUDIT_KERNEL_ISA", "XLA_FLAGS", "ATEN_CPU_CAPABILITY"):
        print(name, os.environ.get(name))
    """
)


def _probe(tmp_path: Path, isa: str) -> dict[str, str]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    done = subprocess.run(
        [sys.executable, str(script), "--isa", isa], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return {
        "lines": "\n".join(lines[:2]),
        **{k: v for k, _, v in (x.partition(" ") for x in lines[2:])},
    }


def test_isa_x86_64_v3_holds_numpy_xla_and_aten_to_avx2(tmp_path: Path) -> None:
    seen = _probe(tmp_path, "x86-64-v3")
    assert "clone x86-64-v3" in seen["lines"]
    assert "frameworks held to x86-64-v3" in seen["lines"]
    # none of numpy's AVX-512 targets is in use, whatever this CPU has
    assert seen["above"] and not set(seen["numpy"].split()) & set(seen["above"].split())
    assert seen["XENTAUDIT_KERNEL_ISA"] == "x86-64-v3"
    assert seen["XLA_FLAGS"].split()[-1] == "--xla_cpu_max_isa=AVX2"
    assert seen["ATEN_CPU_CAPABILITY"] == "avx2"


def test_isa_x86_64_holds_numpy_to_its_baseline(tmp_path: Path) -> None:
    # On an AVX2 CPU numpy dispatches to X86_V3 unless held: this fails if the hold is lost.
    seen = _probe(tmp_path, "x86-64")
    assert seen["numpy"] == ""
    assert "numpy dispatches to its baseline only" in seen["lines"]
    assert seen["XLA_FLAGS"].split()[-1] == "--xla_cpu_max_isa=SSE4_2"
    assert seen["ATEN_CPU_CAPABILITY"] == "default"


def test_isa_x86_64_v4_holds_nothing_but_the_clone(tmp_path: Path) -> None:
    from xentaudit.reference import base

    if base.kernel is None or "x86-64-v4" not in base.kernel.supported_isas():
        pytest.skip("no kernel, or this CPU does not run x86-64-v4")
    seen = _probe(tmp_path, "x86-64-v4")
    assert "frameworks: not capped" in seen["lines"]
    assert seen["ATEN_CPU_CAPABILITY"] == "None"
