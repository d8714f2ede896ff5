"""Fixtures shared by the tests of what `check` writes (--output, --flagged-rows)."""

from __future__ import annotations

import os

import pytest

import xentaudit.check


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
