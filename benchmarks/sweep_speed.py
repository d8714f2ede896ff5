"""How long the default `xentaudit sweep` of TensorFlow takes, beside TensorFlow's own import.

Targets: within TensorFlow's import time + 5 s (issue "xentaudit sweep"), and + 3 s (issue
"Speed on the CPUs CI runs on"), with only TensorFlow installed; `--backend tf` runs exactly that
sweep wherever the optional backends are installed too (their import included in neither): by
default in one process per core, each sweeping some of the dtypes (`--jobs`), and, for the
record, in one process (`--jobs 1`).
Both are measured here in the same run, as fresh processes (the sweep's figure includes its own
TensorFlow and Keras import, tracing and every breaking-point search), and the medians are
compared. The first lines name the CPU, the reference kernel's instruction-set clone and what
the frameworks were held to; --isa forces a clone and holds numpy, XLA and ATen to its
instruction set (benchmarks/machine.py). The sweep of every backend: benchmarks/backends_speed.py.

    python benchmarks/sweep_speed.py [--runs 5] [--isa x86-64-v3]
"""

from __future__ import annotations

import statistics
import sys

from machine import benchmark_parser, parsed, wall

BUDGETS_S = (5.0, 3.0)  # the sweep issue's, then the CI-speed issue's


def main() -> None:
    parser = benchmark_parser(__doc__, runs=5)
    args = parsed(parser)
    runs = args.runs
    imports, sweeps, alone = [], [], []
    sweep = [sys.executable, "-m", "xentaudit", "sweep", "--backend", "tf"]
    wall([sys.executable, "-c", "import tensorflow"])  # warm the file cache once, discarded
    for _ in range(runs):  # interleaved, so both see the same machine state
        imports.append(wall([sys.executable, "-c", "import tensorflow"]))
        sweeps.append(wall(sweep))
        alone.append(wall([*sweep, "--jobs", "1"]))
    imp, swp = statistics.median(imports), statistics.median(sweeps)
    one = statistics.median(alone)
    print(f"runs: {runs}")
    print(f"python -c 'import tensorflow': median {imp:.2f} s  (all: {_fmt(imports)})")
    print(f"xentaudit sweep --backend tf:  median {swp:.2f} s  (all: {_fmt(sweeps)})")
    print(
        f"  the same in one process (--jobs 1): median {one:.2f} s = import + {one - imp:.2f} s  "
        f"(all: {_fmt(alone)})"
    )
    verdicts = ", ".join(
        f"budget {b:.1f} s {'met' if swp - imp <= b else 'NOT met'}" for b in BUDGETS_S
    )
    print(f"sweep - import: {swp - imp:.2f} s  ({verdicts}); sweep / import = {swp / imp:.2f}")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
