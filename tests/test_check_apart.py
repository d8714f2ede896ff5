"""`check` with each backend audited in a process of its own (``apart``, what the command line
does when several backends are audited): the same ``Check`` and flagged rows as one process,
results in one process's order, the error one process meets first, and a caller that imports
no framework (so that no process holds more than one)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import xentaudit.parallel
from xentaudit.check import check_file
from xentaudit.cli import cli
from xentaudit.errors import ImplementationError
from xentaudit.report.csv import line

# Backends interleaved (tf, torch, tf, jax, torch): the results of one process come in this
# order, which the parts audited apart must be put back in; clipped at two epsilons.
MIXED = ["naive", "torch_cross_entropy", "clipped", "optax_softmax_xent", "torch_log_softmax_nll"]
FAST = {"impls": MIXED, "modes": ["training"], "eps": [1e-7, 1e-3], "chunk_rows": 4}


@pytest.fixture(scope="module")
def logits(tmp_path_factory) -> tuple[Path, Path]:
    """11 rows (chunks of 4, 4 and 3) at scales that flag some rows in some implementations."""
    root = tmp_path_factory.mktemp("apart")
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((11, 6)) * rng.choice([1, 40, 150], (11, 1))).astype(np.float32)
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", rng.integers(0, 6, 11))
    return root / "x.npy", root / "y.npy"


@pytest.mark.parametrize("labelled", [True, False])
def test_backends_apart_give_the_one_process_check_and_flagged_rows(logits, labelled) -> None:
    x, y = logits
    labels = {"labels": str(y)} if labelled else {}
    one: list = []
    apart: list = []
    alone = check_file(x, on_flagged_row=one.append, **labels, **FAST)
    split = check_file(x, on_flagged_row=apart.append, apart=True, **labels, **FAST)
    assert split.to_dict() == alone.to_dict()
    assert [line(r) for r in apart] == [line(r) for r in one] and one  # NaN == NaN here
    # the results interleave the backends as named, whichever process audited them
    names = list(dict.fromkeys(r.impl for r in alone.results))
    assert names == [n for n in MIXED if n in names] and len(names) == len(MIXED)


# Two users' losses that fail on the chunk holding a marker logit (77 for TensorFlow's, 55 for
# torch's): which error one process meets first depends on the chunk, then on the order of the
# results in it, not on which backend's process is done first.
FAILING = """
def tf_loss(labels, logits):
    import tensorflow as tf

    if bool(tf.reduce_any(logits == 77.0)):
        raise ValueError("tf saw 77")
    return tf.nn.softmax_cross_entropy_with_logits(labels, logits)


def torch_loss(labels, logits):
    import torch

    if bool((logits.detach() == 55.0).any()):
        raise ValueError("torch saw 55")
    return -(labels * torch.log_softmax(logits, -1)).sum(-1)
"""


@pytest.mark.parametrize(
    ("order", "tf_row", "torch_row", "first"),
    [
        (["tf", "torch"], 9, 2, "torch saw 55"),  # torch's in chunk 0, TensorFlow's in chunk 2
        (["tf", "torch"], 1, 6, "tf saw 77"),  # TensorFlow's in chunk 0, torch's in chunk 1
        (["tf", "torch"], 5, 4, "tf saw 77"),  # both in chunk 1: TensorFlow's loss runs first
        # both in chunk 1, torch's loss first in the results, though TensorFlow's process (naive
        # comes first) is done first
        (["naive", "torch", "tf"], 5, 4, "torch saw 55"),
    ],
)
def test_the_error_is_the_one_one_process_meets_first(
    tmp_path, order, tf_row, torch_row, first
) -> None:
    (tmp_path / "failing.py").write_text(FAILING)
    x = np.zeros((11, 6), np.float32)
    x[tf_row, 0], x[torch_row, 1] = 77.0, 55.0
    np.save(tmp_path / "x.npy", x)
    users = {b: f"{b}:{tmp_path / 'failing.py'}:{b}_loss" for b in ("tf", "torch")}
    impls = [users.get(name, name) for name in order]
    args = {"labels": np.zeros(11, np.int64), "impls": impls, "modes": ["eager"], "chunk_rows": 4}
    with pytest.raises(ImplementationError, match=first) as alone:
        check_file(tmp_path / "x.npy", **args)
    np.save(tmp_path / "y.npy", args.pop("labels"))
    with pytest.raises(ImplementationError, match=first) as split:
        check_file(tmp_path / "x.npy", labels=tmp_path / "y.npy", apart=True, **args)
    assert str(split.value) == str(alone.value)


def test_the_caller_imports_no_framework(logits) -> None:
    x, y = logits
    probe = textwrap.dedent(
        f"""
        import sys
        from xentaudit.check import check_file

        if __name__ == "__main__":
            check = check_file({str(x)!r}, labels={str(y)!r}, impls={MIXED!r}, apart=True)
            assert {{r.impl for r in check.results}} == set({MIXED!r})
            print(sorted(m for m in ("tensorflow", "torch", "jax") if m in sys.modules))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_command_audits_several_backends_apart_and_one_here(logits, monkeypatch) -> None:
    x, y = logits
    calls: list[bool] = []
    run = xentaudit.parallel.run

    def spy(*args, **kwargs):
        calls.append(kwargs["apart"])
        return run(*args, **kwargs)

    monkeypatch.setattr(xentaudit.parallel, "run", spy)
    base = ["check", str(x), "--labels", str(y), "--mode", "eager", "--format", "json"]
    two = CliRunner().invoke(cli, [*base, "--impl", "naive", "--impl", "torch_cross_entropy"])
    assert two.exit_code in (0, 1), two.output
    assert calls == [True]
    one = CliRunner().invoke(cli, [*base, "--impl", "naive", "--impl", "clipped"])
    assert one.exit_code in (0, 1), one.output
    assert calls == [True]  # one backend: audited in this process
