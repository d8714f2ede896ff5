"""How long `xentaudit --help` and every command's `--help` take, as fresh processes.

Target (issue "Speed on the CPUs CI runs on"): each under 300 ms. Every `--help` is run --runs
times, interleaved with a bare `python -c pass` (the interpreter's own start-up, measured in the
same run as the baseline), and the medians are printed. The first line names the CPU and the
reference kernel's clone (no `--help` loads the kernel or any framework).

    python benchmarks/help_speed.py [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from machine import describe, wall

TARGET_S = 0.300
COMMANDS = ("", "sweep", "compare", "check", "list", "lint")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    print(describe())
    helps = {c: [sys.executable, "-m", "xentaudit", *filter(None, [c]), "--help"] for c in COMMANDS}
    for cmd in helps.values():  # warm the file cache once, discarded
        wall(cmd)
    times: dict[str, list[float]] = {c: [] for c in COMMANDS}
    bare: list[float] = []
    for _ in range(args.runs):  # interleaved, so every command sees the same machine state
        bare.append(wall([sys.executable, "-c", "pass"]))
        for command, cmd in helps.items():
            times[command].append(wall(cmd))
    base = statistics.median(bare)
    print(f"runs: {args.runs}; python -c pass: median {1000 * base:.0f} ms")
    for command, values in times.items():
        median = statistics.median(values)
        name = f"xentaudit {command} --help".replace("  ", " ")
        print(
            f"{name:<28} median {1000 * median:4.0f} ms = {median / base:.1f}x python's start-up "
            f"(target < {1000 * TARGET_S:.0f} ms: {'met' if median < TARGET_S else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
