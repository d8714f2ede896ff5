"""How long `sweep` takes with every backend installed, and `check` with a torch loss, beside
the frameworks' own costs.

Targets (issue "torch and jax backends"):
  (a) the default `xentaudit sweep` (every installed backend) finishes within the sum of the
      three frameworks' import times (`import tensorflow`, `import torch`, `import jax,
      optax`) + 8 s on the 2-core machine;
  (b) on a 4096 x 32000 float32 array, `check --impl torch_cross_entropy --mode eager` takes
      at most 1.5x torch's own forward+backward on the same array: a fresh process that
      imports torch, loads the same .npy files and runs F.cross_entropy forward and backward
      once (check must read the file too, and imports torch itself).
Everything is measured in this run as fresh processes, interleaved so both sides of a ratio
see the same machine state; medians of --runs repetitions after one discarded warm-up of each
command (the file cache). The first lines name the CPU, the reference kernel's instruction-set
clone and what the frameworks were held to; --isa forces a clone and holds numpy, XLA and ATen
to its instruction set (benchmarks/machine.py).

    python benchmarks/backends_speed.py [--runs 3] [--isa x86-64-v3] [--skip-sweep]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from machine import benchmark_parser, parsed, wall

BUDGET_S = 8.0
CHECK_RATIO = 1.5
ROWS, CLASSES = 4096, 32000
IMPORTS = {
    "tensorflow": "import tensorflow",
    "torch": "import torch",
    "jax, optax": "import jax, optax",
}
TORCH_FWD_BWD = """
import sys
import numpy as np
import torch
import torch.nn.functional as F

x = torch.from_numpy(np.load(sys.argv[1])).requires_grad_(True)
k = torch.from_numpy(np.load(sys.argv[2]))
loss = F.cross_entropy(x, k, reduction="none")
(grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss))
grad.numpy()
"""


def medians(cmds: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """Each command's wall times over ``runs`` interleaved rounds, after one warm-up each."""
    for cmd in cmds.values():
        wall(cmd)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            times[name].append(wall(cmd))
    return times


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def sweep_target(runs: int) -> None:
    cmds = {name: [sys.executable, "-c", code] for name, code in IMPORTS.items()}
    cmds["sweep"] = [sys.executable, "-m", "xentaudit", "sweep"]
    times = medians(cmds, runs)
    med = {name: statistics.median(t) for name, t in times.items()}
    imports = sum(med[name] for name in IMPORTS)
    excess = med["sweep"] - imports
    print(f"(a) default sweep, every installed backend; medians of {runs}:")
    for name in IMPORTS:
        print(f"   python -c 'import {name}': {med[name]:.2f} s  (all: {_fmt(times[name])})")
    print(f"   sum of the three imports:  {imports:.2f} s")
    print(f"   xentaudit sweep (default): {med['sweep']:.2f} s  (all: {_fmt(times['sweep'])})")
    print(
        f"   sweep - imports: {excess:.2f} s  (budget {BUDGET_S:.1f} s: "
        f"{'met' if excess <= BUDGET_S else 'NOT met'}); sweep / imports = "
        f"{med['sweep'] / imports:.2f}"
    )


def check_target(runs: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, CLASSES), dtype=np.float32)
    k = rng.integers(0, CLASSES, ROWS)
    with tempfile.TemporaryDirectory(dir=".") as folder:
        logits, labels = Path(folder) / "x.npy", Path(folder) / "x.labels.npy"
        np.save(logits, x)
        np.save(labels, k)
        cmds = {
            "torch": [sys.executable, "-c", TORCH_FWD_BWD, str(logits), str(labels)],
            "check": [
                sys.executable, "-m", "xentaudit", "check", str(logits), "--labels", str(labels),
                "--impl", "torch_cross_entropy", "--mode", "eager", "--format", "json",
                "--output", str(Path(folder) / "report.json"),
            ],
        }  # fmt: skip
        times = medians(cmds, runs)
    base, check = statistics.median(times["torch"]), statistics.median(times["check"])
    print(f"(b) {ROWS} x {CLASSES} float32 ({x.nbytes / 1e6:.0f} MB), medians of {runs}:")
    print(
        f"   torch: import, load, F.cross_entropy fwd+bwd: {base:.2f} s  "
        f"(all: {_fmt(times['torch'])})"
    )
    print(
        f"   check --impl torch_cross_entropy --mode eager: {check:.2f} s = {check / base:.2f}x "
        f"(target <= {CHECK_RATIO}x: {'met' if check <= CHECK_RATIO * base else 'NOT met'}); "
        f"check - torch = {check - base:.2f} s  (all: {_fmt(times['check'])})"
    )


def main() -> None:
    parser = benchmark_parser(__doc__, runs=3)
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-check", action="store_true")
    args = parsed(parser)
    if not args.skip_sweep:
        sweep_target(args.runs)
    if not args.skip_check:
        check_target(args.runs)


if __name__ == "__main__":
    main()
