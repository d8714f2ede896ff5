"""Fixtures shared by the tests: the environment subprocesses inherit, and those of what `check`
writes (--output, --flagged-rows)."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import numpy as np
import pytest

import xentaudit.check
from xentaudit.impls import Outcome

# The processes the tests start (`python -c`, `python -m xentaudit`, and the processes those
# start) import xentaudit as this run imports it: installed. Run from the checkout, Python puts
# the working directory first on their sys.path, so they imported the checkout's sources, which
# after the README's `pip install .` hold no compiled kernel: the exact reference ran in numpy
# there, and every process compiled the sources again. A test of what a process does with the
# working directory on its path removes the variable for its processes (test_config).
os.environ["PYTHONSAFEPATH"] = "1"

# TensorFlow's variables that importing TensorFlow here and the CLI run here (click's runner) set
_TF_AT_START = {
    name: os.environ.get(name) for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_CPU_ALLOCATOR_USE_BFC")
}


@pytest.fixture(autouse=True)
def _tf_variables_as_at_start():
    """Importing TensorFlow in this process imports JAX where it is installed, and JAX sets
    TF_CPP_MIN_LOG_LEVEL (jax/__init__.py); the CLI in a subprocess would take that for the
    user's own setting and show TensorFlow's start-up log. The CLI run in this process (click's
    runner) sets TF_CPU_ALLOCATOR_USE_BFC (``processes.as_command_line``), which a test of a
    process started without it must not pass on. Each test starts as the run did. (This
    process's own allocator is whichever TensorFlow made at its first op here: no test
    depends on which.)"""
    for name, value in _TF_AT_START.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    yield


@pytest.fixture
def no_audit(monkeypatch):
    """The audit must not start: the options are refused first."""

    def audit_started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the audit ran before the output options were checked")

    monkeypatch.setattr(xentaudit.check, "check_file", audit_started)


@pytest.fixture
def full_disk(monkeypatch):
    """Files opened for writing with os.fdopen write to /dev/full: ENOSPC (the temporary file
    itself is created, so its removal is tested too)."""
    real_fdopen = os.fdopen

    def fdopen(fd: int, mode: str = "r", *args: object, **kwargs: object):
        if mode == "w":
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.fixture
def rows_alone(monkeypatch):
    """Every implementation runs on one row at a time, each row's outcome kept for the next run
    of the same row: a framework's loss on a row may move by an ulp with the row's place in its
    batch (README, "Bit for bit"), so the tests of what chunking changes in check's own work (its
    exact merges of sums, counts, worst rows and histograms) compare chunkings of the same rows'
    outcomes. Each row's Rounded holds that row's arrays; its ``ref`` (and what is derived from
    it) stays the chunk's, which ``_run`` does not read."""
    audit = sys.modules["xentaudit.audit"]  # the module, not the function xentaudit.audit
    run = audit._run
    kept: dict = {}

    def row(a: np.ndarray | None, i: int) -> np.ndarray | None:
        return None if a is None else a[i : i + 1]

    def one_row_at_a_time(name, eps, mode, rounded, timeout, policy, loss_scale, mean=False):
        assert not mean, "a framework's own mean is of its whole batch"
        outcomes = []
        run_key = (name, eps, mode, policy, loss_scale, rounded.given, rounded.loss)
        run_key += (rounded.focus, rounded.smoothing, rounded.ignore_class)
        for i in range(rounded.logits.shape[0]):
            arrays = {
                field: row(getattr(rounded, field), i)
                for field in ("logits", "weights", "classes", "given_weights", "ignored")
            }
            key = run_key + tuple(
                None if a is None else (a.dtype, a.shape, a.tobytes()) for a in arrays.values()
            )
            if key not in kept:
                alone = replace(rounded, **arrays)
                kept[key] = run(name, eps, mode, alone, timeout, policy, loss_scale)
            outcomes.append(kept[key])
        return Outcome(
            np.concatenate([o.loss for o in outcomes]),
            np.concatenate([o.grad for o in outcomes]),
            outcomes[0].output_dtype,
            None,
        )

    monkeypatch.setattr(audit, "_run", one_row_at_a_time)
    yield
    assert kept, "no implementation ran through audit._run"
