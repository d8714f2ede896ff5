"""What a benchmark ran on (the CPU model, and which reference ran: the kernel's clone), and the
wall time of a fresh process (``wall``).

Import it after setting ``XENTAUDIT_KERNEL_ISA`` (``parsed`` does, from --isa): the kernel reads the
variable once, when it loads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def describe() -> str:
    """One line: CPU model and cores, the float64 reference method and the kernel's clone."""
    from xentaudit.environment import cpu_model
    from xentaudit.reference import base

    cpu = f"CPU: {cpu_model()}, {os.cpu_count()} cores"
    if base.FLOAT64_METHOD != "float64":
        return f"{cpu}; reference: {base.FLOAT64_METHOD} (the kernel is not in use)"
    kernel = base.kernel
    runnable = ", ".join(kernel.supported_isas())
    return f"{cpu}; reference: float64 kernel, clone {kernel.isa()} (this CPU runs {runnable})"


def benchmark_parser(doc: str, runs: int) -> argparse.ArgumentParser:
    """A benchmark's options: ``doc``'s first line as its description, --runs (default ``runs``)
    and --isa. The benchmark adds its own, then calls ``parsed``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument(
        "--isa",
        help="run this clone of the kernel (x86-64-v4, x86-64-v3, x86-64): sets "
        "XENTAUDIT_KERNEL_ISA for this process and its children (default: the variable as set, "
        "else the best this CPU supports)",
    )
    return parser


def parsed(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The options parsed, --isa's clone set for this process and its children (before the
    kernel loads), and the line that names the machine (``describe``) printed."""
    args = parser.parse_args()
    if args.isa:
        os.environ["XENTAUDIT_KERNEL_ISA"] = args.isa
    print(describe())
    return args


def wall(cmd: list[str]) -> float:
    """Seconds ``cmd`` takes as a fresh process; exit 1 (a verdict: rows flagged) is a finished
    run, 2 or more an error that ends the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd[:4])}... failed (exit {done.returncode}): {done.stderr[-500:]}")
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], runs: int) -> float:
    """Seconds ``fn`` takes in this process: the median of ``runs`` calls after one warm-up
    (imports, traces, compiles, caches)."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def saved_logits(folder: Path, rows: int, classes: int) -> tuple[np.ndarray, np.ndarray, Path]:
    """Standard-normal float32 logits and uniform class labels (seed 0), and the ``.npz`` in
    ``folder`` that holds them (arrays ``logits`` and ``labels``)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, classes), dtype=np.float32)
    k = rng.integers(0, classes, rows)
    path = folder / "x.npz"
    np.savez(path, logits=x, labels=k)
    return x, k, path
