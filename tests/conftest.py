"""Fixtures shared by the tests: the environment subprocesses inherit, and those of what `check`
writes (--output, --flagged-rows)."""

from __future__ import annotations

import os

import pytest

import xentaudit.check

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
