"""How long `xentaudit --help` and every command's `--help` take, as fresh processes.

Target (issue "Speed on the CPUs CI runs on"): each under 300 ms. Every `--help` is run --runs
times, interleaved with a bare `python -c pass` (the interpreter's own start-up, measured in the
same run as the baseline), and the medians are printed. The first line names the CPU and the
reference kernel's clone (a `--help` imports neither the kernel nor numpy, nor any framework:
tests/test_cli.py checks it); the second says whether the Python modules of xentaudit a `--help`
imports are compiled from source in the timed processes (importlib finds no valid cached
bytecode): a regular pip install (not -e nor --no-compile) has their bytecode, while a source
checkout run with PYTHONDONTWRITEBYTECODE set compiles them in every process, which the figures
then include.

    python benchmarks/help_speed.py [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from machine import describe, wall

TARGET_S = 0.300
COMMANDS = ("", "sweep", "compare", "check", "list", "lint", "ema")


# In a process like the ones timed: the xentaudit modules in Python a `--help` imports (not the
# compiled kernel), and how many of them the import compiled from source, as importlib's own
# check of their cached bytecode decided (each compile passes through source_to_code)
UNCACHED = """
import importlib.machinery, sys
compiled = set()
to_code = importlib.machinery.SourceFileLoader.source_to_code
def counted(self, data, path, *args, **kwargs):
    compiled.add(path)
    return to_code(self, data, path, *args, **kwargs)
importlib.machinery.SourceFileLoader.source_to_code = counted
import xentaudit.cli
files = {
    getattr(m, "__file__", None) or "" for n, m in sys.modules.items()
    if n.split(".")[0] == "xentaudit"
}
files = {f for f in files if f.endswith(".py")}
print(len(files), len(files & compiled))
"""


def bytecode() -> str:
    """One line: whether the xentaudit modules a `--help` imports were compiled from source (run
    after the warm-up, which writes their bytecode wherever Python may)."""
    out = subprocess.run([sys.executable, "-c", UNCACHED], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"importing xentaudit.cli failed: {out.stderr.strip().splitlines()[-1:]}")
    modules, uncached = map(int, out.stdout.split())
    if not uncached:
        return f"bytecode: cached for all {modules} Python modules of xentaudit a --help imports"
    return (
        f"bytecode: NOT cached for {uncached} of the {modules} Python modules of xentaudit a "
        "--help imports: every run compiles them (a regular pip install, not -e nor --no-compile, "
        "has them compiled; so has a checkout run without PYTHONDONTWRITEBYTECODE, or after "
        "python -m compileall)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    print(describe())
    helps = {c: [sys.executable, "-m", "xentaudit", *filter(None, [c]), "--help"] for c in COMMANDS}
    for cmd in helps.values():  # warm the file cache once, discarded
        wall(cmd)
    print(bytecode())
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
