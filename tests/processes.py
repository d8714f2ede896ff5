"""The processes a command started, read from /proc: for the tests that end a command with a
signal and check that its worker processes end with it; and which frameworks a script that
spawns processes imported itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path


def frameworks_imported(main: str) -> str:
    """Run ``main`` (Python code, dedented, run as ``__main__``: processes it spawns import
    it) in a fresh interpreter after ``import sys``; what it prints, then the frameworks it
    imported itself, e.g. ``[]``."""
    probe = "import sys\n\nif __name__ == '__main__':\n" + textwrap.indent(
        textwrap.dedent(main)
        + '\nprint(sorted(m for m in ("tensorflow", "torch", "jax") if m in sys.modules))\n',
        "    ",
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid and alive(int(stat.parent.name)):
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def busy_workers(command: subprocess.Popen, mark: Path, seconds: float = 120) -> list[int]:
    """The processes of ``command`` once one of them is busy: once a loss it runs has touched
    ``mark`` (or ``seconds`` have passed: no mark, the caller's assertion fails)."""
    deadline = time.monotonic() + seconds
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return children(command.pid) if mark.exists() else []


def gone(pids: list[int], seconds: float) -> bool:
    """Whether every one of ``pids`` ends within ``seconds``."""
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(alive(p) for p in pids)
