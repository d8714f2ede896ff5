"""How long `xentaudit --help` and every command's `--help` take, as fresh processes.

Target (issue "Speed on the CPUs CI runs on"): each under 300 ms. Every `--help` is run --runs
times, interleaved with a bare `python -c pass` (the interpreter's own start-up, measured in
the same run as the baseline), and the medians are printed. The first line names the CPU and
the reference kernel's clone (a `--help` loads the kernel, but computes nothing with it, and
loads no framework); the second says whether the Python modules of xentaudit a `--help` imports
have their compiled bytecode cached and up to date: a regular pip install (not -e nor
--no-compile) has it, while a source checkout run with PYTHONDONTWRITEBYTECODE set compiles
them in every process, which the figures then include.

    python benchmarks/help_speed.py [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from machine import describe, wall

TARGET_S = 0.300
COMMANDS = ("", "sweep", "compare", "check", "list", "lint")


# In a process like the ones timed: the xentaudit modules in Python `--help` imports (not the
# compiled kernel), and how many of them have no valid bytecode cached: a .pyc of this Python
# (its magic number), hash-based (flags not 0), or whose recorded mtime and size are the source's
UNCACHED = """
import importlib.util, os, sys
import xentaudit.cli

def valid(m):
    try:
        with open(m.__cached__, "rb") as f:
            head = f.read(16)
    except (OSError, TypeError):
        return False
    st = os.stat(m.__file__)
    return head[:4] == importlib.util.MAGIC_NUMBER and (
        head[4:8] != bytes(4)
        or (
            int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF
        )
    )

mods = [
    m for n, m in sys.modules.items()
    if n.split(".")[0] == "xentaudit" and (getattr(m, "__file__", None) or "").endswith(".py")
]
print(len(mods), sum(not valid(m) for m in mods))
"""


def bytecode() -> str:
    """One line: whether the xentaudit modules a `--help` imports have valid cached bytecode."""
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
    print(bytecode())
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
