"""How long `sweep --plot` takes to draw the default sweep's figure, beside the sweep itself.

Issue "Speed on the CPUs CI runs on": a picture must not cost a sweep's time again. The default
sweep of TensorFlow (`xentaudit sweep --backend tf`, one process) runs once; then, --runs times
each, interleaved, its figure is built and written as PNG and as SVG (``plot.render_sweep``,
what --plot and --html call), and, as the baseline measured in the same run, the same PNG with
matplotlib's own minor ticks put back on the log axes (what the figure drew before they went:
some 80 ticks a panel, each measured by the constrained layout). Medians are printed, and the
ratio to the baseline. The first line names the CPU and the reference kernel's clone.

    python benchmarks/plot_speed.py [--runs 5]
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

from machine import describe, median_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(describe())
    from xentaudit.processes import as_command_line

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
