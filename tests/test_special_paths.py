"""Every path option (FILE and --labels are in test_hostile_reader.py; here --impl and --config)
names a path that is not a regular file for what it is, without opening it: a FIFO never
blocks, and no option says "no such file" of a path that exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from xentaudit.cli import cli

CLEAN = str(Path(__file__).parent.parent / "fixtures" / "clean.npz")


@pytest.mark.parametrize("kind", ["a FIFO", "a directory"])
@pytest.mark.parametrize("option", ["--impl", "--config"])
def test_impl_and_config_paths_that_are_not_files(tmp_path, kind: str, option: str) -> None:
    path = tmp_path / ("thing.py" if option == "--impl" else "pyproject.toml")
    if kind == "a FIFO":
        os.mkfifo(path)
    else:
        path.mkdir()
    value = f"{path}:fn" if option == "--impl" else str(path)
    result = CliRunner().invoke(
        cli, ["check", CLEAN, option, value, "--mode", "eager"], catch_exceptions=False
    )
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert f"{path} is {kind}, not a file" in line and "no such file" not in line
