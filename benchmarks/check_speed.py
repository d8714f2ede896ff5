"""`xentaudit check` on big arrays: memory, speed against TensorFlow itself, reference bandwidth.

Targets (issue "xentaudit check FILE"):
  1. a 4 GB float32 .npy (temporary, deleted after) is checked with peak RSS under 1 GB;
  2. on a 4096 x 32000 float32 array, `check --impl tf_softmax_xent` takes at most 2x the time
     of tf.nn.softmax_cross_entropy_with_logits forward+backward on the same in-memory array;
  3. the reference pass alone runs at >= 25 % of this machine's memory bandwidth (numpy sum).
     The same pass with the numpy reference (what an install without a C compiler runs) is
     measured beside it, for information.
Everything is measured in this run; medians of --runs repetitions after one warm-up. The first
lines name the CPU, the kernel's instruction-set clone and what the frameworks were held to;
--isa forces a clone and holds numpy, XLA and ATen to its instruction set (benchmarks/machine.py),
e.g. x86-64-v3 for the AVX2 code CI's CPUs run.

    python benchmarks/check_speed.py [--runs 3] [--big-gb 4] [--skip-big] [--isa x86-64-v3]
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import benchmark_parser, median_time, parsed, saved_logits

ROWS, CLASSES = 4096, 32000


def write_npy(path: Path, rows: int, classes: int, seed: int) -> None:
    """A float32 .npy of standard-normal logits written block by block (bounded memory)."""
    rng = np.random.default_rng(seed)
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, classes)}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        block = max(1, (64 << 20) // (classes * 4))
        for start in range(0, rows, block):
            n = min(block, rows - start)
            f.write(rng.standard_normal((n, classes), dtype=np.float32).tobytes())
    np.save(path.with_suffix(".labels.npy"), rng.integers(0, classes, rows))


def big_file(gb: float, runs: int) -> None:
    rows = int(gb * 2**30 / (CLASSES * 4))
    with tempfile.TemporaryDirectory(dir=".") as folder:
        path = Path(folder) / "big.npy"
        write_npy(path, rows, CLASSES, seed=1)
        size = path.stat().st_size / 2**30
        cmd = [
            sys.executable, "-m", "xentaudit", "check", str(path),
            "--labels", str(path.with_suffix(".labels.npy")),
            "--impl", "tf_softmax_xent", "--format", "json", "--output", str(Path(folder) / "r"),
        ]  # fmt: skip
        start = time.perf_counter()
        code = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
        wall = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB
    print(f"1. {size:.2f} GiB float32 .npy ({rows} x {CLASSES}), check --impl tf_softmax_xent")
    print(
        f"   exit {code}, wall {wall:.1f} s, peak RSS {peak:.0f} MiB (target < 1024 MiB): "
        f"{'met' if peak < 1024 else 'NOT met'}"
    )


def speed(runs: int) -> None:
    import tensorflow as tf

    from xentaudit.check import CHUNK_ENTRIES, check_file
    from xentaudit.reference import cross_entropy

    with tempfile.TemporaryDirectory(dir=".") as folder:
        x, k, path = saved_logits(Path(folder), ROWS, CLASSES)

        logits = tf.constant(x)
        labels = tf.one_hot(k, CLASSES, dtype=tf.float32)

        def tf_fwd_bwd() -> None:
            with tf.GradientTape() as tape:
                tape.watch(logits)
                loss = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            tape.gradient(loss, logits).numpy()

        base = median_time(tf_fwd_bwd, runs)
        eager = median_time(
            lambda: check_file(path, impls=["tf_softmax_xent"], modes=["eager"]), runs
        )
        both = median_time(lambda: check_file(path, impls=["tf_softmax_xent"]), runs)

    mb = x.nbytes / 1e6
    print(f"2. {ROWS} x {CLASSES} float32 ({mb:.0f} MB), medians of {runs}:")
    print(f"   tf.nn.softmax_cross_entropy_with_logits fwd+bwd: {base:.2f} s")
    print(
        f"   check --impl tf_softmax_xent --mode eager:      {eager:.2f} s = {eager / base:.2f}x "
        f"(target <= 2x: {'met' if eager <= 2 * base else 'NOT met'})"
    )
    print(f"   check --impl tf_softmax_xent (both modes):      {both:.2f} s = {both / base:.2f}x")

    big = np.ones(2**28, dtype=np.float32)  # 1 GiB
    bandwidth = big.nbytes / median_time(big.sum, runs)
    del big
    rows = max(1, CHUNK_ENTRIES // CLASSES)  # the chunks `check` itself reads

    def reference_pass(method: str) -> None:  # exact loss and float64 gradient, as check does
        for start in range(0, ROWS, rows):
            cross_entropy(x[start : start + rows], k[start : start + rows], method)

    ref = median_time(lambda: reference_pass("float64"), runs)
    rate = x.nbytes / ref
    print(f"3. memory bandwidth (numpy sum of 1 GiB float32): {bandwidth / 1e9:.2f} GB/s")
    print(
        f"   reference pass (float64 method, check's chunks of {rows} rows): {ref:.2f} s = "
        f"{rate / 1e9:.2f} GB/s of logits = {100 * rate / bandwidth:.1f} % of bandwidth "
        f"(target >= 25 %: {'met' if rate >= 0.25 * bandwidth else 'NOT met'})"
    )
    slow = median_time(lambda: reference_pass("float64-numpy"), runs)
    print(
        f"   reference pass, numpy reference (float64-numpy):     {slow:.2f} s = "
        f"{x.nbytes / slow / 1e9:.2f} GB/s of logits = {slow / ref:.1f}x the float64 method's time"
    )


def main() -> None:
    parser = benchmark_parser(__doc__, runs=3)
    parser.add_argument("--big-gb", type=float, default=4.0)
    parser.add_argument("--skip-big", action="store_true")
    args = parsed(parser)
    if not args.skip_big:
        big_file(args.big_gb, args.runs)
    speed(args.runs)


if __name__ == "__main__":
    main()
