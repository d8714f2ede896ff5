"""What a benchmark ran on (the CPU model, which reference ran: the kernel's clone, and the
instruction set the frameworks were held to), and the wall time of a fresh process (``wall``).

--isa picks the kernel's clone and holds numpy, XLA (JAX's and TensorFlow's) and PyTorch's ATen
to the same instruction set, so that a run on a CPU with AVX-512 measures the AVX2 code a CPU
without it runs. Each library reads its variable once, when it loads, so ``parsed`` sets them
and runs the benchmark again in a fresh process. oneDNN is not held: TensorFlow picks its oneDNN
kernels by the CPU's own features (bfloat16 and float16 softmax where the CPU has AVX-512's),
and a oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA) then refuses them, which a CPU without AVX-512
never meets; so TensorFlow's and PyTorch's oneDNN kernels run this CPU's best code.
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
    line = f"{cpu}; reference: float64 kernel, clone {kernel.isa()} (this CPU runs {runnable})"
    return f"{line}\n{_frameworks_isa()}"


# What each library reads to cap its instruction set, by --isa: ATen's capability, XLA's CPU
# ISA, and how much of numpy's dispatch is kept (its targets up to X86_V3, or none).
CAPS = {
    "x86-64-v3": {"aten": "avx2", "xla": "AVX2", "numpy": "x86-64-v3"},
    "x86-64": {"aten": "default", "xla": "SSE4_2", "numpy": "baseline"},
}
_MARK = "XENTAUDIT_BENCHMARK_ISA"  # set in the benchmark's own process once its caps are set


def _numpy_dispatch() -> tuple[list[str], dict[str, bool]]:
    """numpy's dispatch targets, and which of them it uses in this process."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # numpy 1.x
        from numpy.core import _multiarray_umath as umath
    return list(umath.__cpu_dispatch__), dict(umath.__cpu_features__)


def _numpy_above(cap: str) -> list[str]:
    """numpy's dispatch targets above ``cap``: every one past AVX2 (AVX-512's, X86_V4), or all."""
    targets, _ = _numpy_dispatch()
    if cap == "baseline":
        return targets
    return [t for t in targets if t.startswith("AVX512") or t == "X86_V4"]


def _capped_env(isa: str) -> dict[str, str]:
    """The environment that holds every library to ``isa`` (nothing for x86-64-v4)."""
    env = {"XENTAUDIT_KERNEL_ISA": isa, _MARK: isa}
    cap = CAPS.get(isa)
    if cap is None:
        return env
    xla = " ".join(
        f for f in (os.environ.get("XLA_FLAGS", ""), f"--xla_cpu_max_isa={cap['xla']}") if f
    )
    env.update(
        ATEN_CPU_CAPABILITY=cap["aten"],
        XLA_FLAGS=xla,
        NPY_DISABLE_CPU_FEATURES=" ".join(_numpy_above(cap["numpy"])),
    )
    return env


def _frameworks_isa() -> str:
    """One line: the instruction set the frameworks were held to, as numpy reports its own."""
    targets, features = _numpy_dispatch()
    isa = os.environ.get(_MARK)
    used = [t for t in targets if features.get(t)]
    numpy_line = f"numpy dispatches to {', '.join(used) or 'its baseline only'}"
    cap = CAPS.get(isa or "")
    if cap is None:
        return f"frameworks: not capped, each uses what this CPU has ({numpy_line})"
    return (
        f"frameworks held to {isa}: ATEN_CPU_CAPABILITY={cap['aten']}, "
        f"--xla_cpu_max_isa={cap['xla']}, {numpy_line}; oneDNN not held (TensorFlow's and "
        "PyTorch's oneDNN kernels use this CPU's best)"
    )


def benchmark_parser(doc: str, runs: int) -> argparse.ArgumentParser:
    """A benchmark's options: ``doc``'s first line as its description, --runs (default ``runs``)
    and --isa. The benchmark adds its own, then calls ``parsed``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument(
        "--isa",
        help="run this clone of the kernel (x86-64-v4, x86-64-v3, x86-64) and hold numpy, "
        "XLA and ATen (not oneDNN) to the same instruction set, in this process and its children "
        "(default: the kernel's clone as XENTAUDIT_KERNEL_ISA sets it, else the best this CPU "
        "supports, and the frameworks not held)",
    )
    return parser


def parsed(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The options parsed and the lines that name the machine (``describe``) printed. With
    --isa, first run the benchmark again in a fresh process, its children's environment too,
    with the kernel's clone and the frameworks' caps set (``_capped_env``)."""
    args = parser.parse_args()
    if args.isa and os.environ.get(_MARK) != args.isa:
        os.environ.update(_capped_env(args.isa))
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, *sys.argv])
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
