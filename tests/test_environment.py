"""Every report records what it audited with: versions of what ran, the CPU and the reference
kernel's clone, and whether each framework used flushes subnormals."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xentaudit import audit
from xentaudit.cli import cli
from xentaudit.environment import environment
from xentaudit.reference import base

SEED = Path(__file__).parent.parent / "fixtures" / "seed_scale10.npz"


def test_the_record_names_the_versions_of_what_ran() -> None:
    record = environment(["tensorflow"])
    assert list(record) == [
        "python", "xentaudit", "numpy", "tensorflow", "keras", "cpu", "kernel", "subnormals",
    ]  # fmt: skip
    assert record["python"] == platform.python_version()
    for package in ("xentaudit", "numpy", "tensorflow", "keras"):
        assert record[package] == importlib.metadata.version(package)
    kernel = base.kernel
    assert record["kernel"] == (kernel.isa() if kernel is not None else "none (numpy reference)")
    # TensorFlow's CPU kernels run with flush-to-zero set: exp(-100) = 3.8e-44 comes back 0
    assert record["subnormals"] == "tensorflow flushed"


def test_only_the_backends_that_ran_are_recorded() -> None:
    pytest.importorskip("torch")
    a = audit([[0.0, 1.0]], [1], impls=["torch_cross_entropy"], modes=["eager"])
    assert "tensorflow" not in a.environment and "jax" not in a.environment
    assert a.environment["torch"] == importlib.metadata.version("torch")
    # the CPU keeps subnormals for torch (it sets no flush-to-zero unless asked)
    assert a.environment["subnormals"] == "torch kept"


def test_every_format_carries_the_record() -> None:
    runner = CliRunner()
    args = ["check", str(SEED), "--impl", "tf_softmax_xent", "--mode", "eager"]
    doc = json.loads(runner.invoke(cli, [*args, "--format", "json"]).stdout)
    assert doc["environment"]["numpy"] == np.__version__
    table = runner.invoke(cli, args).stdout
    assert "\naudited with: python " in table  # the last lines (the record wraps)
    github = runner.invoke(cli, [*args, "--format", "github"]).stdout
    assert f"Audited with: python {platform.python_version()}" in github.replace("%0A", "\n")
    junit = runner.invoke(cli, [*args, "--format", "junit"]).stdout
    assert f'<property name="environment.numpy" value="{np.__version__}" />' in junit
    compare = runner.invoke(cli, ["compare", "--impl", "log_softmax", "--mode", "eager"]).stdout
    assert "audited with: python " in compare
    sweep = runner.invoke(
        cli, ["sweep", "--impl", "log_softmax", "--dtype", "float32", "--pattern", "seed",
              "--scales", "1:10:2", "--mode", "eager"],
    ).stdout  # fmt: skip
    assert "\naudited with: python " in sweep[sweep.index("Summary") :]
