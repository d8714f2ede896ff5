"""How long `sweep --plot` takes to draw the default sweep's figure, beside the sweep itself.

Issue "Speed on the CPUs CI runs on": a picture must not cost a sweep's time again. TensorFlow's
default sweep (`xentaudit sweep --backend tf`, in this one process) runs once. Then its figure
is built and written (``plot.render_sweep``, what --plot and --html call) as PNG, as SVG, and,
as the baseline measured in the same run, as PNG with matplotlib's own minor ticks put back on
the log axes (what the figure drew before it had none: some 80 ticks a panel, each measured by
the constrained layout): each --runs times after one warm-up, one after the other. Medians are
printed, and the ratio to the baseline. The first lines name the CPU, the reference kernel's
clone (the sweep's reference) and what the frameworks were held to; --isa forces a clone and
holds numpy, XLA and ATen to its instruction set (benchmarks/machine.py).

    python benchmarks/plot_speed.py [--runs 5] [--isa x86-64-v3]
"""

from __future__ import annotations

import os
import time
from unittest import mock

from machine import benchmark_parser, median_time, parsed


def main() -> None:
    parser = benchmark_parser(__doc__, runs=5)
    args = parsed(parser)
    from xentaudit.processes import as_command_line

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as the command line sets it
    as_command_line()  # TensorFlow set up (and quiet) as `xentaudit sweep` has it
    from matplotlib.ticker import LogLocator

    from xentaudit.report import plot
    from xentaudit.sweep import sweep

    start = time.perf_counter()
    swept = sweep(backends=["tf"])
    print(f"the default sweep of TensorFlow, one process: {time.perf_counter() - start:.2f} s")
    print(f"runs: {args.runs} (medians, after one warm-up each)")
    png = median_time(lambda: plot.render_sweep(swept, ".png"), args.runs)
    svg = median_time(lambda: plot.render_sweep(swept, ".svg"), args.runs)
    # the baseline: the minor locator a log scale sets (matplotlib.scale.LogScale, subs=None)
    # where the figure sets none
    with mock.patch.object(plot, "NullLocator", lambda: LogLocator(10, None)):
        minor = median_time(lambda: plot.render_sweep(swept, ".png"), args.runs)
    print(f"figure as PNG: {png:.2f} s; as SVG: {svg:.2f} s")
    print(
        f"baseline, PNG with matplotlib's minor ticks: {minor:.2f} s; PNG / baseline = "
        f"{png / minor:.2f}"
    )


if __name__ == "__main__":
    main()
