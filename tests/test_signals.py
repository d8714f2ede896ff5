"""Ctrl-C (SIGINT to the whole process group) and SIGTERM end a command with one line on stderr,
exit 130 or 143, and no temporary file of --output or --flagged-rows left behind. Subprocesses,
started together: each imports TensorFlow (~3 s of CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="waits for the run via /proc/PID/fd (Linux)"
)
INTERRUPTS = 5  # the "Exception ignored" traceback of the reading thread was intermittent
SEED = str(Path(__file__).parent.parent / "fixtures" / "seed_scale10.npz")
FAST = ("--impl", "tf_sparse_softmax_xent", "--mode", "eager")
# The report is in the temporary file and SIGTERM arrives before the rename.
KILLED_WHILE_WRITING = """
import os, signal, sys
from xentaudit import cli

rename = os.replace


def replace(source, target):
    os.kill(os.getpid(), signal.SIGTERM)
    rename(source, target)


os.replace = replace
sys.argv = ["xentaudit", *sys.argv[1:]]
cli.main()
"""


def _reading(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open: `check` is in its chunk loop."""
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> list[tuple[int, subprocess.CompletedProcess, Path]]:
    """(signal, finished process, its --output folder) of every run, signalled once busy."""
    root = tmp_path_factory.mktemp("signals")
    logits = root / "logits.npy"
    # 5000 chunks of 4 rows: tens of seconds of work, read ahead by the prefetch thread
    np.save(logits, np.random.default_rng(0).standard_normal((20_000, 8)).astype(np.float32))
    runs = [signal.SIGINT] * INTERRUPTS + [signal.SIGTERM]
    started = []
    for i, signum in enumerate(runs):
        out = root / f"out{i}"
        out.mkdir()
        args = ["check", str(logits), "--chunk-rows", "4", *FAST, "--output", str(out / "r.txt")]
        args += ["--flagged-rows", str(out / "rows.csv")]  # its temporary file is open, too
        process = subprocess.Popen(
            [sys.executable, "-m", "xentaudit", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append((signum, process, out))
    writing = root / "writing"
    writing.mkdir()
    script = [sys.executable, "-c", KILLED_WHILE_WRITING, "check", SEED, *FAST]
    last = subprocess.Popen(
        [*script, "--output", str(writing / "r.txt")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    finished = []
    for signum, process, out in started:
        deadline = time.monotonic() + 60
        while not _reading(process.pid, logits) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # well into the chunk loop
        assert process.poll() is None, process.communicate()
        os.killpg(process.pid, signum)
        stdout, stderr = process.communicate(timeout=60)
        finished.append(
            (signum, subprocess.CompletedProcess(args, process.returncode, stdout, stderr), out)
        )
    stdout, stderr = last.communicate(timeout=60)
    finished.append(
        (
            signal.SIGTERM,
            subprocess.CompletedProcess(script, last.returncode, stdout, stderr),
            writing,
        )
    )
    return finished


def _ended(killed, signum: int, code: int, line: str) -> int:
    """How many runs ``signum`` ended, each with exit ``code``, only ``line`` on stderr, nothing
    on stdout and nothing left in its --output folder."""
    runs = [(p, out) for s, p, out in killed if s == signum]
    for process, out in runs:
        assert (process.returncode, process.stderr, process.stdout) == (code, line, "")
        assert os.listdir(out) == []
    return len(runs)


def test_ctrl_c_is_one_line_and_exit_130(killed) -> None:
    assert _ended(killed, signal.SIGINT, 130, "xentaudit: aborted\n") == INTERRUPTS


def test_sigterm_is_one_line_and_exit_143_and_removes_the_temporary_report(killed) -> None:
    # in the chunk loop, and with the report written to the temporary file but not renamed
    assert _ended(killed, signal.SIGTERM, 143, "xentaudit: terminated\n") == 2
