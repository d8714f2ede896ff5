"""How long the default `xentaudit sweep` takes, beside TensorFlow's own import time.

Target (issue "xentaudit sweep"): the default sweep finishes within TensorFlow's import time
+ 5 s on the 2-core CPU machine. Both are measured here in the same run, as fresh processes
(the sweep's figure includes its own TensorFlow import, tracing and every breaking-point
search), and the medians are compared. The first line names the CPU and the reference kernel's
instruction-set clone; --isa (or XENTAUDIT_KERNEL_ISA) forces one.

    python benchmarks/sweep_speed.py [--runs 5] [--isa x86-64-v3]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from machine import apply_isa, describe, isa_option, wall

BUDGET_S = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    isa_option(parser)
    args = parser.parse_args()
    apply_isa(args)
    print(describe())
    runs = args.runs
    imports, sweeps = [], []
    wall([sys.executable, "-c", "import tensorflow"])  # warm the file cache once, discarded
    for _ in range(runs):  # interleaved, so both see the same machine state
        imports.append(wall([sys.executable, "-c", "import tensorflow"]))
        sweeps.append(wall([sys.executable, "-m", "xentaudit", "sweep"]))
    imp, swp = statistics.median(imports), statistics.median(sweeps)
    print(f"runs: {runs}")
    print(f"python -c 'import tensorflow': median {imp:.2f} s  (all: {_fmt(imports)})")
    print(f"xentaudit sweep (default):     median {swp:.2f} s  (all: {_fmt(sweeps)})")
    print(
        f"sweep - import: {swp - imp:.2f} s  (budget {BUDGET_S:.1f} s: "
        f"{'met' if swp - imp <= BUDGET_S else 'NOT met'}); sweep / import = {swp / imp:.2f}"
    )


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
